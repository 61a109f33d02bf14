//! What the kernel remembers about a connection between its state changes and its reset: birth,
//! passive open, the state before CLOSE, and its owner, recorded where the owner's task runs.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_ns},
    },
    cty::c_void,
    programs::{BtfTracePointContext, TracePointContext},
};
use rstwatch_common::{ConnInfo, FlowKey, ListenerKey, Owner, tcp_state};

use crate::{
    maps::{CLOSED_FLOWS, CONN, LISTENERS},
    read::{conf, kernel, tp_field},
    socket,
};

const IPPROTO_TCP: u16 = 6;

/// Classic tracepoint: arguments from the trace record.
pub fn on_set_state(ctx: &TracePointContext) -> Option<()> {
    let protocol: u16 = if conf!(set_state_protocol_size) == 1 {
        tp_field::<u8>(ctx, conf!(set_state_protocol))? as u16
    } else {
        tp_field::<u16>(ctx, conf!(set_state_protocol))?
    };
    if protocol != IPPROTO_TCP {
        return None;
    }
    let sk: u64 = tp_field(ctx, conf!(set_state_skaddr))?;
    let old = tp_field::<i32>(ctx, conf!(set_state_oldstate))? as u8;
    let new = tp_field::<i32>(ctx, conf!(set_state_newstate))? as u8;
    set_state(sk, old, new);
    Some(())
}

/// BTF tracepoint: `TP_PROTO(sk, oldstate, newstate)`; the protocol is read from the socket.
pub fn on_set_state_btf(ctx: &BtfTracePointContext) -> Option<()> {
    let sk = ctx.arg::<*const c_void>(0) as u64;
    if kernel::<u16>(sk, conf!(sk_protocol))? != IPPROTO_TCP {
        return None;
    }
    set_state(sk, ctx.arg::<i32>(1) as u8, ctx.arg::<i32>(2) as u8);
    Some(())
}

fn set_state(sk: u64, old: u8, new: u8) {
    match (old, new) {
        (_, tcp_state::CLOSE) => closed(sk, old),
        // connect() and listen() run in the owner's task: this is where we learn who it is.
        (tcp_state::CLOSE, tcp_state::LISTEN) => {
            let owner = current_owner();
            let _ = LISTENERS.insert(&listener_key(sk), &owner, 0);
            born(sk, false, Some(owner));
        }
        (tcp_state::CLOSE, _) => born(sk, false, Some(current_owner())),
        // A child cloned from a listener in softirq: it belongs to whoever owns the listener.
        (tcp_state::LISTEN, _) => {
            let owner = unsafe { LISTENERS.get(&listener_key(sk)) }.copied();
            born(sk, true, owner);
        }
        _ => {}
    }
}

/// A connection starts; inserting also replaces whatever a freed socket at this address left.
fn born(sk: u64, passive: bool, owner: Option<Owner>) {
    let info = ConnInfo {
        birth_ns: unsafe { bpf_ktime_get_ns() },
        passive: passive as u8,
        owner_known: owner.is_some() as u8,
        owner: owner.unwrap_or_default(),
        ..ConnInfo::default()
    };
    let _ = CONN.insert(&sk, &info, 0);
}

/// Most active resets are traced after the kernel already set CLOSE: keep what it was. A
/// connection closing from FIN_WAIT*/CLOSING lives on as a time-wait socket at another address;
/// remember its owner by 4-tuple for the resets that socket may still send.
fn closed(sk: u64, old: u8) {
    let info = match CONN.get_ptr_mut(&sk) {
        Some(info) => unsafe {
            (*info).prior_state = old;
            *info
        },
        None => {
            let info = ConnInfo { prior_state: old, ..ConnInfo::default() };
            let _ = CONN.insert(&sk, &info, 0);
            return;
        }
    };
    if info.owner_known != 0
        && matches!(old, tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING)
    {
        let flow = socket::flow(sk);
        let _ = CLOSED_FLOWS.insert(&flow, &info.owner, 0);
    }
}

fn listener_key(sk: u64) -> ListenerKey {
    ListenerKey { netns: socket::netns(sk), port: socket::local_port(sk), _pad: 0 }
}

pub fn current_owner() -> Owner {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let pid = pid_tgid as u32;
    let thread_comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // Threads name themselves per pool (JVM, Tomcat, Netty): the label wants the process, which
    // is its thread-group leader's name. The leader's own comm is already that.
    let comm = if tgid == pid { thread_comm } else { leader_comm().unwrap_or(thread_comm) };
    Owner { tgid, pid, cgroup_id: unsafe { bpf_get_current_cgroup_id() }, comm, thread_comm }
}

fn leader_comm() -> Option<[u8; 16]> {
    let task = unsafe { bpf_get_current_task() };
    let leader = kernel::<u64>(task, conf!(task_group_leader))?;
    kernel::<[u8; 16]>(leader, conf!(task_comm))
}

/// The owner of the connection a time-wait socket stands for.
pub fn timewait_owner(flow: &FlowKey) -> Option<Owner> {
    unsafe { CLOSED_FLOWS.get(flow) }.copied()
}
