//! Facts read from the socket itself, at BTF offsets. Only full sockets have the `tcp_sock`
//! fields; time-wait and request sockets share just `sock_common`.

use rstwatch_common::{AF_INET6, FlowKey, ResetEvent, event_flag, extra_fact, fact, tcp_state};

use crate::read::{conf, kernel};


#[inline(always)]
pub fn state(sk: u64) -> u8 {
    kernel::<u8>(sk, conf!(sk_state)).unwrap_or(0)
}

#[inline(always)]
pub fn tw_substate(ev: &mut ResetEvent, sk: u64) -> u8 {
    let substate = kernel::<u8>(sk, conf!(tw_substate)).unwrap_or(0);
    ev.tw_substate = substate;
    substate
}

/// Local and remote endpoints of a full socket.
#[inline(always)]
pub fn addresses(ev: &mut ResetEvent, sk: u64) {
    let flow = flow(sk);
    ev.family = flow.family;
    ev.local_port = flow.local_port;
    ev.remote_port = flow.remote_port;
    ev.local_addr = flow.local_addr;
    ev.remote_addr = flow.remote_addr;
}

#[inline(always)]
pub fn flow(sk: u64) -> FlowKey {
    let family = kernel::<u16>(sk, conf!(sk_family)).unwrap_or(0);
    let mut flow = FlowKey {
        family,
        local_port: local_port(sk),
        remote_port: u16::from_be(kernel::<u16>(sk, conf!(sk_dport)).unwrap_or(0)),
        ..FlowKey::default()
    };
    if family == AF_INET6 {
        flow.local_addr = kernel::<[u8; 16]>(sk, conf!(sk_v6_rcv_saddr)).unwrap_or([0; 16]);
        flow.remote_addr = kernel::<[u8; 16]>(sk, conf!(sk_v6_daddr)).unwrap_or([0; 16]);
    } else {
        let local = kernel::<[u8; 4]>(sk, conf!(sk_rcv_saddr)).unwrap_or([0; 4]);
        let remote = kernel::<[u8; 4]>(sk, conf!(sk_daddr)).unwrap_or([0; 4]);
        flow.local_addr[..4].copy_from_slice(&local);
        flow.remote_addr[..4].copy_from_slice(&remote);
    }
    flow
}

/// `inet_sport`: unlike `skc_num` it survives the unhash tcp_set_state(CLOSE) does.
#[inline(always)]
pub fn local_port(sk: u64) -> u16 {
    u16::from_be(kernel::<u16>(sk, conf!(inet_sport)).unwrap_or(0))
}

/// Inode number of the socket's network namespace.
#[inline(always)]
pub fn netns(sk: u64) -> u32 {
    let Some(net) = kernel::<u64>(sk, conf!(sk_net)) else { return 0 };
    if net == 0 {
        return 0;
    }
    kernel::<u32>(net, conf!(net_inum)).unwrap_or(0)
}

/// The port that names the service: the listener's port, whichever side of the connection we are.
#[inline(always)]
pub fn service_port(ev: &ResetEvent) -> u16 {
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
    guess_service_port(ev.local_port, ev.remote_port)
}

/// For connections older than the daemon, time-wait sockets and socket errors: an ephemeral
/// local port facing a non-ephemeral remote one means we are the client.
#[inline(always)]
pub fn guess_service_port(local_port: u16, remote_port: u16) -> u16 {
    let low = conf!(ephemeral_port_low);
    let high = conf!(ephemeral_port_high);
    let ephemeral = |port: u16| port >= low && port <= high;
    if ephemeral(local_port) && !ephemeral(remote_port) { remote_port } else { local_port }
}

/// The life of a full TCP connection up to the reset: bytes, idle stamps, unread/unsent data,
/// whether the application still holds it and how it asked to be closed.
#[inline(always)]
pub fn connection_facts(ev: &mut ResetEvent, sk: u64) {
    ev.key.facts |= fact::FULL_SOCKET;

    if kernel::<u8>(sk, conf!(icsk_probes_out)).unwrap_or(0) != 0 {
        ev.key.extra_facts |= extra_fact::PROBES_UNANSWERED;
    }
    let socket_ptr = kernel::<u64>(sk, conf!(sk_socket)).unwrap_or(0);
    if socket_ptr == 0 {
        ev.key.facts |= fact::ORPHAN;
    }
    let flags = kernel::<u64>(sk, conf!(sk_flags)).unwrap_or(0);
    let linger_on = (flags >> (conf!(sock_linger_bit) & 63)) & 1 == 1;
    if linger_on && kernel::<i64>(sk, conf!(sk_lingertime)).unwrap_or(-1) == 0 {
        ev.key.facts |= fact::LINGER_ZERO;
    }

    ev.bytes_received = kernel::<u64>(sk, conf!(tcp_bytes_received)).unwrap_or(0);
    ev.bytes_acked = kernel::<u64>(sk, conf!(tcp_bytes_acked)).unwrap_or(0);
    if ev.bytes_received == 0 {
        ev.key.facts |= fact::NOTHING_RECEIVED;
    }
    if ev.bytes_acked > 1 {
        ev.key.extra_facts |= extra_fact::DATA_ACKED;
    }

    let rcv_nxt = kernel::<u32>(sk, conf!(tcp_rcv_nxt)).unwrap_or(0);
    let copied_seq = kernel::<u32>(sk, conf!(tcp_copied_seq)).unwrap_or(0);
    // A received FIN advances rcv_nxt by one but is no data; reading EOF moves copied_seq past it.
    let fin_received = (flags >> (conf!(sock_done_bit) & 63)) & 1;
    ev.unread_bytes = positive(rcv_nxt.wrapping_sub(copied_seq).wrapping_sub(fin_received as u32));
    if ev.unread_bytes != 0 {
        ev.key.facts |= fact::UNREAD_DATA;
    }
    let write_seq = kernel::<u32>(sk, conf!(tcp_write_seq)).unwrap_or(0);
    let snd_nxt = kernel::<u32>(sk, conf!(tcp_snd_nxt)).unwrap_or(0);
    ev.unsent_bytes = positive(write_seq.wrapping_sub(snd_nxt));
    if ev.unsent_bytes != 0 {
        ev.key.facts |= fact::UNSENT_DATA;
    }

    ev.now_jiffies = unsafe { aya_ebpf::helpers::generated::bpf_jiffies64() } as u32;
    ev.lsndtime = kernel::<u32>(sk, conf!(tcp_lsndtime)).unwrap_or(0);
    ev.rcv_tstamp = kernel::<u32>(sk, conf!(tcp_rcv_tstamp)).unwrap_or(0);
    ev.lrcvtime = kernel::<u32>(sk, conf!(icsk_lrcvtime)).unwrap_or(0);
    if idle_before_send(ev.lsndtime, later(ev.rcv_tstamp, ev.lrcvtime)) {
        ev.key.facts |= fact::IDLE_BEFORE_SEND;
    }
}

/// Sequence differences are modulo 2^32; a "negative" one means nothing is pending.
#[inline(always)]
fn positive(diff: u32) -> u32 {
    if (diff as i32) < 0 { 0 } else { diff }
}

/// The later of two jiffies stamps (modulo 2^32).
#[inline(always)]
fn later(a: u32, b: u32) -> u32 {
    if (a.wrapping_sub(b) as i32) >= 0 { a } else { b }
}

/// Did the connection sit silent for at least the threshold before we last sent on it? That is
/// the signature of a NAT/LB/firewall that forgot an idle flow: we write, they answer with RST.
#[inline(always)]
fn idle_before_send(last_send: u32, last_receive: u32) -> bool {
    if last_send == 0 {
        return false;
    }
    let gap = last_send.wrapping_sub(last_receive) as i32;
    gap >= conf!(idle_threshold_jiffies) as i32
}
