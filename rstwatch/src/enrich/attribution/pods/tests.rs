//! The index on its own, fed the recorded API objects directly (the watch test feeds them over HTTP).

use kube::core::{ObjectList, WatchEvent};

use super::*;

pub(crate) const WEB_UID: &str = "5f0c3e4a-9b1d-4c2e-8f7a-2d6b1e9c4a10";
pub(crate) const WEB: &str = "4b5e57f6eb2f42b9039b3d1e13929295f231749c510cbe341cd68036d9af97e2";
pub(crate) const ENVOY: &str = "84532b306f259587c364bd7301e0813963d5b84fd27c9338f0862dab8f0499d7";
pub(crate) const ENVOY_BEFORE_RESTART: &str =
    "097334284c7ff2e26a3421cdc4b7fd554c10b6bf234b48b0c4991f6d210d4cc1";
pub(crate) const MIGRATE: &str = "3bc801a33ea83df414e1aeb962a52412835be99db28668ec25de73fdd4733804";
pub(crate) const PAUSE: &str = "a75140826639ee8f9ae1b187989a845fd8277c8cbdc7fee7511f03e7bad69bf1";
pub(crate) const APISERVER_UID: &str = "8e3f1a2b-6c4d-4e5f-9a8b-7c6d5e4f3a21";
/// The static pod's own UID (kubelet's config hash), which is what its cgroups carry.
pub(crate) const APISERVER_STATIC_UID: &str = "0766913ef1743da4f4293c1bd0177af8";
pub(crate) const APISERVER: &str = "8fa8c3a431ee4c139617ddd7a142a179a95edab4f317a427a31eceab4c9d5d01";
pub(crate) const CART_UID: &str = "b7a6c5d4-e3f2-41a0-9b8c-7d6e5f4a3b32";
pub(crate) const CART: &str = "1c42ddc0285b9c25135be3bf345e6a041271b784b22a6f6cab6588dab93c5980";
pub(crate) const EXPORTER_UID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c43";
pub(crate) const EXPORTER: &str = "29b220d49cd6a1ed8396172f46fce4211ca0fa0d9926dee6710a289b6bd7a08e";
pub(crate) const WEB2_UID: &str = "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e54";
pub(crate) const WEB2: &str = "146d3146edc9c8f1640fdac0e4919b013daf8f409d1900ecc89f65d51b45a9f3";

pub(crate) const LIST: &str = include_str!("../fixtures/pod-list.json");
pub(crate) const RELIST: &str = include_str!("../fixtures/pod-relist.json");
pub(crate) const WATCH: &str = include_str!("../fixtures/pod-watch.jsonl");

pub(crate) fn pod_ref(namespace: &str, pod: &str, container: Option<&str>) -> Option<PodRef> {
    Some(PodRef {
        namespace: namespace.into(),
        pod: pod.into(),
        container: container.map(str::to_string),
    })
}

fn list(index: &PodIndex, json: &str) {
    let list: ObjectList<WatchedPod> = serde_json::from_str(json).expect("recorded pod list");
    index.relist_start();
    for pod in &list.items {
        index.apply(pod);
    }
    index.relist_done();
}

fn watch_events() -> Vec<WatchEvent<WatchedPod>> {
    WATCH
        .lines()
        .map(|line| serde_json::from_str(line).expect("recorded watch event"))
        .collect()
}

#[test]
fn listed_pods_resolve_by_uid_and_container_id() {
    let index = PodIndex::default();
    assert!(!index.is_synced());
    list(&index, LIST);
    assert!(index.is_synced());
    assert_eq!(index.live_pods(), 3);

    let web = |container| pod_ref("default", "web-7d4b9c6f5-x2x9q", container);
    assert_eq!(index.lookup(WEB_UID, WEB), web(Some("web")));
    assert_eq!(index.lookup(WEB_UID, ENVOY), web(Some("envoy")));
    assert_eq!(index.lookup(WEB_UID, ENVOY_BEFORE_RESTART), web(Some("envoy")));
    assert_eq!(index.lookup(WEB_UID, MIGRATE), web(Some("migrate")));
    // The sandbox is not in any status: pod known, container not.
    assert_eq!(index.lookup(WEB_UID, PAUSE), web(None));
    // Pending, no container id yet.
    assert_eq!(index.lookup(CART_UID, CART), pod_ref("shop", "cart-0", None));
    assert_eq!(index.lookup(EXPORTER_UID, EXPORTER), None);
}

#[test]
fn a_static_pod_resolves_by_the_uid_in_its_cgroup() {
    let index = PodIndex::default();
    list(&index, LIST);
    let apiserver = pod_ref("kube-system", "kube-apiserver-node-a", Some("kube-apiserver"));
    assert_eq!(index.lookup(APISERVER_STATIC_UID, APISERVER), apiserver);
    assert_eq!(index.lookup(APISERVER_UID, APISERVER), apiserver);
}

#[test]
fn watch_events_update_and_deleted_pods_linger_for_the_grace_period() {
    let index = PodIndex::new(Duration::from_millis(200));
    list(&index, LIST);
    for event in watch_events() {
        match event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) => index.apply(&pod),
            WatchEvent::Deleted(pod) => index.delete(&pod),
            WatchEvent::Bookmark(_) | WatchEvent::Error(_) => {}
        }
    }
    assert_eq!(
        index.lookup(EXPORTER_UID, EXPORTER),
        pod_ref("monitoring", "node-exporter-abcde", Some("node-exporter"))
    );
    assert_eq!(
        index.lookup(CART_UID, CART),
        pod_ref("shop", "cart-0", Some("cart"))
    );
    // Deleted, but its last connections' resets still get a name for a while.
    assert_eq!(
        index.lookup(WEB_UID, WEB),
        pod_ref("default", "web-7d4b9c6f5-x2x9q", Some("web"))
    );
    assert_eq!(index.live_pods(), 3);
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(index.lookup(WEB_UID, WEB), None);
    index.relist_start(); // any write purges what is past the grace period
    assert_eq!(
        index.inner.read().unwrap().by_uid.len(),
        4,
        "web's entry was not purged"
    );
}

#[test]
fn a_relist_forgets_pods_it_no_longer_has() {
    let index = PodIndex::new(Duration::ZERO);
    list(&index, LIST);
    list(&index, RELIST);
    assert_eq!(index.lookup(WEB_UID, WEB), None);
    assert_eq!(
        index.lookup(WEB2_UID, WEB2),
        pod_ref("default", "web-7d4b9c6f5-kq8zn", Some("web"))
    );
    assert_eq!(
        index.lookup(CART_UID, CART),
        pod_ref("shop", "cart-0", Some("cart"))
    );
    assert_eq!(
        index.lookup(APISERVER_STATIC_UID, APISERVER).map(|p| p.pod),
        Some("kube-apiserver-node-a".into())
    );
}

#[test]
fn container_ids_lose_their_runtime_scheme() {
    assert_eq!(strip_scheme("containerd://abc"), "abc");
    assert_eq!(strip_scheme("cri-o://abc"), "abc");
    assert_eq!(strip_scheme("docker://abc"), "abc");
    assert_eq!(strip_scheme("abc"), "abc");
}

#[test]
fn sparse_and_null_fields_decode() {
    for json in [
        r#"{"metadata":{"name":"p","namespace":"n","uid":"u"}}"#,
        r#"{"metadata":{"name":"p","namespace":"n","uid":"u"},"status":{}}"#,
        r#"{"metadata":{"name":"p","namespace":"n","uid":"u"},"status":{"containerStatuses":null}}"#,
        r#"{"metadata":{"name":"p","namespace":"n","uid":"u"},"status":{"containerStatuses":[{"name":"c","lastState":{}}]}}"#,
    ] {
        let pod: WatchedPod = serde_json::from_str(json).unwrap_or_else(|err| panic!("{json}: {err}"));
        let index = PodIndex::default();
        index.apply(&pod);
        assert_eq!(index.lookup("u", "x"), pod_ref("n", "p", None), "{json}");
    }
}
