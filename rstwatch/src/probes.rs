//! Loading the eBPF object with this kernel's layout and attaching its programs.

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, ProgramFd, TracePoint},
};
use log::{info, warn};

use rstwatch_common::{ABSENT, Config};

use crate::kernel::KernelLayout;

/// One hook of the object and the tracepoint it belongs on, as a BTF tracepoint (tp_btf, cheaper:
/// no trace record is formatted) and as a classic tracepoint (offsets from tracefs).
pub struct ProbeSpec {
    /// Label value of `rstwatch_probe_attached{probe}`.
    pub name: &'static str,
    pub program: &'static str,
    pub btf_program: &'static str,
    pub category: &'static str,
    pub event: &'static str,
    /// Without it rstwatch cannot do its job; without the others it only knows less.
    pub required: bool,
    /// Whether the kernel layout gave this program what it reads.
    pub usable: fn(&Config) -> bool,
}

pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        name: "tcp_send_reset",
        program: "rstwatch_send_reset",
        btf_program: "rstwatch_send_reset_btf",
        category: "tcp",
        event: "tcp_send_reset",
        required: true,
        usable: |_| true,
    },
    ProbeSpec {
        name: "tcp_receive_reset",
        program: "rstwatch_receive_reset",
        btf_program: "rstwatch_receive_reset_btf",
        category: "tcp",
        event: "tcp_receive_reset",
        required: true,
        usable: |_| true,
    },
    ProbeSpec {
        name: "inet_sock_set_state",
        program: "rstwatch_set_state",
        btf_program: "rstwatch_set_state_btf",
        category: "sock",
        event: "inet_sock_set_state",
        required: false,
        usable: |_| true,
    },
    ProbeSpec {
        name: "inet_sk_error_report",
        program: "rstwatch_error_report",
        btf_program: "rstwatch_error_report_btf",
        category: "sock",
        event: "inet_sk_error_report",
        required: false,
        usable: |config| config.error_error != ABSENT,
    },
    ProbeSpec {
        name: "kfree_skb",
        program: "rstwatch_kfree_skb",
        btf_program: "rstwatch_kfree_skb_btf",
        category: "skb",
        event: "kfree_skb",
        required: false,
        usable: |config| config.kfree_reason != ABSENT,
    },
];

/// Which kind of program to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgramType {
    /// BTF tracepoints where the kernel has them, classic tracepoints elsewhere.
    Auto,
    /// Classic tracepoints only (trace record offsets from tracefs).
    Tracepoint,
}

pub struct Probes {
    pub ebpf: Ebpf,
    /// (probe name, attached) for every entry of PROBES.
    pub attached: Vec<(&'static str, bool)>,
    /// Descriptors of the attached reset programs, to read how often the kernel skipped them.
    pub reset_programs: Vec<ProgramFd>,
}

pub fn load_and_attach(
    layout: &KernelLayout,
    ring_buffer_bytes: u32,
    program_type: ProgramType,
) -> anyhow::Result<Probes> {
    raise_memlock_limit();
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &layout.config, true)
        .map_max_entries("EVENTS", ring_buffer_bytes)
        .load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rstwatch")))
        .context("loading the eBPF programs into the kernel (are you root, with CAP_BPF and CAP_PERFMON?)")?;

    let btf = match program_type {
        ProgramType::Auto => Btf::from_sys_fs()
            .map_err(|e| log::warn!("no BTF tracepoints, classic ones only: {e}"))
            .ok(),
        ProgramType::Tracepoint => None,
    };
    let mut attached = Vec::new();
    let mut kinds = Vec::new();
    let mut reset_programs = Vec::new();
    for spec in PROBES {
        if !(spec.usable)(&layout.config) {
            attached.push((spec.name, false));
            continue;
        }
        let btf_ok = btf.as_ref().filter(|_| layout.btf_tracepoints.contains_key(spec.event));
        let result = match btf_ok.map(|btf| attach_btf(&mut ebpf, spec, btf)) {
            Some(Ok(())) => Ok(spec.btf_program),
            Some(Err(err)) => {
                warn!("{}: BTF tracepoint refused ({err:#}); using the classic tracepoint", spec.event);
                attach(&mut ebpf, spec).map(|()| spec.program)
            }
            None => attach(&mut ebpf, spec).map(|()| spec.program),
        };
        match result {
            Ok(program) => {
                attached.push((spec.name, true));
                kinds.push(format!("{}={}", spec.name, if program == spec.btf_program { "tp_btf" } else { "tracepoint" }));
                if spec.required {
                    reset_programs.push(program_fd(&ebpf, program)?);
                }
            }
            Err(err) if !spec.required => {
                warn!("{}:{} not attached, rstwatch will know less: {err:#}", spec.category, spec.event);
                attached.push((spec.name, false));
            }
            Err(err) => return Err(err),
        }
    }
    let missing: Vec<_> = attached.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect();
    info!(
        "attached: {}{}",
        kinds.join(" "),
        if missing.is_empty() { String::new() } else { format!("; not attached: {}", missing.join(" ")) }
    );
    Ok(Probes { ebpf, attached, reset_programs })
}

fn attach(ebpf: &mut Ebpf, spec: &ProbeSpec) -> anyhow::Result<()> {
    let Some(program) = ebpf.program_mut(spec.program) else {
        bail!("program {} missing from the eBPF object (build problem)", spec.program);
    };
    let program: &mut TracePoint = program.try_into()?;
    program.load().with_context(|| {
        format!("the kernel's verifier rejected the program for {}:{}", spec.category, spec.event)
    })?;
    program.attach(spec.category, spec.event).with_context(|| {
        format!(
            "attaching to tracepoint {}:{} (does /sys/kernel/tracing/events/{}/{} exist?)",
            spec.category, spec.event, spec.category, spec.event
        )
    })?;
    Ok(())
}

fn attach_btf(ebpf: &mut Ebpf, spec: &ProbeSpec, btf: &Btf) -> anyhow::Result<()> {
    let Some(program) = ebpf.program_mut(spec.btf_program) else {
        bail!("program {} missing from the eBPF object (build problem)", spec.btf_program);
    };
    let program: &mut BtfTracePoint = program.try_into()?;
    program.load(spec.event, btf).context("loading")?;
    program.attach().context("attaching")?;
    Ok(())
}

fn program_fd(ebpf: &Ebpf, name: &str) -> anyhow::Result<ProgramFd> {
    let program = ebpf.program(name).ok_or_else(|| anyhow::anyhow!("program {name} vanished"))?;
    Ok(program.fd()?.try_clone()?)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}
