//! The cause classifier: a pure function from the facts the kernel gathered about one reset to
//! one cause. Table-tested below; the kernel evidence behind each row is in KERNEL-RESETS.md.

use rstwatch_common::{CountKey, DIRECTION_SENT, REASON_NONE, STATE_NONE, extra_fact, fact, tcp_state};

use crate::causes::{Cause, Direction};

/// The kernel's `enum sk_rst_reason`, by name: its numbers differ between kernels, so values are
/// mapped to these names at run time from BTF (see `kernel::KernelLayout::reason_names`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RstReason {
    NotSpecified,
    NoSocket,
    InvalidAckSequence,
    Rfc7323Paws,
    TooOldAck,
    AckUnsentData,
    Flags,
    OldAck,
    AbortOnData,
    TimewaitSocket,
    InvalidSyn,
    AbortOnClose,
    AbortOnLinger,
    AbortOnMemory,
    State,
    KeepaliveTimeout,
    DisconnectWithData,
    /// MPTCP_RST_*, ERROR, or a name this build does not know.
    Other,
}

impl RstReason {
    /// From the kernel's name, with or without the `SK_RST_REASON_` prefix.
    pub fn from_name(name: &str) -> RstReason {
        match name.strip_prefix("SK_RST_REASON_").unwrap_or(name) {
            "NOT_SPECIFIED" => RstReason::NotSpecified,
            "NO_SOCKET" => RstReason::NoSocket,
            "TCP_INVALID_ACK_SEQUENCE" => RstReason::InvalidAckSequence,
            "TCP_RFC7323_PAWS" => RstReason::Rfc7323Paws,
            "TCP_TOO_OLD_ACK" => RstReason::TooOldAck,
            "TCP_ACK_UNSENT_DATA" => RstReason::AckUnsentData,
            "TCP_FLAGS" => RstReason::Flags,
            "TCP_OLD_ACK" => RstReason::OldAck,
            "TCP_ABORT_ON_DATA" => RstReason::AbortOnData,
            "TCP_TIMEWAIT_SOCKET" => RstReason::TimewaitSocket,
            "INVALID_SYN" => RstReason::InvalidSyn,
            "TCP_ABORT_ON_CLOSE" => RstReason::AbortOnClose,
            "TCP_ABORT_ON_LINGER" => RstReason::AbortOnLinger,
            "TCP_ABORT_ON_MEMORY" => RstReason::AbortOnMemory,
            "TCP_STATE" => RstReason::State,
            "TCP_KEEPALIVE_TIMEOUT" => RstReason::KeepaliveTimeout,
            "TCP_DISCONNECT_WITH_DATA" => RstReason::DisconnectWithData,
            _ => RstReason::Other,
        }
    }
}

/// Everything the classifier looks at. `reason` is None when the kernel does not report one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetFacts {
    pub direction: Direction,
    pub reason: Option<RstReason>,
    /// The state the tracepoint saw.
    pub state: u8,
    /// For sent resets in CLOSE, the state before the kernel closed the socket (0 if unknown).
    pub prior_state: u8,
    pub facts: u16,
    pub extra_facts: u8,
}

impl ResetFacts {
    pub fn from_key(key: &CountKey, reason_name: impl Fn(u16) -> Option<String>) -> ResetFacts {
        let direction =
            if key.direction == DIRECTION_SENT { Direction::Sent } else { Direction::Received };
        let reason = (key.reason != REASON_NONE).then(|| {
            reason_name(key.reason).map_or(RstReason::Other, |name| RstReason::from_name(&name))
        });
        ResetFacts {
            direction,
            reason,
            state: key.state,
            prior_state: key.prior_state,
            facts: key.facts,
            extra_facts: key.extra_facts,
        }
    }

    fn has(&self, bit: u16) -> bool {
        self.facts & bit != 0
    }

    fn has_extra(&self, bit: u8) -> bool {
        self.extra_facts & bit != 0
    }

    /// The local TCP state before the reset, as the `state` metric label reports it.
    pub fn state_before(&self) -> u8 {
        if self.direction == Direction::Sent && self.state == tcp_state::CLOSE && self.prior_state != 0 {
            self.prior_state
        } else if self.state == tcp_state::TIME_WAIT && self.has(fact::TW_FIN_WAIT2) {
            // The kernel keeps a closed-first FIN_WAIT2 connection as a time-wait mini-socket; for
            // the person reading the label it is still FIN_WAIT2.
            tcp_state::FIN_WAIT2
        } else {
            self.state
        }
    }
}

pub fn classify(f: &ResetFacts) -> Cause {
    match f.direction {
        Direction::Sent => classify_sent(f),
        Direction::Received => classify_received(f),
    }
}

fn classify_sent(f: &ResetFacts) -> Cause {
    use RstReason::*;
    // 6.10 and 6.11 name no reason for active resets (NOT_SPECIFIED): as good as none.
    let reason = match f.reason {
        None | Some(RstReason::NotSpecified) => return classify_sent_without_reason(f),
        Some(reason) => reason,
    };
    let trigger_syn = f.has(fact::TRIGGER_SYN);
    match reason {
        NoSocket if trigger_syn && !f.has(fact::TRIGGER_ACK) => Cause::NoListener,
        NoSocket => Cause::UnknownConnection,
        Flags if f.state == tcp_state::LISTEN => Cause::UnknownConnection,
        Flags => Cause::InvalidSegment,
        AbortOnClose => Cause::CloseWithUnreadData,
        State => classify_tcp_state(f),
        // linger2 < 0 also answers the peer's bare ACK of our FIN this way: nothing was sent after
        // close then, so it is the FIN_WAIT2 policy, not the peer writing late.
        AbortOnData if f.has(fact::TRIGGER) && !f.has(fact::TRIGGER_PAYLOAD) && !f.has(fact::TRIGGER_FIN) => {
            Cause::FinWait2Abort
        }
        AbortOnData => Cause::DataAfterClose,
        TimewaitSocket if f.has(fact::TW_FIN_WAIT2) && !trigger_syn => Cause::DataAfterClose,
        TimewaitSocket => Cause::TimewaitSegment,
        InvalidSyn if f.state == tcp_state::LISTEN && !trigger_syn => Cause::AcceptQueueOverflow,
        InvalidSyn => Cause::InvalidSegment,
        KeepaliveTimeout => Cause::KeepaliveTimeout,
        AbortOnMemory => Cause::MemoryPressure,
        AbortOnLinger => Cause::FinWait2Abort,
        DisconnectWithData => Cause::DisconnectWithUnsentData,
        InvalidAckSequence | Rfc7323Paws | TooOldAck | AckUnsentData | OldAck => Cause::InvalidSegment,
        NotSpecified | Other => Cause::Other,
    }
}

/// TCP_STATE is one reason for four different stories; the socket tells them apart.
fn classify_tcp_state(f: &ResetFacts) -> Cause {
    if f.state != tcp_state::CLOSE {
        // Only tcp_abort() and the FIN_WAIT2 timer reset without moving to CLOSE first.
        if f.state == tcp_state::FIN_WAIT2 && f.has(fact::ORPHAN) {
            return Cause::FinWait2Abort;
        }
        return Cause::AdminAbort;
    }
    if f.has(fact::ORPHAN) {
        // Never accepted: the listener went away (inet_csk_listen_stop).
        return Cause::ListenerClosed;
    }
    if f.has(fact::LINGER_ZERO) {
        return Cause::LingerZeroClose;
    }
    Cause::Other
}

/// Kernels before 6.10 (and active resets on 6.10/6.11) give no reason: fall back on the socket,
/// the trigger segment and the call path. What this cannot tell apart is listed in
/// `compat::AMBIGUOUS_WITHOUT_REASON` (and marked in README's compatibility table).
fn classify_sent_without_reason(f: &ResetFacts) -> Cause {
    let trigger_syn = f.has(fact::TRIGGER_SYN);
    if f.has(fact::TRIGGER) {
        return match f.state {
            // No socket at all (the kprobe fallback on old kernels): the peer's SYN found no
            // listener, anything else found no connection.
            STATE_NONE if trigger_syn && !f.has(fact::TRIGGER_ACK) => Cause::NoListener,
            STATE_NONE => Cause::UnknownConnection,
            tcp_state::TIME_WAIT if f.has(fact::TW_FIN_WAIT2) && !trigger_syn => Cause::DataAfterClose,
            tcp_state::TIME_WAIT => Cause::TimewaitSegment,
            // A bare ACK at a listener completes a handshake the full accept queue cannot take;
            // a half-open peer usually sends data (ambiguous: a bare ACK from one looks the same).
            tcp_state::LISTEN if !trigger_syn && !f.has(fact::TRIGGER_PAYLOAD) => Cause::AcceptQueueOverflow,
            tcp_state::LISTEN if !trigger_syn => Cause::UnknownConnection,
            tcp_state::LISTEN => Cause::InvalidSegment,
            // An orphan that got more from the peer after close (tcp_rcv_state_process → reset).
            tcp_state::CLOSE if f.has(fact::ORPHAN) => {
                if f.has(fact::TRIGGER_PAYLOAD) || f.has(fact::TRIGGER_FIN) {
                    Cause::DataAfterClose
                } else {
                    Cause::FinWait2Abort
                }
            }
            _ => Cause::InvalidSegment,
        };
    }
    match f.state {
        // Orphaned before the reset: the state the application's close() had reached says why.
        tcp_state::CLOSE if f.has(fact::ORPHAN) => match f.prior_state {
            // close() in FIN_WAIT2 with linger2 < 0.
            tcp_state::FIN_WAIT2 => Cause::FinWait2Abort,
            // close() had sent its FIN when tcp_check_oom() found too many orphans.
            tcp_state::FIN_WAIT1 | tcp_state::CLOSING | tcp_state::LAST_ACK => Cause::MemoryPressure,
            // Never accepted: the listener went away (inet_csk_listen_stop).
            _ => Cause::ListenerClosed,
        },
        tcp_state::CLOSE if f.has(fact::UNREAD_DATA) => Cause::CloseWithUnreadData,
        tcp_state::CLOSE if f.has(fact::LINGER_ZERO) => {
            if f.has(fact::UNSENT_DATA) && matches!(f.prior_state, tcp_state::CLOSING | tcp_state::LAST_ACK) {
                Cause::DisconnectWithUnsentData
            } else {
                Cause::LingerZeroClose
            }
        }
        // Timers and tcp_abort() reset without moving to CLOSE first; unanswered keepalive
        // probes say which one it was.
        tcp_state::FIN_WAIT2 if f.has(fact::ORPHAN) => Cause::FinWait2Abort,
        // An orphan's retransmission timer found too many orphans (tcp_out_of_resources).
        tcp_state::FIN_WAIT1 | tcp_state::CLOSING | tcp_state::LAST_ACK if f.has(fact::ORPHAN) => {
            Cause::MemoryPressure
        }
        tcp_state::CLOSE => Cause::Other,
        _ if f.has_extra(extra_fact::PROBES_UNANSWERED) => Cause::KeepaliveTimeout,
        _ if f.has(fact::FULL_SOCKET) => Cause::AdminAbort,
        _ => Cause::Other,
    }
}

fn classify_received(f: &ResetFacts) -> Cause {
    if f.has(fact::INJECTED) {
        return Cause::Injected;
    }
    match f.state {
        tcp_state::SYN_SENT => Cause::ConnectionRefused,
        tcp_state::CLOSE_WAIT => Cause::StaleConnection,
        tcp_state::ESTABLISHED => classify_received_established(f),
        tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK => {
            Cause::ResetWhileClosing
        }
        _ => Cause::Other,
    }
}

/// An open connection reset by its peer: what this side had sent, had acknowledged, had received
/// and how long it had been silent tell the stories apart.
fn classify_received_established(f: &ResetFacts) -> Cause {
    // Silence first: the reset answered the first send after at least --idle-threshold without a
    // segment from the peer (no ACK came after that send, or IDLE_BEFORE_SEND would be clear). The
    // peer or a middlebox lost the flow during the silence, whether or not it ever replied; a
    // server that crashes or gives up on an acknowledged request resets without waiting for us.
    if f.has(fact::IDLE_BEFORE_SEND) {
        return Cause::IdleReset;
    }
    if f.has(fact::NOTHING_RECEIVED) {
        // The peer's TCP took our request but its application never answered.
        if f.has_extra(extra_fact::DATA_ACKED) {
            return Cause::ResetBeforeResponse;
        }
        return Cause::HandshakeReset;
    }
    Cause::PeerReset
}

/// Lower-case name of a TCP state, as used in the `state` label; `none` without a socket.
pub fn state_label(state: u8) -> &'static str {
    match state {
        tcp_state::ESTABLISHED => "established",
        tcp_state::SYN_SENT => "syn_sent",
        tcp_state::SYN_RECV => "syn_recv",
        tcp_state::FIN_WAIT1 => "fin_wait1",
        tcp_state::FIN_WAIT2 => "fin_wait2",
        tcp_state::TIME_WAIT => "time_wait",
        tcp_state::CLOSE => "close",
        tcp_state::CLOSE_WAIT => "close_wait",
        tcp_state::LAST_ACK => "last_ack",
        tcp_state::LISTEN => "listen",
        tcp_state::CLOSING => "closing",
        tcp_state::NEW_SYN_RECV => "new_syn_recv",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RstReason::*;
    use fact::*;
    use tcp_state::*;

    fn sent(reason: RstReason, state: u8, prior_state: u8, facts: u16) -> ResetFacts {
        ResetFacts { direction: Direction::Sent, reason: Some(reason), state, prior_state, facts, extra_facts: 0 }
    }

    fn received(state: u8, facts: u16) -> ResetFacts {
        ResetFacts { direction: Direction::Received, reason: None, state, prior_state: 0, facts, extra_facts: 0 }
    }

    fn received_acked(state: u8, facts: u16) -> ResetFacts {
        ResetFacts { extra_facts: rstwatch_common::extra_fact::DATA_ACKED, ..received(state, facts) }
    }

    const FULL: u16 = FULL_SOCKET;

    /// One row per scenario of KERNEL-RESETS.md (a), with the facts the kernel reported there.
    #[test]
    fn sent_resets_on_kernels_with_a_reason() {
        let table: &[(&str, ResetFacts, Cause)] = &[
            ("1 SYN to a closed port", sent(NoSocket, 0, 0, TRIGGER | TRIGGER_SYN), Cause::NoListener),
            ("6b data to a vanished socket, no listener", sent(NoSocket, 0, 0, TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD), Cause::UnknownConnection),
            ("SYN-ACK to nothing", sent(NoSocket, 0, 0, TRIGGER | TRIGGER_SYN | TRIGGER_ACK), Cause::UnknownConnection),
            ("6a data at a listener", sent(Flags, LISTEN, 0, TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD), Cause::UnknownConnection),
            ("odd flags on a connection", sent(Flags, ESTABLISHED, 0, TRIGGER | FULL), Cause::InvalidSegment),
            ("3a close with 39 bytes unread", sent(AbortOnClose, CLOSE, ESTABLISHED, FULL | UNREAD_DATA), Cause::CloseWithUnreadData),
            ("2 SO_LINGER 0 close", sent(State, CLOSE, ESTABLISHED, FULL | LINGER_ZERO), Cause::LingerZeroClose),
            ("14 listener closed with un-accepted child", sent(State, CLOSE, ESTABLISHED, FULL | ORPHAN | NOTHING_RECEIVED), Cause::ListenerClosed),
            ("14 child inherited linger 0 from the listener", sent(State, CLOSE, ESTABLISHED, FULL | ORPHAN | LINGER_ZERO), Cause::ListenerClosed),
            ("11f ss -K", sent(State, ESTABLISHED, 0, FULL), Cause::AdminAbort),
            ("orphan FIN_WAIT2 timer", sent(State, FIN_WAIT2, 0, FULL | ORPHAN), Cause::FinWait2Abort),
            ("connect(AF_UNSPEC) disconnect", sent(State, CLOSE, ESTABLISHED, FULL), Cause::Other),
            ("4b data right after close", sent(AbortOnData, CLOSE, FIN_WAIT1, FULL | ORPHAN | TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD), Cause::DataAfterClose),
            ("11e2 linger2 -1, bare ACK of our FIN", sent(AbortOnData, CLOSE, FIN_WAIT1, FULL | ORPHAN | TRIGGER | TRIGGER_ACK), Cause::FinWait2Abort),
            ("peer FIN after our close, linger2 -1", sent(AbortOnData, CLOSE, FIN_WAIT2, FULL | ORPHAN | TRIGGER | TRIGGER_ACK | TRIGGER_FIN), Cause::DataAfterClose),
            ("5a stale keep-alive into FIN_WAIT2 time-wait", sent(TimewaitSocket, TIME_WAIT, 0, TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD | TW_FIN_WAIT2), Cause::DataAfterClose),
            ("SYN into a FIN_WAIT2 time-wait", sent(TimewaitSocket, TIME_WAIT, 0, TRIGGER | TRIGGER_SYN | TW_FIN_WAIT2), Cause::TimewaitSegment),
            ("segment into a real TIME_WAIT", sent(TimewaitSocket, TIME_WAIT, 0, TRIGGER | TRIGGER_ACK), Cause::TimewaitSegment),
            ("7a accept queue overflow", sent(InvalidSyn, LISTEN, 0, TRIGGER | TRIGGER_ACK), Cause::AcceptQueueOverflow),
            ("bad SYN to a request socket", sent(InvalidSyn, LISTEN, 0, TRIGGER | TRIGGER_SYN), Cause::InvalidSegment),
            ("9a keepalive timeout", sent(KeepaliveTimeout, ESTABLISHED, 0, FULL | IDLE_BEFORE_SEND), Cause::KeepaliveTimeout),
            ("11g tcp_check_oom at close()", sent(AbortOnMemory, CLOSE, FIN_WAIT1, FULL | ORPHAN), Cause::MemoryPressure),
            ("11g tcp_check_oom on an orphan's timer", sent(AbortOnMemory, FIN_WAIT1, 0, FULL | ORPHAN), Cause::MemoryPressure),
            ("11e1 linger2 -1 close in FIN_WAIT2", sent(AbortOnLinger, CLOSE, FIN_WAIT2, FULL), Cause::FinWait2Abort),
            ("11d LAST_ACK with unsent data", sent(DisconnectWithData, CLOSE, LAST_ACK, FULL | LINGER_ZERO | UNSENT_DATA), Cause::DisconnectWithUnsentData),
            ("10b reconnect into TIME_WAIT", sent(InvalidAckSequence, SYN_SENT, 0, TRIGGER | TRIGGER_ACK | FULL), Cause::InvalidSegment),
            ("PAWS in SYN_SENT", sent(Rfc7323Paws, SYN_SENT, 0, TRIGGER | TRIGGER_ACK | TRIGGER_SYN), Cause::InvalidSegment),
            ("old ACK to a child", sent(TooOldAck, SYN_RECV, 0, TRIGGER | TRIGGER_ACK), Cause::InvalidSegment),
            ("ACK of unsent data", sent(AckUnsentData, SYN_RECV, 0, TRIGGER | TRIGGER_ACK), Cause::InvalidSegment),
            ("old ACK", sent(OldAck, SYN_RECV, 0, TRIGGER | TRIGGER_ACK), Cause::InvalidSegment),
            ("not specified: the socket decides", sent(NotSpecified, ESTABLISHED, 0, FULL), Cause::AdminAbort),
            ("MPTCP", sent(Other, ESTABLISHED, 0, FULL), Cause::Other),
        ];
        for (scenario, facts, expected) in table {
            assert_eq!(classify(facts), *expected, "{scenario}: {facts:?}");
        }
    }

    #[test]
    fn received_resets_by_local_state() {
        let table: &[(&str, ResetFacts, Cause)] = &[
            ("1 refused", received(SYN_SENT, FULL | NOTHING_RECEIVED), Cause::ConnectionRefused),
            ("5a stale keep-alive", received(CLOSE_WAIT, FULL), Cause::StaleConnection),
            ("7a peer accept queue overflow", received(ESTABLISHED, FULL | NOTHING_RECEIVED), Cause::HandshakeReset),
            ("idle flow dropped by a middlebox", received(ESTABLISHED, FULL | IDLE_BEFORE_SEND), Cause::IdleReset),
            ("2 peer linger 0", received(ESTABLISHED, FULL), Cause::PeerReset),
            ("opened, idle, first request reset: the flow was forgotten", received(ESTABLISHED, FULL | NOTHING_RECEIVED | IDLE_BEFORE_SEND), Cause::IdleReset),
            ("14 listener closed: request acked by the queued child, no reply", received_acked(ESTABLISHED, FULL | NOTHING_RECEIVED), Cause::ResetBeforeResponse),
            ("server killed mid-upload (kill -9, unread body)", received_acked(ESTABLISHED, FULL | NOTHING_RECEIVED), Cause::ResetBeforeResponse),
            ("nginx reset_timedout_connection on a stalled body", received_acked(ESTABLISHED, FULL | NOTHING_RECEIVED | UNSENT_DATA), Cause::ResetBeforeResponse),
            ("request acked, silence, next send reset", received_acked(ESTABLISHED, FULL | NOTHING_RECEIVED | IDLE_BEFORE_SEND), Cause::IdleReset),
            ("reply received, then reset: mid-stream", received_acked(ESTABLISHED, FULL), Cause::PeerReset),
            ("acked request, FIN sent by us: closing wins", received_acked(FIN_WAIT1, FULL | NOTHING_RECEIVED), Cause::ResetWhileClosing),
            ("stale keep-alive with acked requests", received_acked(CLOSE_WAIT, FULL), Cause::StaleConnection),
            ("11d FIN_WAIT2", received(FIN_WAIT2, FULL), Cause::ResetWhileClosing),
            ("FIN_WAIT1", received(FIN_WAIT1, FULL), Cause::ResetWhileClosing),
            ("CLOSING", received(CLOSING, FULL), Cause::ResetWhileClosing),
            ("LAST_ACK", received(LAST_ACK, FULL), Cause::ResetWhileClosing),
            ("TFO child", received(SYN_RECV, FULL), Cause::Other),
            ("12a firewall REJECT of a SYN", received(SYN_SENT, FULL | INJECTED), Cause::Injected),
            ("12b firewall REJECT mid-connection", received(ESTABLISHED, FULL | INJECTED), Cause::Injected),
        ];
        for (scenario, facts, expected) in table {
            assert_eq!(classify(facts), *expected, "{scenario}: {facts:?}");
        }
    }

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
            ("1 SYN to a closed port (kprobe)", none(0, 0, TRIGGER | TRIGGER_SYN, FROM_KPROBE), Cause::NoListener),
            ("6b data to a vanished socket (kprobe)", none(0, 0, TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD, FROM_KPROBE), Cause::UnknownConnection),
            ("TFO: data on a SYN-ACK'd child that is gone (kprobe)", none(0, 0, TRIGGER | TRIGGER_ACK, FROM_KPROBE), Cause::UnknownConnection),
            ("5a stale keep-alive into FIN_WAIT2 time-wait (kprobe)", none(TIME_WAIT, 0, TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD | TW_FIN_WAIT2, FROM_KPROBE), Cause::DataAfterClose),
            ("SYN into a FIN_WAIT2 time-wait (kprobe)", none(TIME_WAIT, 0, TRIGGER | TRIGGER_SYN | TW_FIN_WAIT2, FROM_KPROBE), Cause::TimewaitSegment),
            ("segment into a real TIME_WAIT (kprobe)", none(TIME_WAIT, 0, TRIGGER | TRIGGER_ACK, FROM_KPROBE), Cause::TimewaitSegment),
            ("6a data at a listener", none(LISTEN, 0, TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD, 0), Cause::UnknownConnection),
            ("7a accept queue overflow: bare ACK at the listener", none(LISTEN, 0, TRIGGER | TRIGGER_ACK, 0), Cause::AcceptQueueOverflow),
            ("bad SYN at a listener", none(LISTEN, 0, TRIGGER | TRIGGER_SYN, 0), Cause::InvalidSegment),
            ("10b reconnect into TIME_WAIT", none(SYN_SENT, 0, TRIGGER | TRIGGER_ACK | FULL, 0), Cause::InvalidSegment),
            ("4b data right after close", none(CLOSE, FIN_WAIT1, FULL | ORPHAN | TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD, 0), Cause::DataAfterClose),
            ("4c data into a full FIN_WAIT2 orphan", none(CLOSE, FIN_WAIT2, FULL | ORPHAN | TRIGGER | TRIGGER_ACK | TRIGGER_PAYLOAD, 0), Cause::DataAfterClose),
            ("11e2 linger2 -1, bare ACK of our FIN", none(CLOSE, FIN_WAIT1, FULL | ORPHAN | TRIGGER | TRIGGER_ACK, 0), Cause::FinWait2Abort),
            ("3a unread", none(CLOSE, ESTABLISHED, FULL | UNREAD_DATA, 0), Cause::CloseWithUnreadData),
            ("14 listener closed", none(CLOSE, ESTABLISHED, FULL | ORPHAN, 0), Cause::ListenerClosed),
            ("14 listener closed, child with an unread request", none(CLOSE, ESTABLISHED, FULL | ORPHAN | UNREAD_DATA, 0), Cause::ListenerClosed),
            ("11e1 linger2 -1 close in FIN_WAIT2", none(CLOSE, FIN_WAIT2, FULL | ORPHAN, 0), Cause::FinWait2Abort),
            ("2 linger 0", none(CLOSE, ESTABLISHED, FULL | LINGER_ZERO, 0), Cause::LingerZeroClose),
            ("11d linger 0 in LAST_ACK", none(CLOSE, LAST_ACK, FULL | LINGER_ZERO | UNSENT_DATA, 0), Cause::DisconnectWithUnsentData),
            ("9a keepalive timeout", none(ESTABLISHED, 0, FULL, PROBES_UNANSWERED), Cause::KeepaliveTimeout),
            ("11f ss -K", none(ESTABLISHED, 0, FULL, 0), Cause::AdminAbort),
            ("orphan FIN_WAIT2 timer", none(FIN_WAIT2, 0, FULL | ORPHAN, 0), Cause::FinWait2Abort),
            ("11g close() with too many orphans", none(CLOSE, FIN_WAIT1, FULL | ORPHAN, 0), Cause::MemoryPressure),
            ("11g close() in CLOSE_WAIT with too many orphans", none(CLOSE, LAST_ACK, FULL | ORPHAN, 0), Cause::MemoryPressure),
            ("11g orphan's retransmit timer, too many orphans", none(FIN_WAIT1, 0, FULL | ORPHAN, 0), Cause::MemoryPressure),
            ("connect(AF_UNSPEC)", none(CLOSE, ESTABLISHED, FULL, 0), Cause::Other),
            ("no socket, no segment", none(0, 0, 0, 0), Cause::Other),
        ];
        for (scenario, facts, expected) in table {
            assert_eq!(classify(facts), *expected, "{scenario}: {facts:?}");
        }
        // 6.10 and 6.11 report NOT_SPECIFIED for active resets: the same fallback applies.
        let unspecified = ResetFacts { reason: Some(NotSpecified), ..none(ESTABLISHED, 0, FULL, PROBES_UNANSWERED) };
        assert_eq!(classify(&unspecified), Cause::KeepaliveTimeout);
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
        assert_eq!(sent(TimewaitSocket, TIME_WAIT, 0, TW_FIN_WAIT2).state_before(), FIN_WAIT2);
        assert_eq!(sent(TimewaitSocket, TIME_WAIT, 0, 0).state_before(), TIME_WAIT);
        assert_eq!(state_label(0), "none");
        assert_eq!(state_label(CLOSE_WAIT), "close_wait");
    }
}
