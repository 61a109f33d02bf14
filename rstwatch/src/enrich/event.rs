//! One reset on its way through rstwatch, and the names it has at each stage:
//!
//! | stage | name | where |
//! |---|---|---|
//! | kernel → ring buffer | `ResetEvent` / `SocketErrorEvent` (wire structs) | rstwatch-common |
//! | decode | `Record` (one ring-buffer record) | `decode` |
//! | classify + enrich | `Reset` / `SocketError` (cause, owner, workload) | here |
//! | pair, export | `Observation` (a `Reset` or a `SocketError`), `peer` filled in by pairing | here, `enrich::pairing` |
//! | JSON line | `JsonEvent` | `export::output` |
//!
//! In the wire structs `Owner.pid` and `ResetEvent.pid` are the kernel's `pid`, i.e. a thread id,
//! and `tgid` is the process id; here they become `Process::tid` and `Process::pid`.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc, time::Duration};

use rstwatch_common::{Owner, ResetEvent, SocketErrorEvent, event_flag, fact};

use crate::{
    classify::{
        Classifier,
        causes::{Cause, Direction},
        classify, state_label,
    },
    decode::{Record, comm_text, jiffies_to_duration, later, long_jiffies_to_duration, socket_addr},
    enrich::{
        attribution::{Attribution, Workload},
        pairing::PeerEnd,
    },
};

/// One reset, as the daemon reports it.
#[derive(Clone, Debug)]
pub struct Reset {
    pub direction: Direction,
    pub cause: Cause,
    /// The kernel's `sk_rst_reason` name, where it gives one.
    pub reason: Option<String>,
    pub state: &'static str,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub service_port: u16,
    /// The socket's owner (the process that connected it or created its listener), if known.
    pub owner: Option<Process>,
    /// The task that was running when the kernel handled the reset (often not the owner).
    pub context: Process,
    /// The owner's container and pod, from its cgroup.
    pub workload: Option<Workload>,
    pub age: Option<Duration>,
    /// Time since the last segment from the peer.
    pub idle: Option<Duration>,
    /// Time since this side last sent data.
    pub since_last_send: Option<Duration>,
    pub bytes_received: Option<u64>,
    pub bytes_acked: Option<u64>,
    pub orphan: bool,
    pub linger_zero: bool,
    pub unread_bytes: u32,
    pub unsent_bytes: u32,
    /// Flags and payload length of the segment a sent reset answered.
    pub trigger: Option<(u8, u32)>,
    pub monotonic_ns: u64,
    pub skaddr: u64,
    /// The other end, when it is a socket on this host and its reset was seen too.
    pub peer: Option<PeerEnd>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    /// The process's name (its thread-group leader's), as in the `comm` label.
    pub comm: String,
    /// The name of the thread that acted (JVM and Tomcat pools name theirs); empty if unknown.
    pub thread: String,
    /// cgroup v2 id; 0 when not known (the context task's is not recorded).
    pub cgroup_id: u64,
}

impl Process {
    fn from_owner(owner: &Owner) -> Process {
        Process {
            pid: owner.tgid,
            tid: owner.pid,
            comm: comm_text(&owner.comm),
            thread: comm_text(&owner.thread_comm),
            cgroup_id: owner.cgroup_id,
        }
    }

    /// For the `comm` metric label: `none` without a socket, `unknown` with an unknown owner.
    pub fn label(owner: Option<&Process>, has_socket: bool) -> &str {
        match owner {
            Some(process) => &process.comm,
            None if has_socket => "unknown",
            None => "none",
        }
    }
}

/// An error the kernel queued on a socket because of a reset: what the application got.
#[derive(Clone, Debug)]
pub struct SocketError {
    pub errno: u16,
    pub service_port: u16,
    pub owner: Option<Process>,
    pub monotonic_ns: u64,
    /// The reset that caused it (same socket, just before), when seen.
    pub reset: Option<(Direction, Cause, u64)>,
}

/// What the ring buffer delivers, decoded. A `Reset` is boxed: it is ten times the size of a
/// `SocketError`, and observations move through the pairing queue by value.
#[derive(Clone, Debug)]
pub enum Observation {
    Reset(Box<Reset>),
    SocketError(SocketError),
}

/// One line per reset, for `RUST_LOG=debug`.
impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.3}s", d.as_secs_f64()));
        write!(
            f,
            "{} {} reason={} state={} {} -> {} port={} owner={:?} context={}({}) age={} idle={} since_send={} rx={:?} acked={:?} orphan={} linger0={} unread={} unsent={} trigger={:?} sk={:#x} t={}",
            self.direction.label(),
            self.cause,
            self.reason.as_deref().unwrap_or("-"),
            self.state,
            self.local,
            self.remote,
            self.service_port,
            self.owner,
            self.context.comm,
            self.context.pid,
            secs(self.age),
            secs(self.idle),
            secs(self.since_last_send),
            self.bytes_received,
            self.bytes_acked,
            self.orphan,
            self.linger_zero,
            self.unread_bytes,
            self.unsent_bytes,
            self.trigger,
            self.skaddr,
            self.monotonic_ns,
        )
    }
}

/// Builds a `Reset` (or `SocketError`) from a decoded `Record`: classifies it, converts its
/// times, and names its owner's workload. (Its name predates the stage folders: the bytes are
/// decoded in `decode`, this finishes the job.)
pub struct Decoder {
    pub classifier: Classifier,
    pub hz: u32,
    /// Names the owner's container (and pod, in Kubernetes mode) from its cgroup.
    pub attribution: Option<Arc<Attribution>>,
}

/// What the metrics need of a reset: the histograms' labels and durations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub direction: Direction,
    pub cause: Cause,
    pub idle: Option<Duration>,
    pub age: Option<Duration>,
}

impl Reset {
    pub fn timing(&self) -> Timing {
        Timing {
            direction: self.direction,
            cause: self.cause,
            idle: self.idle,
            age: self.age,
        }
    }
}

/// A reset's age, idle time and time since its last send, from the event's clocks.
struct Durations {
    age: Option<Duration>,
    idle: Option<Duration>,
    since_last_send: Option<Duration>,
}

impl Decoder {
    fn durations(&self, ev: &ResetEvent) -> Durations {
        let full = ev.key.facts & fact::FULL_SOCKET != 0;
        let jiffies = |stamp: u32| {
            (full && stamp != 0).then(|| jiffies_to_duration(ev.now_jiffies.wrapping_sub(stamp), self.hz))
        };
        Durations {
            age: (ev.flags & event_flag::BIRTH_KNOWN != 0)
                .then(|| long_jiffies_to_duration(ev.age_jiffies, self.hz)),
            idle: jiffies(later(ev.rcv_tstamp, ev.lrcvtime)),
            since_last_send: jiffies(ev.lsndtime),
        }
    }

    /// Only what the metrics need: no strings, no owner, no pairing (a daemon that writes no
    /// events decodes every reset of a storm's event budget this way).
    pub fn timing(&self, ev: &ResetEvent) -> Timing {
        let facts = self.classifier.facts(&ev.key);
        let Durations { age, idle, .. } = self.durations(ev);
        Timing {
            direction: facts.direction,
            cause: classify(&facts),
            idle,
            age,
        }
    }

    pub fn decode(&self, ev: &ResetEvent) -> Reset {
        let facts = self.classifier.facts(&ev.key);
        let full = ev.key.facts & fact::FULL_SOCKET != 0;
        let Durations {
            age,
            idle,
            since_last_send,
        } = self.durations(ev);
        Reset {
            direction: facts.direction,
            cause: classify(&facts),
            reason: facts
                .reason
                .and_then(|_| self.classifier.reason_names.get(&ev.key.reason).cloned()),
            state: state_label(facts.state_before()),
            local: socket_addr(ev.family, &ev.local_addr, ev.local_port),
            remote: socket_addr(ev.family, &ev.remote_addr, ev.remote_port),
            service_port: ev.key.port,
            owner: (ev.key.facts & fact::OWNER_KNOWN != 0).then(|| Process::from_owner(&ev.owner)),
            workload: (ev.key.facts & fact::OWNER_KNOWN != 0)
                .then(|| self.attribution.as_ref()?.describe(ev.owner.cgroup_id))
                .flatten(),
            // The running task's own comm: for the context, the thread is what is known.
            context: Process {
                pid: ev.tgid,
                tid: ev.pid,
                comm: comm_text(&ev.comm),
                thread: comm_text(&ev.comm),
                cgroup_id: 0,
            },
            age,
            idle,
            since_last_send,
            bytes_received: full.then_some(ev.bytes_received),
            bytes_acked: full.then_some(ev.bytes_acked),
            orphan: ev.key.facts & fact::ORPHAN != 0,
            linger_zero: ev.key.facts & fact::LINGER_ZERO != 0,
            unread_bytes: ev.unread_bytes,
            unsent_bytes: ev.unsent_bytes,
            trigger: (ev.key.facts & fact::TRIGGER != 0).then_some((ev.trigger_flags, ev.trigger_payload)),
            monotonic_ns: ev.ts_ns,
            skaddr: ev.skaddr,
            peer: None,
        }
    }
}

impl Decoder {
    pub fn decode_error(&self, ev: &SocketErrorEvent, linker: &Linker) -> SocketError {
        let known = ev.owner.comm[0] != 0 || ev.owner.tgid != 0;
        SocketError {
            errno: ev.key.errno,
            service_port: ev.key.port,
            owner: known.then(|| Process::from_owner(&ev.owner)),
            monotonic_ns: ev.ts_ns,
            reset: linker.find(ev.skaddr, ev.ts_ns),
        }
    }
}

impl Decoder {
    /// A record decoded in full, its socket error linked to the reset before it.
    pub fn observation(&self, record: Record, linker: &mut Linker) -> Observation {
        match record {
            Record::Reset(ev) => {
                let reset = self.decode(&ev);
                linker.remember(&reset);
                Observation::Reset(Box::new(reset))
            }
            Record::SocketError(ev) => Observation::SocketError(self.decode_error(&ev, linker)),
        }
    }
}

/// Remembers recent resets by socket, so the error an application gets links to its reset.
pub struct Linker {
    recent: VecDeque<(u64, u64, Direction, Cause)>,
}

/// The kernel queues the error in the same call chain as the reset: microseconds apart.
const LINK_NS: u64 = 1_000_000_000;
const LINK_MAX: usize = 4096;

impl Linker {
    pub fn new() -> Linker {
        Linker {
            recent: VecDeque::new(),
        }
    }

    pub fn remember(&mut self, reset: &Reset) {
        if reset.skaddr == 0 {
            return;
        }
        if self.recent.len() >= LINK_MAX {
            self.recent.pop_front();
        }
        self.recent
            .push_back((reset.skaddr, reset.monotonic_ns, reset.direction, reset.cause));
    }

    fn find(&self, skaddr: u64, ts_ns: u64) -> Option<(Direction, Cause, u64)> {
        if skaddr == 0 {
            return None;
        }
        self.recent
            .iter()
            .rev()
            .find(|(sk, ts, ..)| *sk == skaddr && ts_ns.saturating_sub(*ts) <= LINK_NS)
            .map(|(_, ts, direction, cause)| (*direction, *cause, *ts))
    }
}
