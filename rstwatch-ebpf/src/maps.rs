//! The maps shared with the daemon, and the per-event bookkeeping around them.
//!
//! Userspace opens them by name: the names in `rstwatch_common::probes::maps` must stay the names
//! of these statics (aya names a map after its static).

use crate::{clock, read::conf, words};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use rstwatch_common::{
    ConnInfo, CountKey, ErrorKey, FlowKey, ListenerKey, Owner, ResetEvent, SocketErrorEvent, lost,
};

/// Exact reset counts by classifier inputs and service port; summed over CPUs in userspace.
#[map]
pub static COUNTS: PerCpuHashMap<CountKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// The service ports that have counts of their own, first come first served (the daemon sizes
/// it to `--max-ports`); resets on other ports are counted as port 0 with PORT_CAPPED. Capping
/// here rather than at scrape time keeps a flood of ports from filling COUNTS and every scrape
/// from reading tens of thousands of keys.
#[map]
pub static PORT_LABELS: HashMap<u16, u8> = HashMap::with_max_entries(65536, 0);

/// `count::port_labelled`'s answers, one bit per port: labelled in the first PORT_WORDS words, capped
/// in the next PORT_WORDS.
#[map]
pub static PORT_ANSWERS: Array<u64> = Array::with_max_entries(2 * PORT_WORDS, 0);
pub const PORT_WORDS: u32 = 65536 / 64;

/// Where `count` puts a reset whose key no longer fits in COUNTS: the same key without port (one
/// per set of classifier inputs and owner), or failing that without owner too (one per set of
/// classifier inputs, a few hundred at most). A map of its own, so that a flood of distinct
/// ports, which fills COUNTS, cannot take its room: counts by cause stay exact however full
/// COUNTS is, and they keep their owner.
#[map]
pub static COUNTS_OTHER: PerCpuHashMap<CountKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Per-connection memory of the classic tracepoint programs, keyed by socket address: birth
/// time, passive open, prior state, owner. LRU so it stays bounded under any churn; entries are
/// replaced when an address is reused.
#[map]
pub static CONN: LruHashMap<u64, ConnInfo> = LruHashMap::with_max_entries(65536, 0);

/// The same memory for the tp_btf programs, keyed by socket cookie: a ring of the most recent
/// connections in a plain array (see `conn::ring::slot_index`). A hash map insert for every connection
/// costs several times a whole program run; an array slot costs a few stores. Cookies are never
/// reused, and a time-wait socket keeps its connection's cookie, so its owner is found there too.
#[map]
pub static CONNS: Array<ConnSlot> = Array::with_max_entries(CONN_SLOTS, 0);
pub const CONN_SLOTS: u32 = 65536;

/// One connection in `CONNS`, 64 bytes. Array values start 56 bytes into a cache line here (the
/// map's header is 312 bytes on 6.18), so a slot's tag shares the previous slot's line and the rest
/// fills the next: with slots written in cookie order, remembering a connection costs one new line.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnSlot {
    /// `cookie << 8 | slot_flag::*`; 0 while a writer fills the slot.
    pub tag: u64,
    /// `jiffies` when the connection was born.
    pub birth_jiffies: u64,
    /// Valid with `slot_flag::OWNER_KNOWN` only.
    pub owner: Owner,
}

const _: () = assert!(size_of::<ConnSlot>() == 64);

pub mod slot_flag {
    /// Accepted from a listener (the owner is then the listener's, looked up when needed).
    pub const PASSIVE: u64 = 1;
    /// Born by connect() or listen() in its owner's task, which `owner` holds.
    pub const OWNER_KNOWN: u64 = 2;
}

/// tp_btf programs: the state a socket left when it moved to CLOSE, as `cookie << 4 | state`
/// (states fit in 4 bits, cookies in 60): one 8-byte store that no reader can see half-written.
/// Most active resets are traced right after that move, in the same call.
#[map]
pub static CLOSE_NOTES: Array<u64> = Array::with_max_entries(CLOSE_NOTE_SLOTS, 0);
pub const CLOSE_NOTE_SLOTS: u32 = 4096;

/// Owners of listening sockets, for the children they hand out in softirq.
#[map]
pub static LISTENERS: LruHashMap<ListenerKey, Owner> = LruHashMap::with_max_entries(16384, 0);

/// Owners of connections that closed first and live on as time-wait sockets, by 4-tuple.
#[map]
pub static CLOSED_FLOWS: LruHashMap<FlowKey, Owner> = LruHashMap::with_max_entries(65536, 0);

/// Segments the local firewall just rejected, keyed by (sender = local, receiver = remote), with
/// the jiffies when: a reset arriving for that flow right after came from the firewall, not from
/// TCP.
#[map]
pub static REJECTED: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(4096, 0);

/// When (jiffies) the firewall last rejected a segment (any flow): while nothing was rejected
/// recently, received resets skip the REJECTED lookup. Plain stores from any CPU; a lost race only costs
/// one lookup more or less within the window.
#[map]
pub static LAST_REJECT: Array<u64> = Array::with_max_entries(1, 0);

/// Exact counts of errors queued on sockets because of resets, by errno, port and owner.
#[map]
pub static ERRORS: PerCpuHashMap<ErrorKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Errors whose key no longer fits in ERRORS, without port and owner (one key per errno), as
/// COUNTS_OTHER is for COUNTS.
#[map]
pub static ERRORS_OTHER: PerCpuHashMap<ErrorKey, u64> = PerCpuHashMap::with_max_entries(64, 0);

/// Event details for userspace. The daemon resizes it with `--ring-buffer-size`.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// What could not be delivered or recorded, by `rstwatch_common::lost` index.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::LEN, 0);

/// Classic programs only: the last reset this CPU traced. The socket error the kernel reports
/// right after it (same CPU, same call chain) belongs to it; the classic error tracepoint has no
/// socket pointer, so it matches by flow and time. A program that interrupts in between can only
/// make that match miss (the error is then counted without owner), never mix two resets.
#[map]
static LAST_RESET: PerCpuArray<LastReset> = PerCpuArray::with_max_entries(NOTE_WAYS, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastReset {
    pub flow: FlowKey,
    pub jiffies: u64,
    pub skaddr: u64,
    pub owner: Owner,
    pub owner_known: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Classic programs only: the last receive_reset this CPU saw on a closing socket; see
/// `take_last_receive` (the tp_btf programs keep it in the socket's own storage).
#[map]
static LAST_RECEIVE: PerCpuArray<LastReceive> = PerCpuArray::with_max_entries(NOTE_WAYS, 0);

/// Per-CPU notes are spread over slots by socket: a program that interrupts between the write
/// and the read (a softirq during a process-context receive) lands in another slot unless its
/// socket hashes to the same one, and even then the socket check makes it a miss, never a mix.
const NOTE_WAYS: u32 = 8;

/// The slot of a flow's note, by its ports (the classic error program knows no socket).
#[inline(always)]
fn flow_slot(local_port: u16, remote_port: u16) -> u32 {
    note_slot(((local_port as u64) << 16 | remote_port as u64) << 6)
}

/// `socket` is what `Conns::identity` names it by.
#[inline(always)]
fn note_slot(socket: u64) -> u32 {
    ((socket >> 6) as u32 ^ socket as u32) & (NOTE_WAYS - 1)
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastReceive {
    /// The socket, as `Conns::identity` names it.
    pub socket: u64,
    pub jiffies: u64,
    pub key: CountKey,
}

/// The kernel's own receive_reset and the reset it then sends run back to back on one CPU, in one
/// softirq: a note is read in the jiffy it was written, or the next if the tick fell in between.
/// The socket (or flow) in the note is what tells two stories apart; this only ages notes out.
const SAME_PATH_JIFFIES: u64 = 1;

/// The daemon drains the ring buffer on a short timer: a wakeup per record costs more than it buys.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// This CPU's event budget for the current second.
#[map]
static BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Budget {
    /// `jiffies / HZ` when the budget was last used.
    second: u64,
    used: u32,
    _pad: u32,
}

/// In a reset storm, details of every reset would cost the daemon a core; counts never depend
/// on events, so past the budget only the loss is counted. Taken before an event is filled, so
/// that resets past it skip what only the event needs.
#[inline(always)]
pub fn take_event_budget() -> bool {
    let limit = conf!(events_per_cpu_per_second);
    if limit == 0 {
        return true;
    }
    let Some(budget) = BUDGET.get_ptr_mut(0) else {
        return true;
    };
    let budget = unsafe { &mut *budget };
    let second = clock::jiffies() / clock::second();
    if budget.second != second {
        budget.second = second;
        budget.used = 0;
    }
    if budget.used >= limit {
        bump_lost(lost::OVER_EVENT_BUDGET);
        return false;
    }
    budget.used += 1;
    true
}

/// An event within the budget (`take_event_budget`) to userspace.
#[inline(always)]
pub fn send_event(ev: &ResetEvent) {
    if EVENTS.output::<ResetEvent>(ev, BPF_RB_NO_WAKEUP).is_err() {
        bump_lost(lost::RING_BUFFER_FULL);
    }
}

/// A socket error within the budget (`take_event_budget`) to userspace.
#[inline(always)]
pub fn send_error(ev: &SocketErrorEvent) {
    if EVENTS.output::<SocketErrorEvent>(ev, BPF_RB_NO_WAKEUP).is_err() {
        bump_lost(lost::RING_BUFFER_FULL);
    }
}

/// Note the reset just counted for the socket error that may follow (classic programs).
#[inline(always)]
pub fn remember_last_reset(ev: &ResetEvent) {
    let Some(last) = LAST_RESET.get_ptr_mut(flow_slot(ev.local_port, ev.remote_port)) else {
        return;
    };
    let last = unsafe { &mut *last };
    last.flow = crate::reset::flow_of(ev);
    last.jiffies = clock::jiffies();
    last.skaddr = ev.skaddr;
    words::copy(&mut last.owner, &ev.owner);
    last.owner_known = (ev.key.facts & rstwatch_common::fact::OWNER_KNOWN != 0) as u32;
    last.port = ev.key.port;
}

/// The reset this CPU just traced, if it is on `flow` and recent enough to be the same story.
#[inline(always)]
pub fn last_reset_on(flow: &FlowKey) -> Option<LastReset> {
    let last = unsafe { *LAST_RESET.get_ptr(flow_slot(flow.local_port, flow.remote_port))? };
    (last.flow == *flow && clock::within(last.jiffies, SAME_PATH_JIFFIES)).then_some(last)
}

#[inline(always)]
pub fn bump_lost(index: u32) {
    if let Some(value) = LOST.get_ptr_mut(index) {
        unsafe { *value += 1 };
    }
}

#[inline(always)]
pub fn remember_last_receive(socket: u64, key: &CountKey) {
    let Some(last) = LAST_RECEIVE.get_ptr_mut(note_slot(socket)) else {
        return;
    };
    let last = unsafe { &mut *last };
    last.socket = socket;
    last.jiffies = clock::jiffies();
    words::copy(&mut last.key, key);
}

/// The receive_reset this CPU just traced for `socket`, if it was on the same kernel path.
#[inline(always)]
pub fn take_last_receive(socket: u64) -> Option<&'static mut CountKey> {
    let last = unsafe { &mut *LAST_RECEIVE.get_ptr_mut(note_slot(socket))? };
    if last.socket != socket || !clock::within(last.jiffies, SAME_PATH_JIFFIES) {
        return None;
    }
    last.socket = 0;
    Some(&mut last.key)
}
