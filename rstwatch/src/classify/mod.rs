//! The cause classifier: a pure function from the facts the kernel gathered about one reset to
//! one cause. Table-tested below; the kernel evidence behind each row is in docs/kernel.md.

pub mod causes;
pub mod coverage;

use std::collections::BTreeMap;

use rstwatch_common::{CountKey, DIRECTION_SENT, REASON_NONE, STATE_NONE, extra_fact, fact, tcp_state};

use self::causes::{Cause, Direction};

/// Classifies kernel count keys and event keys: this kernel's `sk_rst_reason` numbering
/// (`load::kernel::KernelLayout::reason_names`) and the classifier's facts from them.
#[derive(Clone)]
pub struct Classifier {
    pub reason_names: BTreeMap<u16, String>,
}

impl Classifier {
    pub fn facts(&self, key: &CountKey) -> ResetFacts {
        ResetFacts::from_key(key, |value| self.reason_names.get(&value).map(String::as_str))
    }
}

/// The kernel's `enum sk_rst_reason`, by name: its numbers differ between kernels, so values are
/// mapped to these names at run time from BTF (see `load::kernel::KernelLayout::reason_names`).
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
    pub fn from_key<'a>(key: &CountKey, reason_name: impl Fn(u16) -> Option<&'a str>) -> ResetFacts {
        let direction = if key.direction == DIRECTION_SENT {
            Direction::Sent
        } else {
            Direction::Received
        };
        let reason = (key.reason != REASON_NONE)
            .then(|| reason_name(key.reason).map_or(RstReason::Other, RstReason::from_name));
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
/// `coverage::AMBIGUOUS_WITHOUT_REASON` (and marked in README's compatibility table).
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
mod tests;
