//! Per-reset events from the ring buffer: decoded, classified, and with the kernel's own false
//! "received" resets filtered out.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use rstwatch_common::{
    EVENT_RESET, EVENT_SOCKET_ERROR, Owner, ResetEvent, SocketErrorEvent, event_flag, fact,
};
use tokio::io::unix::AsyncFd;

use crate::{
    attribution::{Attribution, Workload},
    causes::{Cause, Direction},
    classify::{classify, state_label},
    counts::Classifier,
    pairing::{Pairer, PeerEnd},
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

pub fn errno_name(errno: u16) -> &'static str {
    match errno as i32 {
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNABORTED => "ECONNABORTED",
        _ => "other",
    }
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
                .then(|| Duration::from_nanos(ev.ts_ns.saturating_sub(ev.birth_ns))),
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

/// Received resets on closing sockets may be the kernel's own (data on a closing orphan): the
/// sent reset that follows on the same socket says so. Hold them briefly until we know.
pub struct FalseReceiveFilter {
    held: VecDeque<(u64, ResetEvent)>,
}

/// A ring-buffer record.
#[derive(Clone, Copy)]
pub enum Record {
    Reset(ResetEvent),
    SocketError(SocketErrorEvent),
}

/// Both tracepoints fire in one softirq; the ring buffer delivers them together or nearly so.
const HOLD_NS: u64 = 50_000_000;

impl FalseReceiveFilter {
    pub fn new() -> Self {
        FalseReceiveFilter {
            held: VecDeque::new(),
        }
    }

    /// Feed one record; appends the records now known to be real, in order.
    pub fn push(&mut self, record: Record, out: &mut Vec<Record>) {
        let ev = match record {
            Record::Reset(ev) => ev,
            other => return out.push(other),
        };
        if ev.flags & event_flag::UNDID_FALSE_RECEIVE != 0 {
            self.held.retain(|(_, held)| held.skaddr != ev.skaddr);
        }
        self.release_older_than(ev.ts_ns, out);
        if ev.flags & event_flag::RECEIVE_WHILE_CLOSING != 0 {
            self.held.push_back((ev.ts_ns, ev));
        } else {
            out.push(Record::Reset(ev));
        }
    }

    /// Release what has been held long enough, given the current monotonic time.
    pub fn release_older_than(&mut self, now_ns: u64, out: &mut Vec<Record>) {
        while let Some((ts, _)) = self.held.front() {
            if now_ns.saturating_sub(*ts) < HOLD_NS {
                break;
            }
            out.push(Record::Reset(self.held.pop_front().expect("front exists").1));
        }
    }
}

pub fn jiffies_to_duration(jiffies: u32, hz: u32) -> Duration {
    // A "negative" difference is a stamp taken after the event (races on another CPU): call it 0.
    let jiffies = if (jiffies as i32) < 0 { 0 } else { jiffies as u64 };
    Duration::from_nanos(jiffies * 1_000_000_000 / hz.max(1) as u64)
}

fn later(a: u32, b: u32) -> u32 {
    if (a.wrapping_sub(b) as i32) >= 0 { a } else { b }
}

fn socket_addr(family: u16, addr: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if family == libc::AF_INET6 as u16 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    };
    SocketAddr::new(ip, port)
}

pub fn comm_text(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The ring buffer, read through the false-receive filter when the kernel wakes us and on a
/// short tick.
struct Drain {
    ring: AsyncFd<RingBuf<MapData>>,
    filter: FalseReceiveFilter,
    tick: tokio::time::Interval,
    /// The filter's output, handed on at once: a storm's drain never piles up here.
    ready: Vec<Record>,
}

impl Drain {
    fn new(ring: RingBuf<MapData>) -> anyhow::Result<Drain> {
        // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open for as long as it is registered.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|err| anyhow::anyhow!("polling the event ring buffer: {err}"))?;
        Ok(Drain {
            ring,
            filter: FalseReceiveFilter::new(),
            tick: tokio::time::interval(Duration::from_millis(25)),
            ready: Vec::new(),
        })
    }

    /// Wait for a wakeup or the tick, then hand every record now known to be real to `each`, in
    /// order. Returns how many records did not decode.
    async fn next(&mut self, mut each: impl FnMut(Record) -> anyhow::Result<()>) -> anyhow::Result<u64> {
        let Drain {
            ring,
            filter,
            tick,
            ready,
        } = self;
        // The programs write without waking us (BPF_RB_NO_WAKEUP): one wakeup per record cost the
        // daemon and the storming task a context switch each. Drain on the tick instead; a wakeup
        // still arrives if the kernel decides to send one.
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                let decode_errors = drain(guard.get_inner_mut(), filter, ready, &mut each)?;
                guard.clear_ready();
                Ok(decode_errors)
            }
            _ = tick.tick() => {
                let decode_errors = drain(ring.get_mut(), filter, ready, &mut each)?;
                filter.release_older_than(monotonic_ns(), ready);
                ready.drain(..).try_for_each(&mut each)?;
                Ok(decode_errors)
            }
        }
    }
}

/// Drain the ring buffer as events arrive, hand each batch of real resets to `sink` (with the
/// number of records that did not decode), and release held events on a short tick.
pub async fn read_events(
    ring: RingBuf<MapData>,
    decoder: Decoder,
    mut sink: impl FnMut(Vec<Observation>, u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut drain = Drain::new(ring)?;
    let mut linker = Linker::new();
    let mut pairer = Pairer::new();
    loop {
        // One read time for a whole drain (taken at its first record), as `Pairer::push` wants.
        let mut read_at = None;
        let decode_errors = drain
            .next(|record| {
                let observation = decoder.observation(record, &mut linker);
                pairer.push(observation, *read_at.get_or_insert_with(monotonic_ns));
                Ok(())
            })
            .await?;
        let now = read_at.unwrap_or_else(monotonic_ns);
        let mut observations = Vec::new();
        // Paired resets go out now, unpaired ones once their wait is over (on a later tick).
        pairer.release(now, &mut observations);
        if pairer.shrink_when_empty() {
            // The burst's events are freed by now (or on their way out); give their pages back.
            // SAFETY: glibc's malloc_trim only releases free heap pages.
            unsafe { libc::malloc_trim(0) };
        }
        if observations.is_empty() && decode_errors == 0 {
            continue;
        }
        sink(observations, decode_errors)?;
    }
}

/// What the metrics need of a daemon that writes no events: each reset's `Timing`, handed to
/// `sink` in batches (with the number of records that did not decode). No owner, no strings, no
/// pairing: in a storm this is the daemon's work for each reset of the event budget.
pub async fn read_timings(
    ring: RingBuf<MapData>,
    decoder: Decoder,
    mut sink: impl FnMut(&[Timing], u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    /// Enough to make a batch worth its lock, small enough to stay in the cache.
    const BATCH: usize = 256;
    let mut drain = Drain::new(ring)?;
    let mut timings = Vec::with_capacity(BATCH);
    loop {
        let decode_errors = drain
            .next(|record| {
                if let Record::Reset(ev) = record {
                    timings.push(decoder.timing(&ev));
                    if timings.len() == BATCH {
                        sink(&timings, 0)?;
                        timings.clear();
                    }
                }
                Ok(())
            })
            .await?;
        if !timings.is_empty() || decode_errors > 0 {
            sink(&timings, decode_errors)?;
            timings.clear();
        }
    }
}

/// Everything in the ring buffer now, through the filter to `each`; returns how many records did
/// not decode.
fn drain(
    ring: &mut RingBuf<MapData>,
    filter: &mut FalseReceiveFilter,
    ready: &mut Vec<Record>,
    each: &mut impl FnMut(Record) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut decode_errors = 0;
    while let Some(item) = ring.next() {
        match from_bytes(&item) {
            Some(ev) => {
                filter.push(ev, ready);
                ready.drain(..).try_for_each(&mut *each)?;
            }
            None => decode_errors += 1,
        }
    }
    Ok(decode_errors)
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A record from ring-buffer bytes; None if its kind or size is not ours (a build mismatch).
pub fn from_bytes(bytes: &[u8]) -> Option<Record> {
    fn read<T>(bytes: &[u8]) -> Option<T> {
        (bytes.len() >= size_of::<T>())
            .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }
    match read::<u32>(bytes)? {
        EVENT_RESET => read(bytes).map(Record::Reset),
        EVENT_SOCKET_ERROR => read(bytes).map(Record::SocketError),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
