//! Pod UID → namespace, pod name and container names, for the pods on this node.
//!
//! Filled by the API watch in `watch` (a list, then a stream of changes), read on the event path:
//! a lookup is a read lock and two hash probes.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

pub mod object;
pub mod watch;

use object::{ContainerStatus, WatchedPod};

/// Which workload a container belongs to, as Kubernetes names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub pod: String,
    /// `None` when the pod is known but the container is not (yet) in its status: the
    /// sandbox ("pause") container, or one that started after the last status update we saw.
    pub container: Option<String>,
}

/// kubelet gives a static pod a UID of its own (the one in the cgroup path); the API server's
/// mirror of it has another UID and carries the kubelet's in this annotation.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// How long a deleted pod stays resolvable: connections of a terminating pod are reset around
/// the time its deletion reaches us, and those are the resets worth naming.
pub const DEFAULT_DELETED_GRACE: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct PodEntry {
    namespace: String,
    name: String,
    /// Container id (64 hex, no `containerd://`) → container name.
    containers: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct Index {
    /// Keyed by every UID the pod's cgroups may carry (API UID and, for mirror pods, kubelet's).
    by_uid: HashMap<String, (Arc<PodEntry>, Option<Instant>)>,
    /// Keys seen since the last `Init`, to find the pods a relist no longer has.
    relist: Option<HashSet<String>>,
    synced: bool,
}

#[derive(Clone, Debug)]
pub struct PodIndex {
    inner: Arc<RwLock<Index>>,
    deleted_grace: Duration,
}

impl Default for PodIndex {
    fn default() -> Self {
        PodIndex::new(DEFAULT_DELETED_GRACE)
    }
}

impl PodIndex {
    pub fn new(deleted_grace: Duration) -> PodIndex {
        PodIndex {
            inner: Arc::default(),
            deleted_grace,
        }
    }

    pub fn lookup(&self, pod_uid: &str, container_id: &str) -> Option<PodRef> {
        let index = self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (entry, deleted) = index.by_uid.get(pod_uid)?;
        if deleted.is_some_and(|at| at.elapsed() > self.deleted_grace) {
            return None;
        }
        Some(PodRef {
            namespace: entry.namespace.clone(),
            pod: entry.name.clone(),
            container: entry.containers.get(container_id).cloned(),
        })
    }

    /// True once a full list has been applied: before that, a miss means "not loaded yet".
    #[cfg_attr(not(test), allow(dead_code))] // for a readiness check in Kubernetes mode
    pub fn is_synced(&self) -> bool {
        self.read(|index| index.synced)
    }

    /// Pods known and not deleted (a mirror pod, indexed under two UIDs, counts once).
    pub fn live_pods(&self) -> usize {
        self.read(|index| {
            let live = index.by_uid.values().filter(|(_, deleted)| deleted.is_none());
            live.map(|(entry, _)| Arc::as_ptr(entry))
                .collect::<HashSet<_>>()
                .len()
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        f(&self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn write<T>(&self, f: impl FnOnce(&mut Index) -> T) -> T {
        let mut index = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Purging here keeps the index bounded by the pods alive within the grace period.
        let grace = self.deleted_grace;
        index
            .by_uid
            .retain(|_, (_, deleted)| deleted.is_none_or(|at| at.elapsed() <= grace));
        f(&mut index)
    }

    /// A pod was added or changed (or listed: `relisting`).
    pub(crate) fn apply(&self, pod: &WatchedPod) {
        let Some(entry) = entry(pod) else { return };
        let entry = Arc::new(entry);
        self.write(|index| {
            for key in keys(pod) {
                if let Some(seen) = index.relist.as_mut() {
                    seen.insert(key.clone());
                }
                index.by_uid.insert(key, (entry.clone(), None));
            }
        });
    }

    pub(crate) fn delete(&self, pod: &WatchedPod) {
        let now = Instant::now();
        self.write(|index| {
            for key in keys(pod) {
                if let Some((_, deleted)) = index.by_uid.get_mut(&key) {
                    deleted.get_or_insert(now);
                }
            }
        });
    }

    /// A (re)list starts: what it does not mention by `relist_done` is gone.
    pub(crate) fn relist_start(&self) {
        self.write(|index| index.relist = Some(HashSet::new()));
    }

    pub(crate) fn relist_done(&self) {
        let now = Instant::now();
        self.write(|index| {
            let seen = index.relist.take().unwrap_or_default();
            for (key, (_, deleted)) in index.by_uid.iter_mut() {
                if !seen.contains(key) {
                    deleted.get_or_insert(now);
                }
            }
            index.synced = true;
        });
    }
}

fn keys(pod: &WatchedPod) -> Vec<String> {
    let meta = &pod.metadata;
    let mirror = meta.annotations.as_ref().and_then(|a| a.get(MIRROR_ANNOTATION));
    meta.uid
        .iter()
        .chain(mirror)
        .filter(|uid| !uid.is_empty())
        .cloned()
        .collect()
}

fn entry(pod: &WatchedPod) -> Option<PodEntry> {
    let meta = &pod.metadata;
    let (namespace, name) = (meta.namespace.clone()?, meta.name.clone()?);
    let mut containers = HashMap::new();
    if let Some(status) = &pod.status {
        let statuses = [
            &status.container_statuses,
            &status.init_container_statuses,
            &status.ephemeral_container_statuses,
        ];
        for status in statuses.into_iter().flatten().flatten() {
            for id in container_ids(status) {
                containers.insert(id.to_string(), status.name.clone());
            }
        }
    }
    Some(PodEntry {
        namespace,
        name,
        containers,
    })
}

/// The running instance and the previous one: a restarted container's old sockets can still be
/// reset as they are torn down.
fn container_ids(status: &ContainerStatus) -> impl Iterator<Item = &str> {
    let previous = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.container_id.as_ref());
    status
        .container_id
        .iter()
        .chain(previous)
        .map(|id| strip_scheme(id))
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`, as in the cgroup path.
fn strip_scheme(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, id)| id)
}

#[cfg(test)]
pub(crate) mod tests;
