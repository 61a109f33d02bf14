use super::*;

const FIXTURES: &str = include_str!("../fixtures/cgroup_paths.txt");

fn expected(text: &str) -> Option<Container> {
    if text == "none" {
        return None;
    }
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [runtime, id, uid, qos] = fields[..] else {
        panic!("bad expectation {text:?}")
    };
    let runtime = [
        Runtime::Containerd,
        Runtime::CriO,
        Runtime::Docker,
        Runtime::Podman,
        Runtime::Other,
    ]
    .into_iter()
    .find(|r| r.label() == runtime)
    .unwrap_or_else(|| panic!("unknown runtime {runtime}"));
    let qos = [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort]
        .into_iter()
        .find(|q| q.label() == qos);
    let pod_uid = (uid != "-").then(|| uid.to_string());
    Some(Container {
        runtime,
        container_id: id.to_string(),
        pod_uid,
        qos,
    })
}

#[test]
fn fixture_paths_parse_as_expected() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for (number, line) in FIXTURES.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, want) = line
            .rsplit_once(" | ")
            .unwrap_or_else(|| panic!("line {}: no ` | `", number + 1));
        let got = parse(path);
        if got != expected(want) {
            failures.push(format!(
                "line {}: {path}\n  want {want}\n  got  {got:?}",
                number + 1
            ));
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} fixtures failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 50, "only {checked} fixtures");
}

#[test]
fn proc_cgroup_prefers_the_v2_line_then_any_v1_line() {
    let id_v1 = "a".repeat(64);
    let id_v2 = "b".repeat(64);
    let hybrid = format!("12:memory:/docker/{id_v1}\n1:name=systemd:/docker/{id_v1}\n0::/\n");
    assert_eq!(
        parse_proc_cgroup(&hybrid).map(|c| c.container_id),
        Some(id_v1.clone())
    );
    let both = format!("12:memory:/docker/{id_v1}\n0::/system.slice/docker-{id_v2}.scope\n");
    assert_eq!(parse_proc_cgroup(&both).map(|c| c.container_id), Some(id_v2));
    assert_eq!(
        parse_proc_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
        None
    );
    assert_eq!(parse_proc_cgroup(""), None);
}

#[test]
fn this_process_cgroup_parses_without_panicking() {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
    for line in text.lines() {
        let _ = parse(line);
    }
    // Whatever this machine is (a container or not), the answer must be consistent line by line.
    let whole = parse_proc_cgroup(&text);
    if let Some(container) = &whole {
        assert!(is_container_id(&container.container_id));
    }
    eprintln!("/proc/self/cgroup -> {whole:?}");
}

#[test]
fn odd_input_is_not_a_container() {
    for path in [
        "",
        "/",
        "//",
        "garbage",
        "::",
        "0::",
        "x:y:/docker/",
        "/docker",
        "/../../..",
        "/kubepods/pod/",
    ] {
        assert_eq!(parse(path), None, "{path:?}");
    }
}

#[test]
fn display_names_runtime_id_pod_and_qos() {
    let container = Container {
        runtime: Runtime::Containerd,
        container_id: "c".repeat(64),
        pod_uid: Some("21636369-8b52-4b4a-97b7-50923ceb3ffd".into()),
        qos: Some(Qos::Burstable),
    };
    assert_eq!(
        container.to_string(),
        format!(
            "containerd://{} pod=21636369-8b52-4b4a-97b7-50923ceb3ffd qos=burstable",
            "c".repeat(64)
        )
    );
}
