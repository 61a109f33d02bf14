//! Exact counts: every reset and socket error is counted in the kernel, by classifier inputs,
//! service port and owner, whatever happens to its event. When a key does not fit, it is counted
//! with less detail (without port, then without owner) and the loss of detail is counted too.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    maps::PerCpuHashMap,
};
use rstwatch_common::{CountKey, ErrorKey, extra_fact, lost};

use crate::{
    maps::{COUNTS, COUNTS_OTHER, ERRORS, ERRORS_OTHER, PORT_ANSWERS, PORT_LABELS, PORT_WORDS, bump_lost},
    read::conf,
};

#[inline(always)]
pub fn count(key: &mut CountKey) {
    // Inlined like everything else: LLVM outlines this closure into a BPF-to-BPF call otherwise.
    let counted = with_port_cap(
        key,
        #[inline(always)]
        |key| {
            if bump(&COUNTS, key, 1) {
                return true;
            }
            // Full (a flood of distinct owners fills it): keep the count exact by cause, and the
            // owner, at the cost of the port; failing that, of the owner too.
            bump_lost(lost::COUNT_MAP_FULL);
            without_port(key, |key| bump(&COUNTS_OTHER, key, 1))
        },
    );
    if !counted {
        bump_lost(lost::COUNT_UNRECORDED);
    }
}

/// Take back one count for `key` on this CPU (the per-CPU slot may go below zero when summed
/// alone; userspace only ever reads the sum over CPUs, which stays exact), wherever `count` put it.
#[inline(always)]
pub fn uncount(key: &mut CountKey) {
    with_port_cap(key, |key| {
        bump_existing(&COUNTS, key, u64::MAX)
            || without_port(key, |key| bump_existing(&COUNTS_OTHER, key, u64::MAX))
    });
}

/// Run `f` on the key as it is counted: with its port if that port has a label (or can get one),
/// else as port 0 with PORT_CAPPED. The key is restored afterwards (the event keeps its port).
#[inline(always)]
fn with_port_cap(key: &mut CountKey, f: impl Fn(&mut CountKey) -> bool) -> bool {
    let port = key.port;
    let capped = port != 0 && conf!(max_ports) != 0 && !port_labelled(port);
    if capped {
        key.port = 0;
        key.extra_facts |= extra_fact::PORT_CAPPED;
    }
    let done = f(key);
    if capped {
        key.port = port;
        key.extra_facts &= !extra_fact::PORT_CAPPED;
    }
    done
}

/// The set only grows, so a port keeps its answer for good, and `PORT_ANSWERS` remembers it in a
/// bit: one array load instead of a hash lookup for every reset. Two CPUs adding the same new
/// port at once: the one that loses the race finds it on the second look.
#[inline(always)]
fn port_labelled(port: u16) -> bool {
    let (word, bit) = ((port >> 6) as u32, 1u64 << (port & 63));
    if PORT_ANSWERS.get(word).is_some_and(|w| w & bit != 0) {
        return true;
    }
    if PORT_ANSWERS.get(PORT_WORDS + word).is_some_and(|w| w & bit != 0) {
        return false;
    }
    if unsafe { PORT_LABELS.get(&port) }.is_some() {
        return remember_port_answer(word, bit, true);
    }
    match PORT_LABELS.insert(&port, &1, BPF_NOEXIST as u64) {
        Ok(()) => remember_port_answer(word, bit, true),
        // Another CPU labelled it first.
        Err(_) if unsafe { PORT_LABELS.get(&port) }.is_some() => remember_port_answer(word, bit, true),
        // Full: the answer is final. Any other failure (a bucket lock that timed out) is not,
        // and is not remembered: the port is counted as `other` this once and asks again.
        Err(E2BIG) => remember_port_answer(word, bit, false),
        Err(_) => false,
    }
}

/// Errno of a full hash map.
const E2BIG: i32 = -7;

#[inline(always)]
fn remember_port_answer(word: u32, bit: u64, labelled: bool) -> bool {
    // Not atomic: a bit lost to a concurrent store on the same word costs a later hash lookup,
    // never a wrong answer (PORT_LABELS stays the truth, and once full it never changes).
    let index = if labelled { word } else { PORT_WORDS + word };
    if let Some(answers) = PORT_ANSWERS.get_ptr_mut(index) {
        unsafe { *answers |= bit };
    }
    labelled
}

/// Run `f` on the key without its port, then without port and owner, until it succeeds. The key
/// is changed in place and restored: a copy would cost stack the reset programs do not have.
#[inline(always)]
fn without_port(key: &mut CountKey, f: impl Fn(&CountKey) -> bool) -> bool {
    let port = key.port;
    key.port = 0;
    let mut done = f(key);
    if !done {
        // Word by word (the key's comm is 4-byte aligned): a `[u8; 16]` copy is sixteen byte
        // moves, and zeroing it a memset call.
        let comm = key.comm.as_mut_ptr() as *mut u32;
        let word = |i: usize| unsafe { core::ptr::read_volatile(comm.add(i)) };
        let set = |i: usize, v: u32| unsafe { core::ptr::write_volatile(comm.add(i), v) };
        let (saved, cgroup_id) = ([word(0), word(1), word(2), word(3)], key.cgroup_id);
        (0..4).for_each(|i| set(i, 0));
        key.cgroup_id = 0;
        done = f(key);
        (0..4).for_each(|i| set(i, saved[i]));
        key.cgroup_id = cgroup_id;
    }
    key.port = port;
    done
}

/// Add `delta` (wrapping) to this CPU's slot of `key`, inserting it if new. A key another CPU
/// inserted meanwhile is fine: BPF_ANY only sets this CPU's slot, which was 0.
#[inline(always)]
fn bump(map: &PerCpuHashMap<CountKey, u64>, key: &CountKey, delta: u64) -> bool {
    bump_existing(map, key, delta) || map.insert(key, &delta, BPF_ANY as u64).is_ok()
}

#[inline(always)]
fn bump_existing(map: &PerCpuHashMap<CountKey, u64>, key: &CountKey, delta: u64) -> bool {
    match map.get_ptr_mut(key) {
        Some(value) => {
            unsafe { *value = (*value).wrapping_add(delta) };
            true
        }
        None => false,
    }
}

#[inline(always)]
pub fn count_error(key: &ErrorKey) {
    // The reset before it gave its port a label if there was room; a port without one counts
    // as 0 ("other"), as for resets.
    let mut key = *key;
    if key.port != 0 && conf!(max_ports) != 0 && !port_labelled(key.port) {
        key.port = 0;
    }
    let key = &key;
    if let Some(value) = ERRORS.get_ptr_mut(key) {
        unsafe { *value += 1 };
        return;
    }
    if ERRORS.insert(key, &1, BPF_ANY as u64).is_ok() {
        return;
    }
    bump_lost(lost::COUNT_MAP_FULL);
    let fallback = ErrorKey {
        errno: key.errno,
        ..ErrorKey::default()
    };
    if let Some(value) = ERRORS_OTHER.get_ptr_mut(&fallback) {
        unsafe { *value += 1 };
    } else if ERRORS_OTHER.insert(&fallback, &1, BPF_ANY as u64).is_err() {
        bump_lost(lost::COUNT_UNRECORDED);
    }
}
