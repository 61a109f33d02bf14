//! How a reset is written out: one JSON object per line (stable field names, for log pipelines
//! and jq) or one human line (for a terminal), plus the per-cause rate limit for event files.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{causes::Cause, events::Reset};

/// Maps the kernel's monotonic clock (event stamps) to wall-clock time.
#[derive(Clone, Copy)]
pub struct WallClock {
    realtime_minus_monotonic_ns: i128,
}

impl WallClock {
    pub fn now() -> WallClock {
        let realtime = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
        WallClock { realtime_minus_monotonic_ns: realtime - crate::events::monotonic_ns() as i128 }
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
    pub pid: u32,
    pub tid: u32,
    pub comm: &'a str,
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
}

impl<'a> JsonEvent<'a> {
    pub fn new(reset: &'a Reset, clock: &WallClock) -> JsonEvent<'a> {
        JsonEvent {
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
            pid: reset.tgid,
            tid: reset.pid,
            comm: &reset.comm,
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
        }
    }
}

pub fn json_line(reset: &Reset, clock: &WallClock) -> String {
    serde_json::to_string(&JsonEvent::new(reset, clock)).expect("JsonEvent always serializes")
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
    let names: Vec<_> = NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, name)| *name).collect();
    if names.is_empty() { "none".into() } else { names.join("|") }
}

/// One line for a person: when, which way, why, between whom, who, and the connection's life.
pub fn human_line(reset: &Reset, clock: &WallClock) -> String {
    let time = humantime::format_rfc3339_millis(clock.wall(reset.monotonic_ns)).to_string();
    let clock_time = time.get(11..23).unwrap_or(&time);
    let arrow = match reset.direction {
        crate::causes::Direction::Sent => "->",
        crate::causes::Direction::Received => "<-",
    };
    let mut line = format!(
        "{clock_time} {:<8} {:<27} {} {arrow} {}  {}[{}] {}",
        reset.direction.label(),
        reset.cause.label(),
        reset.local,
        reset.remote,
        if reset.comm.is_empty() { "-" } else { &reset.comm },
        reset.tgid,
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
    part("unread", (reset.unread_bytes > 0).then(|| format!("{}B", reset.unread_bytes)));
    part("unsent", (reset.unsent_bytes > 0).then(|| format!("{}B", reset.unsent_bytes)));
    part("trigger", reset.trigger.map(|(flags, payload)| format!("{}+{payload}B", tcp_flags(flags))));
    part("reason", reset.reason.clone());
    line
}

fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 1.0 { format!("{:.0}ms", secs * 1000.0) } else { format!("{secs:.1}s") }
}

/// At most `per_second` events per cause in any one-second window; the rest are counted.
pub struct RateLimiter {
    per_second: u32,
    windows: HashMap<Cause, (u64, u32)>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter { per_second, windows: HashMap::new() }
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
