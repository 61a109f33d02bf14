//! The two reset tracepoints: gather the facts, find the owner, count, and emit the details.
//!
//! Each event is assembled on the program's own stack: a program interrupted by another one on
//! the same CPU (close() in process context, then a softirq) must not share a buffer with it.

use core::mem::MaybeUninit;

use aya_ebpf::{
    cty::c_void,
    helpers::bpf_get_current_pid_tgid,
    programs::{BtfTracePointContext, ProbeContext, TracePointContext},
};
use rstwatch_common::{
    ABSENT, DIRECTION_RECEIVED, DIRECTION_SENT, EVENT_RESET, FlowKey, REASON_NONE, ResetEvent, STATE_NONE,
    event_flag, extra_fact, fact, tcp_state,
};

use crate::{
    clock,
    conn::Conns,
    count::{count, uncount},
    maps::{
        LAST_REJECT, REJECTED, remember_last_receive, remember_last_reset, send_event, take_event_budget,
        take_last_receive,
    },
    read::{Btf, Probe, conf, store_comm, tp_field},
    segment, socket, words,
};

// A firewall's RST reaches the sender within microseconds on one host: a second (`clock::second`)
// is the generous window for "right after the firewall rejected that flow".

/// Classic tracepoint: the arguments come from the trace record, at tracefs offsets.
pub fn on_send_reset(ctx: &TracePointContext) -> Option<()> {
    let sk: u64 = tp_field(ctx, conf!(send_skaddr)).unwrap_or(0);
    let skb: u64 = tp_field(ctx, conf!(send_skbaddr)).unwrap_or(0);
    let state: u8 = match conf!(send_state) {
        ABSENT if sk != 0 => socket::state::<Probe>(sk),
        ABSENT => STATE_NONE,
        off => tp_field::<i32>(ctx, off).unwrap_or(0) as u8,
    };
    let reason = match conf!(send_reason) {
        ABSENT => REASON_NONE,
        off => tp_field::<u32>(ctx, off).unwrap_or(REASON_NONE as u32) as u16,
    };
    send_reset::<Probe>(sk, skb, state, reason, 0)
}

/// BTF tracepoint: `TP_PROTO(sk, skb[, reason])`, no trace record to format.
pub fn on_send_reset_btf(ctx: &BtfTracePointContext) -> Option<()> {
    let sk = ctx.arg::<*const c_void>(0) as u64;
    let skb = ctx.arg::<*const c_void>(1) as u64;
    // The tracepoint's own `state` is sk->sk_state, or 0 without a socket.
    let state = if sk != 0 {
        socket::state::<Btf>(sk)
    } else {
        STATE_NONE
    };
    // The verifier only allows constant context offsets; `reason` is the third argument since
    // 6.10 (on older kernels the daemon attaches the classic tracepoint instead).
    let reason = match conf!(btf_send_reason_arg) {
        2 => ctx.arg::<u64>(2) as u16,
        _ => REASON_NONE,
    };
    send_reset::<Btf>(sk, skb, state, reason, 0)
}

/// kprobe on `tcp_v4_send_reset(sk, skb)` / `tcp_v6_send_reset(sk, skb)`, for kernels whose
/// tracepoint skips everything but full sockets: take exactly what the tracepoint leaves out.
pub fn on_send_reset_kprobe(ctx: &ProbeContext) -> Option<()> {
    let sk: u64 = ctx.arg::<*const c_void>(0)? as u64;
    let skb: u64 = ctx.arg::<*const c_void>(1)? as u64;
    let state = if sk != 0 {
        socket::state::<Probe>(sk)
    } else {
        STATE_NONE
    };
    if sk != 0 && state != tcp_state::TIME_WAIT && state != tcp_state::NEW_SYN_RECV {
        return None; // a full socket: the tracepoint has it
    }
    // The function returns at once, sending nothing, when the segment is itself a reset.
    if skb == 0 || segment::is_reset::<Probe>(skb) {
        return None;
    }
    send_reset::<Probe>(sk, skb, state, REASON_NONE, extra_fact::FROM_KPROBE)
}

#[inline(always)]
fn send_reset<K: Conns>(sk: u64, skb: u64, state: u8, reason: u16, extra_facts: u8) -> Option<()> {
    let mut space = MaybeUninit::uninit();
    let ev = new_event(&mut space, DIRECTION_SENT, state);
    ev.key.extra_facts = extra_facts;
    ev.key.reason = reason;
    let (cookie, detailed) = fill_common::<K>(ev, sk);
    if skb != 0 {
        // A reply to a segment: the segment says who the peer is, even when the socket is a
        // listener (whose remote address is 0) or there is no socket at all. Its addresses go
        // only into the event, and into the classic error program's note.
        segment::describe_trigger::<K>(ev, skb, detailed || K::ERRORS_NEED_NOTE);
    } else if sk != 0 {
        socket::addresses::<K>(ev, sk);
    }
    if sk != 0 {
        if state == tcp_state::TIME_WAIT {
            if socket::tw_substate::<K>(ev, sk) == tcp_state::FIN_WAIT2 {
                ev.key.facts |= fact::TW_FIN_WAIT2;
            }
            K::timewait_owner_into(sk, cookie, ev);
        } else if state != tcp_state::NEW_SYN_RECV && state != tcp_state::LISTEN {
            socket::connection_facts::<K>(ev, sk);
        }
        if let Some(false_receive) = take_last_receive(K::identity(sk, cookie)) {
            // The kernel raised a receive_reset on this orphan itself, just before answering new
            // data with this reset: that was never a received RST, so take its count back.
            uncount(false_receive);
            ev.flags |= event_flag::UNDID_FALSE_RECEIVE;
        }
    }
    finish::<K>(ev, detailed);
    Some(())
}

pub fn on_receive_reset(ctx: &TracePointContext) -> Option<()> {
    let sk: u64 = tp_field(ctx, conf!(recv_skaddr))?;
    let cookie = match conf!(recv_cookie) {
        ABSENT => 0,
        off => tp_field(ctx, off).unwrap_or(0),
    };
    receive_reset::<Probe>(sk, cookie)
}

/// BTF tracepoint: `TP_PROTO(sk)`.
pub fn on_receive_reset_btf(ctx: &BtfTracePointContext) -> Option<()> {
    receive_reset::<Btf>(ctx.arg::<*const c_void>(0) as u64, 0)
}

#[inline(always)]
fn receive_reset<K: Conns>(sk: u64, cookie: u64) -> Option<()> {
    if sk == 0 {
        return None;
    }
    // The tracepoint fires before tcp_reset() moves the socket to CLOSE: this is the state the
    // connection was in when the RST arrived.
    let state = socket::state::<K>(sk);
    let mut space = MaybeUninit::uninit();
    let ev = new_event(&mut space, DIRECTION_RECEIVED, state);
    ev.key.reason = REASON_NONE;
    let (own_cookie, detailed) = fill_common::<K>(ev, sk);
    if own_cookie == 0 {
        ev.cookie = cookie;
    }
    socket::addresses::<K>(ev, sk);
    socket::connection_facts::<K>(ev, sk);
    if state == tcp_state::TIME_WAIT {
        K::timewait_owner_into(sk, own_cookie, ev);
    }
    if recently_rejected() {
        let flow = flow_of(ev);
        if let Some(rejected_at) = unsafe { REJECTED.get(&flow) } {
            if clock::within(*rejected_at, clock::second()) {
                ev.key.facts |= fact::INJECTED;
            }
            let _ = REJECTED.remove(&flow);
        }
    }
    let closing = matches!(
        state,
        tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK
    );
    if closing {
        ev.flags |= event_flag::RECEIVE_WHILE_CLOSING;
    }
    finish::<K>(ev, detailed);
    if closing {
        // May be the kernel's own (see UNDID_FALSE_RECEIVE): the reset it sends next on this
        // socket looks for this note.
        remember_last_receive(K::identity(sk, own_cookie), &ev.key);
    }
    Some(())
}

/// Did the firewall reject anything within the injection window?
#[inline(always)]
fn recently_rejected() -> bool {
    let Some(last) = LAST_REJECT.get(0) else {
        return true;
    };
    *last != 0 && clock::within(*last, clock::second())
}

/// A zeroed event in the caller's stack space, without the copy a returned value would cost
/// (the stack has room for one event, not two).
#[inline(always)]
fn new_event(space: &mut MaybeUninit<ResetEvent>, direction: u8, state: u8) -> &mut ResetEvent {
    let ev = unsafe { &mut *space.as_mut_ptr() };
    words::zero(ev);
    ev.kind = EVENT_RESET;
    ev.key.direction = direction;
    ev.key.state = state;
    ev
}

/// Fields every event has, whatever the socket: time and task (within the budget), and what was
/// remembered about the connection. Returns the socket's cookie where this kind of program has one (0 otherwise), and
/// whether the event is within the budget: past it only the count is made, and what only the
/// event would show is not read.
#[inline(always)]
fn fill_common<K: Conns>(ev: &mut ResetEvent, sk: u64) -> (u64, bool) {
    let detailed = take_event_budget();
    if detailed {
        ev.ts_ns = clock::event_ns();
        let pid_tgid = bpf_get_current_pid_tgid();
        ev.tgid = (pid_tgid >> 32) as u32;
        ev.pid = pid_tgid as u32;
        store_comm(&mut ev.comm, K::current_comm());
    }
    ev.skaddr = sk;
    if sk == 0 || ev.key.state == tcp_state::NEW_SYN_RECV {
        return (0, detailed);
    }
    let cookie = K::cookie(sk);
    ev.cookie = cookie;
    // A time-wait socket is not the connection's socket: its owner is found apart, later.
    if ev.key.state != tcp_state::TIME_WAIT {
        K::recall_into(sk, cookie, ev);
    }
    (cookie, detailed)
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

/// Decide the service port, count, hand the details to userspace, and (classic programs, whose
/// error tracepoint has no socket) leave a note for the socket error that may follow.
#[inline(always)]
fn finish<K: Conns>(ev: &mut ResetEvent, detailed: bool) {
    ev.key.port = socket::service_port(ev);
    count(&mut ev.key);
    if detailed {
        send_event(ev);
    }
    if K::ERRORS_NEED_NOTE {
        remember_last_reset(ev);
    }
}
