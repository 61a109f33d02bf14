//! The taxonomy: every cause rstwatch can report, with the words on-call engineers read.
//! The classifier, the metrics, the CLI and the docs all take their text from this one table.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Sent,
    Received,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    // sent by this host
    NoListener,
    UnknownConnection,
    CloseWithUnreadData,
    LingerZeroClose,
    DataAfterClose,
    TimewaitSegment,
    ListenerClosed,
    AcceptQueueOverflow,
    KeepaliveTimeout,
    AdminAbort,
    MemoryPressure,
    FinWait2Abort,
    DisconnectWithUnsentData,
    InvalidSegment,
    // received by this host
    ConnectionRefused,
    StaleConnection,
    HandshakeReset,
    ResetBeforeResponse,
    IdleReset,
    PeerReset,
    ResetWhileClosing,
    Injected,
    // either
    Other,
}

/// What a person needs to know about one cause.
pub struct CauseInfo {
    pub cause: Cause,
    pub label: &'static str,
    pub directions: &'static [Direction],
    /// One line: what happened.
    pub meaning: &'static str,
    /// One line: what to do about it.
    pub remedy: &'static str,
    /// Who notices, and the error their runtime reports (Java, Go, Python).
    pub app_error: &'static str,
    /// The TCP state (metric label) this cause is normally seen in; used to pre-create series.
    pub typical_state: &'static str,
}

const SENT: &[Direction] = &[Direction::Sent];
const RECEIVED: &[Direction] = &[Direction::Received];
const BOTH: &[Direction] = &[Direction::Sent, Direction::Received];

pub const CAUSES: &[CauseInfo] = &[
    CauseInfo {
        cause: Cause::NoListener,
        label: "no_listener",
        directions: SENT,
        meaning: "A client connected to a port where nothing listens on this host; it sees \"Connection refused\".",
        remedy: "Check the service is up and bound to that address and port (ss -ltnp); fix service discovery, health checks or start-up order.",
        app_error: "The client: Java \"java.net.ConnectException: Connection refused\"; Go \"connect: connection refused\"; Python ConnectionRefusedError [Errno 111]",
        typical_state: "none",
    },
    CauseInfo {
        cause: Cause::UnknownConnection,
        label: "unknown_connection",
        directions: SENT,
        meaning: "The peer used a connection this host has no record of: half-open after a restart or crash, or NAT/load-balancer state loss.",
        remedy: "Look for restarts or failovers of this service at that time; keep keepalives below NAT/LB idle timeouts; check LB hashing.",
        app_error: "The peer: Java \"java.net.SocketException: Connection reset\"; Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104]",
        typical_state: "listen",
    },
    CauseInfo {
        cause: Cause::CloseWithUnreadData,
        label: "close_with_unread_data",
        directions: SENT,
        meaning: "The application closed, exited or crashed with received data still unread, so the kernel had to reset.",
        remedy: "Read the whole request (or shutdown(SHUT_WR) and drain to EOF) before close; for crashes check the process's exit reason (OOM kill, panic).",
        app_error: "The peer: Java \"java.net.SocketException: Connection reset\"; Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104]",
        typical_state: "established",
    },
    CauseInfo {
        cause: Cause::LingerZeroClose,
        label: "linger_zero_close",
        directions: SENT,
        meaning: "The application chose an abortive close (SO_LINGER on with timeout 0) instead of a FIN.",
        remedy: "Check the application's or proxy's timeout/abort settings; remove SO_LINGER=0 if it is not intended.",
        app_error: "The peer: Java \"java.net.SocketException: Connection reset\"; Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104]",
        typical_state: "established",
    },
    CauseInfo {
        cause: Cause::DataAfterClose,
        label: "data_after_close",
        directions: SENT,
        meaning: "The peer kept sending on a connection this host had already closed: a keep-alive timeout mismatch.",
        remedy: "Make the client pool's idle timeout shorter than this server's keep-alive timeout; enable stale-connection checks and retry idempotent requests.",
        app_error: "The client: EOF, then Java \"java.net.SocketException: Broken pipe\" or Apache HttpClient NoHttpResponseException; Go \"write: broken pipe\" or \"EOF\"; Python BrokenPipeError or http.client.RemoteDisconnected",
        typical_state: "fin_wait2",
    },
    CauseInfo {
        cause: Cause::TimewaitSegment,
        label: "timewait_segment",
        directions: SENT,
        meaning: "A segment arrived for a connection that had already finished and sits in TIME_WAIT.",
        remedy: "Usually harmless; if frequent, look for clients reusing source ports or 4-tuples (NAT port reuse).",
        app_error: "Usually nobody: the connection was already finished",
        typical_state: "time_wait",
    },
    CauseInfo {
        cause: Cause::ListenerClosed,
        label: "listener_closed",
        directions: SENT,
        meaning: "The server closed its listening socket while handshaken connections still waited in its accept queue.",
        remedy: "Drain gracefully: stop new traffic at the load balancer first, accept until the queue is empty, or hand over with SO_REUSEPORT.",
        app_error: "The clients in the queue: Java \"java.net.SocketException: Connection reset\"; Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104]",
        typical_state: "established",
    },
    CauseInfo {
        cause: Cause::AcceptQueueOverflow,
        label: "accept_queue_overflow",
        directions: SENT,
        meaning: "The accept queue was full (net.ipv4.tcp_abort_on_overflow=1): the application did not call accept() fast enough.",
        remedy: "Scale workers or speed up the accept loop; raise the listen() backlog and net.core.somaxconn.",
        app_error: "The client, right after a successful connect: Java \"java.net.SocketException: Connection reset\"; Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104]",
        typical_state: "listen",
    },
    CauseInfo {
        cause: Cause::KeepaliveTimeout,
        label: "keepalive_timeout",
        directions: SENT,
        meaning: "The peer stopped answering TCP keepalive probes: its host or the path to it is dead or blackholed.",
        remedy: "Check the peer's reachability and firewalls that silently drop idle flows; tune keepalive or TCP_USER_TIMEOUT.",
        app_error: "The local app: Java \"java.net.SocketException: Connection timed out\"; Go \"read: connection timed out\"; Python TimeoutError [Errno 110]",
        typical_state: "established",
    },
    CauseInfo {
        cause: Cause::AdminAbort,
        label: "admin_abort",
        directions: SENT,
        meaning: "An administrator or agent destroyed the socket (ss -K, SOCK_DESTROY, a BPF socket iterator).",
        remedy: "Identify the actor from the event's process; expected during drains and deploys, otherwise audit that tooling.",
        app_error: "The local app: Java \"java.net.SocketException: Software caused connection abort\"; Go \"software caused connection abort\"; Python ConnectionAbortedError [Errno 103]; the peer: connection reset",
        typical_state: "established",
    },
    CauseInfo {
        cause: Cause::MemoryPressure,
        label: "memory_pressure",
        directions: SENT,
        meaning: "The kernel killed the connection to protect memory: too many orphaned sockets or TCP memory over its hard limit.",
        remedy: "Check net.ipv4.tcp_max_orphans and tcp_mem; find what leaves orphans behind (peers not ACKing FINs).",
        app_error: "The peer: Java \"java.net.SocketException: Connection reset\"; Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104]",
        typical_state: "established",
    },
    CauseInfo {
        cause: Cause::FinWait2Abort,
        label: "fin_wait2_abort",
        directions: SENT,
        meaning: "This side closed, the peer never closed its side, and FIN_WAIT2 policy (TCP_LINGER2 < 0 or its timeout) cut the connection.",
        remedy: "Fix the peer that leaves connections half-closed; review TCP_LINGER2 use and net.ipv4.tcp_fin_timeout.",
        app_error: "The peer: EOF, then \"Broken pipe\" (Java SocketException, Go \"write: broken pipe\", Python BrokenPipeError) on its next write",
        typical_state: "fin_wait2",
    },
    CauseInfo {
        cause: Cause::DisconnectWithUnsentData,
        label: "disconnect_with_unsent_data",
        directions: SENT,
        meaning: "A close or disconnect threw away data that was still queued to send.",
        remedy: "Let the application finish sending (no SO_LINGER=0 while data is queued); data was lost.",
        app_error: "The peer: part of the data, then Java \"java.net.SocketException: Connection reset\"; Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104]",
        typical_state: "last_ack",
    },
    CauseInfo {
        cause: Cause::InvalidSegment,
        label: "invalid_segment",
        directions: SENT,
        meaning: "A segment did not fit the connection: source-port reuse into TIME_WAIT, a sequence or timestamp mismatch, odd flags.",
        remedy: "Capture the flow (tcpdump on the 4-tuple); avoid fixed source ports, check NAT port allocation; usually benign at low rates.",
        app_error: "The connecting app: Java \"java.net.ConnectException: Connection refused\"; Go \"connect: connection refused\"; Python ConnectionRefusedError, often after a retry",
        typical_state: "syn_sent",
    },
    CauseInfo {
        cause: Cause::ConnectionRefused,
        label: "connection_refused",
        directions: RECEIVED,
        meaning: "The peer (or a firewall on the way) refused the connection: nothing listens there.",
        remedy: "Check the target address and port, that the service is up, and firewall REJECT rules.",
        app_error: "This app: Java \"java.net.ConnectException: Connection refused\"; Go \"connect: connection refused\"; Python ConnectionRefusedError [Errno 111]",
        typical_state: "syn_sent",
    },
    CauseInfo {
        cause: Cause::StaleConnection,
        label: "stale_connection",
        directions: RECEIVED,
        meaning: "The peer had already closed the connection (FIN) and this side used it anyway: a pooled keep-alive connection reused after the server's idle timeout.",
        remedy: "Make the client pool's idle timeout shorter than the server's keep-alive timeout; check connections before reuse and retry idempotent requests.",
        app_error: "This app: EOF or Java \"java.net.SocketException: Broken pipe\" / NoHttpResponseException; Go \"write: broken pipe\" / \"http: server closed idle connection\"; Python BrokenPipeError / http.client.RemoteDisconnected",
        typical_state: "close_wait",
    },
    CauseInfo {
        cause: Cause::HandshakeReset,
        label: "handshake_reset",
        directions: RECEIVED,
        meaning: "Reset in the opening exchange, before the peer acknowledged any data from this side or sent any: a TLS or protocol mismatch, or the peer's accept queue overflowed.",
        remedy: "Check TLS/protocol settings on both ends and the peer's accept-queue overflows (nstat TcpExtListenOverflows).",
        app_error: "This app: Java \"java.net.SocketException: Connection reset\"; Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104] (or a TLS handshake error such as javax.net.ssl.SSLException)",
        typical_state: "established",
    },
    CauseInfo {
        cause: Cause::ResetBeforeResponse,
        label: "reset_before_response",
        directions: RECEIVED,
        meaning: "The peer acknowledged what this side sent (a request), then reset before sending a single byte back: the server crashed, was killed (kill -9, OOM), or gave up on the request (a proxy's or server's request timeout with an abortive close).",
        remedy: "Look at the server at that time: restarts, OOM kills, crash logs, request or body timeouts (nginx reset_timedout_connection, proxy timeouts); retry only idempotent requests.",
        app_error: "This app, while sending or awaiting the response: Java \"java.net.SocketException: Connection reset\" (or \"Broken pipe\" mid-upload); Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104]",
        typical_state: "established",
    },
    CauseInfo {
        cause: Cause::IdleReset,
        label: "idle_reset",
        directions: RECEIVED,
        meaning: "The connection had been idle before this side sent on it: a NAT, load balancer or firewall dropped the idle flow, or the peer restarted.",
        remedy: "Keep connection idle timeouts (pools, keepalives) below the middlebox's idle timeout; retry idempotent requests.",
        app_error: "This app, on the first request after the idle period: Java \"java.net.SocketException: Connection reset\"; Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104]",
        typical_state: "established",
    },
    CauseInfo {
        cause: Cause::PeerReset,
        label: "peer_reset",
        directions: RECEIVED,
        meaning: "The peer aborted the connection mid-stream (it crashed, closed with unread data, or used SO_LINGER=0).",
        remedy: "Look at the peer's logs at that time; run rstwatch on the peer to see its side of the reset.",
        app_error: "This app: Java \"java.net.SocketException: Connection reset\"; Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104]",
        typical_state: "established",
    },
    CauseInfo {
        cause: Cause::ResetWhileClosing,
        label: "reset_while_closing",
        directions: RECEIVED,
        meaning: "The peer reset the connection while it was being closed (this side had sent or received a FIN).",
        remedy: "Usually the peer discarding data on close; check whether data was lost on the peer's side.",
        app_error: "This app, if it still reads: Java \"java.net.SocketException: Connection reset\"; Go \"read: connection reset by peer\"; Python ConnectionResetError [Errno 104]",
        typical_state: "fin_wait2",
    },
    CauseInfo {
        cause: Cause::Injected,
        label: "injected",
        directions: RECEIVED,
        meaning: "No TCP stack sent this reset: the local firewall (netfilter REJECT with tcp-reset) made it, and the peer was never told.",
        remedy: "Review firewall rules and network policies (nft list ruleset, iptables-save, Kubernetes NetworkPolicy); the application is not at fault.",
        app_error: "This app: Java \"java.net.ConnectException: Connection refused\" or \"Connection reset\"; Go \"connection refused\" / \"connection reset by peer\"; Python ConnectionRefusedError / ConnectionResetError",
        typical_state: "syn_sent",
    },
    CauseInfo {
        cause: Cause::Other,
        label: "other",
        directions: BOTH,
        meaning: "A reset rstwatch cannot attribute to a known cause; the event keeps the kernel's reason.",
        remedy: "Look at the event's kernel reason and state; capture the flow if it repeats.",
        app_error: "Depends on the state; usually a connection reset",
        typical_state: "none",
    },
];

impl Cause {
    pub fn info(self) -> &'static CauseInfo {
        CAUSES
            .iter()
            .find(|info| info.cause == self)
            .expect("every cause has an entry in CAUSES")
    }

    pub fn label(self) -> &'static str {
        self.info().label
    }

    pub fn from_label(label: &str) -> Option<Cause> {
        CAUSES
            .iter()
            .find(|info| info.label == label)
            .map(|info| info.cause)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_exactly_one_entry_and_a_unique_label() {
        let mut labels: Vec<_> = CAUSES.iter().map(|info| info.label).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), CAUSES.len());
        for info in CAUSES {
            assert_eq!(info.cause.info().label, info.label);
            assert_eq!(Cause::from_label(info.label), Some(info.cause));
            assert!(!info.meaning.is_empty() && !info.remedy.is_empty() && !info.app_error.is_empty());
            assert!(!info.meaning.contains('\n') && !info.remedy.contains('\n'));
        }
    }
}

/// The README's cause table, rendered from `CAUSES`; a test keeps the README in step with it.
#[cfg(test)]
pub fn markdown_table() -> String {
    let mut table = String::from(
        "| direction | cause | what happened | what the application sees | what to do |\n|---|---|---|---|---|\n",
    );
    for info in CAUSES {
        let directions: Vec<_> = info.directions.iter().map(|d| d.label()).collect();
        table.push_str(&format!(
            "| {} | `{}` | {} | {} | {} |\n",
            directions.join(", "),
            info.label,
            info.meaning.replace('|', "\\|"),
            info.app_error.replace('|', "\\|"),
            info.remedy.replace('|', "\\|")
        ));
    }
    table
}

#[cfg(test)]
mod readme {
    #[test]
    fn readme_cause_table_matches_the_code() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md at the workspace root");
        let table = super::markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's cause table is out of date; replace it with:\n{table}"
        );
    }
}
