//! On real cgroups this test creates under the machine's cgroup2 mount (root only).

use std::{path::PathBuf, process::Command, time::Duration};

use super::*;
use crate::enrich::attribution::cgroup::{Qos, Runtime};
use crate::enrich::attribution::pods::tests::{LIST, WEB, WEB_UID};

/// A kubepods/containerd-shaped cgroup pair, removed on drop (even when the test fails).
struct TestCgroup {
    pod: PathBuf,
    leaf: PathBuf,
    path: String,
}

impl TestCgroup {
    /// `None` where cgroups cannot be made (not root, or no cgroup2 mounted), after saying so: a
    /// failure under `CI=true`.
    fn create(tag: &str, pod_uid: &str, container_id: &str) -> Option<TestCgroup> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(root) = paths::cgroup2_mounts(&mountinfo).into_iter().next() else {
            crate::skip::skipped("no cgroup2 mount");
            return None;
        };
        let pod_dir = format!(
            "rstwatch-test-{}-{tag}-kubepods-burstable-pod{}.slice",
            std::process::id(),
            pod_uid.replace('-', "_")
        );
        let leaf_dir = format!("cri-containerd-{container_id}.scope");
        let pod = root.join(&pod_dir);
        if let Err(err) = std::fs::create_dir(&pod) {
            crate::skip::skipped(format_args!(
                "cannot create a cgroup under {} ({err}); run as root",
                root.display()
            ));
            return None;
        }
        let leaf = pod.join(&leaf_dir);
        let cgroup = TestCgroup {
            pod,
            leaf,
            path: format!("/{pod_dir}/{leaf_dir}"),
        };
        std::fs::create_dir(&cgroup.leaf).expect("creating the container-level cgroup");
        Some(cgroup)
    }

    fn id(&self) -> u64 {
        paths::cgroup_id(&self.leaf).unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A cgroup can only be removed once empty; the tests' children are reaped before this.
        let _ = std::fs::remove_dir(&self.leaf);
        let _ = std::fs::remove_dir(&self.pod);
    }
}

const CONTAINER: &str = "3f9a1c7e5b2d4f608a1c3e5b7d9f1a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f";
const POD_UID: &str = "7d1e6a52-3c4b-4f8e-9a0d-1b2c3d4e5f60";

#[test]
fn a_real_cgroup_resolves_by_handle_and_by_walk_and_parses() {
    let Some(cgroup) = TestCgroup::create("resolve", POD_UID, CONTAINER) else {
        return;
    };
    let id = cgroup.id();

    let mut by_handle = CgroupPaths::open(Limits::default()).unwrap();
    assert_eq!(by_handle.resolve(id).as_deref(), Some(cgroup.path.as_str()));
    assert_eq!(
        by_handle.stats().scans,
        0,
        "the handle lookup should have sufficed"
    );

    let walk_only = Limits {
        by_handle: false,
        ..Limits::default()
    };
    let mut by_walk = CgroupPaths::open(walk_only).unwrap();
    assert_eq!(by_walk.resolve(id).as_deref(), Some(cgroup.path.as_str()));
    assert_eq!(by_walk.stats().scans, 1);

    let container = cgroup::parse(&cgroup.path).expect("the test cgroup parses as a container");
    assert_eq!(container.runtime, Runtime::Containerd);
    assert_eq!(container.container_id, CONTAINER);
    assert_eq!(container.pod_uid.as_deref(), Some(POD_UID));
    assert_eq!(container.qos, Some(Qos::Burstable));
}

#[test]
fn the_kernel_reports_the_same_path_for_a_process_in_it() {
    let Some(cgroup) = TestCgroup::create("proc", POD_UID, CONTAINER) else {
        return;
    };
    let mut child = Command::new("sleep").arg("30").spawn().expect("spawning sleep");
    std::fs::write(cgroup.leaf.join("cgroup.procs"), child.id().to_string())
        .expect("moving the child into the cgroup");
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        proc_cgroup.lines().any(|l| l == format!("0::{}", cgroup.path)),
        "{proc_cgroup}"
    );
    assert_eq!(
        cgroup::parse_proc_cgroup(&proc_cgroup).map(|c| c.container_id),
        Some(CONTAINER.to_string())
    );
}

#[test]
fn describe_names_container_and_pod_and_forgets_nothing_it_should_not() {
    // The recorded list's web pod, in a real cgroup shaped as containerd would make it.
    let Some(cgroup) = TestCgroup::create("describe", WEB_UID, WEB) else {
        return;
    };
    let pods = PodIndex::default();
    let list: kube::core::ObjectList<pods::object::WatchedPod> = serde_json::from_str(LIST).unwrap();
    pods.relist_start();
    list.items.iter().for_each(|pod| pods.apply(pod));
    pods.relist_done();

    let attribution = Attribution::open(Some(pods)).unwrap();
    let workload = attribution
        .describe(cgroup.id())
        .expect("describing the test cgroup");
    assert_eq!(workload.cgroup_path, cgroup.path);
    assert_eq!(
        workload.container.as_ref().map(|c| c.container_id.as_str()),
        Some(WEB)
    );
    assert_eq!(
        workload.pod,
        pods::tests::pod_ref("default", "web-7d4b9c6f5-x2x9q", Some("web"))
    );

    // Removed: an id already resolved keeps its answer (late events of a dead container)...
    let id = cgroup.id();
    drop(cgroup);
    assert_eq!(attribution.describe(id).map(|w| w.pod.is_some()), Some(true));
    // ...and one never seen before resolves to nothing, without walking the tree.
    let mut fresh = CgroupPaths::open(Limits::default()).unwrap();
    assert_eq!(fresh.resolve(id), None);
    assert_eq!(fresh.stats().scans, 0);
    assert_eq!(attribution.describe(0), None);
}

#[test]
fn describe_without_kubernetes_or_outside_containers() {
    let attribution = match Attribution::open(None) {
        Ok(attribution) => attribution,
        Err(e) => return crate::skip::skipped(format_args!("no cgroup2 mount: {e:#}")),
    };
    // This process's own cgroup (here: the v2 root or a session scope): a path, no container.
    let root = attribution.paths.lock().unwrap().root().to_path_buf();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a v2 line");
    let id = paths::cgroup_id(&root.join(own.trim_start_matches('/'))).unwrap();
    let workload = attribution
        .describe(id)
        .expect("describing this process's cgroup");
    assert_eq!(workload.cgroup_path, own);
    assert_eq!(workload.pod, None);

    let Some(cgroup) = TestCgroup::create("nokube", POD_UID, CONTAINER) else {
        return;
    };
    let workload = attribution.describe(cgroup.id()).unwrap();
    assert_eq!(
        workload.container.map(|c| c.container_id),
        Some(CONTAINER.to_string())
    );
    assert_eq!(workload.pod, None, "no pod names without Kubernetes mode");
}

#[test]
fn the_hot_path_is_cheap_once_resolved() {
    let Some(cgroup) = TestCgroup::create("hot", POD_UID, CONTAINER) else {
        return;
    };
    let attribution = Attribution::open(Some(PodIndex::default())).unwrap();
    let id = cgroup.id();
    attribution.describe(id).unwrap();
    let lookups = attribution.paths.lock().unwrap().stats().handle_lookups;
    let started = std::time::Instant::now();
    for _ in 0..100_000 {
        assert!(attribution.describe(id).is_some());
    }
    let per_call = started.elapsed() / 100_000;
    assert_eq!(
        attribution.paths.lock().unwrap().stats().handle_lookups,
        lookups,
        "hits did I/O"
    );
    eprintln!("describe() on a hit: {per_call:?}");
    assert!(
        per_call < Duration::from_micros(20),
        "describe() took {per_call:?} on a hit"
    );
}

#[test]
fn attribution_can_be_shared_with_the_event_reader() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Attribution>();
    shareable::<PodIndex>();
}
