//! Types shared by the eBPF programs and the daemon. Every struct here crosses the
//! kernel/user boundary byte for byte, so each is `#[repr(C)]`, and their layouts are checked at
//! compile time at the end of this file.
#![no_std]

/// First field of every ring-buffer record: what follows.
pub const EVENT_RESET: u32 = 1;
pub const EVENT_SOCKET_ERROR: u32 = 2;

/// Direction of a reset as seen from this host.
pub const DIRECTION_SENT: u8 = 1;
pub const DIRECTION_RECEIVED: u8 = 2;

/// `CountKey::reason` when the kernel gives no `sk_rst_reason` (before 6.10, and for received resets).
pub const REASON_NONE: u16 = u16::MAX;

/// Address families as the kernel numbers them (`linux/socket.h`); the eBPF side has no libc.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `CountKey::state` when the reset had no socket (NO_SOCKET replies).
pub const STATE_NONE: u8 = 0;

/// The hooks rstwatch attaches, and the names of the eBPF object's maps.
pub mod probes;

mod config;
pub use config::{ABSENT, Config, FieldOffset};

/// TCP states as numbered by the kernel (`include/net/tcp_states.h`); these have been stable since 2.6.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// Bits of `CountKey::facts`: the discrete facts the classifier needs, gathered in the kernel so
/// that the in-kernel counters can be attributed to a cause exactly, without the ring buffer.
pub mod fact {
    /// The reset answers an incoming segment (passive reset); the trigger bits below are valid.
    pub const TRIGGER: u16 = 1 << 0;
    pub const TRIGGER_SYN: u16 = 1 << 1;
    pub const TRIGGER_ACK: u16 = 1 << 2;
    pub const TRIGGER_FIN: u16 = 1 << 3;
    /// The trigger segment carried payload bytes.
    pub const TRIGGER_PAYLOAD: u16 = 1 << 4;
    /// `sk->sk_socket == NULL`: the application closed the socket, or never accepted it.
    pub const ORPHAN: u16 = 1 << 5;
    /// SO_LINGER on with a zero timeout.
    pub const LINGER_ZERO: u16 = 1 << 6;
    /// A time-wait socket that stands for FIN_WAIT2 (we closed first, the peer did not).
    pub const TW_FIN_WAIT2: u16 = 1 << 7;
    /// A full socket that never received a payload byte (`bytes_received == 0`).
    pub const NOTHING_RECEIVED: u16 = 1 << 8;
    /// The connection had been idle at least the idle threshold before its last send.
    pub const IDLE_BEFORE_SEND: u16 = 1 << 9;
    /// Received bytes the application never read (`rcv_nxt - copied_seq > 0`).
    pub const UNREAD_DATA: u16 = 1 << 10;
    /// Bytes queued but never sent (`write_seq - snd_nxt > 0`).
    pub const UNSENT_DATA: u16 = 1 << 11;
    /// The socket was a full socket (not time-wait, request or none), so its fields were read.
    pub const FULL_SOCKET: u16 = 1 << 12;
    /// The socket was opened passively (accepted from a listener).
    pub const PASSIVE: u16 = 1 << 13;
    /// A received reset answering a segment the local firewall (netfilter) had just rejected:
    /// no TCP stack sent it.
    pub const INJECTED: u16 = 1 << 14;
    /// The socket's owner was recorded (in process context, or inherited from its listener).
    pub const OWNER_KNOWN: u16 = 1 << 15;
}

/// Bits of `CountKey::extra_facts`.
pub mod extra_fact {
    /// Keepalive probes went unanswered (`icsk_probes_out > 0`): what tells a keepalive timeout
    /// from an admin abort on kernels that give no reset reason.
    pub const PROBES_UNANSWERED: u8 = 1 << 0;
    /// Seen by the kprobe on tcp_v4/v6_send_reset that stands in for the tracepoint on kernels
    /// before 6.10, whose tracepoint skips resets sent without a full socket.
    pub const FROM_KPROBE: u8 = 1 << 1;
    /// The peer acknowledged payload this side sent (`bytes_acked` beyond the SYN, which a
    /// connecting socket counts as one byte and an accepted one does not): tells a reset after a
    /// request was delivered from one in the opening exchange.
    pub const DATA_ACKED: u8 = 1 << 2;
    /// The service port is counted as 0 because `--max-ports` ports already have a label of
    /// their own (the cap is applied in the kernel, so a port flood does not fill the count map).
    pub const PORT_CAPPED: u8 = 1 << 3;
}

/// Bits of `ResetEvent::flags`: facts about one event that do not take part in counting.
pub mod event_flag {
    /// This sent reset followed a `tcp_receive_reset` for the same socket that the kernel raised
    /// itself (data on a closing orphan), not a received RST; that received count was taken back.
    pub const UNDID_FALSE_RECEIVE: u32 = 1 << 0;
    /// The connection's birth was seen, so `age_jiffies` is valid.
    pub const BIRTH_KNOWN: u32 = 1 << 1;
    /// The received reset may be the kernel's own (see UNDID_FALSE_RECEIVE); wait for the sent one.
    pub const RECEIVE_WHILE_CLOSING: u32 = 1 << 2;
    /// The connection came from a listener, as `fact::PASSIVE`: the programs branch on this copy,
    /// never on `facts`, so that the verifier need not walk every combination of facts.
    pub const ACCEPTED: u32 = 1 << 3;
}

/// Indexes of the per-CPU `LOST` array.
pub mod lost {
    /// Event details dropped because the ring buffer was full; counters stay exact.
    pub const RING_BUFFER_FULL: u32 = 0;
    /// The count map was full; the reset was counted under port 0 ("other").
    pub const COUNT_MAP_FULL: u32 = 1;
    /// Neither the key nor its port-0 fallback could be stored: the reset was not counted by cause.
    pub const COUNT_UNRECORDED: u32 = 2;
    /// Event details not sent because this CPU had used its per-second event budget (a storm);
    /// counts stay exact.
    pub const OVER_EVENT_BUDGET: u32 = 3;
    pub const LEN: u32 = 4;
}

/// The process that owns a socket: the one that connected it, or that created its listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Process id (the kernel's thread-group id) and the id of the thread that acted: the kernel's
    /// `pid`, which names a thread (userspace calls it `Process::tid`).
    pub tgid: u32,
    pub pid: u32,
    /// cgroup v2 id (`bpf_get_current_cgroup_id`), 0 if unknown.
    pub cgroup_id: u64,
    /// The process's name: its thread-group leader's comm (`java`, not `http-nio-8080-e`).
    pub comm: [u8; 16],
    /// The acting thread's own name, which JVMs, Tomcat and Netty set per pool.
    pub thread_comm: [u8; 16],
}

/// Key of the in-kernel per-CPU counter map. One entry per distinct set of classifier inputs and
/// service port; userspace maps each key to a cause with the pure classifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CountKey {
    /// Service port (the listener's port, whichever side we are); 0 = not known / overflow.
    pub port: u16,
    /// Raw `enum sk_rst_reason` value as this kernel numbers it, or REASON_NONE.
    pub reason: u16,
    pub facts: u16,
    pub direction: u8,
    /// TCP state the tracepoint saw (sent: the tracepoint's `state`; received: `sk_state`).
    pub state: u8,
    /// For sent resets in CLOSE: the state before the kernel closed the socket to reset it
    /// (from `inet_sock_set_state`), or STATE_NONE if that transition was not seen.
    pub prior_state: u8,
    /// More facts (`extra_fact::*`): `facts` has no free bit left.
    pub extra_facts: u8,
    pub _pad: [u8; 2],
    /// The owner's command name; zero when the owner is not known or there is no socket.
    pub comm: [u8; 16],
    pub _pad2: [u8; 4],
    /// The owner's cgroup v2 id (its container, in Kubernetes mode its pod); 0 when not known.
    pub cgroup_id: u64,
}

/// Key of the in-kernel socket-error counter map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ErrorKey {
    /// Positive errno the kernel queued on the socket (ECONNRESET, EPIPE, ...).
    pub errno: u16,
    pub port: u16,
    pub comm: [u8; 16],
}

/// An error the kernel queued on a socket for its application, because of a reset.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketErrorEvent {
    /// EVENT_SOCKET_ERROR.
    pub kind: u32,
    pub flags: u32,
    pub key: ErrorKey,
    pub _pad: [u8; 4],
    pub ts_ns: u64,
    pub skaddr: u64,
    pub owner: Owner,
}

/// Per-event details, sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResetEvent {
    /// EVENT_RESET.
    pub kind: u32,
    pub key: CountKey,
    /// TCP flags byte of the trigger segment (FIN=1 SYN=2 RST=4 PSH=8 ACK=16).
    pub trigger_flags: u8,
    /// `tw_substate` of a time-wait socket.
    pub tw_substate: u8,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub trigger_payload: u32,
    pub unread_bytes: u32,
    pub unsent_bytes: u32,
    /// Task running when the tracepoint fired (not necessarily the socket owner).
    pub tgid: u32,
    pub pid: u32,
    pub local_port: u16,
    pub remote_port: u16,
    /// Low 32 bits of `jiffies` when the event fired, and the socket's jiffies stamps.
    pub now_jiffies: u32,
    pub lsndtime: u32,
    pub rcv_tstamp: u32,
    pub lrcvtime: u32,
    pub flags: u32,
    /// CLOCK_MONOTONIC (`bpf_ktime_get_ns`) when the event was made: what orders events and
    /// links a socket error to its reset in userspace.
    pub ts_ns: u64,
    pub skaddr: u64,
    /// How long ago the connection was born, in jiffies (valid with BIRTH_KNOWN).
    pub age_jiffies: u64,
    pub bytes_received: u64,
    pub bytes_acked: u64,
    /// Received resets: the tracepoint's `sock_cookie`; 0 otherwise.
    pub cookie: u64,
    /// IPv4 addresses in the first 4 bytes; network byte order.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub comm: [u8; 16],
    pub owner: Owner,
}

/// What the kernel remembers per connection between its state changes and its reset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnInfo {
    /// `jiffies` when the connection was born (SYN_SENT / SYN_RECV), 0 if unseen.
    pub birth_jiffies: u64,
    /// State before the most recent transition into CLOSE.
    pub prior_state: u8,
    pub passive: u8,
    pub owner_known: u8,
    pub _pad: [u8; 5],
    pub owner: Owner,
}

/// A connection seen from this host, for maps keyed by 4-tuple (IPv4 in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    pub _pad: u16,
}

/// Key of the listener-owner map: children inherit the owner of the listener they came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// Network namespace inode: every pod may listen on the same port.
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no pointers.
    unsafe impl aya::Pod for super::CountKey {}
    unsafe impl aya::Pod for super::ResetEvent {}
    unsafe impl aya::Pod for super::ConnInfo {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ErrorKey {}
    unsafe impl aya::Pod for super::SocketErrorEvent {}
    unsafe impl aya::Pod for super::Owner {}
}

/// The layouts both sides rely on, checked at compile time on both: a field added, removed or
/// reordered without its padding fails the build instead of garbling the maps and the ring buffer.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<Owner>() == 48);
    // The kernel side stores a name as two u64 words (`store_comm`): 8-byte aligned.
    assert!(offset_of!(Owner, comm) == 16 && offset_of!(Owner, thread_comm) == 32);
    assert!(offset_of!(ResetEvent, comm) == 176);
    assert!(size_of::<CountKey>() == 40);
    assert!(offset_of!(CountKey, comm) == 12);
    assert!(offset_of!(CountKey, cgroup_id) == 32);
    assert!(size_of::<ErrorKey>() == 20);
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<ListenerKey>() == 8);
    assert!(size_of::<ConnInfo>() == 64);
    assert!(offset_of!(ConnInfo, owner) == 16);
    assert!(size_of::<SocketErrorEvent>() == 96);
    assert!(offset_of!(ResetEvent, key) == 8);
    assert!(offset_of!(ResetEvent, ts_ns) == 96);
    assert!(offset_of!(ResetEvent, owner) == 192);
    assert!(size_of::<ResetEvent>() == 240);
    assert!(size_of::<ResetEvent>().is_multiple_of(8) && size_of::<Config>().is_multiple_of(2));
};
