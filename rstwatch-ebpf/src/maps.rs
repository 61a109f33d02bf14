//! The maps shared with the daemon, and the per-event bookkeeping around them.

use aya_ebpf::{
    bindings::BPF_ANY,
    macros::map,
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use crate::read::conf;
use rstwatch_common::{
    ConnInfo, CountKey, ErrorKey, FlowKey, ListenerKey, Owner, ResetEvent, SocketErrorEvent, lost,
};

/// Exact reset counts by classifier inputs and service port; summed over CPUs in userspace.
#[map]
pub static COUNTS: PerCpuHashMap<CountKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// Where `count` puts a reset whose key no longer fits in COUNTS: the same key without port,
/// owner and cgroup (one per set of classifier inputs, a few hundred at most). A map of its own,
/// so that a flood of distinct ports or owners, which fills COUNTS, cannot take its room: counts
/// by cause stay exact however full COUNTS is.
#[map]
pub static COUNTS_OTHER: PerCpuHashMap<CountKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);

/// Per-connection memory keyed by socket address: birth time, passive open, prior state.
/// LRU so it stays bounded under any churn; entries are replaced when an address is reused.
#[map]
pub static CONN: LruHashMap<u64, ConnInfo> = LruHashMap::with_max_entries(65536, 0);

/// Owners of listening sockets, for the children they hand out in softirq.
#[map]
pub static LISTENERS: LruHashMap<ListenerKey, Owner> = LruHashMap::with_max_entries(16384, 0);

/// Owners of connections that closed first and live on as time-wait sockets, by 4-tuple.
#[map]
pub static CLOSED_FLOWS: LruHashMap<FlowKey, Owner> = LruHashMap::with_max_entries(65536, 0);

/// Segments the local firewall just rejected, keyed by (sender = local, receiver = remote), with
/// the time: a reset arriving for that flow right after came from the firewall, not from TCP.
#[map]
pub static REJECTED: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(4096, 0);

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

/// Where an event is assembled: too big for the 512-byte BPF stack.
#[map]
static SCRATCH: PerCpuArray<ResetEvent> = PerCpuArray::with_max_entries(1, 0);

/// The last reset this CPU traced: the socket error the kernel reports right after it (same CPU,
/// same call chain) belongs to it. The error tracepoint has no socket pointer, so match by flow.
#[map]
static LAST_RESET: PerCpuArray<LastReset> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastReset {
    pub flow: FlowKey,
    pub ts_ns: u64,
    pub skaddr: u64,
    pub owner: Owner,
    pub owner_known: u32,
    pub port: u16,
    pub _pad: u16,
}

/// The last receive_reset this CPU saw on a closing socket; see `take_last_receive`.
#[map]
static LAST_RECEIVE: PerCpuArray<LastReceive> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastReceive {
    pub sk: u64,
    pub ts_ns: u64,
    pub key: CountKey,
}

/// The kernel's own receive_reset and the reset it then sends run back to back on one CPU, in one
/// softirq; anything older than this is a different story.
const SAME_PATH_NS: u64 = 1_000_000;

#[inline(always)]
pub fn scratch_event() -> Option<&'static mut ResetEvent> {
    let ev = SCRATCH.get_ptr_mut(0)?;
    unsafe {
        core::ptr::write_bytes(ev, 0, 1);
        Some(&mut *ev)
    }
}

#[inline(always)]
pub fn count(key: &CountKey) {
    if let Some(value) = COUNTS.get_ptr_mut(key) {
        unsafe { *value += 1 };
        return;
    }
    // A new key; if another CPU inserted it meanwhile, BPF_ANY only sets this CPU's slot, which
    // was 0, so nothing is lost either way.
    if COUNTS.insert(key, &1, BPF_ANY as u64).is_ok() {
        return;
    }
    // Full: keep the count exact by cause at the cost of the port and the owner.
    bump_lost(lost::COUNT_MAP_FULL);
    let fallback = without_port_and_owner(key);
    if let Some(value) = COUNTS_OTHER.get_ptr_mut(&fallback) {
        unsafe { *value += 1 };
    } else if COUNTS_OTHER.insert(&fallback, &1, BPF_ANY as u64).is_err() {
        bump_lost(lost::COUNT_UNRECORDED);
    }
}

#[inline(always)]
fn without_port_and_owner(key: &CountKey) -> CountKey {
    CountKey { port: 0, comm: [0; 16], cgroup_id: 0, ..*key }
}

/// Take back one count for `key` on this CPU (the per-CPU slot may go below zero when summed
/// alone; userspace only ever reads the sum over CPUs, which stays exact). A key that did not fit
/// in COUNTS was counted in COUNTS_OTHER.
#[inline(always)]
pub fn uncount(key: &CountKey) {
    if let Some(value) = COUNTS.get_ptr_mut(key) {
        unsafe { *value = (*value).wrapping_sub(1) };
    } else if let Some(value) = COUNTS_OTHER.get_ptr_mut(&without_port_and_owner(key)) {
        unsafe { *value = (*value).wrapping_sub(1) };
    }
}

/// The daemon drains the ring buffer on a short timer: a wakeup per record costs more than it buys.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// This CPU's event budget for the current second.
#[map]
static BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Budget {
    second: u64,
    used: u32,
    _pad: u32,
}

/// In a reset storm, details of every reset would cost the daemon a core; counts never depend
/// on events, so past the budget only the loss is counted.
#[inline(always)]
fn within_budget(now_ns: u64) -> bool {
    let limit = conf!(events_per_cpu_per_second);
    if limit == 0 {
        return true;
    }
    let Some(budget) = BUDGET.get_ptr_mut(0) else { return true };
    let budget = unsafe { &mut *budget };
    let second = now_ns / 1_000_000_000;
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

#[inline(always)]
pub fn emit(ev: &ResetEvent) {
    if within_budget(ev.ts_ns) && EVENTS.output::<ResetEvent>(ev, BPF_RB_NO_WAKEUP).is_err() {
        bump_lost(lost::RING_BUFFER_FULL);
    }
}

#[inline(always)]
pub fn emit_error(ev: &SocketErrorEvent) {
    if within_budget(ev.ts_ns) && EVENTS.output::<SocketErrorEvent>(ev, BPF_RB_NO_WAKEUP).is_err() {
        bump_lost(lost::RING_BUFFER_FULL);
    }
}

#[inline(always)]
pub fn count_error(key: &ErrorKey) {
    if let Some(value) = ERRORS.get_ptr_mut(key) {
        unsafe { *value += 1 };
        return;
    }
    if ERRORS.insert(key, &1, BPF_ANY as u64).is_ok() {
        return;
    }
    bump_lost(lost::COUNT_MAP_FULL);
    let fallback = ErrorKey { errno: key.errno, ..ErrorKey::default() };
    if let Some(value) = ERRORS_OTHER.get_ptr_mut(&fallback) {
        unsafe { *value += 1 };
    } else if ERRORS_OTHER.insert(&fallback, &1, BPF_ANY as u64).is_err() {
        bump_lost(lost::COUNT_UNRECORDED);
    }
}

#[inline(always)]
pub fn remember_last_reset(last: &LastReset) {
    let _ = LAST_RESET.set(0, last, 0);
}

/// The reset this CPU just traced, if it is on `flow` and recent enough to be the same story.
#[inline(always)]
pub fn last_reset_on(flow: &FlowKey, now_ns: u64) -> Option<LastReset> {
    let last = unsafe { *LAST_RESET.get_ptr(0)? };
    (last.flow == *flow && now_ns.wrapping_sub(last.ts_ns) <= SAME_PATH_NS).then_some(last)
}

#[inline(always)]
fn bump_lost(index: u32) {
    if let Some(value) = LOST.get_ptr_mut(index) {
        unsafe { *value += 1 };
    }
}

#[inline(always)]
pub fn remember_last_receive(last: &LastReceive) {
    let _ = LAST_RECEIVE.set(0, last, 0);
}

/// The receive_reset this CPU just traced for `sk`, if it was on the same kernel path.
#[inline(always)]
pub fn take_last_receive(sk: u64, now_ns: u64) -> Option<LastReceive> {
    let slot = LAST_RECEIVE.get_ptr_mut(0)?;
    let last = unsafe { *slot };
    if last.sk != sk || now_ns.wrapping_sub(last.ts_ns) > SAME_PATH_NS {
        return None;
    }
    unsafe { (*slot).sk = 0 };
    Some(last)
}
