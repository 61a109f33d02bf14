//! Everything the eBPF programs need to know about the running kernel, resolved once at
//! start-up: tracepoint record layouts (tracefs), struct member offsets and enum values (BTF),
//! CONFIG_HZ and the ephemeral port range. Nothing here is compiled in for one kernel.

pub mod btf;
pub mod clock;
pub mod tracefs;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use rstwatch_common::{ABSENT, Config, FieldOffset};

use self::btf::{BtfTracepoint, KernelBtf};
use self::tracefs::EventFormat;

const REASON_PREFIX: &str = "SK_RST_REASON_";

pub struct KernelLayout {
    /// Also holds CONFIG_HZ (`config.hz`), which the daemon's own clocks use too.
    pub config: Config,
    /// `enum sk_rst_reason` as this kernel numbers it, names without `SK_RST_REASON_`.
    pub reason_names: BTreeMap<u16, String>,
    pub release: String,
    pub send_reset_has_reason: bool,
    pub send_reset_has_state: bool,
    /// Tracepoints that can be attached as BTF tracepoints (tp_btf): type ids and argument types.
    pub btf_tracepoints: BTreeMap<&'static str, BtfTracepoint>,
}

impl KernelLayout {
    /// This kernel's number for a reset reason (`NO_SOCKET` or `SK_RST_REASON_NO_SOCKET`).
    #[allow(dead_code)] // API for callers that match reasons by name; none does yet
    pub fn reason_value(&self, name: &str) -> Option<u16> {
        let name = name.strip_prefix(REASON_PREFIX).unwrap_or(name);
        self.reason_names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(v, _)| *v)
    }
}

/// Mounts tracefs where it is not mounted (the one place that does), then reads the layout.
pub fn resolve(idle_threshold: Duration) -> Result<KernelLayout> {
    let tracefs = tracefs::ensure_mounted().map_err(super::privileges::explain_tracefs)?;
    log::info!("tracefs at {}", tracefs.display());
    let release = release()?;
    let btf = KernelBtf::vmlinux()?;
    let hz = clock::hz()?;
    let ports = clock::ephemeral_port_range()?;
    resolve_from(&tracefs, &btf, release, hz, ports, idle_threshold)
}

/// `resolve` on what was read from the host (or, in tests, a tracefs snapshot and a small BTF).
fn resolve_from(
    tracefs: &std::path::Path,
    btf: &KernelBtf,
    release: String,
    hz: u32,
    ephemeral_ports: (u16, u16),
    idle_threshold: Duration,
) -> Result<KernelLayout> {
    let send = tracefs::read_format(tracefs, "tcp", "tcp_send_reset")?;
    let recv = tracefs::read_format(tracefs, "tcp", "tcp_receive_reset")?;
    let set_state = tracefs::read_format(tracefs, "sock", "inet_sock_set_state")?;
    let mut config = tracepoint_offsets(&send, &recv, &set_state)?;

    btf_offsets(btf, &mut config)?;
    let linger = btf.enum_value("sock_flags", "SOCK_LINGER")?;
    config.sock_linger_bit = fit("SOCK_LINGER of enum sock_flags", linger)?;
    let done = btf.enum_value("sock_flags", "SOCK_DONE")?;
    config.sock_done_bit = fit("SOCK_DONE of enum sock_flags", done)?;

    optional_tracepoints(tracefs, btf, &mut config);
    let btf_tracepoints = btf_tracepoints(btf, &mut config);

    config.idle_threshold_jiffies = idle_jiffies(idle_threshold, hz)?;
    config.hz = hz;
    (config.ephemeral_port_low, config.ephemeral_port_high) = ephemeral_ports;

    let (reason_names, reasons_from) = match btf.enum_values("sk_rst_reason") {
        Ok(values) => (reason_table(values)?, "BTF enum sk_rst_reason"),
        Err(e) => {
            log::debug!("{e:#}; naming reasons from the tcp_send_reset print fmt");
            let values = tracefs::symbolic_values(&send.print_fmt, "reason");
            (reason_table(values)?, "tcp_send_reset print fmt")
        }
    };

    let layout = KernelLayout {
        config,
        reason_names,
        release,
        send_reset_has_reason: config.send_reason != ABSENT,
        send_reset_has_state: config.send_state != ABSENT,
        btf_tracepoints,
    };
    log_summary(&layout, idle_threshold, reasons_from);
    Ok(layout)
}

/// Tracepoints rstwatch can do without (it then knows less, and says so by not attaching them):
/// `sock:inet_sk_error_report` (5.14+) for the errors applications get, and `skb:kfree_skb` with a
/// drop reason (5.17+) for resets the local firewall injects.
fn optional_tracepoints(tracefs: &std::path::Path, btf: &KernelBtf, config: &mut Config) {
    match tracefs::read_format(tracefs, "sock", "inet_sk_error_report")
        .and_then(|format| error_report_offsets(&format, config))
    {
        Ok(()) => {}
        Err(e) => log::warn!("socket errors will not be counted: {e:#}"),
    }
    let netfilter_drop = btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP");
    match (tracefs::read_format(tracefs, "skb", "kfree_skb"), netfilter_drop) {
        (Ok(format), Ok(value)) => match kfree_skb_offsets(&format, value, config) {
            Ok(()) => {}
            Err(e) => log::warn!("firewall-injected resets will not be recognised: {e:#}"),
        },
        (Err(e), _) | (_, Err(e)) => {
            log::warn!("firewall-injected resets will not be recognised: {e:#}")
        }
    }
}

/// The BTF tracepoints this kernel has, and where `reason` sits in their arguments.
fn btf_tracepoints(btf: &KernelBtf, config: &mut Config) -> BTreeMap<&'static str, BtfTracepoint> {
    let mut found = BTreeMap::new();
    // Every tracepoint probe has a tp_btf program (`rstwatch_common::probes`).
    for event in rstwatch_common::probes::tracepoints().map(|tp| tp.event) {
        match btf.tracepoint(event) {
            Ok(tracepoint) => {
                found.insert(event, tracepoint);
            }
            Err(e) => log::debug!("{event} only as a classic tracepoint: {e:#}"),
        }
    }
    let reason_arg = |event: &str, reason_type: &str| -> FieldOffset {
        found
            .get(event)
            .and_then(|tracepoint| tracepoint.args.iter().position(|arg| arg == reason_type))
            .map_or(ABSENT, |index| index as FieldOffset)
    };
    config.btf_send_reason_arg = reason_arg("tcp_send_reset", "enum sk_rst_reason");
    config.btf_kfree_reason_arg = reason_arg("kfree_skb", "enum skb_drop_reason");
    // The programs read `reason` at argument 2 only (the verifier wants constant offsets); where
    // the kernel puts it elsewhere, the classic tracepoint is the one that works. Without one
    // (before 6.10) the program reads no reason, and the verifier never walks that read.
    if ![2, ABSENT].contains(&config.btf_send_reason_arg) {
        found.remove("tcp_send_reset");
    }
    if config.btf_kfree_reason_arg != 2 {
        found.remove("kfree_skb");
    }
    found
}

/// Offsets of `sock:inet_sk_error_report`; on error `config` keeps them ABSENT.
pub fn error_report_offsets(event: &EventFormat, config: &mut Config) -> Result<()> {
    let mut c = *config;
    c.error_error = required(event, "error", &[4])?;
    c.error_protocol = required(event, "protocol", &[2])?;
    c.error_family = required(event, "family", &[2])?;
    c.error_sport = required(event, "sport", &[2])?;
    c.error_dport = required(event, "dport", &[2])?;
    c.error_saddr = required(event, "saddr", &[4])?;
    c.error_daddr = required(event, "daddr", &[4])?;
    c.error_saddr_v6 = required(event, "saddr_v6", &[16])?;
    c.error_daddr_v6 = required(event, "daddr_v6", &[16])?;
    *config = c;
    Ok(())
}

/// Offsets of `skb:kfree_skb` and the number of its NETFILTER_DROP reason.
pub fn kfree_skb_offsets(event: &EventFormat, netfilter_drop: i64, config: &mut Config) -> Result<()> {
    let mut c = *config;
    c.kfree_skbaddr = required(event, "skbaddr", &[PTR])?;
    c.kfree_reason = required(event, "reason", &[4])?;
    c.drop_reason_netfilter = fit("SKB_DROP_REASON_NETFILTER_DROP", netfilter_drop)?;
    *config = c;
    Ok(())
}

/// `uname -r`.
pub fn release() -> Result<String> {
    let path = "/proc/sys/kernel/osrelease";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(text.trim().to_string())
}

/// `Config::UNSET` with the tracepoint record offsets filled in from the three formats.
pub fn tracepoint_offsets(send: &EventFormat, recv: &EventFormat, set_state: &EventFormat) -> Result<Config> {
    let expected = [
        (send, "tcp_send_reset"),
        (recv, "tcp_receive_reset"),
        (set_state, "inet_sock_set_state"),
    ];
    for (event, name) in expected {
        if event.name != name {
            bail!("expected the format of {name}, got {}", event.name);
        }
    }
    const POINTER: &[u32] = &[PTR];
    let mut c = Config::UNSET;
    c.send_skaddr = required(send, "skaddr", POINTER)?;
    c.send_skbaddr = required(send, "skbaddr", POINTER)?;
    // Before 5.4 there is no state, before 6.10 no reason.
    c.send_state = optional(send, "state", &[4])?;
    c.send_reason = optional(send, "reason", &[4])?;
    c.recv_skaddr = required(recv, "skaddr", POINTER)?;
    // Before 4.19 there is no cookie.
    c.recv_cookie = optional(recv, "sock_cookie", &[8])?;
    c.set_state_skaddr = required(set_state, "skaddr", POINTER)?;
    c.set_state_oldstate = required(set_state, "oldstate", &[4])?;
    c.set_state_newstate = required(set_state, "newstate", &[4])?;
    // u16 since MPTCP (IPPROTO_MPTCP = 262), u8 before.
    c.set_state_protocol = required(set_state, "protocol", &[1, 2])?;
    c.set_state_protocol_size = set_state.field("protocol").map_or(0, |f| f.size as u16);
    Ok(c)
}

fn optional(event: &EventFormat, name: &str, sizes: &[u32]) -> Result<FieldOffset> {
    let Some(field) = event.field(name) else {
        return Ok(ABSENT);
    };
    if !sizes.contains(&field.size) {
        bail!(
            "field {name} of tracepoint {} is {} bytes; rstwatch reads {sizes:?}",
            event.name,
            field.size
        );
    }
    fit(
        format_args!("offset of {name} in tracepoint {}", event.name),
        field.offset,
    )
}

fn required(event: &EventFormat, name: &str, sizes: &[u32]) -> Result<FieldOffset> {
    match optional(event, name, sizes)? {
        ABSENT => Err(anyhow!(
            "tracepoint {} has no field {name}, which rstwatch needs",
            event.name
        )),
        offset => Ok(offset),
    }
}

type Slot = fn(&mut Config) -> &mut u16;

const PTR: u32 = size_of::<usize>() as u32;
/// C `long` and `unsigned long`, on the LP64 targets rstwatch runs on.
const LONG: u32 = PTR;

/// Config field, where it lives (the first path this kernel has), and the size the programs
/// read it with. Members move: 6.18 keeps `sk_flags` in `sock_common` as `skc_flags`.
#[rustfmt::skip]
const BTF_FIELDS: &[(&str, Slot, &str, &[&str], u32)] = &[
    ("sk_state", |c| &mut c.sk_state, "sock", &["__sk_common.skc_state"], 1),
    ("sk_family", |c| &mut c.sk_family, "sock", &["__sk_common.skc_family"], 2),
    ("inet_sport", |c| &mut c.inet_sport, "inet_sock", &["inet_sport"], 2),
    ("sk_num", |c| &mut c.sk_num, "sock", &["__sk_common.skc_num"], 2),
    ("sk_dport", |c| &mut c.sk_dport, "sock", &["__sk_common.skc_dport"], 2),
    ("sk_daddr", |c| &mut c.sk_daddr, "sock", &["__sk_common.skc_daddr"], 4),
    ("sk_rcv_saddr", |c| &mut c.sk_rcv_saddr, "sock", &["__sk_common.skc_rcv_saddr"], 4),
    ("sk_v6_daddr", |c| &mut c.sk_v6_daddr, "sock", &["__sk_common.skc_v6_daddr"], 16),
    ("sk_v6_rcv_saddr", |c| &mut c.sk_v6_rcv_saddr, "sock", &["__sk_common.skc_v6_rcv_saddr"], 16),
    ("sk_socket", |c| &mut c.sk_socket, "sock", &["sk_socket"], PTR),
    ("sk_flags", |c| &mut c.sk_flags, "sock", &["sk_flags", "__sk_common.skc_flags"], LONG),
    ("sk_lingertime", |c| &mut c.sk_lingertime, "sock", &["sk_lingertime"], LONG),
    ("tcp_bytes_received", |c| &mut c.tcp_bytes_received, "tcp_sock", &["bytes_received"], 8),
    ("tcp_bytes_acked", |c| &mut c.tcp_bytes_acked, "tcp_sock", &["bytes_acked"], 8),
    ("tcp_rcv_nxt", |c| &mut c.tcp_rcv_nxt, "tcp_sock", &["rcv_nxt"], 4),
    ("tcp_copied_seq", |c| &mut c.tcp_copied_seq, "tcp_sock", &["copied_seq"], 4),
    ("tcp_write_seq", |c| &mut c.tcp_write_seq, "tcp_sock", &["write_seq"], 4),
    ("tcp_snd_nxt", |c| &mut c.tcp_snd_nxt, "tcp_sock", &["snd_nxt"], 4),
    ("tcp_lsndtime", |c| &mut c.tcp_lsndtime, "tcp_sock", &["lsndtime"], 4),
    ("tcp_rcv_tstamp", |c| &mut c.tcp_rcv_tstamp, "tcp_sock", &["rcv_tstamp"], 4),
    ("icsk_lrcvtime", |c| &mut c.icsk_lrcvtime, "tcp_sock", &["inet_conn.icsk_ack.lrcvtime"], 4),
    ("icsk_probes_out", |c| &mut c.icsk_probes_out, "tcp_sock", &["inet_conn.icsk_probes_out"], 1),
    ("tw_substate", |c| &mut c.tw_substate, "inet_timewait_sock", &["tw_substate"], 1),
    ("skb_data", |c| &mut c.skb_data, "sk_buff", &["data"], PTR),
    ("skb_len", |c| &mut c.skb_len, "sk_buff", &["len"], 4),
    ("skb_head", |c| &mut c.skb_head, "sk_buff", &["head"], PTR),
    ("skb_network_header", |c| &mut c.skb_network_header, "sk_buff", &["network_header"], 2),
    ("skb_transport_header", |c| &mut c.skb_transport_header, "sk_buff", &["transport_header"], 2),
    ("sk_net", |c| &mut c.sk_net, "sock", &["__sk_common.skc_net.net"], PTR),
    ("net_inum", |c| &mut c.net_inum, "net", &["ns.inum"], 4),
    ("sk_protocol", |c| &mut c.sk_protocol, "sock", &["sk_protocol"], 2),
    ("sk_err", |c| &mut c.sk_err, "sock", &["sk_err"], 4),
    ("task_group_leader", |c| &mut c.task_group_leader, "task_struct", &["group_leader"], PTR),
    ("task_comm", |c| &mut c.task_comm, "task_struct", &["comm"], 16),
    ("sk_cookie", |c| &mut c.sk_cookie, "sock", &["__sk_common.skc_cookie.counter"], 8),
];

fn btf_offsets(btf: &KernelBtf, config: &mut Config) -> Result<()> {
    for &(field, slot, strukt, paths, size) in BTF_FIELDS {
        let (path, member) = first_member(btf, strukt, paths)
            .with_context(|| format!("finding {field} in struct {strukt} (tried {paths:?})"))?;
        if member.size != size {
            bail!(
                "struct {strukt} member {path} is {} bytes on this kernel, but the programs read \
                 {field} as {size} bytes",
                member.size
            );
        }
        *slot(config) = fit(format_args!("offset of {strukt}.{path}"), member.offset)?;
    }
    Ok(())
}

fn first_member<'a>(btf: &KernelBtf, strukt: &str, paths: &[&'a str]) -> Result<(&'a str, btf::MemberInfo)> {
    let mut error = anyhow!("no member path given");
    for &path in paths {
        match btf.member(strukt, path) {
            Ok(member) => return Ok((path, member)),
            Err(e) => error = e,
        }
    }
    Err(error)
}

/// Converts, or says which value does not fit the type the programs use.
fn fit<T, V>(what: impl Display, value: V) -> Result<T>
where
    T: TryFrom<V>,
    V: Copy + Display,
{
    T::try_from(value).map_err(|_| {
        anyhow!(
            "{what} is {value}, which does not fit {}",
            std::any::type_name::<T>()
        )
    })
}

/// The threshold in whole jiffies, rounded up so that a short threshold never becomes 0.
fn idle_jiffies(threshold: Duration, hz: u32) -> Result<u32> {
    let jiffies = (threshold.as_nanos() * hz as u128).div_ceil(1_000_000_000).max(1);
    fit(
        format_args!("idle threshold {threshold:?} in jiffies at HZ={hz}"),
        jiffies,
    )
}

fn reason_table(values: Vec<(i64, String)>) -> Result<BTreeMap<u16, String>> {
    values
        .into_iter()
        .map(|(v, name)| {
            let v = fit(format_args!("sk_rst_reason {name}"), v)?;
            Ok((v, name.strip_prefix(REASON_PREFIX).unwrap_or(&name).to_string()))
        })
        .collect()
}

fn log_summary(layout: &KernelLayout, idle: Duration, reasons_from: &str) {
    let c = &layout.config;
    let yes_no = |present: bool| if present { "yes" } else { "no" };
    log::info!(
        "kernel {} resolved (HZ {}):\n  tcp:tcp_send_reset: state {}, reason {} ({} reason names \
         from {reasons_from})\n  tcp:tcp_receive_reset: sock_cookie {}\n  \
         sock:inet_sock_set_state: protocol is {} bytes\n  sock:inet_sk_error_report: {}\n  \
         skb:kfree_skb with NETFILTER_DROP: {}\n  idle threshold {idle:?} = {} \
         jiffies; ephemeral ports {}-{}",
        layout.release,
        layout.config.hz,
        yes_no(layout.send_reset_has_state),
        yes_no(layout.send_reset_has_reason),
        layout.reason_names.len(),
        yes_no(c.recv_cookie != ABSENT),
        c.set_state_protocol_size,
        yes_no(c.error_error != ABSENT),
        yes_no(c.kfree_reason != ABSENT),
        c.idle_threshold_jiffies,
        c.ephemeral_port_low,
        c.ephemeral_port_high,
    );
    log::info!(
        "  BTF tracepoints available: {}",
        layout
            .btf_tracepoints
            .keys()
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    );
    log::debug!("kernel offsets: {c:#?}");
    log::debug!("reset reasons: {:?}", layout.reason_names);
}

#[cfg(test)]
mod tests;
