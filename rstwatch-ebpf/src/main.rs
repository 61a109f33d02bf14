//! rstwatch's kernel side: three tracepoint programs that turn every TCP reset into an exact
//! in-kernel count (keyed by the facts the classifier needs) and an event with the details.
//!
//! Nothing here knows one kernel's layout: every tracepoint field and struct member offset comes
//! from `CONFIG`, which the daemon fills from tracefs and BTF before loading.
#![no_std]
#![no_main]

mod maps;
mod read;
mod segment;
mod socket;

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use rstwatch_common::{
    ABSENT, ConnInfo, DIRECTION_RECEIVED, DIRECTION_SENT, REASON_NONE, ResetEvent, event_flag,
    fact, tcp_state,
};

use crate::{
    maps::{CONN, LastReceive, count, emit, scratch_event, take_last_receive, uncount},
    read::{conf, tp_field},
};

const IPPROTO_TCP: u16 = 6;

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn rstwatch_send_reset(ctx: TracePointContext) -> u32 {
    let _ = on_send_reset(&ctx);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn rstwatch_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = on_receive_reset(&ctx);
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn rstwatch_set_state(ctx: TracePointContext) -> u32 {
    let _ = on_set_state(&ctx);
    0
}

fn on_send_reset(ctx: &TracePointContext) -> Option<()> {
    let ev = scratch_event()?;
    let sk: u64 = tp_field(ctx, conf!(send_skaddr)).unwrap_or(0);
    let skb: u64 = tp_field(ctx, conf!(send_skbaddr)).unwrap_or(0);
    let state: u8 = match conf!(send_state) {
        ABSENT if sk != 0 => socket::state(sk),
        ABSENT => tcp_state_none(),
        off => tp_field::<i32>(ctx, off).unwrap_or(0) as u8,
    };
    ev.key.direction = DIRECTION_SENT;
    ev.key.state = state;
    ev.key.reason = match conf!(send_reason) {
        ABSENT => REASON_NONE,
        off => tp_field::<u32>(ctx, off).unwrap_or(REASON_NONE as u32) as u16,
    };
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
    }
    finish(ev);
    Some(())
}

fn on_receive_reset(ctx: &TracePointContext) -> Option<()> {
    let sk: u64 = tp_field(ctx, conf!(recv_skaddr))?;
    if sk == 0 {
        return None;
    }
    let ev = scratch_event()?;
    ev.key.direction = DIRECTION_RECEIVED;
    ev.key.reason = REASON_NONE;
    // The tracepoint fires before tcp_reset() moves the socket to CLOSE: this is the state the
    // connection was in when the RST arrived.
    let state = socket::state(sk);
    ev.key.state = state;
    fill_common(ev, sk);
    if conf!(recv_cookie) != ABSENT {
        ev.cookie = tp_field(ctx, conf!(recv_cookie)).unwrap_or(0);
    }
    socket::addresses(ev, sk);
    socket::connection_facts(ev, sk);
    let closing = matches!(
        state,
        tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK
    );
    if closing {
        ev.flags |= event_flag::RECEIVE_WHILE_CLOSING;
    }
    finish(ev);
    if closing {
        maps::remember_last_receive(&LastReceive { sk, ts_ns: ev.ts_ns, key: ev.key });
    }
    Some(())
}

fn on_set_state(ctx: &TracePointContext) -> Option<()> {
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
    if new == tcp_state::CLOSE {
        // Most active resets are traced after the kernel already set CLOSE: keep what it was.
        if let Some(info) = CONN.get_ptr_mut(&sk) {
            unsafe { (*info).prior_state = old };
        } else {
            let info = ConnInfo { prior_state: old, ..ConnInfo::default() };
            let _ = CONN.insert(&sk, &info, 0);
        }
    } else if (old == tcp_state::CLOSE || old == tcp_state::LISTEN) && new != tcp_state::LISTEN {
        // A connection is born (connect, or a child cloned from a listener). Inserting here also
        // replaces whatever a freed socket at the same address left behind.
        let info = ConnInfo {
            birth_ns: unsafe { bpf_ktime_get_ns() },
            passive: (old == tcp_state::LISTEN) as u8,
            ..ConnInfo::default()
        };
        let _ = CONN.insert(&sk, &info, 0);
    }
    Some(())
}

#[inline(always)]
fn tcp_state_none() -> u8 {
    rstwatch_common::STATE_NONE
}

/// Fields every event has, whatever the socket: time, task, and what the daemon remembered.
#[inline(always)]
fn fill_common(ev: &mut ResetEvent, sk: u64) {
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
    }
}

/// Decide the service port, count, and hand the details to userspace.
#[inline(always)]
fn finish(ev: &mut ResetEvent) {
    ev.key.port = service_port(ev);
    count(&ev.key);
    emit(ev);
}

/// The port that names the service: the listener's port, whichever side of the connection we are.
#[inline(always)]
fn service_port(ev: &ResetEvent) -> u16 {
    let state = ev.key.state;
    if state == tcp_state::SYN_SENT {
        return ev.remote_port;
    }
    if ev.skaddr == 0 || state == tcp_state::LISTEN || state == tcp_state::NEW_SYN_RECV {
        return ev.local_port;
    }
    if ev.key.facts & fact::PASSIVE != 0 {
        return ev.local_port;
    }
    if ev.flags & event_flag::BIRTH_KNOWN != 0 {
        // Born by connect(): we are the client.
        return ev.remote_port;
    }
    // A connection older than the daemon, or a time-wait socket: an ephemeral local port facing a
    // non-ephemeral remote one means we are the client.
    let low = conf!(ephemeral_port_low);
    let high = conf!(ephemeral_port_high);
    let ephemeral = |port: u16| port >= low && port <= high;
    if ephemeral(ev.local_port) && !ephemeral(ev.remote_port) {
        ev.remote_port
    } else {
        ev.local_port
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
