//! What the daemon tells the kernel programs before loading them: the running kernel's layout
//! (tracefs offsets, BTF offsets, argument positions) and the daemon's settings, in one struct
//! written into the programs' read-only `CONFIG` global.

/// An offset into a tracepoint record, -1 when this kernel's event has no such field.
pub type FieldOffset = i16;
pub const ABSENT: FieldOffset = -1;

/// Everything the programs need to know about the running kernel, resolved once at start-up in
/// userspace (tracefs formats, BTF) and written into the programs' `CONFIG` global before load.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    // tracepoint record offsets (tracefs `format` files)
    pub send_skaddr: FieldOffset,
    pub send_skbaddr: FieldOffset,
    pub send_state: FieldOffset,
    pub send_reason: FieldOffset,
    pub recv_skaddr: FieldOffset,
    pub recv_cookie: FieldOffset,
    pub set_state_skaddr: FieldOffset,
    pub set_state_oldstate: FieldOffset,
    pub set_state_newstate: FieldOffset,
    pub set_state_protocol: FieldOffset,
    /// Size in bytes of `protocol` in `inet_sock_set_state` (u16 since MPTCP, u8 before).
    pub set_state_protocol_size: u16,
    pub error_error: FieldOffset,
    pub error_protocol: FieldOffset,
    pub error_family: FieldOffset,
    pub error_sport: FieldOffset,
    pub error_dport: FieldOffset,
    pub error_saddr: FieldOffset,
    pub error_daddr: FieldOffset,
    pub error_saddr_v6: FieldOffset,
    pub error_daddr_v6: FieldOffset,
    pub kfree_skbaddr: FieldOffset,
    pub kfree_reason: FieldOffset,
    /// This kernel's number for SKB_DROP_REASON_NETFILTER_DROP.
    pub drop_reason_netfilter: u16,
    /// BTF tracepoints: index of `reason` among tcp_send_reset's and kfree_skb's TP_PROTO
    /// arguments (from the `btf_trace_*` prototypes), ABSENT when the kernel has none.
    pub btf_send_reason_arg: FieldOffset,
    pub btf_kfree_reason_arg: FieldOffset,

    // struct member offsets (BTF)
    pub sk_state: u16,
    pub sk_family: u16,
    /// `inet_sock.inet_sport` (network order): unlike `skc_num`, it survives the unhash that
    /// tcp_set_state(CLOSE) does just before most active resets.
    pub inet_sport: u16,
    /// `sock_common.skc_num`: the local port in host order, valid for listeners and their fresh
    /// children (it is cleared when a socket closes, hence `inet_sport` for resets).
    pub sk_num: u16,
    pub sk_dport: u16,
    pub sk_daddr: u16,
    pub sk_rcv_saddr: u16,
    pub sk_v6_daddr: u16,
    pub sk_v6_rcv_saddr: u16,
    pub sk_socket: u16,
    pub sk_flags: u16,
    pub sk_lingertime: u16,
    pub tcp_bytes_received: u16,
    pub tcp_bytes_acked: u16,
    pub tcp_rcv_nxt: u16,
    pub tcp_copied_seq: u16,
    pub tcp_write_seq: u16,
    pub tcp_snd_nxt: u16,
    pub tcp_lsndtime: u16,
    pub tcp_rcv_tstamp: u16,
    pub icsk_lrcvtime: u16,
    pub icsk_probes_out: u16,
    pub tw_substate: u16,
    pub skb_data: u16,
    pub skb_len: u16,
    pub skb_head: u16,
    pub skb_network_header: u16,
    pub skb_transport_header: u16,
    /// `sock_common.skc_net` (a `struct net *`) and `net.ns.inum`.
    pub sk_net: u16,
    pub net_inum: u16,
    /// `sock.sk_protocol` (u16) and `sock.sk_err` (int), read by the BTF tracepoints.
    pub sk_protocol: u16,
    pub sk_err: u16,
    /// `task_struct.group_leader` and `task_struct.comm`: a thread's process name.
    pub task_group_leader: u16,
    pub task_comm: u16,
    /// `sock_common.skc_cookie` (an `atomic64_t`): a socket's cookie is read where it already has
    /// one, for less than the helper call that would make one.
    pub sk_cookie: u16,
    /// Bit number of SOCK_LINGER in `enum sock_flags`.
    pub sock_linger_bit: u16,
    /// Bit number of SOCK_DONE (the peer's FIN arrived; it occupies one sequence number).
    pub sock_done_bit: u16,

    /// `--idle-threshold` in jiffies.
    pub idle_threshold_jiffies: u32,
    /// CONFIG_HZ: jiffies per second. The programs keep time in jiffies (see the eBPF crate's
    /// `clock`), so their one-second windows are this many jiffies.
    pub hz: u32,
    /// Events each CPU may send per second (`--max-events-per-second` / CPUs); 0 = no limit.
    pub events_per_cpu_per_second: u32,
    /// `--max-ports`: how many service ports get counts of their own; 0 = no cap (`trace`).
    pub max_ports: u32,
    /// 1: count by the owner's cgroup too (Kubernetes mode: per-pod labels); 0: do not, which
    /// keeps the count map small where nobody asks for pods.
    pub count_by_cgroup: u32,
    /// `net.ipv4.ip_local_port_range`: tells a client's ephemeral port from a service port.
    pub ephemeral_port_low: u16,
    pub ephemeral_port_high: u16,
}

impl Config {
    /// A configuration that makes every program a no-op; the daemon always overrides it.
    pub const UNSET: Config = Config {
        send_skaddr: ABSENT,
        send_skbaddr: ABSENT,
        send_state: ABSENT,
        send_reason: ABSENT,
        recv_skaddr: ABSENT,
        recv_cookie: ABSENT,
        set_state_skaddr: ABSENT,
        set_state_oldstate: ABSENT,
        set_state_newstate: ABSENT,
        set_state_protocol: ABSENT,
        set_state_protocol_size: 0,
        error_error: ABSENT,
        error_protocol: ABSENT,
        error_family: ABSENT,
        error_sport: ABSENT,
        error_dport: ABSENT,
        error_saddr: ABSENT,
        error_daddr: ABSENT,
        error_saddr_v6: ABSENT,
        error_daddr_v6: ABSENT,
        kfree_skbaddr: ABSENT,
        kfree_reason: ABSENT,
        drop_reason_netfilter: 0,
        btf_send_reason_arg: ABSENT,
        btf_kfree_reason_arg: ABSENT,
        sk_state: 0,
        sk_family: 0,
        inet_sport: 0,
        sk_num: 0,
        sk_dport: 0,
        sk_daddr: 0,
        sk_rcv_saddr: 0,
        sk_v6_daddr: 0,
        sk_v6_rcv_saddr: 0,
        sk_socket: 0,
        sk_flags: 0,
        sk_lingertime: 0,
        tcp_bytes_received: 0,
        tcp_bytes_acked: 0,
        tcp_rcv_nxt: 0,
        tcp_copied_seq: 0,
        tcp_write_seq: 0,
        tcp_snd_nxt: 0,
        tcp_lsndtime: 0,
        tcp_rcv_tstamp: 0,
        icsk_lrcvtime: 0,
        icsk_probes_out: 0,
        tw_substate: 0,
        skb_data: 0,
        skb_len: 0,
        skb_head: 0,
        skb_network_header: 0,
        skb_transport_header: 0,
        sk_net: 0,
        net_inum: 0,
        sk_protocol: 0,
        sk_err: 0,
        task_group_leader: 0,
        task_comm: 0,
        sk_cookie: 0,
        sock_linger_bit: 0,
        sock_done_bit: 0,
        idle_threshold_jiffies: 0,
        hz: 0,
        events_per_cpu_per_second: 0,
        max_ports: 0,
        count_by_cgroup: 0,
        ephemeral_port_low: 0,
        ephemeral_port_high: 0,
    };
}
