//! The two reset tracepoints: gather the facts, find the owner, count, and emit the details.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    programs::{BtfTracePointContext, ProbeContext, TracePointContext},
};
use rstwatch_common::{
    ABSENT, DIRECTION_RECEIVED, DIRECTION_SENT, Owner, EVENT_RESET, FlowKey, REASON_NONE, ResetEvent,
    STATE_NONE, event_flag, extra_fact, fact, tcp_state,
};

use crate::{
    conn,
    maps::{
        CONN, LastReceive, LastReset, REJECTED, count, emit, remember_last_receive,
        remember_last_reset, scratch_event, take_last_receive, uncount,
    },
    read::{conf, tp_field},
    segment, socket,
};

/// A firewall's RST reaches the sender within microseconds on one host; a second is generous.
const INJECTED_WINDOW_NS: u64 = 1_000_000_000;

/// Classic tracepoint: the arguments come from the trace record, at tracefs offsets.
pub fn on_send_reset(ctx: &TracePointContext) -> Option<()> {
    let sk: u64 = tp_field(ctx, conf!(send_skaddr)).unwrap_or(0);
    let skb: u64 = tp_field(ctx, conf!(send_skbaddr)).unwrap_or(0);
    let state: u8 = match conf!(send_state) {
        ABSENT if sk != 0 => socket::state(sk),
        ABSENT => STATE_NONE,
        off => tp_field::<i32>(ctx, off).unwrap_or(0) as u8,
    };
    let reason = match conf!(send_reason) {
        ABSENT => REASON_NONE,
        off => tp_field::<u32>(ctx, off).unwrap_or(REASON_NONE as u32) as u16,
    };
    send_reset(sk, skb, state, reason)
}

/// BTF tracepoint: `TP_PROTO(sk, skb[, reason])`, no trace record to format.
pub fn on_send_reset_btf(ctx: &BtfTracePointContext) -> Option<()> {
    let sk = ctx.arg::<*const c_void>(0) as u64;
    let skb = ctx.arg::<*const c_void>(1) as u64;
    // The tracepoint's own `state` is sk->sk_state, or 0 without a socket.
    let state = if sk != 0 { socket::state(sk) } else { STATE_NONE };
    // The verifier only allows constant context offsets; `reason` is the third argument since
    // 6.10 (on older kernels the daemon attaches the classic tracepoint instead).
    let reason = match conf!(btf_send_reason_arg) {
        2 => ctx.arg::<u64>(2) as u16,
        _ => REASON_NONE,
    };
    send_reset(sk, skb, state, reason)
}

/// kprobe on `tcp_v4_send_reset(sk, skb)` / `tcp_v6_send_reset(sk, skb)`, for kernels whose
/// tracepoint skips everything but full sockets: take exactly what the tracepoint leaves out.
pub fn on_send_reset_kprobe(ctx: &ProbeContext) -> Option<()> {
    let sk: u64 = ctx.arg::<*const c_void>(0)? as u64;
    let skb: u64 = ctx.arg::<*const c_void>(1)? as u64;
    let state = if sk != 0 { socket::state(sk) } else { STATE_NONE };
    if sk != 0 && state != tcp_state::TIME_WAIT && state != tcp_state::NEW_SYN_RECV {
        return None; // a full socket: the tracepoint has it
    }
    // The function returns at once, sending nothing, when the segment is itself a reset.
    if skb == 0 || segment::is_reset(skb) {
        return None;
    }
    send_reset_with(sk, skb, state, REASON_NONE, extra_fact::FROM_KPROBE)
}

fn send_reset(sk: u64, skb: u64, state: u8, reason: u16) -> Option<()> {
    send_reset_with(sk, skb, state, reason, 0)
}

#[inline(always)]
fn send_reset_with(sk: u64, skb: u64, state: u8, reason: u16, extra_facts: u8) -> Option<()> {
    let ev = scratch_event()?;
    ev.key.direction = DIRECTION_SENT;
    ev.key.extra_facts = extra_facts;
    ev.key.state = state;
    ev.key.reason = reason;
    fill_common(ev, sk);
    if skb != 0 {
        // A reply to a segment: the segment says who the peer is, even when the socket is a
        // listener (whose remote address is 0) or there is no socket at all.
        segment::describe_trigger(ev, skb);
    } else if sk != 0 {
        socket::addresses(ev, sk);
    }
    if sk != 0 {
        if state == tcp_state::TIME_WAIT {
            if socket::tw_substate(ev, sk) == tcp_state::FIN_WAIT2 {
                ev.key.facts |= fact::TW_FIN_WAIT2;
            }
        } else if state != tcp_state::NEW_SYN_RECV && state != tcp_state::LISTEN {
            socket::connection_facts(ev, sk);
        }
        if let Some(last) = take_last_receive(sk, ev.ts_ns) {
            // The kernel raised a receive_reset on this orphan itself, just before answering new
            // data with this reset: that was never a received RST, so take its count back.
            uncount(&last.key);
            ev.flags |= event_flag::UNDID_FALSE_RECEIVE;
        }
        set_timewait_owner(ev, state);
    }
    finish(ev);
    Some(())
}

pub fn on_receive_reset(ctx: &TracePointContext) -> Option<()> {
    let sk: u64 = tp_field(ctx, conf!(recv_skaddr))?;
    let cookie = match conf!(recv_cookie) {
        ABSENT => 0,
        off => tp_field(ctx, off).unwrap_or(0),
    };
    receive_reset(sk, cookie)
}

/// BTF tracepoint: `TP_PROTO(sk)`.
pub fn on_receive_reset_btf(ctx: &BtfTracePointContext) -> Option<()> {
    receive_reset(ctx.arg::<*const c_void>(0) as u64, 0)
}

fn receive_reset(sk: u64, cookie: u64) -> Option<()> {
    if sk == 0 {
        return None;
    }
    let ev = scratch_event()?;
    ev.cookie = cookie;
    ev.key.direction = DIRECTION_RECEIVED;
    ev.key.reason = REASON_NONE;
    // The tracepoint fires before tcp_reset() moves the socket to CLOSE: this is the state the
    // connection was in when the RST arrived.
    let state = socket::state(sk);
    ev.key.state = state;
    fill_common(ev, sk);
    socket::addresses(ev, sk);
    socket::connection_facts(ev, sk);
    set_timewait_owner(ev, state);
    let flow = flow_of(ev);
    if let Some(rejected_at) = unsafe { REJECTED.get(&flow) } {
        if ev.ts_ns.wrapping_sub(*rejected_at) <= INJECTED_WINDOW_NS {
            ev.key.facts |= fact::INJECTED;
        }
        let _ = REJECTED.remove(&flow);
    }
    let closing = matches!(
        state,
        tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK
    );
    if closing {
        ev.flags |= event_flag::RECEIVE_WHILE_CLOSING;
    }
    finish(ev);
    if closing {
        remember_last_receive(&LastReceive { sk, ts_ns: ev.ts_ns, key: ev.key });
    }
    Some(())
}

/// Fields every event has, whatever the socket: time, task, and what the daemon remembered.
#[inline(always)]
fn fill_common(ev: &mut ResetEvent, sk: u64) {
    ev.kind = EVENT_RESET;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.pid = pid_tgid as u32;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.skaddr = sk;
    if sk == 0 {
        return;
    }
    if let Some(info) = unsafe { CONN.get(&sk) } {
        if ev.key.state == tcp_state::CLOSE {
            ev.key.prior_state = info.prior_state;
        }
        if info.birth_ns != 0 {
            ev.birth_ns = info.birth_ns;
            ev.flags |= event_flag::BIRTH_KNOWN;
        }
        if info.passive != 0 {
            ev.key.facts |= fact::PASSIVE;
        }
        // A time-wait socket is not the connection's socket: its owner is found by flow, later.
        if info.owner_known != 0 && ev.key.state != tcp_state::TIME_WAIT {
            apply_owner(ev, &info.owner);
        }
    }
}

/// The owner of a time-wait socket, by the 4-tuple of the connection it stands for (full sockets
/// got theirs in `fill_common`, from the same lookup that gave birth and prior state).
#[inline(always)]
fn set_timewait_owner(ev: &mut ResetEvent, state: u8) {
    if state != tcp_state::TIME_WAIT {
        return;
    }
    if let Some(owner) = conn::timewait_owner(&flow_of(ev)) {
        apply_owner(ev, &owner);
    }
}

#[inline(always)]
fn apply_owner(ev: &mut ResetEvent, owner: &Owner) {
    ev.owner = *owner;
    ev.key.comm = owner.comm;
    if conf!(count_by_cgroup) != 0 {
        ev.key.cgroup_id = owner.cgroup_id;
    }
    ev.key.facts |= fact::OWNER_KNOWN;
}

#[inline(always)]
pub fn flow_of(ev: &ResetEvent) -> FlowKey {
    FlowKey {
        local_addr: ev.local_addr,
        remote_addr: ev.remote_addr,
        local_port: ev.local_port,
        remote_port: ev.remote_port,
        family: ev.family,
        _pad: 0,
    }
}

/// Decide the service port, count, hand the details to userspace, and leave a note for the
/// socket error that may follow.
#[inline(always)]
fn finish(ev: &mut ResetEvent) {
    ev.key.port = socket::service_port(ev);
    count(&ev.key);
    emit(ev);
    remember_last_reset(&LastReset {
        flow: flow_of(ev),
        ts_ns: ev.ts_ns,
        skaddr: ev.skaddr,
        owner: ev.owner,
        owner_known: (ev.key.facts & fact::OWNER_KNOWN != 0) as u32,
        port: ev.key.port,
        _pad: 0,
    });
}
