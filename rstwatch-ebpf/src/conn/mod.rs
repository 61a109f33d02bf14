//! What the kernel remembers about a connection between its state changes and its reset: birth,
//! passive open, the state before CLOSE, and its owner, recorded where the owner's task runs.
//!
//! `inet_sock_set_state` fires about ten times for every connection, reset or not, so this is
//! the hottest program: everything but birth, listen, a child and CLOSE leaves after looking at
//! the two states it was handed, and what it keeps costs a store, not a hash insert.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_current_cgroup_id},
    programs::{BtfTracePointContext, TracePointContext},
};
use rstwatch_common::{ListenerKey, Owner, ResetEvent, event_flag, fact, tcp_state};

use crate::{
    maps::LISTENERS,
    read::{Btf, Kernel, Probe, conf, store_comm, task_comm, tp_field},
    socket, words,
};

const IPPROTO_TCP: u16 = 6;

mod classic;
mod ring;

pub use ring::owner_and_port_btf;

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

/// What a remembered entry says about the event's connection.
#[inline(always)]
pub(super) fn apply(ev: &mut ResetEvent, birth_jiffies: u64, passive: u8, owner_known: u8) {
    if birth_jiffies != 0 {
        ev.age_jiffies = crate::clock::jiffies().wrapping_sub(birth_jiffies);
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
pub(super) fn service_port_of(
    passive: u8,
    birth_jiffies: u64,
    local_port: u16,
    remote_port: u16,
    guess: u16,
) -> u16 {
    if passive != 0 {
        local_port
    } else if birth_jiffies != 0 {
        // Born by connect() while we watched: we are the client.
        remote_port
    } else {
        guess
    }
}

/// An accepted connection's owner: whoever owns the listener on its port in its namespace.
#[inline(always)]
pub(super) fn listener_owner_into<K: Kernel>(sk: u64, port: u16, ev: &mut ResetEvent) {
    if let Some(owner) = unsafe { LISTENERS.get(&listener_key_at::<K>(sk, port)) } {
        words::copy(&mut ev.owner, owner);
        apply_owner(ev);
    }
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
pub(super) fn listener_key<K: Kernel>(sk: u64) -> ListenerKey {
    listener_key_at::<K>(sk, K::read::<u16>(sk, conf!(sk_num)))
}

#[inline(always)]
pub(super) fn listener_key_at<K: Kernel>(sk: u64, port: u16) -> ListenerKey {
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
    let thread = K::current_comm();
    store_comm(&mut owner.thread_comm, thread);
    // Threads name themselves per pool (JVM, Tomcat, Netty): the label wants the process, which
    // is its thread-group leader's name. The leader's own comm is already that.
    let mut comm = thread;
    if owner.tgid != owner.pid {
        let leader = K::read::<u64>(K::current_task(), conf!(task_group_leader));
        let name = task_comm::<K>(leader);
        if name[0] != 0 {
            comm = name;
        }
    }
    store_comm(&mut owner.comm, comm);
}
