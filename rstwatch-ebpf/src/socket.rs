//! Facts read from the socket itself, at BTF offsets. Only full sockets have the `tcp_sock`
//! fields; time-wait and request sockets share just `sock_common`.

use rstwatch_common::{ResetEvent, fact};

use crate::read::{conf, kernel};

const AF_INET6: u16 = 10;

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
    let family = kernel::<u16>(sk, conf!(sk_family)).unwrap_or(0);
    ev.family = family;
    ev.local_port = u16::from_be(kernel::<u16>(sk, conf!(inet_sport)).unwrap_or(0));
    ev.remote_port = u16::from_be(kernel::<u16>(sk, conf!(sk_dport)).unwrap_or(0));
    if family == AF_INET6 {
        ev.local_addr = kernel::<[u8; 16]>(sk, conf!(sk_v6_rcv_saddr)).unwrap_or([0; 16]);
        ev.remote_addr = kernel::<[u8; 16]>(sk, conf!(sk_v6_daddr)).unwrap_or([0; 16]);
    } else {
        let local = kernel::<[u8; 4]>(sk, conf!(sk_rcv_saddr)).unwrap_or([0; 4]);
        let remote = kernel::<[u8; 4]>(sk, conf!(sk_daddr)).unwrap_or([0; 4]);
        ev.local_addr[..4].copy_from_slice(&local);
        ev.remote_addr[..4].copy_from_slice(&remote);
    }
}

/// The life of a full TCP connection up to the reset: bytes, idle stamps, unread/unsent data,
/// whether the application still holds it and how it asked to be closed.
#[inline(always)]
pub fn connection_facts(ev: &mut ResetEvent, sk: u64) {
    ev.key.facts |= fact::FULL_SOCKET;

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
