//! Stage 2, decode: ring-buffer bytes into typed records (`Record`, the wire structs of
//! rstwatch-common), with the kernel's own false "received" resets filtered out, and the plain
//! conversions of wire fields (comm arrays, errnos, jiffies, addresses) the later stages share.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use rstwatch_common::{EVENT_RESET, EVENT_SOCKET_ERROR, ResetEvent, SocketErrorEvent, event_flag};
use tokio::io::unix::AsyncFd;

pub fn errno_name(errno: u16) -> &'static str {
    match errno as i32 {
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNABORTED => "ECONNABORTED",
        _ => "other",
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

/// A span of jiffies that may exceed 2^32 (a connection's age: 49 days at HZ=1000).
pub fn long_jiffies_to_duration(jiffies: u64, hz: u32) -> Duration {
    let hz = hz.max(1) as u64;
    Duration::from_secs(jiffies / hz) + Duration::from_nanos(jiffies % hz * 1_000_000_000 / hz)
}

pub fn later(a: u32, b: u32) -> u32 {
    if (a.wrapping_sub(b) as i32) >= 0 { a } else { b }
}

pub fn socket_addr(family: u16, addr: &[u8; 16], port: u16) -> SocketAddr {
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
pub struct Drain {
    ring: AsyncFd<RingBuf<MapData>>,
    filter: FalseReceiveFilter,
    tick: tokio::time::Interval,
    /// The filter's output, handed on at once: a storm's drain never piles up here.
    ready: Vec<Record>,
}

impl Drain {
    pub fn new(ring: RingBuf<MapData>) -> anyhow::Result<Drain> {
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
    pub async fn next(&mut self, mut each: impl FnMut(Record) -> anyhow::Result<()>) -> anyhow::Result<u64> {
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
