//! Every hook rstwatch can attach, in one table: what the loader attaches (`rstwatch` `load`),
//! what the coverage summary and `rstwatch_probe_attached{probe}` name (`classify::coverage`),
//! README's "Kernel compatibility" table (a unit test keeps it equal) and the benchmark's
//! start-up check (`xtask bench`) all read it from here. The program names are the functions of
//! `rstwatch-ebpf/src/main.rs`.

use crate::{ABSENT, Config};

/// How a probe is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// The tracepoint `category:name`: as a BTF tracepoint program (`tp_btf`, cheaper: no trace
    /// record is formatted) where the kernel's BTF has it, else as a classic tracepoint program.
    Tracepoint {
        category: &'static str,
        btf_program: &'static str,
    },
    /// A kprobe on the kernel function `name`.
    Kprobe,
}

pub struct Probe {
    /// The tracepoint's event or the kprobe's function; label value of
    /// `rstwatch_probe_attached{probe}`.
    pub name: &'static str,
    pub attach: Attach,
    /// The classic tracepoint's or the kprobe's program.
    pub program: &'static str,
    /// Without it rstwatch cannot do its job; without the others it only knows less.
    pub required: bool,
    /// Whether the kernel layout gave this program what it reads.
    pub usable: fn(&Config) -> bool,
    /// It keeps or reads the per-connection memory, which tp_btf and classic programs keep in
    /// different maps (by socket cookie, by socket address): all such programs must be of one
    /// kind, so if one of them cannot be a tp_btf program, none of them is.
    pub shares_memory: bool,
    /// The probe this one stands in for where that one misses something (kernel functions whose
    /// tracepoint skips resets sent without a full socket before 6.10).
    pub fallback_for: Option<&'static str>,
    /// README's columns: the hook, the kernels that have it, what it gives, what is lost without it.
    pub hook: &'static str,
    pub kernels: &'static str,
    pub gives: &'static str,
    pub when_missing: &'static str,
}

/// A tracepoint probe with its attach details spelled out.
#[derive(Clone, Copy)]
pub struct Tracepoint {
    pub name: &'static str,
    pub category: &'static str,
    /// The tracepoint's event name (the same as the probe's name).
    pub event: &'static str,
    pub program: &'static str,
    pub btf_program: &'static str,
    pub required: bool,
    pub usable: fn(&Config) -> bool,
    pub shares_memory: bool,
}

const REQUIRED: &str = "required: rstwatch exits with an error";

pub const PROBES: &[Probe] = &[
    Probe {
        name: "tcp_send_reset",
        attach: Attach::Tracepoint {
            category: "tcp",
            btf_program: "rstwatch_send_reset_btf",
        },
        program: "rstwatch_send_reset",
        required: true,
        usable: |_| true,
        shares_memory: true,
        fallback_for: None,
        hook: "tp_btf, else tracepoint `tcp:tcp_send_reset`",
        kernels: "4.15+; `state` 5.4+; `reason` and resets sent without a full socket 6.10+",
        gives: "every reset this host sends from a full socket; the kernel's reason (6.10+)",
        when_missing: REQUIRED,
    },
    Probe {
        name: "tcp_receive_reset",
        attach: Attach::Tracepoint {
            category: "tcp",
            btf_program: "rstwatch_receive_reset_btf",
        },
        program: "rstwatch_receive_reset",
        required: true,
        usable: |_| true,
        shares_memory: true,
        fallback_for: None,
        hook: "tp_btf, else tracepoint `tcp:tcp_receive_reset`",
        kernels: "4.15+; `sock_cookie` 4.19+",
        gives: "every reset this host receives, in the state it arrived in",
        when_missing: REQUIRED,
    },
    Probe {
        name: "inet_sock_set_state",
        attach: Attach::Tracepoint {
            category: "sock",
            btf_program: "rstwatch_set_state_btf",
        },
        program: "rstwatch_set_state",
        required: false,
        usable: |_| true,
        shares_memory: true,
        fallback_for: None,
        hook: "tp_btf, else tracepoint `sock:inet_sock_set_state`",
        kernels: "4.16+",
        gives: "state before CLOSE, connection age, owner process",
        when_missing: "state label `close`, no age, owners `unknown`",
    },
    Probe {
        name: "inet_sk_error_report",
        attach: Attach::Tracepoint {
            category: "sock",
            btf_program: "rstwatch_error_report_btf",
        },
        program: "rstwatch_error_report",
        required: false,
        usable: |config| config.error_error != ABSENT,
        shares_memory: true,
        fallback_for: None,
        hook: "tp_btf, else tracepoint `sock:inet_sk_error_report`",
        kernels: "5.14+",
        gives: "the errno applications got (`rstwatch_socket_errors_total`)",
        when_missing: "no socket error counts; resets are counted all the same",
    },
    Probe {
        name: "kfree_skb",
        attach: Attach::Tracepoint {
            category: "skb",
            btf_program: "rstwatch_kfree_skb_btf",
        },
        program: "rstwatch_kfree_skb",
        required: false,
        usable: |config| config.kfree_reason != ABSENT,
        shares_memory: false,
        fallback_for: None,
        hook: "tp_btf, else tracepoint `skb:kfree_skb` with `reason`",
        kernels: "5.17+ (drop reasons)",
        gives: "resets the local firewall injected",
        when_missing: "received `injected` not observable (counted by local state instead)",
    },
    Probe {
        name: "tcp_v4_send_reset",
        attach: Attach::Kprobe,
        program: "rstwatch_v4_send_reset_kprobe",
        required: false,
        usable: |_| true,
        shares_memory: false,
        fallback_for: Some("tcp_send_reset"),
        hook: "kprobe `tcp_v4_send_reset`, only where `tcp_send_reset` has no `reason`",
        kernels: "any with CONFIG_KPROBES; needed before 6.10",
        gives: "IPv4 resets sent without a full socket (no listener, time-wait)",
        when_missing: "sent `no_listener`, `unknown_connection`, `timewait_segment`, `data_after_close` not observable",
    },
    Probe {
        name: "tcp_v6_send_reset",
        attach: Attach::Kprobe,
        program: "rstwatch_v6_send_reset_kprobe",
        required: false,
        usable: |_| true,
        shares_memory: false,
        fallback_for: Some("tcp_send_reset"),
        hook: "kprobe `tcp_v6_send_reset`, as above",
        kernels: "as above",
        gives: "the same for IPv6",
        when_missing: "as above, for IPv6",
    },
];

/// The tracepoint probes, in table order.
pub fn tracepoints() -> impl Iterator<Item = Tracepoint> {
    PROBES.iter().filter_map(|probe| match probe.attach {
        Attach::Tracepoint {
            category,
            btf_program,
        } => Some(Tracepoint {
            name: probe.name,
            category,
            event: probe.name,
            program: probe.program,
            btf_program,
            required: probe.required,
            usable: probe.usable,
            shares_memory: probe.shares_memory,
        }),
        Attach::Kprobe => None,
    })
}

/// The kprobes, in table order.
pub fn kprobes() -> impl Iterator<Item = &'static Probe> {
    PROBES.iter().filter(|probe| probe.attach == Attach::Kprobe)
}

/// The probes that stand in for `probe` where it misses something.
pub fn fallbacks_for(probe: &str) -> impl Iterator<Item = &'static Probe> + '_ {
    PROBES.iter().filter(move |p| p.fallback_for == Some(probe))
}

/// The probes without which rstwatch exits.
pub fn required() -> impl Iterator<Item = &'static Probe> {
    PROBES.iter().filter(|probe| probe.required)
}

/// Names of the maps and globals of the eBPF object that userspace opens (the statics of
/// `rstwatch-ebpf/src/maps.rs` and `CONFIG` in its main.rs; aya names a map after its static).
pub mod maps {
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTS: &str = "COUNTS";
    pub const COUNTS_OTHER: &str = "COUNTS_OTHER";
    pub const ERRORS: &str = "ERRORS";
    pub const ERRORS_OTHER: &str = "ERRORS_OTHER";
    pub const CONN: &str = "CONN";
    pub const CLOSED_FLOWS: &str = "CLOSED_FLOWS";
    pub const LISTENERS: &str = "LISTENERS";
    pub const REJECTED: &str = "REJECTED";
    pub const LOST: &str = "LOST";
    pub const EVENTS: &str = "EVENTS";
    pub const PORT_LABELS: &str = "PORT_LABELS";
}
