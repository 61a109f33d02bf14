//! Which container and pod a socket's owner ran in, from the cgroup id the kernel recorded.
//!
//! cgroup id → path (`paths`) → container id, pod UID, QoS (`cgroup`) → namespace, pod and
//! container name (`pods`, Kubernetes mode only). Each id is resolved and parsed once; after
//! that `describe` is a mutex, a hash lookup and, with Kubernetes, a read lock and two more.

pub mod cgroup;
pub mod paths;
pub mod pods;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

pub use cgroup::Container;
pub use paths::{CgroupPaths, Limits};
pub use pods::{PodIndex, PodRef};

/// What a reset's owner ran in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// `None` for processes outside any container (host services, user sessions).
    pub container: Option<Container>,
    /// `None` outside Kubernetes mode, or when the pod is not (yet) in the index.
    pub pod: Option<PodRef>,
    /// Relative to the cgroup2 mount, e.g. `/system.slice/ssh.service`.
    pub cgroup_path: String,
}

struct Resolved {
    path: Arc<str>,
    container: Option<Container>,
}

pub struct Attribution {
    paths: Mutex<CgroupPaths>,
    /// Parsed once per id; bounded like the path cache it mirrors.
    parsed: Mutex<HashMap<u64, Arc<Resolved>>>,
    max_entries: usize,
    pods: Option<PodIndex>,
}

impl Attribution {
    /// Attribution on this host's cgroup2 mount; `pods` in Kubernetes mode.
    pub fn open(pods: Option<PodIndex>) -> anyhow::Result<Attribution> {
        Ok(Attribution::new(CgroupPaths::open(Limits::default())?, pods))
    }

    pub fn new(paths: CgroupPaths, pods: Option<PodIndex>) -> Attribution {
        let max_entries = paths.limits().max_entries;
        Attribution {
            paths: Mutex::new(paths),
            parsed: Mutex::default(),
            max_entries,
            pods,
        }
    }

    /// `None` when the id cannot be resolved: 0 (no owner recorded), a cgroup already removed,
    /// or one created since the last walk while walks are rate-limited.
    pub fn describe(&self, cgroup_id: u64) -> Option<Workload> {
        let resolved = self.resolve(cgroup_id)?;
        let pod = match (&self.pods, &resolved.container) {
            (
                Some(pods),
                Some(Container {
                    pod_uid: Some(uid),
                    container_id,
                    ..
                }),
            ) => pods.lookup(uid, container_id),
            _ => None,
        };
        Some(Workload {
            container: resolved.container.clone(),
            pod,
            cgroup_path: resolved.path.to_string(),
        })
    }

    fn resolve(&self, cgroup_id: u64) -> Option<Arc<Resolved>> {
        if cgroup_id == 0 {
            return None;
        }
        if let Some(hit) = self
            .parsed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cgroup_id)
        {
            return Some(hit.clone());
        }
        let path = self
            .paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resolve(cgroup_id)?;
        let resolved = Arc::new(Resolved {
            container: cgroup::parse(&path),
            path,
        });
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if parsed.len() >= self.max_entries {
            parsed.clear();
        }
        parsed.insert(cgroup_id, resolved.clone());
        Some(resolved)
    }
}

#[cfg(test)]
mod tests;
