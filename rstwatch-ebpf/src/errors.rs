//! What the applications got, and what the firewall made: socket errors queued because of a
//! reset, and segments netfilter rejected (whose "reset" no TCP stack sent).

use aya_ebpf::{
    cty::c_void,
    programs::{BtfTracePointContext, TracePointContext},
};
use rstwatch_common::{AF_INET, AF_INET6, EVENT_SOCKET_ERROR, ErrorKey, FlowKey, Owner, SocketErrorEvent};

use crate::{
    clock, conn,
    count::count_error,
    maps::{LAST_REJECT, REJECTED, last_reset_on, send_error, take_event_budget},
    read::{Btf, Kernel, conf, probe, tp_field},
    socket,
};

const IPPROTO_TCP: u8 = 6;
const ECONNRESET: i32 = 104;
const EPIPE: i32 = 32;
const ECONNREFUSED: i32 = 111;
const ECONNABORTED: i32 = 103;

/// The kernel queued an error on a socket (sk_error_report). Right after a reset, on the same
/// CPU, this is what the application's next read, write or connect will return.
/// Classic tracepoint: no socket pointer, so the owner comes from the reset this CPU just traced.
pub fn on_error_report(ctx: &TracePointContext) -> Option<()> {
    let error: i32 = tp_field(ctx, conf!(error_error))?;
    if !wanted(error) || tp_field::<u16>(ctx, conf!(error_protocol))? != IPPROTO_TCP as u16 {
        return None;
    }
    let family: u16 = tp_field(ctx, conf!(error_family))?;
    let mut flow = FlowKey {
        family,
        local_port: tp_field(ctx, conf!(error_sport))?,
        remote_port: tp_field(ctx, conf!(error_dport))?,
        ..FlowKey::default()
    };
    if family == AF_INET6 {
        flow.local_addr = tp_field(ctx, conf!(error_saddr_v6))?;
        flow.remote_addr = tp_field(ctx, conf!(error_daddr_v6))?;
    } else {
        let local: [u8; 4] = tp_field(ctx, conf!(error_saddr))?;
        let remote: [u8; 4] = tp_field(ctx, conf!(error_daddr))?;
        flow.local_addr[..4].copy_from_slice(&local);
        flow.remote_addr[..4].copy_from_slice(&remote);
    }
    if flow.remote_port == 0 {
        return None; // see `cut_loose`
    }
    let (skaddr, owner, port) = match last_reset_on(&flow) {
        Some(last) if last.owner_known != 0 => (last.skaddr, last.owner, last.port),
        Some(last) => (last.skaddr, Owner::default(), last.port),
        None => (
            0,
            Owner::default(),
            socket::guess_service_port(flow.local_port, flow.remote_port),
        ),
    };
    socket_error(error, skaddr, owner, port);
    Some(())
}

/// BTF tracepoint: `TP_PROTO(sk)`; the error is the one just stored in `sk->sk_err`, and the
/// owner is in the connection's slot.
pub fn on_error_report_btf(ctx: &BtfTracePointContext) -> Option<()> {
    let sk = ctx.arg::<*const c_void>(0) as u64;
    let error = Btf::read::<i32>(sk, conf!(sk_err));
    if !wanted(error) || Btf::read::<u16>(sk, conf!(sk_protocol)) != IPPROTO_TCP as u16 {
        return None;
    }
    let remote_port = u16::from_be(Btf::read::<u16>(sk, conf!(sk_dport)));
    if remote_port == 0 {
        return None; // see `cut_loose`
    }
    let local_port = socket::local_port::<Btf>(Btf::tcp_sock(sk));
    let (owner, port) = conn::owner_and_port_btf(sk, local_port, remote_port);
    socket_error(error, sk, owner, port);
    Some(())
}

fn wanted(error: i32) -> bool {
    matches!(error, ECONNRESET | EPIPE | ECONNREFUSED | ECONNABORTED)
}

// `cut_loose`: tcp_disconnect() reports ECONNRESET on the socket it just cut loose (SO_LINGER=0
// close, listener close, connect(AF_UNSPEC)), whose remote port it has already cleared: the
// application let go of it and nobody reads that error.

#[inline(always)]
fn socket_error(error: i32, skaddr: u64, owner: Owner, port: u16) {
    let key = ErrorKey {
        errno: error as u16,
        port,
        comm: owner.comm,
    };
    count_error(&key);
    if take_event_budget() {
        send_error(&SocketErrorEvent {
            kind: EVENT_SOCKET_ERROR,
            flags: 0,
            key,
            _pad: [0; 4],
            ts_ns: clock::event_ns(),
            skaddr,
            owner,
        });
    }
}

/// netfilter dropped a segment (REJECT drops the original after sending its own RST).
pub fn on_kfree_skb(ctx: &TracePointContext) -> Option<()> {
    let reason: u32 = tp_field(ctx, conf!(kfree_reason))?;
    if reason != conf!(drop_reason_netfilter) as u32 {
        return None;
    }
    dropped(tp_field(ctx, conf!(kfree_skbaddr))?)
}

/// BTF tracepoint: `TP_PROTO(skb, location, reason[, rx_sk])`.
pub fn on_kfree_skb_btf(ctx: &BtfTracePointContext) -> Option<()> {
    // Constant context offsets only: `reason` is the third argument since 5.17 (the daemon
    // attaches the classic tracepoint where it is elsewhere).
    if conf!(btf_kfree_reason_arg) != 2 || ctx.arg::<u64>(2) as u32 != conf!(drop_reason_netfilter) as u32 {
        return None;
    }
    dropped(ctx.arg::<*const c_void>(0) as u64)
}

fn dropped(skb: u64) -> Option<()> {
    let head = probe::<u64>(skb, conf!(skb_head))?;
    let ip = head + probe::<u16>(skb, conf!(skb_network_header))? as u64;
    let tcp = head + probe::<u16>(skb, conf!(skb_transport_header))? as u64;
    let version = probe::<u8>(ip, 0)? >> 4;
    // The sender of the dropped segment is the one the firewall's RST goes to: "local" there.
    let mut flow = FlowKey::default();
    if version == 4 {
        if probe::<u8>(ip, 9)? != IPPROTO_TCP {
            return None;
        }
        flow.family = AF_INET;
        flow.local_addr[..4].copy_from_slice(&probe::<[u8; 4]>(ip, 12)?);
        flow.remote_addr[..4].copy_from_slice(&probe::<[u8; 4]>(ip, 16)?);
    } else if version == 6 {
        if probe::<u8>(ip, 6)? != IPPROTO_TCP {
            return None;
        }
        flow.family = AF_INET6;
        flow.local_addr = probe::<[u8; 16]>(ip, 8)?;
        flow.remote_addr = probe::<[u8; 16]>(ip, 24)?;
    } else {
        return None;
    }
    let ports = probe::<[u8; 4]>(tcp, 0)?;
    flow.local_port = u16::from_be_bytes([ports[0], ports[1]]);
    flow.remote_port = u16::from_be_bytes([ports[2], ports[3]]);
    let now = clock::jiffies();
    let _ = REJECTED.insert(&flow, &now, 0);
    if let Some(last) = LAST_REJECT.get_ptr_mut(0) {
        unsafe { *last = now };
    }
    Some(())
}
