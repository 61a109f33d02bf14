//! Keeps a `PodIndex` in step with the API server: one list and then a watch of the pods on this
//! node (kube-runtime's watcher resumes from the last resourceVersion or bookmark, relists on
//! 410 Gone, and backs off while the API server is unreachable).
//!
//! RBAC: the daemon's service account needs `get`, `list` and `watch` on `pods` (cluster-wide:
//! a field selector does not narrow what RBAC checks).

use std::path::Path;

use anyhow::{Context as _, anyhow};
use futures::StreamExt as _;
use kube::{
    Api, Client, Config,
    runtime::{WatchStreamExt as _, watcher},
};
use log::{info, warn};

use super::{PodIndex, object::WatchedPod};

const TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Running in a pod with a service account, as kubelet sets it up.
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|host| !host.is_empty())
        && Path::new(TOKEN_FILE).exists()
}

/// `--kubernetes`, or detected.
pub fn wanted(flag: bool) -> bool {
    flag || in_cluster()
}

/// The node's name: `--node-name`, else `NODE_NAME` (set it from the downward API,
/// `fieldRef: spec.nodeName`; the host name is not always the node name, e.g. on EKS).
pub fn node_name(flag: Option<&str>) -> anyhow::Result<String> {
    let name = flag
        .map(str::to_string)
        .or_else(|| std::env::var("NODE_NAME").ok())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(anyhow!(
            "Kubernetes mode needs this node's name: set NODE_NAME from the downward API (fieldRef spec.nodeName) or pass --node-name"
        ));
    }
    Ok(name)
}

/// A client from the pod's service account, or from kubeconfig when run outside a cluster.
pub async fn client() -> anyhow::Result<Client> {
    let config = if in_cluster() {
        Config::incluster().context("reading the in-cluster service account configuration")?
    } else {
        Config::infer()
            .await
            .context("no in-cluster service account and no usable kubeconfig")?
    };
    Client::try_from(config).context("building the Kubernetes API client")
}

/// Connects, then keeps `index` up to date in a background task until the runtime stops.
/// Fails only on what retrying cannot fix (no credentials, no configuration); an unreachable
/// API server is retried in the background, and lookups miss until the first list arrives.
pub async fn start(node_name: &str, index: PodIndex) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = client().await?;
    info!("watching the pods of node {node_name} through the Kubernetes API");
    let node_name = node_name.to_string();
    Ok(tokio::spawn(
        async move { follow(client, &node_name, index).await },
    ))
}

/// Applies the watch of this node's pods to `index`; returns only if the stream ends (it does not).
pub async fn follow(client: Client, node_name: &str, index: PodIndex) {
    let pods: Api<WatchedPod> = Api::all(client);
    // Lists are served from the API server's watch cache (resourceVersion=0), not a quorum read
    // of etcd: that matters when every node of a large cluster relists at once. kube sends
    // resourceVersion=0 only without a page size, and one node's pods fit in one page anyway.
    let mut config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node_name}"))
        .any_semantic();
    config.page_size = None;
    let mut events = watcher(pods, config).default_backoff().boxed();
    let mut failing = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if failing {
                    info!("Kubernetes pod watch recovered");
                    failing = false;
                }
                apply(&index, event);
            }
            Err(err) => {
                // The watcher retries by itself (with backoff); say so once, not per retry.
                if !failing {
                    warn!("Kubernetes pod watch failing, retrying: {err}");
                    failing = true;
                }
            }
        }
    }
}

fn apply(index: &PodIndex, event: watcher::Event<WatchedPod>) {
    match event {
        watcher::Event::Init => index.relist_start(),
        watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => index.apply(&pod),
        watcher::Event::InitDone => {
            index.relist_done();
            info!(
                "Kubernetes pod index synced: {} pods on this node",
                index.live_pods()
            );
        }
        watcher::Event::Delete(pod) => index.delete(&pod),
    }
}

#[cfg(test)]
mod tests;
