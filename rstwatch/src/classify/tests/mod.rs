use super::*;
use RstReason::*;
use fact::*;
use tcp_state::*;

mod without_reason;

fn sent(reason: RstReason, state: u8, prior_state: u8, facts: u16) -> ResetFacts {
    ResetFacts {
        direction: Direction::Sent,
        reason: Some(reason),
        state,
        prior_state,
        facts,
        extra_facts: 0,
    }
}

fn received(state: u8, facts: u16) -> ResetFacts {
    ResetFacts {
        direction: Direction::Received,
        reason: None,
        state,
        prior_state: 0,
        facts,
        extra_facts: 0,
    }
}

fn received_acked(state: u8, facts: u16) -> ResetFacts {
    ResetFacts {
        extra_facts: rstwatch_common::extra_fact::DATA_ACKED,
        ..received(state, facts)
    }
}

const FULL: u16 = FULL_SOCKET;

/// One row per scenario of tests/README.md, with the facts the kernel reported there.
#[test]
fn sent_resets_on_kernels_with_a_reason() {
    let table: &[(&str, ResetFacts, Cause)] = &[
        (
            "1 SYN to a closed port",
            sent(NoSocket, 0, 0, TRIGGER | TRIGGER_SYN),
            Cause::NoListener,
        ),
        (
            "6b data to a vanished socket, no listener",
            sent(NoSocket, 0, 0, TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD),
            Cause::UnknownConnection,
        ),
        (
            "SYN-ACK to nothing",
            sent(NoSocket, 0, 0, TRIGGER | TRIGGER_SYN | TRIGGER_ACK),
            Cause::UnknownConnection,
        ),
        (
            "6a data at a listener",
            sent(Flags, LISTEN, 0, TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD),
            Cause::UnknownConnection,
        ),
        (
            "odd flags on a connection",
            sent(Flags, ESTABLISHED, 0, TRIGGER | FULL),
            Cause::InvalidSegment,
        ),
        (
            "3a close with 39 bytes unread",
            sent(AbortOnClose, CLOSE, ESTABLISHED, FULL | UNREAD_DATA),
            Cause::CloseWithUnreadData,
        ),
        (
            "2 SO_LINGER 0 close",
            sent(State, CLOSE, ESTABLISHED, FULL | LINGER_ZERO),
            Cause::LingerZeroClose,
        ),
        (
            "14 listener closed with un-accepted child",
            sent(State, CLOSE, ESTABLISHED, FULL | ORPHAN | NOTHING_RECEIVED),
            Cause::ListenerClosed,
        ),
        (
            "14 child inherited linger 0 from the listener",
            sent(State, CLOSE, ESTABLISHED, FULL | ORPHAN | LINGER_ZERO),
            Cause::ListenerClosed,
        ),
        ("11f ss -K", sent(State, ESTABLISHED, 0, FULL), Cause::AdminAbort),
        (
            "orphan FIN_WAIT2 timer",
            sent(State, FIN_WAIT2, 0, FULL | ORPHAN),
            Cause::FinWait2Abort,
        ),
        (
            "connect(AF_UNSPEC) disconnect",
            sent(State, CLOSE, ESTABLISHED, FULL),
            Cause::Other,
        ),
        (
            "4b data right after close",
            sent(
                AbortOnData,
                CLOSE,
                FIN_WAIT1,
                FULL | ORPHAN | TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD,
            ),
            Cause::DataAfterClose,
        ),
        (
            "11e2 linger2 -1, bare ACK of our FIN",
            sent(
                AbortOnData,
                CLOSE,
                FIN_WAIT1,
                FULL | ORPHAN | TRIGGER | TRIGGER_ACK,
            ),
            Cause::FinWait2Abort,
        ),
        (
            "peer FIN after our close, linger2 -1",
            sent(
                AbortOnData,
                CLOSE,
                FIN_WAIT2,
                FULL | ORPHAN | TRIGGER | TRIGGER_ACK | TRIGGER_FIN,
            ),
            Cause::DataAfterClose,
        ),
        (
            "5a stale keep-alive into FIN_WAIT2 time-wait",
            sent(
                TimewaitSocket,
                TIME_WAIT,
                0,
                TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD | TW_FIN_WAIT2,
            ),
            Cause::DataAfterClose,
        ),
        (
            "SYN into a FIN_WAIT2 time-wait",
            sent(TimewaitSocket, TIME_WAIT, 0, TRIGGER | TRIGGER_SYN | TW_FIN_WAIT2),
            Cause::TimewaitSegment,
        ),
        (
            "segment into a real TIME_WAIT",
            sent(TimewaitSocket, TIME_WAIT, 0, TRIGGER | TRIGGER_ACK),
            Cause::TimewaitSegment,
        ),
        (
            "7a accept queue overflow",
            sent(InvalidSyn, LISTEN, 0, TRIGGER | TRIGGER_ACK),
            Cause::AcceptQueueOverflow,
        ),
        (
            "bad SYN to a request socket",
            sent(InvalidSyn, LISTEN, 0, TRIGGER | TRIGGER_SYN),
            Cause::InvalidSegment,
        ),
        (
            "9a keepalive timeout",
            sent(KeepaliveTimeout, ESTABLISHED, 0, FULL | IDLE_BEFORE_SEND),
            Cause::KeepaliveTimeout,
        ),
        (
            "11g tcp_check_oom at close()",
            sent(AbortOnMemory, CLOSE, FIN_WAIT1, FULL | ORPHAN),
            Cause::MemoryPressure,
        ),
        (
            "11g tcp_check_oom on an orphan's timer",
            sent(AbortOnMemory, FIN_WAIT1, 0, FULL | ORPHAN),
            Cause::MemoryPressure,
        ),
        (
            "11e1 linger2 -1 close in FIN_WAIT2",
            sent(AbortOnLinger, CLOSE, FIN_WAIT2, FULL),
            Cause::FinWait2Abort,
        ),
        (
            "11d LAST_ACK with unsent data",
            sent(
                DisconnectWithData,
                CLOSE,
                LAST_ACK,
                FULL | LINGER_ZERO | UNSENT_DATA,
            ),
            Cause::DisconnectWithUnsentData,
        ),
        (
            "10b reconnect into TIME_WAIT",
            sent(InvalidAckSequence, SYN_SENT, 0, TRIGGER | TRIGGER_ACK | FULL),
            Cause::InvalidSegment,
        ),
        (
            "PAWS in SYN_SENT",
            sent(Rfc7323Paws, SYN_SENT, 0, TRIGGER | TRIGGER_ACK | TRIGGER_SYN),
            Cause::InvalidSegment,
        ),
        (
            "old ACK to a child",
            sent(TooOldAck, SYN_RECV, 0, TRIGGER | TRIGGER_ACK),
            Cause::InvalidSegment,
        ),
        (
            "ACK of unsent data",
            sent(AckUnsentData, SYN_RECV, 0, TRIGGER | TRIGGER_ACK),
            Cause::InvalidSegment,
        ),
        (
            "old ACK",
            sent(OldAck, SYN_RECV, 0, TRIGGER | TRIGGER_ACK),
            Cause::InvalidSegment,
        ),
        (
            "not specified: the socket decides",
            sent(NotSpecified, ESTABLISHED, 0, FULL),
            Cause::AdminAbort,
        ),
        ("MPTCP", sent(Other, ESTABLISHED, 0, FULL), Cause::Other),
    ];
    for (scenario, facts, expected) in table {
        assert_eq!(classify(facts), *expected, "{scenario}: {facts:?}");
    }
}

#[test]
fn received_resets_by_local_state() {
    let table: &[(&str, ResetFacts, Cause)] = &[
        (
            "1 refused",
            received(SYN_SENT, FULL | NOTHING_RECEIVED),
            Cause::ConnectionRefused,
        ),
        (
            "5a stale keep-alive",
            received(CLOSE_WAIT, FULL),
            Cause::StaleConnection,
        ),
        (
            "7a peer accept queue overflow",
            received(ESTABLISHED, FULL | NOTHING_RECEIVED),
            Cause::HandshakeReset,
        ),
        (
            "idle flow dropped by a middlebox",
            received(ESTABLISHED, FULL | IDLE_BEFORE_SEND),
            Cause::IdleReset,
        ),
        ("2 peer linger 0", received(ESTABLISHED, FULL), Cause::PeerReset),
        (
            "opened, idle, first request reset: the flow was forgotten",
            received(ESTABLISHED, FULL | NOTHING_RECEIVED | IDLE_BEFORE_SEND),
            Cause::IdleReset,
        ),
        (
            "14 listener closed: request acked by the queued child, no reply",
            received_acked(ESTABLISHED, FULL | NOTHING_RECEIVED),
            Cause::ResetBeforeResponse,
        ),
        (
            "server killed mid-upload (kill -9, unread body)",
            received_acked(ESTABLISHED, FULL | NOTHING_RECEIVED),
            Cause::ResetBeforeResponse,
        ),
        (
            "nginx reset_timedout_connection on a stalled body",
            received_acked(ESTABLISHED, FULL | NOTHING_RECEIVED | UNSENT_DATA),
            Cause::ResetBeforeResponse,
        ),
        (
            "request acked, silence, next send reset",
            received_acked(ESTABLISHED, FULL | NOTHING_RECEIVED | IDLE_BEFORE_SEND),
            Cause::IdleReset,
        ),
        (
            "reply received, then reset: mid-stream",
            received_acked(ESTABLISHED, FULL),
            Cause::PeerReset,
        ),
        (
            "acked request, FIN sent by us: closing wins",
            received_acked(FIN_WAIT1, FULL | NOTHING_RECEIVED),
            Cause::ResetWhileClosing,
        ),
        (
            "stale keep-alive with acked requests",
            received_acked(CLOSE_WAIT, FULL),
            Cause::StaleConnection,
        ),
        (
            "11d FIN_WAIT2",
            received(FIN_WAIT2, FULL),
            Cause::ResetWhileClosing,
        ),
        ("FIN_WAIT1", received(FIN_WAIT1, FULL), Cause::ResetWhileClosing),
        ("CLOSING", received(CLOSING, FULL), Cause::ResetWhileClosing),
        ("LAST_ACK", received(LAST_ACK, FULL), Cause::ResetWhileClosing),
        ("TFO child", received(SYN_RECV, FULL), Cause::Other),
        (
            "12a firewall REJECT of a SYN",
            received(SYN_SENT, FULL | INJECTED),
            Cause::Injected,
        ),
        (
            "12b firewall REJECT mid-connection",
            received(ESTABLISHED, FULL | INJECTED),
            Cause::Injected,
        ),
    ];
    for (scenario, facts, expected) in table {
        assert_eq!(classify(facts), *expected, "{scenario}: {facts:?}");
    }
}

#[test]
fn reason_names_parse_with_or_without_prefix() {
    assert_eq!(RstReason::from_name("SK_RST_REASON_NO_SOCKET"), NoSocket);
    assert_eq!(RstReason::from_name("TCP_STATE"), State);
    assert_eq!(RstReason::from_name("MPTCP_RST_EUNSPEC"), Other);
}

#[test]
fn state_label_prefers_the_prior_state_of_closed_sockets() {
    assert_eq!(sent(State, CLOSE, ESTABLISHED, 0).state_before(), ESTABLISHED);
    assert_eq!(sent(State, CLOSE, 0, 0).state_before(), CLOSE);
    assert_eq!(received(CLOSE_WAIT, 0).state_before(), CLOSE_WAIT);
    assert_eq!(
        sent(TimewaitSocket, TIME_WAIT, 0, TW_FIN_WAIT2).state_before(),
        FIN_WAIT2
    );
    assert_eq!(sent(TimewaitSocket, TIME_WAIT, 0, 0).state_before(), TIME_WAIT);
    assert_eq!(state_label(0), "none");
    assert_eq!(state_label(CLOSE_WAIT), "close_wait");
}
