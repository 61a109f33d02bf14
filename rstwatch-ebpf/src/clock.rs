//! The programs' clocks. Births, per-CPU notes, windows and the event budget are kept in
//! jiffies: `bpf_jiffies64` is one load (the verifier inlines it on 64-bit JITs), where
//! `bpf_ktime_get_ns` cost about 45 ns per call on the 6.18 VM (kvm-clock), as much as a whole
//! state-change run. Only an event handed to userspace pays for a nanosecond timestamp, which
//! orders it there and links a socket error to its reset.

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_ns};

use crate::read::conf;

#[inline(always)]
pub fn jiffies() -> u64 {
    unsafe { bpf_jiffies64() }
}

/// CLOCK_MONOTONIC, for an event's `ts_ns` only.
#[inline(always)]
pub fn event_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// Jiffies in a second (CONFIG_HZ, from the daemon); never 0.
#[inline(always)]
pub fn second() -> u64 {
    (conf!(hz) as u64).max(1)
}

/// Was `stamp` (in jiffies) taken at most `window` jiffies ago?
#[inline(always)]
pub fn within(stamp: u64, window: u64) -> bool {
    jiffies().wrapping_sub(stamp) <= window
}
