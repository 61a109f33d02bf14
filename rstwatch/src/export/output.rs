//! How a reset is written out: one JSON object per line (stable field names, for log pipelines
//! and jq) or one human line (for a terminal), plus the per-cause rate limit for event files.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    classify::causes::Cause,
    decode::errno_name,
    enrich::event::{Observation, Reset},
};

/// Maps the kernel's monotonic clock (event stamps) to wall-clock time.
#[derive(Clone, Copy)]
pub struct WallClock {
    realtime_minus_monotonic_ns: i128,
}

impl WallClock {
    pub fn now() -> WallClock {
        let realtime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        WallClock {
            realtime_minus_monotonic_ns: realtime - crate::decode::monotonic_ns() as i128,
        }
    }

    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        let ns = (monotonic_ns as i128 + self.realtime_minus_monotonic_ns).max(0);
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

/// The JSON event. Field names are part of rstwatch's interface (README "Event stream"):
/// add fields, never rename or remove them.
#[derive(Serialize)]
pub struct JsonEvent<'a> {
    /// `reset`.
    pub event: &'static str,
    pub time: String,
    pub direction: &'static str,
    pub cause: &'static str,
    pub kernel_reason: Option<&'a str>,
    pub state: &'static str,
    pub local_addr: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
    pub service_port: u16,
    /// The socket's owner; null when not known. `comm` names the process, `thread` the thread
    /// (`tid`) that connected or listened.
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub comm: Option<&'a str>,
    pub thread: Option<&'a str>,
    pub cgroup_id: Option<u64>,
    /// The owner's container (64-hex id) and Kubernetes pod UID, from its cgroup; null outside.
    pub container_id: Option<&'a str>,
    pub pod_uid: Option<&'a str>,
    /// Kubernetes mode: the pod's namespace and name, and the container's name.
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
    pub container: Option<&'a str>,
    /// The task running when the kernel handled the reset.
    pub context_pid: u32,
    pub context_comm: &'a str,
    pub age_seconds: Option<f64>,
    pub idle_seconds: Option<f64>,
    pub since_last_send_seconds: Option<f64>,
    pub bytes_received: Option<u64>,
    pub bytes_acked: Option<u64>,
    pub orphan: bool,
    pub linger_zero: bool,
    pub unread_bytes: u32,
    pub unsent_bytes: u32,
    pub trigger_flags: Option<String>,
    pub trigger_payload_bytes: Option<u32>,
    /// The other end of the connection, when it is on this host and its reset was seen: its cause,
    /// kernel reason and owner. Counted causes stay this end's own.
    pub peer_cause: Option<&'static str>,
    pub peer_kernel_reason: Option<&'a str>,
    pub peer_pid: Option<u32>,
    pub peer_comm: Option<&'a str>,
}

impl<'a> JsonEvent<'a> {
    pub fn new(reset: &'a Reset, clock: &WallClock) -> JsonEvent<'a> {
        let container = reset.workload.as_ref().and_then(|w| w.container.as_ref());
        let pod = reset.workload.as_ref().and_then(|w| w.pod.as_ref());
        let peer_owner = reset.peer.as_ref().and_then(|p| p.owner.as_ref());
        JsonEvent {
            event: "reset",
            time: humantime::format_rfc3339_micros(clock.wall(reset.monotonic_ns)).to_string(),
            direction: reset.direction.label(),
            cause: reset.cause.label(),
            kernel_reason: reset.reason.as_deref(),
            state: reset.state,
            local_addr: reset.local.ip().to_string(),
            local_port: reset.local.port(),
            remote_addr: reset.remote.ip().to_string(),
            remote_port: reset.remote.port(),
            service_port: reset.service_port,
            pid: reset.owner.as_ref().map(|o| o.pid),
            tid: reset.owner.as_ref().map(|o| o.tid),
            comm: reset.owner.as_ref().map(|o| o.comm.as_str()),
            thread: reset.owner.as_ref().map(|o| o.thread.as_str()),
            cgroup_id: reset.owner.as_ref().map(|o| o.cgroup_id),
            container_id: container.map(|c| c.container_id.as_str()),
            pod_uid: container.and_then(|c| c.pod_uid.as_deref()),
            namespace: pod.map(|p| p.namespace.as_str()),
            pod: pod.map(|p| p.pod.as_str()),
            container: pod.and_then(|p| p.container.as_deref()),
            context_pid: reset.context.pid,
            context_comm: &reset.context.comm,
            age_seconds: reset.age.map(|d| d.as_secs_f64()),
            idle_seconds: reset.idle.map(|d| d.as_secs_f64()),
            since_last_send_seconds: reset.since_last_send.map(|d| d.as_secs_f64()),
            bytes_received: reset.bytes_received,
            bytes_acked: reset.bytes_acked,
            orphan: reset.orphan,
            linger_zero: reset.linger_zero,
            unread_bytes: reset.unread_bytes,
            unsent_bytes: reset.unsent_bytes,
            trigger_flags: reset.trigger.map(|(flags, _)| tcp_flags(flags)),
            trigger_payload_bytes: reset.trigger.map(|(_, payload)| payload),
            peer_cause: reset.peer.as_ref().map(|p| p.cause.label()),
            peer_kernel_reason: reset.peer.as_ref().and_then(|p| p.reason.as_deref()),
            peer_pid: peer_owner.map(|o| o.pid),
            peer_comm: peer_owner.map(|o| o.comm.as_str()),
        }
    }
}

/// The JSON line for an error the kernel queued on a socket because of a reset.
#[derive(Serialize)]
pub struct JsonSocketError<'a> {
    /// `socket_error`.
    pub event: &'static str,
    pub time: String,
    pub errno: &'static str,
    pub service_port: u16,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub comm: Option<&'a str>,
    pub thread: Option<&'a str>,
    pub cgroup_id: Option<u64>,
    /// The reset that caused it (same socket, just before), when seen.
    pub reset_direction: Option<&'static str>,
    pub reset_cause: Option<&'static str>,
    pub reset_time: Option<String>,
}

pub fn json_line(observation: &Observation, clock: &WallClock) -> String {
    let rfc3339 = |ns| humantime::format_rfc3339_micros(clock.wall(ns)).to_string();
    match observation {
        Observation::Reset(reset) => serde_json::to_string(&JsonEvent::new(reset, clock)),
        Observation::SocketError(error) => serde_json::to_string(&JsonSocketError {
            event: "socket_error",
            time: rfc3339(error.monotonic_ns),
            errno: errno_name(error.errno),
            service_port: error.service_port,
            pid: error.owner.as_ref().map(|o| o.pid),
            tid: error.owner.as_ref().map(|o| o.tid),
            comm: error.owner.as_ref().map(|o| o.comm.as_str()),
            thread: error.owner.as_ref().map(|o| o.thread.as_str()),
            cgroup_id: error.owner.as_ref().map(|o| o.cgroup_id),
            reset_direction: error.reset.map(|(direction, ..)| direction.label()),
            reset_cause: error.reset.map(|(_, cause, _)| cause.label()),
            reset_time: error.reset.map(|(.., ns)| rfc3339(ns)),
        }),
    }
    .expect("JSON events always serialize")
}

/// `SYN|ACK`-style names of a TCP flags byte.
pub fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x08, "PSH"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let names: Vec<_> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join("|")
    }
}

/// One line for a person.
pub fn human_line(observation: &Observation, clock: &WallClock) -> String {
    match observation {
        Observation::Reset(reset) => human_reset(reset, clock),
        Observation::SocketError(error) => {
            let time = humantime::format_rfc3339_millis(clock.wall(error.monotonic_ns)).to_string();
            let clock_time = time.get(11..23).unwrap_or(&time);
            let who = error
                .owner
                .as_ref()
                .map_or("unknown".to_string(), |o| format!("{}[{}]", o.comm, o.pid));
            let after = error.reset.map_or(String::new(), |(direction, cause, _)| {
                format!(" after {} {cause}", direction.label())
            });
            format!(
                "{clock_time} app-error {:<12} {who} port={}{after}",
                errno_name(error.errno),
                error.service_port
            )
        }
    }
}

/// When, which way, why, between whom, who, and the connection's life.
fn human_reset(reset: &Reset, clock: &WallClock) -> String {
    let time = humantime::format_rfc3339_millis(clock.wall(reset.monotonic_ns)).to_string();
    let clock_time = time.get(11..23).unwrap_or(&time);
    let arrow = match reset.direction {
        crate::classify::causes::Direction::Sent => "->",
        crate::classify::causes::Direction::Received => "<-",
    };
    let who = match &reset.owner {
        Some(owner) => {
            let place = reset
                .workload
                .as_ref()
                .map_or(String::new(), |w| match (&w.pod, &w.container) {
                    (Some(pod), _) => format!(" pod={}/{}", pod.namespace, pod.pod),
                    (None, Some(container)) => format!(
                        " container={}",
                        &container.container_id[..12.min(container.container_id.len())]
                    ),
                    _ => String::new(),
                });
            format!("{}{place}", process_name(owner))
        }
        None if reset.skaddr == 0 => "no-socket".to_string(),
        None => format!("unknown(in {}[{}])", reset.context.comm, reset.context.pid),
    };
    let mut line = format!(
        "{clock_time} {:<8} {:<27} {} {arrow} {}  {who} {}",
        reset.direction.label(),
        reset.cause.label(),
        reset.local,
        reset.remote,
        reset.state,
    );
    let mut part = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            line.push_str(&format!(" {name}={value}"));
        }
    };
    part("age", reset.age.map(seconds));
    part("idle", reset.idle.map(seconds));
    part("rx", reset.bytes_received.map(|b| format!("{b}B")));
    part("acked", reset.bytes_acked.map(|b| format!("{b}B")));
    part(
        "unread",
        (reset.unread_bytes > 0).then(|| format!("{}B", reset.unread_bytes)),
    );
    part(
        "unsent",
        (reset.unsent_bytes > 0).then(|| format!("{}B", reset.unsent_bytes)),
    );
    part(
        "trigger",
        reset
            .trigger
            .map(|(flags, payload)| format!("{}+{payload}B", tcp_flags(flags))),
    );
    part("reason", reset.reason.clone());
    if let Some(peer) = &reset.peer {
        let who = match (&peer.owner, peer.has_socket) {
            (Some(owner), _) => process_name(owner),
            (None, true) => "unknown".to_string(),
            (None, false) => "no-socket".to_string(),
        };
        // The arrow points the way the reset went: from its sender to us, or from us to the other end.
        let arrow = if reset.direction == crate::classify::causes::Direction::Received {
            "←"
        } else {
            "→"
        };
        line.push_str(&format!("  {arrow} {who} {}", peer.cause));
    }
    line
}

/// `java[4711]`, and the thread when it has a name of its own: `java[4711] thread=order-service-w/4730`.
fn process_name(process: &crate::enrich::event::Process) -> String {
    if process.thread.is_empty() || process.thread == process.comm {
        format!("{}[{}]", process.comm, process.pid)
    } else {
        format!(
            "{}[{}] thread={}/{}",
            process.comm, process.pid, process.thread, process.tid
        )
    }
}

fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 1.0 {
        format!("{:.0}ms", secs * 1000.0)
    } else {
        format!("{secs:.1}s")
    }
}

/// At most `per_second` events per cause in any one-second window; the rest are counted.
pub struct RateLimiter {
    per_second: u32,
    windows: HashMap<Cause, (u64, u32)>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            per_second,
            windows: HashMap::new(),
        }
    }

    /// Whether an event of `cause` at `monotonic_ns` may be written.
    pub fn allow(&mut self, cause: Cause, monotonic_ns: u64) -> bool {
        let second = monotonic_ns / 1_000_000_000;
        let (window, used) = self.windows.entry(cause).or_insert((second, 0));
        if *window != second {
            *window = second;
            *used = 0;
        }
        if *used >= self.per_second {
            return false;
        }
        *used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_is_per_cause_and_per_second() {
        let mut limiter = RateLimiter::new(2);
        let second = 1_000_000_000;
        assert!(limiter.allow(Cause::NoListener, 5 * second));
        assert!(limiter.allow(Cause::NoListener, 5 * second + 1));
        assert!(!limiter.allow(Cause::NoListener, 5 * second + 2));
        assert!(limiter.allow(Cause::PeerReset, 5 * second + 3));
        assert!(limiter.allow(Cause::NoListener, 6 * second));
    }

    #[test]
    fn tcp_flags_read_like_tcpdump() {
        assert_eq!(tcp_flags(0x12), "SYN|ACK");
        assert_eq!(tcp_flags(0x18), "ACK|PSH");
        assert_eq!(tcp_flags(0), "none");
    }
}
