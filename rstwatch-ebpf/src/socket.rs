//! Facts read from the socket itself, at BTF offsets. Only full sockets have the `tcp_sock`
//! fields; time-wait and request sockets share just `sock_common`.

use rstwatch_common::{AF_INET6, FlowKey, ResetEvent, event_flag, extra_fact, fact, tcp_state};

use crate::read::{Address, Kernel, conf};

#[inline(always)]
pub fn state<K: Kernel>(sk: u64) -> u8 {
    K::read::<u8>(sk, conf!(sk_state))
}

#[inline(always)]
pub fn tw_substate<K: Kernel>(ev: &mut ResetEvent, sk: u64) -> u8 {
    let tw = K::timewait_sock(sk);
    let substate = if tw != 0 {
        K::read::<u8>(tw, conf!(tw_substate))
    } else {
        0
    };
    ev.tw_substate = substate;
    substate
}

/// Local and remote endpoints of a full socket, read straight into the event (a FlowKey on the
/// way would cost stack the reset programs do not have).
#[inline(always)]
pub fn addresses<K: Kernel>(ev: &mut ResetEvent, sk: u64) {
    ev.family = K::read::<u16>(sk, conf!(sk_family));
    ev.local_port = local_port::<K>(K::tcp_sock(sk));
    ev.remote_port = u16::from_be(K::read::<u16>(sk, conf!(sk_dport)));
    if ev.family == AF_INET6 {
        K::read_address(sk, conf!(sk_v6_rcv_saddr), &mut ev.local_addr, Address::V6);
        K::read_address(sk, conf!(sk_v6_daddr), &mut ev.remote_addr, Address::V6);
    } else {
        K::read_address(sk, conf!(sk_rcv_saddr), &mut ev.local_addr, Address::V4);
        K::read_address(sk, conf!(sk_daddr), &mut ev.remote_addr, Address::V4);
    }
}

/// The 4-tuple of a full socket (the local port lives in `inet_sock`, beyond `struct sock`).
#[inline(always)]
pub fn flow<K: Kernel>(sk: u64) -> FlowKey {
    let family = K::read::<u16>(sk, conf!(sk_family));
    let mut flow = FlowKey {
        family,
        local_port: local_port::<K>(K::tcp_sock(sk)),
        remote_port: u16::from_be(K::read::<u16>(sk, conf!(sk_dport))),
        ..FlowKey::default()
    };
    if family == AF_INET6 {
        K::read_address(sk, conf!(sk_v6_rcv_saddr), &mut flow.local_addr, Address::V6);
        K::read_address(sk, conf!(sk_v6_daddr), &mut flow.remote_addr, Address::V6);
    } else {
        K::read_address(sk, conf!(sk_rcv_saddr), &mut flow.local_addr, Address::V4);
        K::read_address(sk, conf!(sk_daddr), &mut flow.remote_addr, Address::V4);
    }
    flow
}

/// `inet_sport` of a full socket: unlike `skc_num` it survives the unhash tcp_set_state(CLOSE)
/// does. 0 when `tp` is 0 (not a full socket).
#[inline(always)]
pub fn local_port<K: Kernel>(tp: u64) -> u16 {
    if tp == 0 {
        return 0;
    }
    u16::from_be(K::read::<u16>(tp, conf!(inet_sport)))
}

/// Inode number of the socket's network namespace.
#[inline(always)]
pub fn netns<K: Kernel>(sk: u64) -> u32 {
    let net = K::read::<u64>(sk, conf!(sk_net));
    if net == 0 {
        return 0;
    }
    K::read::<u32>(net, conf!(net_inum))
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
    if ev.flags & event_flag::ACCEPTED != 0 {
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
    if ephemeral(local_port) && !ephemeral(remote_port) {
        remote_port
    } else {
        local_port
    }
}

/// The life of a full TCP connection up to the reset: bytes, idle stamps, unread/unsent data,
/// whether the application still holds it and how it asked to be closed.
#[inline(always)]
pub fn connection_facts<K: Kernel>(ev: &mut ResetEvent, sk: u64) {
    let tp = K::tcp_sock(sk);
    if tp == 0 {
        return;
    }
    ev.key.facts |= fact::FULL_SOCKET;

    if K::read::<u8>(tp, conf!(icsk_probes_out)) != 0 {
        ev.key.extra_facts |= extra_fact::PROBES_UNANSWERED;
    }
    if K::read::<u64>(tp, conf!(sk_socket)) == 0 {
        ev.key.facts |= fact::ORPHAN;
    }
    let flags = K::read::<u64>(tp, conf!(sk_flags));
    let linger_on = (flags >> (conf!(sock_linger_bit) & 63)) & 1 == 1;
    if linger_on && K::read::<i64>(tp, conf!(sk_lingertime)) == 0 {
        ev.key.facts |= fact::LINGER_ZERO;
    }

    ev.bytes_received = K::read::<u64>(tp, conf!(tcp_bytes_received));
    ev.bytes_acked = K::read::<u64>(tp, conf!(tcp_bytes_acked));
    if ev.bytes_received == 0 {
        ev.key.facts |= fact::NOTHING_RECEIVED;
    }
    // A connecting socket counts its SYN as one acked byte; an accepted one starts at 0 (its
    // handshake was over before it existed). Unknown origin: the stricter reading.
    let syn_counted = (ev.flags & event_flag::ACCEPTED == 0) as u64;
    if ev.bytes_acked > syn_counted {
        ev.key.extra_facts |= extra_fact::DATA_ACKED;
    }

    let rcv_nxt = K::read::<u32>(tp, conf!(tcp_rcv_nxt));
    let copied_seq = K::read::<u32>(tp, conf!(tcp_copied_seq));
    // A received FIN advances rcv_nxt by one but is no data; reading EOF moves copied_seq past it.
    let fin_received = (flags >> (conf!(sock_done_bit) & 63)) & 1;
    ev.unread_bytes = positive(rcv_nxt.wrapping_sub(copied_seq).wrapping_sub(fin_received as u32));
    if ev.unread_bytes != 0 {
        ev.key.facts |= fact::UNREAD_DATA;
    }
    let write_seq = K::read::<u32>(tp, conf!(tcp_write_seq));
    let snd_nxt = K::read::<u32>(tp, conf!(tcp_snd_nxt));
    ev.unsent_bytes = positive(write_seq.wrapping_sub(snd_nxt));
    if ev.unsent_bytes != 0 {
        ev.key.facts |= fact::UNSENT_DATA;
    }

    ev.now_jiffies = crate::clock::jiffies() as u32;
    ev.lsndtime = K::read::<u32>(tp, conf!(tcp_lsndtime));
    ev.rcv_tstamp = K::read::<u32>(tp, conf!(tcp_rcv_tstamp));
    ev.lrcvtime = K::read::<u32>(tp, conf!(icsk_lrcvtime));
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
