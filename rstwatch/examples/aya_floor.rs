//! The memory floor that aya itself sets for rstwatch: load the daemon's embedded eBPF object with
//! aya the way any aya loader would (`EbpfLoader::new()`, which parses the kernel's BTF, then
//! `Btf::from_sys_fs()` for the BTF tracepoints), attach the same tp_btf programs, and print the
//! process's peak and current RSS. It does nothing else, so the daemon's start-up peak can be
//! compared with it (issue 12). Needs root.
//!
//! `cargo run --release -p rstwatch --example aya_floor`

use anyhow::Context as _;
use aya::{Btf, EbpfLoader, programs::BtfTracePoint};
use rstwatch_common::Config;

/// (program, tracepoint) of the daemon's BTF tracepoints (rstwatch's probes.rs).
const BTF_PROGRAMS: [(&str, &str); 5] = [
    ("rstwatch_send_reset_btf", "tcp_send_reset"),
    ("rstwatch_receive_reset_btf", "tcp_receive_reset"),
    ("rstwatch_set_state_btf", "inet_sock_set_state"),
    ("rstwatch_error_report_btf", "inet_sk_error_report"),
    ("rstwatch_kfree_skb_btf", "kfree_skb"),
];

fn main() -> anyhow::Result<()> {
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &Config::UNSET, true)
        .map_max_entries("EVENTS", 1024 * 1024)
        .load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rstwatch")))
        .context("loading the eBPF object")?;
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    for (name, event) in BTF_PROGRAMS {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        program
            .load(event, &btf)
            .with_context(|| format!("loading {name}"))?;
        program.attach().with_context(|| format!("attaching {name}"))?;
    }
    drop(btf);
    let status = std::fs::read_to_string("/proc/self/status")?;
    for line in status
        .lines()
        .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
    {
        println!("{line}");
    }
    Ok(())
}
