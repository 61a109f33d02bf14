//! The part of a Pod the index needs, as the API server sends it.
//!
//! Deserializing only these fields (serde skips the rest of each object) leaves k8s-openapi's
//! decoders for the whole PodSpec/PodStatus tree out of the binary (about 1 MB) and does less
//! work per watch event than decoding whole pods, on every node of the cluster.

use std::borrow::Cow;

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedPod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub status: Option<PodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub container_statuses: Option<Vec<ContainerStatus>>,
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
    pub ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    /// `containerd://<64 hex>`, `cri-o://…`, `docker://…`; absent until the container is created.
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
    pub last_state: Option<ContainerState>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ContainerState {
    pub terminated: Option<Terminated>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Terminated {
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

/// Core v1 `pods`: what kube needs to build the list and watch URLs.
impl kube::Resource for WatchedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
