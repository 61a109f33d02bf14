//! Both ends of a reset on this host (loopback, pods on one node, sidecars): the sent and the
//! received reset of one connection are seen microseconds apart, on mirrored 4-tuples. Pairing them
//! tells the receiver who reset it and why (`peer_cause`), and the sender who got it.
//!
//! The order is not fixed: for an active reset (close with SO_LINGER 0, a killed process) the
//! receiver's tracepoint runs in a softirq nested in the sender's transmit path, so the received
//! event comes first; for a passive one (a closed port, time-wait) the sent one does, and the ring
//! buffer may be drained between the two. So every reset waits, at most `HOLD_NS` after the daemon
//! read it (one drain tick more) and behind at most `MAX_HELD` others, for its partner; output
//! keeps the input order. Counters come from the kernel maps and are untouched:
//! pairing only adds fields to events.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use crate::{
    classify::causes::{Cause, Direction},
    enrich::event::{Observation, Process, Reset},
};

/// The other end of a reset on this host, as its own event saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEnd {
    pub cause: Cause,
    /// The kernel's reason, for a sent reset that has one.
    pub reason: Option<String>,
    pub owner: Option<Process>,
    /// False for a reset sent without a socket (nothing listens): no owner to name.
    pub has_socket: bool,
}

impl PeerEnd {
    fn of(reset: &Reset) -> PeerEnd {
        PeerEnd {
            cause: reset.cause,
            reason: reset.reason.clone(),
            owner: reset.owner.clone(),
            has_socket: reset.skaddr != 0,
        }
    }
}

/// Both events of one local reset are written within one softirq, well under a millisecond apart,
/// so the partner is in the same drain of the ring buffer or the next one. The wait bounds how late
/// an unpaired event (a remote peer) is passed on.
pub const HOLD_NS: u64 = 20_000_000;
/// Partners further apart than this are two different resets of a reused 4-tuple.
const PAIR_WINDOW_NS: u64 = 5_000_000;
/// Past this many waiting observations the oldest goes out at once (a storm).
const MAX_HELD: usize = 4096;
/// Resets already passed on, so that a partner arriving later (one held back by the
/// false-receive filter) still learns who the other end was.
const RECENT: usize = 1024;

type Flow = (SocketAddr, SocketAddr);

/// A dual-stack socket (a JVM's) reports IPv4 peers as `::ffff:a.b.c.d`; its partner, an IPv4
/// socket, as `a.b.c.d`.
fn flow(local: SocketAddr, remote: SocketAddr) -> Flow {
    let plain = |addr: SocketAddr| match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    };
    (plain(local), plain(remote))
}

struct Held {
    observation: Observation,
    /// When the daemon read it (CLOCK_MONOTONIC).
    arrived: u64,
    /// Nothing to wait for (paired, or not a reset): it goes out once everything before it has.
    paired: bool,
}

pub struct Pairer {
    held: VecDeque<Held>,
    /// Sequence number of `held[0]`; `waiting` refers to held resets by sequence number.
    first_seq: u64,
    /// Unpaired held resets by (direction, local, remote).
    waiting: HashMap<(Direction, Flow), u64>,
    /// The last `RECENT` released resets, by (direction, local, remote): a partner that arrives
    /// after its peer went out still learns of it. A map, not a list to scan: in a storm most
    /// resets are looked up here, thousands a second.
    recent: HashMap<(Direction, Flow), (u64, PeerEnd)>,
    /// `recent`'s keys (and times) in release order, to forget the oldest.
    recent_order: VecDeque<((Direction, Flow), u64)>,
}

impl Default for Pairer {
    fn default() -> Self {
        Pairer::new()
    }
}

impl Pairer {
    pub fn new() -> Pairer {
        Pairer {
            held: VecDeque::new(),
            first_seq: 0,
            waiting: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
        }
    }

    /// Take one observation in, read at `now_ns`. Push a whole drain of the ring buffer before
    /// calling `release`, so that partners in one drain always meet.
    pub fn push(&mut self, observation: Observation, now_ns: u64) {
        let held = match observation {
            Observation::Reset(mut reset) => {
                let paired = self.pair(&mut reset);
                if !paired {
                    let seq = self.first_seq + self.held.len() as u64;
                    self.waiting
                        .insert((reset.direction, flow(reset.local, reset.remote)), seq);
                }
                Held {
                    arrived: now_ns,
                    paired,
                    observation: Observation::Reset(reset),
                }
            }
            other => Held {
                arrived: now_ns,
                paired: true,
                observation: other,
            },
        };
        self.held.push_back(held);
    }

    /// Pass on, in order, everything at the front that is paired, is not a reset, or has waited
    /// `HOLD_NS` since it was read (or is pushed out by `MAX_HELD`).
    pub fn release(&mut self, now_ns: u64, out: &mut Vec<Observation>) {
        while let Some(front) = self.held.front() {
            let expired = now_ns.saturating_sub(front.arrived) >= HOLD_NS;
            if !(front.paired || expired || self.held.len() > MAX_HELD) {
                break;
            }
            let held = self.held.pop_front().expect("front exists");
            let seq = self.first_seq;
            self.first_seq += 1;
            if let Observation::Reset(reset) = &held.observation {
                let key = (reset.direction, flow(reset.local, reset.remote));
                if self.waiting.get(&key) == Some(&seq) {
                    self.waiting.remove(&key);
                }
                if self.recent_order.len() >= RECENT
                    && let Some((oldest, ts)) = self.recent_order.pop_front()
                    && self.recent.get(&oldest).is_some_and(|(seen, _)| *seen == ts)
                {
                    self.recent.remove(&oldest);
                }
                self.recent.insert(key, (reset.monotonic_ns, PeerEnd::of(reset)));
                self.recent_order.push_back((key, reset.monotonic_ns));
            }
            out.push(held.observation);
        }
    }

    /// Once a burst has gone out: give back the room it took (a storm fills the queue to
    /// `MAX_HELD`). Not for an ordinary drain's worth, so a steady stream does not pay for it
    /// every tick. True if there was room to give back.
    pub fn shrink_when_empty(&mut self) -> bool {
        if !self.held.is_empty() || self.held.capacity() <= 1024 {
            return false;
        }
        self.held.shrink_to(0);
        self.waiting.shrink_to(0);
        true
    }

    /// Find `reset`'s partner among the held resets (both learn of each other) or the recently
    /// released ones (only `reset` learns). True if it found one that is still held.
    fn pair(&mut self, reset: &mut Reset) -> bool {
        let partner_key = (opposite(reset.direction), flow(reset.remote, reset.local));
        if let Some(&seq) = self.waiting.get(&partner_key) {
            let index = seq.saturating_sub(self.first_seq) as usize;
            if let Some(Held {
                observation: Observation::Reset(partner),
                paired,
                ..
            }) = self.held.get_mut(index)
                && partner.monotonic_ns.abs_diff(reset.monotonic_ns) <= PAIR_WINDOW_NS
            {
                partner.peer = Some(PeerEnd::of(reset));
                reset.peer = Some(PeerEnd::of(partner));
                *paired = true;
                self.waiting.remove(&partner_key);
                return true;
            }
        }
        if let Some((_, peer)) = self
            .recent
            .get(&partner_key)
            .filter(|(ts, _)| ts.abs_diff(reset.monotonic_ns) <= PAIR_WINDOW_NS)
        {
            reset.peer = Some(peer.clone());
            // Its partner is gone already: nothing to wait for.
            return true;
        }
        false
    }
}

fn opposite(direction: Direction) -> Direction {
    match direction {
        Direction::Sent => Direction::Received,
        Direction::Received => Direction::Sent,
    }
}

#[cfg(test)]
mod tests;
