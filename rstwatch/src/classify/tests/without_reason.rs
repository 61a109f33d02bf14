//! Sent resets on kernels without `reason` (before 6.10).

use super::*;

/// The same scenarios on a kernel without `reason` (Debian 6.1, measured under qemu by
/// `cargo xtask vm-test`): the facts there, and the cause they must still give.
#[test]
fn sent_resets_without_a_reason_fall_back_on_the_socket() {
    let none = |state, prior, facts, extra_facts| ResetFacts {
        direction: Direction::Sent,
        reason: None,
        state,
        prior_state: prior,
        facts,
        extra_facts,
    };
    use rstwatch_common::extra_fact::*;
    let table: &[(&str, ResetFacts, Cause)] = &[
        (
            "1 SYN to a closed port (kprobe)",
            none(0, 0, TRIGGER | TRIGGER_SYN, FROM_KPROBE),
            Cause::NoListener,
        ),
        (
            "6b data to a vanished socket (kprobe)",
            none(0, 0, TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD, FROM_KPROBE),
            Cause::UnknownConnection,
        ),
        (
            "TFO: data on a SYN-ACK'd child that is gone (kprobe)",
            none(0, 0, TRIGGER | TRIGGER_ACK, FROM_KPROBE),
            Cause::UnknownConnection,
        ),
        (
            "5a stale keep-alive into FIN_WAIT2 time-wait (kprobe)",
            none(
                TIME_WAIT,
                0,
                TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD | TW_FIN_WAIT2,
                FROM_KPROBE,
            ),
            Cause::DataAfterClose,
        ),
        (
            "SYN into a FIN_WAIT2 time-wait (kprobe)",
            none(TIME_WAIT, 0, TRIGGER | TRIGGER_SYN | TW_FIN_WAIT2, FROM_KPROBE),
            Cause::TimewaitSegment,
        ),
        (
            "segment into a real TIME_WAIT (kprobe)",
            none(TIME_WAIT, 0, TRIGGER | TRIGGER_ACK, FROM_KPROBE),
            Cause::TimewaitSegment,
        ),
        (
            "6a data at a listener",
            none(LISTEN, 0, TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD, 0),
            Cause::UnknownConnection,
        ),
        (
            "7a accept queue overflow: bare ACK at the listener",
            none(LISTEN, 0, TRIGGER | TRIGGER_ACK, 0),
            Cause::AcceptQueueOverflow,
        ),
        (
            "bad SYN at a listener",
            none(LISTEN, 0, TRIGGER | TRIGGER_SYN, 0),
            Cause::InvalidSegment,
        ),
        (
            "10b reconnect into TIME_WAIT",
            none(SYN_SENT, 0, TRIGGER | TRIGGER_ACK | FULL, 0),
            Cause::InvalidSegment,
        ),
        (
            "4b data right after close",
            none(
                CLOSE,
                FIN_WAIT1,
                FULL | ORPHAN | TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD,
                0,
            ),
            Cause::DataAfterClose,
        ),
        (
            "4c data into a full FIN_WAIT2 orphan",
            none(
                CLOSE,
                FIN_WAIT2,
                FULL | ORPHAN | TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD,
                0,
            ),
            Cause::DataAfterClose,
        ),
        (
            "11e2 linger2 -1, bare ACK of our FIN",
            none(CLOSE, FIN_WAIT1, FULL | ORPHAN | TRIGGER | TRIGGER_ACK, 0),
            Cause::FinWait2Abort,
        ),
        (
            "3a unread",
            none(CLOSE, ESTABLISHED, FULL | UNREAD_DATA, 0),
            Cause::CloseWithUnreadData,
        ),
        (
            "14 listener closed",
            none(CLOSE, ESTABLISHED, FULL | ORPHAN, 0),
            Cause::ListenerClosed,
        ),
        (
            "14 listener closed, child with an unread request",
            none(CLOSE, ESTABLISHED, FULL | ORPHAN | UNREAD_DATA, 0),
            Cause::ListenerClosed,
        ),
        (
            "11e1 linger2 -1 close in FIN_WAIT2",
            none(CLOSE, FIN_WAIT2, FULL | ORPHAN, 0),
            Cause::FinWait2Abort,
        ),
        (
            "2 linger 0",
            none(CLOSE, ESTABLISHED, FULL | LINGER_ZERO, 0),
            Cause::LingerZeroClose,
        ),
        (
            "11d linger 0 in LAST_ACK",
            none(CLOSE, LAST_ACK, FULL | LINGER_ZERO | UNSENT_DATA, 0),
            Cause::DisconnectWithUnsentData,
        ),
        (
            "9a keepalive timeout",
            none(ESTABLISHED, 0, FULL, PROBES_UNANSWERED),
            Cause::KeepaliveTimeout,
        ),
        ("11f ss -K", none(ESTABLISHED, 0, FULL, 0), Cause::AdminAbort),
        (
            "orphan FIN_WAIT2 timer",
            none(FIN_WAIT2, 0, FULL | ORPHAN, 0),
            Cause::FinWait2Abort,
        ),
        (
            "11g close() with too many orphans",
            none(CLOSE, FIN_WAIT1, FULL | ORPHAN, 0),
            Cause::MemoryPressure,
        ),
        (
            "11g close() in CLOSE_WAIT with too many orphans",
            none(CLOSE, LAST_ACK, FULL | ORPHAN, 0),
            Cause::MemoryPressure,
        ),
        (
            "11g orphan's retransmit timer, too many orphans",
            none(FIN_WAIT1, 0, FULL | ORPHAN, 0),
            Cause::MemoryPressure,
        ),
        (
            "connect(AF_UNSPEC)",
            none(CLOSE, ESTABLISHED, FULL, 0),
            Cause::Other,
        ),
        ("no socket, no segment", none(0, 0, 0, 0), Cause::Other),
    ];
    for (scenario, facts, expected) in table {
        assert_eq!(classify(facts), *expected, "{scenario}: {facts:?}");
    }
    // 6.10 and 6.11 report NOT_SPECIFIED for active resets: the same fallback applies.
    let unspecified = ResetFacts {
        reason: Some(NotSpecified),
        ..none(ESTABLISHED, 0, FULL, PROBES_UNANSWERED)
    };
    assert_eq!(classify(&unspecified), Cause::KeepaliveTimeout);
}
