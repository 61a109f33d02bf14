//! What the kernel remembers about a connection between its state changes and its reset: birth,
//! passive open, the state before CLOSE, and its owner, recorded where the owner's task runs.
//!
//! `inet_sock_set_state` fires about ten times for every connection, reset or not, so this is
//! the hottest program: everything but birth, listen, a child and CLOSE leaves after looking at
//! the two states it was handed, and what it keeps costs a store, not a hash insert.

use core::mem::MaybeUninit;

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns},
    },
    programs::{BtfTracePointContext, TracePointContext},
};
use rstwatch_common::{ConnInfo, ListenerKey, Owner, ResetEvent, event_flag, fact, tcp_state};

use crate::{
    maps::{
        CLOSE_NOTE_SLOTS, CLOSE_NOTES, CLOSED_FLOWS, CONN, CONN_SLOTS, CONNS, ConnSlot, LISTENERS, slot_flag,
    },
    read::{Btf, Kernel, Probe, conf, current_comm_into, tp_field},
    socket, words,
};

const IPPROTO_TCP: u16 = 6;

/// Where a kind of program keeps its per-connection memory.
pub trait Conns: Kernel {
    /// The socket's cookie where the program can have one generated (0 otherwise).
    fn cookie(sk: u64) -> u64;
    /// What was remembered about the connection `sk` (whose cookie is `cookie`), straight into
    /// the event (the reset programs have no stack to spare for a copy): birth, passive open,
    /// owner, and for a socket in CLOSE the state before.
    fn recall_into(sk: u64, cookie: u64, ev: &mut ResetEvent);
    /// A socket left CLOSE in its owner's task: connect() (`listening` false) or listen().
    fn born_in_owner(sk: u64, listening: bool);
    /// A listener cloned a child, in softirq: its owner is the listener's.
    fn accepted(sk: u64);
    /// The socket moved to CLOSE from `old`.
    fn closed(sk: u64, old: u8);
    /// The owner of the connection a time-wait socket stands for, into the event.
    fn timewait_owner_into(sk: u64, cookie: u64, ev: &mut ResetEvent);
    /// What names the socket in per-CPU notes: its cookie where there is one (a BTF socket
    /// pointer cannot be hashed: the verifier refuses arithmetic on it), else its address.
    fn identity(sk: u64, cookie: u64) -> u64;
    /// The socket-error program of this kind has no socket pointer: each reset leaves a per-CPU
    /// note for it (`maps::remember_last_reset`).
    const ERRORS_NEED_NOTE: bool;
}

impl Conns for Btf {
    #[inline(always)]
    fn cookie(sk: u64) -> u64 {
        unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
    }

    #[inline(always)]
    fn recall_into(sk: u64, cookie: u64, ev: &mut ResetEvent) {
        if ev.key.state == tcp_state::CLOSE {
            ev.key.prior_state = close_note(cookie);
        }
        let Some((slot, tag)) = slot_of(cookie) else {
            return;
        };
        let birth_ns = unsafe { (*slot).birth_ns };
        let owner_known = tag & slot_flag::OWNER_KNOWN != 0;
        if owner_known {
            words::copy(&mut ev.owner, unsafe { &(*slot).owner });
        }
        if !unchanged(slot, tag) {
            words::zero(&mut ev.owner);
            return;
        }
        let passive = tag & slot_flag::PASSIVE != 0;
        apply(ev, birth_ns, passive as u8, owner_known as u8);
        if passive {
            // Unhashed by now, so the port comes from `inet_sport`, not `skc_num`.
            listener_owner_into::<Btf>(sk, socket::local_port::<Btf>(Btf::tcp_sock(sk)), ev);
        }
    }

    /// Written in place, tag last: a reader that finds the tag finds the rest.
    #[inline(always)]
    fn born_in_owner(sk: u64, listening: bool) {
        let cookie = Self::cookie(sk);
        let Some(slot) = CONNS.get_ptr_mut(slot_index(cookie)) else {
            return;
        };
        let slot = unsafe { &mut *slot };
        open_slot(slot);
        slot.birth_ns = unsafe { bpf_ktime_get_ns() };
        current_owner_into::<Btf>(&mut slot.owner);
        if listening {
            let _ = LISTENERS.insert(&listener_key::<Btf>(sk), &slot.owner, 0);
        }
        close_slot(slot, cookie, slot_flag::OWNER_KNOWN);
    }

    /// Only the birth: looking up the listener's owner for every connection cost more than
    /// looking it up for the few that reset (`listener_owner_into`).
    #[inline(always)]
    fn accepted(sk: u64) {
        let cookie = Self::cookie(sk);
        let Some(slot) = CONNS.get_ptr_mut(slot_index(cookie)) else {
            return;
        };
        let slot = unsafe { &mut *slot };
        open_slot(slot);
        slot.birth_ns = unsafe { bpf_ktime_get_ns() };
        close_slot(slot, cookie, slot_flag::PASSIVE);
    }

    #[inline(always)]
    fn timewait_owner_into(sk: u64, cookie: u64, ev: &mut ResetEvent) {
        let Some((slot, tag)) = slot_of(cookie) else {
            return;
        };
        if tag & slot_flag::OWNER_KNOWN == 0 {
            if tag & slot_flag::PASSIVE != 0 {
                // A time-wait socket is hashed: `skc_num` is its port.
                listener_owner_into::<Btf>(sk, Btf::read::<u16>(sk, conf!(sk_num)), ev);
            }
            return;
        }
        words::copy(&mut ev.owner, unsafe { &(*slot).owner });
        if !unchanged(slot, tag) {
            words::zero(&mut ev.owner);
            return;
        }
        apply_owner(ev);
    }

    #[inline(always)]
    fn closed(sk: u64, old: u8) {
        let cookie = Self::cookie(sk);
        if let Some(note) = CLOSE_NOTES.get_ptr_mut(note_of(cookie)) {
            unsafe { core::ptr::write_volatile(note, cookie << 4 | (old as u64 & 0xf)) };
        }
    }

    #[inline(always)]
    fn identity(_sk: u64, cookie: u64) -> u64 {
        cookie
    }

    const ERRORS_NEED_NOTE: bool = false;
}

/// The owner of a full socket and the port that names its service, for the tp_btf socket-error
/// program (the classic one finds them through the reset's per-CPU note).
#[inline(always)]
pub fn owner_and_port_btf(sk: u64, local_port: u16, remote_port: u16) -> (Owner, u16) {
    let guess = socket::guess_service_port(local_port, remote_port);
    let mut owner = Owner::default();
    let Some((slot, tag)) = slot_of(Btf::cookie(sk)) else {
        return (owner, guess);
    };
    let birth_ns = unsafe { (*slot).birth_ns };
    if tag & slot_flag::OWNER_KNOWN != 0 {
        words::copy(&mut owner, unsafe { &(*slot).owner });
    }
    if !unchanged(slot, tag) {
        return (Owner::default(), guess);
    }
    let passive = tag & slot_flag::PASSIVE != 0;
    if passive && let Some(listener) = unsafe { LISTENERS.get(&listener_key_at::<Btf>(sk, local_port)) } {
        words::copy(&mut owner, listener);
    }
    let port = service_port_of(passive as u8, birth_ns, local_port, remote_port, guess);
    (owner, port)
}

/// A slot about to be rewritten: readers that copied from it see its tag change.
#[inline(always)]
fn open_slot(slot: &mut ConnSlot) {
    unsafe { core::ptr::write_volatile(&mut slot.tag, 0) };
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

#[inline(always)]
fn close_slot(slot: &mut ConnSlot, cookie: u64, flags: u64) {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    unsafe { core::ptr::write_volatile(&mut slot.tag, cookie << 8 | flags) };
}

/// An accepted connection's owner: whoever owns the listener on its port in its namespace.
#[inline(always)]
fn listener_owner_into<K: Kernel>(sk: u64, port: u16, ev: &mut ResetEvent) {
    if let Some(owner) = unsafe { LISTENERS.get(&listener_key_at::<K>(sk, port)) } {
        words::copy(&mut ev.owner, owner);
        apply_owner(ev);
    }
}

/// A connection's slot: its cookie modulo the table size. The kernel hands out cookies in
/// sequence (per-CPU batches), so consecutive connections fill consecutive slots: the table is a
/// ring of the most recent connections, walked in order, which keeps each store on a page and a
/// cache line the previous ones already touched (a hashed slot cost a TLB and a cache miss per
/// connection, about as much as everything else the program does). A slot is reused only after
/// CONN_SLOTS newer cookies.
#[inline(always)]
fn slot_index(cookie: u64) -> u32 {
    cookie as u32 & (CONN_SLOTS - 1)
}

#[inline(always)]
fn note_of(cookie: u64) -> u32 {
    cookie as u32 & (CLOSE_NOTE_SLOTS - 1)
}

/// The state a socket left for CLOSE, if the note for its cookie is still there (0 otherwise).
#[inline(always)]
fn close_note(cookie: u64) -> u8 {
    let Some(note) = CLOSE_NOTES.get_ptr(note_of(cookie)) else {
        return 0;
    };
    let note = unsafe { core::ptr::read_volatile(note) };
    if note >> 4 == cookie {
        (note & 0xf) as u8
    } else {
        0
    }
}

/// The slot of `cookie` and its tag, if it still holds that connection.
#[inline(always)]
fn slot_of(cookie: u64) -> Option<(*const ConnSlot, u64)> {
    let slot = CONNS.get_ptr(slot_index(cookie))?;
    let tag = unsafe { core::ptr::read_volatile(&(*slot).tag) };
    (tag >> 8 == cookie).then_some((slot, tag))
}

/// A writer reusing a slot zeroes its tag first: a changed tag after reading means the copy may
/// be half another connection's. The fence keeps the copy's loads before this one.
#[inline(always)]
fn unchanged(slot: *const ConnSlot, tag: u64) -> bool {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    unsafe { core::ptr::read_volatile(&(*slot).tag) == tag }
}

/// What a remembered entry says about the event's connection.
#[inline(always)]
fn apply(ev: &mut ResetEvent, birth_ns: u64, passive: u8, owner_known: u8) {
    if birth_ns != 0 {
        ev.birth_ns = birth_ns;
        ev.flags |= event_flag::BIRTH_KNOWN;
    }
    if passive != 0 {
        ev.key.facts |= fact::PASSIVE;
        ev.flags |= event_flag::ACCEPTED;
    }
    if owner_known != 0 {
        apply_owner(ev);
    } else {
        words::zero(&mut ev.owner);
    }
}

/// `ev.owner` holds the socket's owner: label the count with it.
#[inline(always)]
pub fn apply_owner(ev: &mut ResetEvent) {
    // Four 4-byte moves: the key's comm is only 4-byte aligned (and a memcpy call is a loop).
    let dst = &mut ev.key.comm as *mut [u8; 16] as *mut u32;
    let src = &ev.owner.comm as *const [u8; 16] as *const u32;
    for i in 0..4 {
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
    if conf!(count_by_cgroup) != 0 {
        ev.key.cgroup_id = ev.owner.cgroup_id;
    }
    ev.key.facts |= fact::OWNER_KNOWN;
}

/// The listener's port, whichever side of the connection we are (see `socket::service_port`).
#[inline(always)]
fn service_port_of(passive: u8, birth_ns: u64, local_port: u16, remote_port: u16, guess: u16) -> u16 {
    if passive != 0 {
        local_port
    } else if birth_ns != 0 {
        // Born by connect() while we watched: we are the client.
        remote_port
    } else {
        guess
    }
}

impl Conns for Probe {
    /// Classic programs cannot have a cookie generated; they key by socket address.
    #[inline(always)]
    fn cookie(_sk: u64) -> u64 {
        0
    }

    #[inline(always)]
    fn recall_into(sk: u64, _cookie: u64, ev: &mut ResetEvent) {
        let Some(info) = (unsafe { CONN.get(&sk) }) else {
            return;
        };
        if ev.key.state == tcp_state::CLOSE {
            ev.key.prior_state = info.prior_state;
        }
        words::copy(&mut ev.owner, &info.owner);
        apply(ev, info.birth_ns, info.passive, info.owner_known);
    }

    #[inline(always)]
    fn timewait_owner_into(_sk: u64, _cookie: u64, ev: &mut ResetEvent) {
        let flow = crate::reset::flow_of(ev);
        if let Some(owner) = unsafe { CLOSED_FLOWS.get(&flow) } {
            words::copy(&mut ev.owner, owner);
            apply_owner(ev);
        }
    }

    #[inline(always)]
    fn born_in_owner(sk: u64, listening: bool) {
        let mut owner = MaybeUninit::<Owner>::uninit();
        let owner = unsafe { &mut *owner.as_mut_ptr() };
        current_owner_into::<Probe>(owner);
        if listening {
            let _ = LISTENERS.insert(&listener_key::<Probe>(sk), &*owner, 0);
        }
        remember(sk, 0, Some(owner));
    }

    /// The listener's owner, looked up now: the classic programs keep their memory by address.
    #[inline(always)]
    fn accepted(sk: u64) {
        let owner = unsafe { LISTENERS.get(&listener_key::<Probe>(sk)) };
        remember(sk, 1, owner);
    }

    /// Keep the state in the connection's entry, and the owner of a connection that lives on as
    /// a time-wait socket (FIN_WAIT*/CLOSING) by 4-tuple, for the resets that socket may send.
    #[inline(always)]
    fn closed(sk: u64, old: u8) {
        let Some(info) = CONN.get_ptr_mut(&sk) else {
            let info = ConnInfo {
                prior_state: old,
                ..ConnInfo::default()
            };
            let _ = CONN.insert(&sk, &info, 0);
            return;
        };
        let info = unsafe { &mut *info };
        info.prior_state = old;
        if info.owner_known != 0
            && matches!(
                old,
                tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING
            )
        {
            let _ = CLOSED_FLOWS.insert(&socket::flow::<Probe>(sk), &info.owner, 0);
        }
    }

    #[inline(always)]
    fn identity(sk: u64, _cookie: u64) -> u64 {
        sk
    }

    const ERRORS_NEED_NOTE: bool = true;
}

/// A classic program's memory of a connection born now; a freed socket's address is reused, so
/// whatever was there belongs to a dead connection.
#[inline(always)]
fn remember(sk: u64, passive: u8, owner: Option<&Owner>) {
    let mut info = MaybeUninit::<ConnInfo>::uninit();
    let info = unsafe { &mut *info.as_mut_ptr() };
    words::zero(info);
    info.birth_ns = unsafe { bpf_ktime_get_ns() };
    info.passive = passive;
    if let Some(owner) = owner {
        info.owner_known = 1;
        words::copy(&mut info.owner, owner);
    }
    let _ = CONN.insert(&sk, info, 0);
}

/// The transitions that tell something: birth (from CLOSE), a child (from LISTEN), and CLOSE.
#[inline(always)]
fn wanted(old: u8, new: u8) -> bool {
    old == tcp_state::CLOSE || old == tcp_state::LISTEN || new == tcp_state::CLOSE
}

/// Classic tracepoint: arguments from the trace record.
pub fn on_set_state(ctx: &TracePointContext) -> Option<()> {
    let old = tp_field::<i32>(ctx, conf!(set_state_oldstate))? as u8;
    let new = tp_field::<i32>(ctx, conf!(set_state_newstate))? as u8;
    if !wanted(old, new) {
        return None;
    }
    let protocol: u16 = if conf!(set_state_protocol_size) == 1 {
        tp_field::<u8>(ctx, conf!(set_state_protocol))? as u16
    } else {
        tp_field::<u16>(ctx, conf!(set_state_protocol))?
    };
    if protocol != IPPROTO_TCP {
        return None;
    }
    let sk: u64 = tp_field(ctx, conf!(set_state_skaddr))?;
    set_state::<Probe>(sk, old, new);
    Some(())
}

/// BTF tracepoint: `TP_PROTO(sk, oldstate, newstate)`; the protocol is read from the socket.
pub fn on_set_state_btf(ctx: &BtfTracePointContext) -> Option<()> {
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    if !wanted(old, new) {
        return None;
    }
    let sk = ctx.arg::<*const c_void>(0) as u64;
    if Btf::read::<u16>(sk, conf!(sk_protocol)) != IPPROTO_TCP {
        return None;
    }
    set_state::<Btf>(sk, old, new);
    Some(())
}

#[inline(always)]
fn set_state<K: Conns>(sk: u64, old: u8, new: u8) {
    if new == tcp_state::CLOSE {
        K::closed(sk, old);
    } else if old == tcp_state::CLOSE {
        // connect() and listen() run in the owner's task: this is where we learn who it is.
        K::born_in_owner(sk, new == tcp_state::LISTEN);
    } else {
        K::accepted(sk);
    }
}

/// A listener, or a child it just cloned (both still hashed, so `skc_num` holds the port).
#[inline(always)]
fn listener_key<K: Kernel>(sk: u64) -> ListenerKey {
    listener_key_at::<K>(sk, K::read::<u16>(sk, conf!(sk_num)))
}

#[inline(always)]
fn listener_key_at<K: Kernel>(sk: u64, port: u16) -> ListenerKey {
    ListenerKey {
        netns: socket::netns::<K>(sk),
        port,
        _pad: 0,
    }
}

/// The current task as the owner of what it does: its process and thread, cgroup and names.
#[inline(always)]
pub fn current_owner_into<K: Kernel>(owner: &mut Owner) {
    let pid_tgid = bpf_get_current_pid_tgid();
    owner.tgid = (pid_tgid >> 32) as u32;
    owner.pid = pid_tgid as u32;
    owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    current_comm_into(&mut owner.thread_comm);
    // Threads name themselves per pool (JVM, Tomcat, Netty): the label wants the process, which
    // is its thread-group leader's name. The leader's own comm is already that.
    let thread = &owner.thread_comm as *const [u8; 16] as *const u64;
    let mut comm = unsafe { [*thread, *thread.add(1)] };
    if owner.tgid != owner.pid {
        let leader = K::read::<u64>(K::current_task(), conf!(task_group_leader));
        let name = [
            K::read::<u64>(leader, conf!(task_comm)),
            K::read::<u64>(leader, conf!(task_comm) + 8),
        ];
        if name[0] != 0 {
            comm = name;
        }
    }
    let dst = &mut owner.comm as *mut [u8; 16] as *mut u64;
    unsafe {
        *dst = comm[0];
        *dst.add(1) = comm[1];
    }
}
