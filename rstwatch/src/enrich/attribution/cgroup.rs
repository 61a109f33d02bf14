//! Container id, pod UID and QoS class read from a cgroup path.
//!
//! Runtimes and kubelet name cgroups after what they run, so the path alone says which container
//! (and which pod) a process belongs to, with no runtime socket to query. The layouts covered are
//! in `fixtures/cgroup_paths.txt`; anything else parses to `None` rather than to a guess.

use std::fmt;

/// Which runtime created the container, as far as the path tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// A bare 64-hex directory (cgroupfs driver): the path does not name the runtime.
    Other,
}

impl Runtime {
    pub fn label(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Other => "other",
        }
    }
}

/// Kubernetes QoS class, from the kubepods level the pod sits under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn label(self) -> &'static str {
        match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Container {
    pub runtime: Runtime,
    /// 64 lowercase hex digits, as in the CRI's `containerID` after `containerd://` etc.
    pub container_id: String,
    /// As the API server shows it: dashed UUID, or 32 hex digits for a static pod.
    pub pod_uid: Option<String>,
    pub qos: Option<Qos>,
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.runtime.label(), self.container_id)?;
        if let Some(uid) = &self.pod_uid {
            write!(f, " pod={uid}")?;
        }
        if let Some(qos) = self.qos {
            write!(f, " qos={}", qos.label())?;
        }
        Ok(())
    }
}

/// Parses a cgroup path (`/kubepods/...`) or a `/proc/<pid>/cgroup` line (`12:memory:/kubepods/...`).
///
/// The innermost container wins: with nested runtimes (kind nodes are Docker containers running
/// containerd) the workload is the deepest one, and its pod is the pod level just above it.
pub fn parse(path: &str) -> Option<Container> {
    let path = strip_proc_prefix(path);
    let mut in_kubepods = false;
    let mut pod: Option<(String, Option<Qos>)> = None;
    let mut found = None;
    let mut parent = "";
    for segment in path
        .split('/')
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
    {
        in_kubepods |= segment.contains("kubepods");
        if let Some(this_pod) = in_kubepods.then(|| pod_segment(parent, segment)).flatten() {
            pod = Some(this_pod);
        } else if let Some((runtime, id)) = container_segment(parent, segment) {
            // A pod level seen before an outer container belongs to nobody inside it.
            let (pod_uid, qos) = pod.take().map_or((None, None), |(uid, qos)| (Some(uid), qos));
            found = Some(Container {
                runtime,
                container_id: id.to_string(),
                pod_uid,
                qos,
            });
        }
        parent = segment;
    }
    found
}

/// Parses the whole of `/proc/<pid>/cgroup`: the v2 line (`0::`) first, since that is the
/// hierarchy bpf_get_current_cgroup_id reports, then v1 lines in order (hybrid and v1 hosts,
/// where runtimes using the cgroupfs driver leave the v2 path at `/`).
// Not on the event path (it needs /proc/<pid>/cgroup read): for hosts whose runtime only uses
// v1 hierarchies, where the v2 id the kernel records says nothing about the container.
#[cfg_attr(not(test), allow(dead_code))]
pub fn parse_proc_cgroup(text: &str) -> Option<Container> {
    let lines = || text.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .filter(|l| l.starts_with("0::"))
        .chain(lines().filter(|l| !l.starts_with("0::")))
        .find_map(parse)
}

/// `hierarchy-id:controllers:path` → `path`; a plain path is returned as it is.
fn strip_proc_prefix(line: &str) -> &str {
    if line.starts_with('/') {
        return line;
    }
    let mut fields = line.splitn(3, ':');
    match (fields.next(), fields.next(), fields.next()) {
        (Some(id), Some(_), Some(path)) if id.bytes().all(|b| b.is_ascii_digit()) => path,
        _ => line,
    }
}

/// `kubepods-burstable-pod<uid_with_underscores>.slice` (systemd driver, possibly prefixed as in
/// kind's `kubelet-kubepods-...`) or `pod<uid>` (cgroupfs driver, QoS from the parent directory).
fn pod_segment(parent: &str, segment: &str) -> Option<(String, Option<Qos>)> {
    if let Some(stem) = segment.strip_suffix(".slice") {
        let mut tokens = stem.rsplit('-');
        let uid = pod_uid(tokens.next()?.strip_prefix("pod")?)?;
        let qos = match tokens.next()? {
            "burstable" => Some(Qos::Burstable),
            "besteffort" => Some(Qos::BestEffort),
            "kubepods" => Some(Qos::Guaranteed),
            _ => None,
        };
        return Some((uid, qos));
    }
    let uid = pod_uid(segment.strip_prefix("pod")?)?;
    let qos = match parent {
        "burstable" => Some(Qos::Burstable),
        "besteffort" => Some(Qos::BestEffort),
        "kubepods" => Some(Qos::Guaranteed),
        _ => None,
    };
    Some((uid, qos))
}

/// systemd cannot have `-` inside a unit name component, so kubelet writes the UID with `_`.
/// Static pods have a 32-hex UID (the config hash kubelet assigns), which stays as it is.
fn pod_uid(raw: &str) -> Option<String> {
    let uid = raw.replace('_', "-").to_ascii_lowercase();
    let groups: Vec<&str> = uid.split('-').collect();
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| hex(g));
    let static_pod = uid.len() == 32 && hex(&uid);
    (uuid || static_pod).then_some(uid)
}

fn container_segment<'a>(parent: &str, segment: &'a str) -> Option<(Runtime, &'a str)> {
    let stem = segment.strip_suffix(".scope").unwrap_or(segment);
    const PREFIXES: [(&str, Runtime); 5] = [
        ("cri-containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    // `crio-conmon-<id>` and `libpod-conmon-<id>` are the runtime's monitor, not the container:
    // they fail the hex check and so parse to nothing.
    let (runtime, id) = PREFIXES
        .iter()
        .find_map(|(prefix, runtime)| stem.strip_prefix(prefix).map(|id| (*runtime, id)))
        .unwrap_or_else(|| {
            (
                if parent == "docker" {
                    Runtime::Docker
                } else {
                    Runtime::Other
                },
                stem,
            )
        });
    is_container_id(id).then_some((runtime, id))
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests;
