use super::*;
use crate::enrich::event::SocketError;

const MS: u64 = 1_000_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn owner(comm: &str, pid: u32) -> Process {
    Process {
        pid,
        tid: pid + 1,
        comm: comm.into(),
        thread: format!("{comm}-worker"),
        cgroup_id: 0,
    }
}

fn reset(
    direction: Direction,
    cause: Cause,
    local: &str,
    remote: &str,
    ts: u64,
    who: Option<Process>,
) -> Reset {
    Reset {
        direction,
        cause,
        reason: (direction == Direction::Sent).then(|| "TCP_STATE".to_string()),
        state: "established",
        local: addr(local),
        remote: addr(remote),
        service_port: 8080,
        owner: who.clone(),
        context: who.unwrap_or_else(|| owner("swapper/0", 0)),
        workload: None,
        age: None,
        idle: None,
        since_last_send: None,
        bytes_received: None,
        bytes_acked: None,
        orphan: false,
        linger_zero: false,
        unread_bytes: 0,
        unsent_bytes: 0,
        trigger: None,
        monotonic_ns: ts,
        skaddr: if who_is_socket(cause) { 0xffff_0000 + ts } else { 0 },
        peer: None,
    }
}

fn who_is_socket(cause: Cause) -> bool {
    cause != Cause::NoListener
}

fn resets(out: &[Observation]) -> Vec<&Reset> {
    out.iter()
        .filter_map(|o| match o {
            Observation::Reset(r) => Some(&**r),
            Observation::SocketError(_) => None,
        })
        .collect()
}

/// SO_LINGER 0 on loopback: the client's received reset is traced inside the server's send.
#[test]
fn an_active_reset_pairs_received_first_and_both_learn_the_other_end() {
    let mut pairer = Pairer::new();
    let mut out = Vec::new();
    // A JVM's dual-stack socket names IPv4 addresses v4-mapped.
    let rx = reset(
        Direction::Received,
        Cause::PeerReset,
        "[::ffff:127.0.0.1]:40000",
        "[::ffff:127.0.0.1]:8080",
        1_000,
        Some(owner("java", 7)),
    );
    let tx = reset(
        Direction::Sent,
        Cause::LingerZeroClose,
        "127.0.0.1:8080",
        "127.0.0.1:40000",
        1_010,
        Some(owner("nginx", 812)),
    );
    pairer.push(Observation::Reset(Box::new(rx)), 1_000);
    pairer.release(1_000, &mut out);
    assert!(out.is_empty(), "the received reset waits for its partner");
    // The next drain of the ring buffer has the sent one.
    pairer.push(Observation::Reset(Box::new(tx)), 25 * MS);
    pairer.release(25 * MS, &mut out);
    let got = resets(&out);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].direction, Direction::Received, "input order is kept");
    let peer = got[0].peer.as_ref().expect("received reset names its sender");
    assert_eq!(
        (peer.cause, peer.reason.as_deref()),
        (Cause::LingerZeroClose, Some("TCP_STATE"))
    );
    assert_eq!(
        peer.owner.as_ref().map(|o| (o.comm.as_str(), o.pid)),
        Some(("nginx", 812))
    );
    let peer = got[1].peer.as_ref().expect("sent reset names its receiver");
    assert_eq!(
        (peer.cause, peer.owner.as_ref().map(|o| o.pid)),
        (Cause::PeerReset, Some(7))
    );
}

/// A SYN to a closed port: the sent reset comes first and has no socket.
#[test]
fn a_passive_reset_pairs_sent_first() {
    let mut pairer = Pairer::new();
    let mut out = Vec::new();
    let tx = reset(
        Direction::Sent,
        Cause::NoListener,
        "127.0.0.1:8080",
        "127.0.0.1:40001",
        5 * MS,
        None,
    );
    let rx = reset(
        Direction::Received,
        Cause::ConnectionRefused,
        "127.0.0.1:40001",
        "127.0.0.1:8080",
        5 * MS + 3,
        Some(owner("curl", 9)),
    );
    pairer.push(Observation::Reset(Box::new(tx)), 6 * MS);
    pairer.push(Observation::Reset(Box::new(rx)), 6 * MS);
    pairer.release(6 * MS, &mut out);
    let got = resets(&out);
    assert_eq!(got.len(), 2);
    let peer = got[1].peer.as_ref().expect("paired");
    assert_eq!(
        (peer.cause, peer.has_socket, peer.owner.is_none()),
        (Cause::NoListener, false, true)
    );
}

#[test]
fn a_remote_peer_waits_at_most_the_hold_and_a_late_partner_still_learns() {
    let mut pairer = Pairer::new();
    let mut out = Vec::new();
    let rx = reset(
        Direction::Received,
        Cause::PeerReset,
        "10.0.0.1:40000",
        "10.0.0.2:443",
        MS,
        Some(owner("java", 7)),
    );
    pairer.push(Observation::Reset(Box::new(rx)), MS);
    let error = SocketError {
        errno: 104,
        service_port: 443,
        owner: None,
        monotonic_ns: MS + 1,
        reset: None,
    };
    pairer.push(Observation::SocketError(error), MS);
    pairer.release(MS, &mut out);
    assert!(out.is_empty(), "the error stays behind its reset");
    pairer.release(MS + HOLD_NS - 1, &mut out);
    assert!(out.is_empty());
    pairer.release(MS + HOLD_NS, &mut out);
    assert_eq!(out.len(), 2, "released on time, in order");
    assert!(resets(&out)[0].peer.is_none());

    // A sent reset for the mirrored flow after its partner went out (the false-receive filter held
    // it): it still learns who got it, and does not wait.
    out.clear();
    let tx = reset(
        Direction::Sent,
        Cause::DataAfterClose,
        "10.0.0.2:443",
        "10.0.0.1:40000",
        MS + 2 * MS,
        None,
    );
    pairer.push(Observation::Reset(Box::new(tx)), MS + HOLD_NS);
    pairer.release(MS + HOLD_NS, &mut out);
    assert_eq!(
        resets(&out)[0].peer.as_ref().map(|p| p.cause),
        Some(Cause::PeerReset)
    );
}

#[test]
fn a_reused_four_tuple_far_apart_is_not_a_pair_and_a_storm_is_bounded() {
    let mut pairer = Pairer::new();
    let mut out = Vec::new();
    let rx = reset(
        Direction::Received,
        Cause::PeerReset,
        "127.0.0.1:40000",
        "127.0.0.1:8080",
        MS,
        None,
    );
    let tx = reset(
        Direction::Sent,
        Cause::LingerZeroClose,
        "127.0.0.1:8080",
        "127.0.0.1:40000",
        MS + PAIR_WINDOW_NS + 1,
        None,
    );
    pairer.push(Observation::Reset(Box::new(rx)), MS);
    pairer.push(Observation::Reset(Box::new(tx)), MS);
    pairer.release(u64::MAX / 2, &mut out);
    assert!(resets(&out).iter().all(|r| r.peer.is_none()));

    out.clear();
    for i in 0..(MAX_HELD as u64 + 10) {
        let local = format!("127.0.0.1:{}", 1000 + i % 50_000);
        let rx = reset(
            Direction::Received,
            Cause::PeerReset,
            &local,
            "10.9.9.9:80",
            10 * MS,
            None,
        );
        pairer.push(Observation::Reset(Box::new(rx)), 10 * MS);
    }
    pairer.release(10 * MS, &mut out);
    assert_eq!(out.len(), 10, "never more than MAX_HELD wait");
}

#[test]
fn a_burst_gives_its_room_back_once_it_has_gone_out() {
    let mut pairer = Pairer::new();
    let mut out = Vec::new();
    for i in 0..MAX_HELD as u64 {
        let local = format!("127.0.0.1:{}", 1000 + i);
        let rx = reset(
            Direction::Received,
            Cause::PeerReset,
            &local,
            "10.9.9.9:80",
            MS,
            None,
        );
        pairer.push(Observation::Reset(Box::new(rx)), MS);
    }
    assert!(!pairer.shrink_when_empty(), "the burst still waits");
    pairer.release(MS + HOLD_NS, &mut out);
    assert_eq!(out.len(), MAX_HELD, "everything went out, unpaired");
    assert!(pairer.shrink_when_empty());
    assert!(!pairer.shrink_when_empty(), "nothing left to give back");
}
