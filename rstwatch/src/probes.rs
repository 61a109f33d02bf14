//! Loading the eBPF object with this kernel's layout and attaching its programs.

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, KProbe, ProgramFd, TracePoint},
};
use log::{info, warn};

use rstwatch_common::{ABSENT, Config};

use crate::compat::{self, Coverage, ProbeStatus};
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
    /// It keeps or reads the per-connection memory, which tp_btf and classic programs keep in
    /// different maps (by socket cookie, by socket address): all such programs must be of one
    /// kind, so if one of them cannot be a tp_btf program, none of them is.
    pub shares_memory: bool,
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
        shares_memory: true,
    },
    ProbeSpec {
        name: "tcp_receive_reset",
        program: "rstwatch_receive_reset",
        btf_program: "rstwatch_receive_reset_btf",
        category: "tcp",
        event: "tcp_receive_reset",
        required: true,
        usable: |_| true,
        shares_memory: true,
    },
    ProbeSpec {
        name: "inet_sock_set_state",
        program: "rstwatch_set_state",
        btf_program: "rstwatch_set_state_btf",
        category: "sock",
        event: "inet_sock_set_state",
        required: false,
        usable: |_| true,
        shares_memory: true,
    },
    ProbeSpec {
        name: "inet_sk_error_report",
        program: "rstwatch_error_report",
        btf_program: "rstwatch_error_report_btf",
        category: "sock",
        event: "inet_sk_error_report",
        required: false,
        usable: |config| config.error_error != ABSENT,
        shares_memory: true,
    },
    ProbeSpec {
        name: "kfree_skb",
        program: "rstwatch_kfree_skb",
        btf_program: "rstwatch_kfree_skb_btf",
        category: "skb",
        event: "kfree_skb",
        required: false,
        usable: |config| config.kfree_reason != ABSENT,
        shares_memory: false,
    },
];

pub struct AttachedProgram {
    pub probe: &'static str,
    pub counts_resets: bool,
    pub fd: ProgramFd,
}

/// Which kind of program to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgramType {
    /// BTF tracepoints where the kernel has them, classic tracepoints elsewhere.
    Auto,
    /// Classic tracepoints only (trace record offsets from tracefs).
    Tracepoint,
}

/// kprobes that stand in for `tcp_send_reset` where its tracepoint skips resets sent without a
/// full socket (before 6.10): (probe name = kernel function, program).
pub const KPROBES: [(&str, &str); 2] = [
    ("tcp_v4_send_reset", "rstwatch_v4_send_reset_kprobe"),
    ("tcp_v6_send_reset", "rstwatch_v6_send_reset_kprobe"),
];

pub struct Probes {
    pub ebpf: Ebpf,
    /// Every probe (PROBES, then KPROBES): how it is attached, or why it is not.
    pub status: Vec<(&'static str, ProbeStatus)>,
    /// What the attached probes let this node see (`compat`).
    pub coverage: Coverage,
    /// Every attached program, by probe name, and whether it counts resets: to read how often
    /// the kernel skipped it and what it costs (`prog_stats`).
    pub programs: Vec<AttachedProgram>,
}

/// aya's loader. `EbpfLoader::new` parses the whole kernel BTF (~19 MB while it parses 6.18's
/// 5.5 MB), the daemon's peak memory: `main` calls this before anything else of size is in memory. The
/// parse is dropped at once: the programs have no CO-RE relocations, and `load_and_attach` gives
/// the loader only the small BTF its BTF tracepoints need (issue 12).
/// The eBPF object, embedded in the binary's read-only data (about 1 MB).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rstwatch"));

/// The object is read once, at load (aya copies what it keeps). Unmap its pages from this process
/// so they do not stay in its RSS for its whole life (issue 12: steady RSS ≤ 12 MB); they are
/// clean pages of the executable, still in the page cache, and read back from it should anything
/// touch them again.
fn unmap_object() {
    let page = 4096;
    let start = OBJECT.as_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + OBJECT.len()) / page * page;
    if end > first {
        // SAFETY: whole pages inside a read-only static, never written: MADV_DONTNEED only drops
        // this process's mappings of them, and a later read faults the same bytes back in.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) };
    }
}

pub fn loader() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    loader
}

pub fn load_and_attach(
    loader: EbpfLoader<'static>,
    layout: &KernelLayout,
    ring_buffer_bytes: u32,
    program_type: ProgramType,
) -> anyhow::Result<Probes> {
    raise_memlock_limit();
    // Rust eBPF emits no CO-RE relocations; had the programs any, relocating them against this
    // small BTF would fail loudly instead of leaving them unrelocated.
    let btf = match program_type {
        ProgramType::Auto => {
            let typedefs = layout
                .btf_tracepoints
                .iter()
                .map(|(event, tracepoint)| (*event, tracepoint.id));
            crate::kernel::btf::tracepoints_btf(typedefs)
                .map_err(|e| log::warn!("no BTF tracepoints, classic ones only: {e:#}"))
                .ok()
        }
        ProgramType::Tracepoint => None,
    };
    // Borrows `btf` and the layout from here on.
    let mut loader: EbpfLoader<'_> = loader;
    let mut ebpf = loader
        .btf(btf.as_ref())
        .override_global("CONFIG", &layout.config, true)
        .map_max_entries("EVENTS", ring_buffer_bytes)
        // Without a cap (trace) every port may get counts of its own.
        .map_max_entries(
            "PORT_LABELS",
            if layout.config.max_ports == 0 {
                65536
            } else {
                layout.config.max_ports
            },
        )
        .load(OBJECT)
        .map_err(|err| {
            let err = anyhow::Error::new(err).context("loading the eBPF programs into the kernel");
            explain_enosys(explain_eperm(
                err,
                "loading eBPF programs",
                &[CAP_BPF, CAP_PERFMON],
            ))
        })?;
    unmap_object();

    let mut status: Vec<(&'static str, ProbeStatus)> = Vec::new();
    let mut programs = Vec::new();
    let usable = |spec: &ProbeSpec| (spec.usable)(&layout.config);
    let has_btf = |spec: &ProbeSpec| layout.btf_tracepoints.contains_key(spec.event);
    let shared_btf = match &btf {
        Some(btf) => match load_btf_group(&mut ebpf, btf, usable, has_btf) {
            Ok(()) => true,
            Err(err) => {
                // The verifier's log is long: its first line here, all of it at debug level.
                let text = format!("{err:#}");
                warn!(
                    "BTF tracepoints refused ({}); using classic tracepoints for the reset, state and error probes",
                    text.lines().next().unwrap_or_default()
                );
                log::debug!("BTF tracepoints refused: {text}");
                false
            }
        },
        None => false,
    };
    for spec in PROBES {
        if !usable(spec) {
            let why = format!(
                "this kernel's {}:{} lacks a field rstwatch reads",
                spec.category, spec.event
            );
            status.push((spec.name, ProbeStatus::Missing(why)));
            continue;
        }
        let result = if spec.shares_memory {
            if shared_btf {
                attach_loaded_btf(&mut ebpf, spec).map(|()| spec.btf_program)
            } else {
                attach(&mut ebpf, spec).map(|()| spec.program)
            }
        } else {
            let btf_ok = btf.as_ref().filter(|_| has_btf(spec));
            match btf_ok.map(|btf| attach_btf(&mut ebpf, spec, btf)) {
                Some(Ok(())) => Ok(spec.btf_program),
                Some(Err(err)) => {
                    let text = format!("{err:#}");
                    warn!(
                        "{}: BTF tracepoint refused ({}); using the classic tracepoint",
                        spec.event,
                        text.lines().next().unwrap_or_default()
                    );
                    log::debug!("{}: BTF tracepoint refused: {text}", spec.event);
                    attach(&mut ebpf, spec).map(|()| spec.program)
                }
                None => attach(&mut ebpf, spec).map(|()| spec.program),
            }
        };
        match result {
            Ok(program) => {
                let kind = if program == spec.btf_program {
                    "tp_btf"
                } else {
                    "tracepoint"
                };
                status.push((spec.name, ProbeStatus::Attached(kind)));
                let fd = program_fd(&ebpf, program)?;
                programs.push(AttachedProgram {
                    probe: spec.name,
                    counts_resets: spec.required,
                    fd,
                });
            }
            Err(err) if !spec.required => {
                warn!(
                    "{}:{} not attached, rstwatch will know less: {err:#}",
                    spec.category, spec.event
                );
                status.push((spec.name, ProbeStatus::Missing(format!("{err:#}"))));
            }
            Err(err) => return Err(err),
        }
    }
    for (function, program) in KPROBES {
        if layout.send_reset_has_reason {
            status.push((
                function,
                ProbeStatus::NotNeeded("tcp_send_reset sees resets without a socket (6.10+)"),
            ));
            continue;
        }
        match attach_kprobe(&mut ebpf, function, program) {
            Ok(()) => {
                status.push((function, ProbeStatus::Attached("kprobe")));
                let fd = program_fd(&ebpf, program)?;
                programs.push(AttachedProgram {
                    probe: function,
                    counts_resets: true,
                    fd,
                });
            }
            Err(err) => status.push((function, ProbeStatus::Missing(format!("{err:#}")))),
        }
    }
    let coverage = Coverage {
        attached: status
            .iter()
            .filter(|(_, how)| matches!(how, ProbeStatus::Attached(_)))
            .map(|(probe, _)| *probe)
            .collect(),
        reasons: if layout.send_reset_has_reason {
            layout
                .reason_names
                .values()
                .map(|name| crate::classify::RstReason::from_name(name))
                .collect()
        } else {
            Default::default()
        },
    };
    info!("{}", compat::summary(&layout.release, &status, &coverage));
    Ok(Probes {
        ebpf,
        status,
        coverage,
        programs,
    })
}

/// A kprobe, where the kernel has them (CONFIG_KPROBES) and lets this process use them.
fn attach_kprobe(ebpf: &mut Ebpf, function: &str, program: &str) -> anyhow::Result<()> {
    let Some(prog) = ebpf.program_mut(program) else {
        bail!("program {program} missing from the eBPF object (build problem)");
    };
    let prog: &mut KProbe = prog.try_into()?;
    prog.load().context("loading the kprobe program")?;
    prog.attach(function, 0).with_context(|| {
        let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
        if kprobes {
            format!("attaching a kprobe to {function}")
        } else {
            format!("attaching a kprobe to {function}: this kernel has no kprobes (CONFIG_KPROBES)")
        }
    })?;
    Ok(())
}

fn attach(ebpf: &mut Ebpf, spec: &ProbeSpec) -> anyhow::Result<()> {
    let Some(program) = ebpf.program_mut(spec.program) else {
        bail!(
            "program {} missing from the eBPF object (build problem)",
            spec.program
        );
    };
    let program: &mut TracePoint = program.try_into()?;
    program.load().map_err(|err| {
        let err = anyhow::Error::new(err).context(format!(
            "the kernel refused the program for {}:{}",
            spec.category, spec.event
        ));
        explain_eperm(err, "loading tracing programs", &[CAP_BPF, CAP_PERFMON])
    })?;
    program.attach(spec.category, spec.event).map_err(|err| {
        let err = anyhow::Error::new(err).context(format!(
            "attaching to tracepoint {}:{} (does /sys/kernel/tracing/events/{}/{} exist?)",
            spec.category, spec.event, spec.category, spec.event
        ));
        explain_eperm(err, "attaching tracepoints", &[CAP_PERFMON])
    })?;
    Ok(())
}

fn attach_btf(ebpf: &mut Ebpf, spec: &ProbeSpec, btf: &Btf) -> anyhow::Result<()> {
    load_btf(ebpf, spec, btf)?;
    attach_loaded_btf(ebpf, spec)
}

fn load_btf(ebpf: &mut Ebpf, spec: &ProbeSpec, btf: &Btf) -> anyhow::Result<()> {
    let Some(program) = ebpf.program_mut(spec.btf_program) else {
        bail!(
            "program {} missing from the eBPF object (build problem)",
            spec.btf_program
        );
    };
    let program: &mut BtfTracePoint = program.try_into()?;
    program
        .load(spec.event, btf)
        .with_context(|| format!("loading {}", spec.btf_program))
}

fn attach_loaded_btf(ebpf: &mut Ebpf, spec: &ProbeSpec) -> anyhow::Result<()> {
    let Some(program) = ebpf.program_mut(spec.btf_program) else {
        bail!(
            "program {} missing from the eBPF object (build problem)",
            spec.btf_program
        );
    };
    let program: &mut BtfTracePoint = program.try_into()?;
    program.attach().context("attaching")?;
    Ok(())
}

/// Load the tp_btf programs that share the per-connection memory, all or none: where one is
/// refused (or the kernel lacks its BTF tracepoint while the classic one can stand in for it),
/// the ones already loaded are unloaded again. Probes the layout leaves unusable do not count.
fn load_btf_group(
    ebpf: &mut Ebpf,
    btf: &Btf,
    usable: impl Fn(&ProbeSpec) -> bool,
    has_btf: impl Fn(&ProbeSpec) -> bool,
) -> anyhow::Result<()> {
    let group = PROBES.iter().filter(|spec| spec.shares_memory && usable(spec));
    let mut loaded = Vec::new();
    let mut result = Ok(());
    for spec in group {
        if !has_btf(spec) {
            result = Err(anyhow::anyhow!(
                "the kernel's BTF has no tracepoint {} for it",
                spec.event
            ));
            break;
        }
        match load_btf(ebpf, spec, btf) {
            Ok(()) => loaded.push(spec),
            Err(err) => {
                result = Err(err.context(format!("{}: BTF tracepoint refused", spec.event)));
                break;
            }
        }
    }
    if result.is_err() {
        for spec in loaded {
            if let Some(program) = ebpf.program_mut(spec.btf_program) {
                let program: &mut BtfTracePoint = program.try_into()?;
                program
                    .unload()
                    .with_context(|| format!("unloading {}", spec.btf_program))?;
            }
        }
    }
    result
}

fn program_fd(ebpf: &Ebpf, name: &str) -> anyhow::Result<ProgramFd> {
    let program = ebpf
        .program(name)
        .ok_or_else(|| anyhow::anyhow!("program {name} vanished"))?;
    Ok(program.fd()?.try_clone()?)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Capabilities the daemon may need (linux/capability.h).
pub type Capability = (u32, &'static str);
pub const CAP_DAC_READ_SEARCH: Capability = (2, "CAP_DAC_READ_SEARCH");
pub const CAP_PERFMON: Capability = (38, "CAP_PERFMON");
pub const CAP_BPF: Capability = (39, "CAP_BPF");

/// Who this process is, as far as the kernel's permission checks go (`/proc/self/status`).
pub struct Privileges {
    pub uid: u32,
    effective: u64,
    /// A seccomp filter is installed (container runtimes' default profiles).
    seccomp_filter: bool,
}

impl Privileges {
    pub fn current() -> Privileges {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
        };
        Privileges {
            // Real, effective, saved, fs: the effective one is checked.
            uid: field("Uid:")
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(u32::MAX),
            effective: u64::from_str_radix(field("CapEff:"), 16).unwrap_or(0),
            seccomp_filter: field("Seccomp:") == "2",
        }
    }

    pub fn has(&self, (bit, _): Capability) -> bool {
        self.effective & (1 << bit) != 0
    }

    /// The names of the capabilities of `wanted` this process lacks.
    pub fn missing(&self, wanted: &[Capability]) -> Vec<&'static str> {
        wanted
            .iter()
            .filter(|cap| !self.has(**cap))
            .map(|(_, name)| *name)
            .collect()
    }
}

/// Whether some cause in the chain is this errno from the kernel.
fn has_os_error(err: &anyhow::Error, errno: i32) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(errno)
    })
}

/// ENOSYS from bpf(2): a kernel built without BPF, or a seccomp filter that hides the call.
pub fn explain_enosys(err: anyhow::Error) -> anyhow::Error {
    if !has_os_error(&err, libc::ENOSYS) {
        return err;
    }
    let seccomp = if Privileges::current().seccomp_filter {
        "; this process runs under a seccomp filter, which may be what hides it (see deploy/README.md)"
    } else {
        ""
    };
    err.context(format!(
        "this kernel offers no BPF: the bpf() system call is not implemented; rstwatch needs a kernel built \
         with CONFIG_BPF_SYSCALL=y{seccomp}"
    ))
}

/// An EPERM from the kernel says nothing about why; say which capability is missing. Other
/// errors pass through unchanged.
pub fn explain_eperm(err: anyhow::Error, what: &str, needs: &[Capability]) -> anyhow::Error {
    if !has_os_error(&err, libc::EPERM) {
        return err;
    }
    let privileges = Privileges::current();
    let names: Vec<_> = needs.iter().map(|(_, name)| *name).collect();
    let missing = privileges.missing(needs);
    let why = if !missing.is_empty() {
        format!(
            "this process (uid {}) lacks {}",
            privileges.uid,
            missing.join(" and ")
        )
    } else if privileges.seccomp_filter {
        format!(
            "this process has {} but a seccomp filter is installed: the container runtime's profile may \
             allow bpf(2) and perf_event_open(2) only with CAP_SYS_ADMIN (see deploy/README.md)",
            names.join(" and ")
        )
    } else {
        format!(
            "this process has {}, so an LSM (SELinux, AppArmor, BPF LSM) or kernel lockdown refused it",
            names.join(" and ")
        )
    };
    err.context(format!("{what} needs root or {}; {why}", names.join(" and ")))
}
