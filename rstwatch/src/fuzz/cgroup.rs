//! cgroup paths.

use proptest::prelude::*;

use super::config;
use crate::enrich::attribution::cgroup;

// ---------------------------------------------------------------------------------------------
// cgroup paths

fn hex(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(b"0123456789abcdefABCDEFxg".to_vec()), len)
        .prop_map(|bytes| String::from_utf8(bytes).expect("ASCII"))
}

/// A pod UID as kubelet writes it (dashes or underscores, any case), or something close to one.
fn uid() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            hex(8..9),
            hex(4..5),
            hex(4..5),
            hex(4..5),
            hex(12..13),
            prop::sample::select(vec!["-", "_"])
        )
            .prop_map(|(a, b, c, d, e, sep)| [a, b, c, d, e].join(sep)),
        hex(30..35),
        "[0-9a-f_-]{0,40}",
    ]
}

fn container_id() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[0-9a-f]{64}", 1 => hex(60..68)]
}

/// One path segment: the shapes runtimes and kubelet create, and noise.
fn segment() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "kubepods",
        "kubepods.slice",
        "kubepods-burstable.slice",
        "kubepods-besteffort.slice",
        "burstable",
        "besteffort",
        "docker",
        "system.slice",
        "kubelet.slice",
        "kubelet-kubepods.slice",
        "container",
        ".",
        "..",
        "",
        "pod",
        ".slice",
        ".scope",
        "-",
        "crio-conmon-",
        "kubepods-",
        "é",
        ":",
        "0::",
    ])
    .prop_map(str::to_string);
    let prefix = prop::sample::select(vec![
        "cri-containerd-",
        "nerdctl-",
        "crio-",
        "docker-",
        "libpod-",
        "libpod-conmon-",
        "",
    ]);
    let suffix = prop::sample::select(vec![".scope", "", ".slice"]);
    let qos = prop::sample::select(vec![
        "kubepods-",
        "kubepods-burstable-",
        "kubepods-besteffort-",
        "kubelet-kubepods-",
        "x-",
        "",
    ]);
    prop_oneof![
        3 => fixed,
        3 => (prefix, container_id(), suffix).prop_map(|(p, id, s)| format!("{p}{id}{s}")),
        3 => (qos, uid(), prop::sample::select(vec![".slice", ""])).prop_map(|(q, uid, s)| format!("{q}pod{uid}{s}")),
        1 => any::<String>(),
    ]
}

fn cgroup_path() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec![
        "",
        "0::",
        "12:memory:",
        "1:name=systemd:",
        "x:y:",
        "::",
        "12:",
    ]);
    (prefix, prop::collection::vec(segment(), 0..12), any::<bool>()).prop_map(
        |(prefix, segments, leading)| {
            format!("{prefix}{}{}", if leading { "/" } else { "" }, segments.join("/"))
        },
    )
}

fn check_container(container: &cgroup::Container) {
    let id = &container.container_id;
    assert!(
        id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "container id {id:?}"
    );
    if let Some(uid) = &container.pod_uid {
        let groups: Vec<usize> = uid.split('-').map(str::len).collect();
        let hex = uid
            .bytes()
            .all(|b| b == b'-' || matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        assert!(
            hex && (groups == [8, 4, 4, 4, 12] || groups == [32]),
            "pod uid {uid:?}"
        );
    }
    let _ = container.to_string();
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn cgroup_paths_parse_to_well_formed_containers_or_nothing(path in cgroup_path()) {
        if let Some(container) = cgroup::parse(&path) {
            check_container(&container);
        }
        // A v2 line of /proc/<pid>/cgroup says the same as its path.
        if path.starts_with('/') {
            prop_assert_eq!(cgroup::parse(&format!("0::{path}")), cgroup::parse(&path));
        }
    }

    #[test]
    fn cgroup_parser_takes_any_text(text in any::<String>()) {
        if let Some(container) = cgroup::parse(&text) {
            check_container(&container);
        }
        if let Some(container) = cgroup::parse_proc_cgroup(&text) {
            check_container(&container);
        }
    }

    #[test]
    fn proc_cgroup_files_of_random_lines(lines in prop::collection::vec(cgroup_path(), 0..6)) {
        let text = lines.join("\n");
        let whole = cgroup::parse_proc_cgroup(&text);
        if let Some(container) = &whole {
            check_container(container);
        }
        // What the whole file yields comes from one of its lines.
        prop_assert!(whole.is_none() || lines.iter().any(|line| cgroup::parse(line.trim()) == whole));
    }
}
