//! Stage 1, load: the eBPF object loaded with this kernel's layout and its programs attached, as
//! the probe table (`rstwatch_common::probes`) describes them.

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, KProbe, ProgramFd, TracePoint},
};
use log::warn;

use rstwatch_common::probes::{self, Tracepoint, maps};

use super::kernel::KernelLayout;
use super::privileges::{CAP_BPF, CAP_PERFMON, explain_enosys, explain_eperm};

/// How one probe came out of the start-up decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeStatus {
    /// Attached, as `tp_btf`, `tracepoint` or `kprobe`.
    Attached(&'static str),
    /// A fallback this kernel does not need (not exported as a metric, so no alert fires).
    NotNeeded(&'static str),
    /// Wanted but not attached: why.
    Missing(String),
}

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

pub struct Probes {
    pub ebpf: Ebpf,
    /// Every probe (tracepoints, then kprobes, as in `rstwatch_common::probes::PROBES`): how it is
    /// attached, or why it is not.
    pub status: Vec<(&'static str, ProbeStatus)>,
    /// Every attached program, by probe name, and whether it counts resets: to read how often
    /// the kernel skipped it and what it costs (`prog_stats`).
    pub programs: Vec<AttachedProgram>,
}

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

/// aya's loader. `EbpfLoader::new` parses the whole kernel BTF (~19 MB while it parses 6.18's
/// 5.5 MB), the daemon's peak memory: `main` calls this before anything else of size is in memory. The
/// parse is dropped at once: the programs have no CO-RE relocations, and `load_and_attach` gives
/// the loader only the small BTF its BTF tracepoints need (issue 12).
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
            super::kernel::btf::tracepoints_btf(typedefs)
                .map_err(|e| log::warn!("no BTF tracepoints, classic ones only: {e:#}"))
                .ok()
        }
        ProgramType::Tracepoint => None,
    };
    // Borrows `btf` and the layout from here on.
    let mut loader: EbpfLoader<'_> = loader;
    let mut ebpf = loader
        .btf(btf.as_ref())
        .override_global(maps::CONFIG, &layout.config, true)
        .map_max_entries(maps::EVENTS, ring_buffer_bytes)
        // Without a cap (trace) every port may get counts of its own.
        .map_max_entries(
            maps::PORT_LABELS,
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
    let usable = |spec: &Tracepoint| (spec.usable)(&layout.config);
    let has_btf = |spec: &Tracepoint| layout.btf_tracepoints.contains_key(spec.event);
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
    for spec in probes::tracepoints() {
        if !usable(&spec) {
            let why = format!(
                "this kernel's {}:{} lacks a field rstwatch reads",
                spec.category, spec.event
            );
            status.push((spec.name, ProbeStatus::Missing(why)));
            continue;
        }
        let result = if spec.shares_memory {
            if shared_btf {
                attach_loaded_btf(&mut ebpf, &spec).map(|()| spec.btf_program)
            } else {
                attach(&mut ebpf, &spec).map(|()| spec.program)
            }
        } else {
            let btf_ok = btf.as_ref().filter(|_| has_btf(&spec));
            match btf_ok.map(|btf| attach_btf(&mut ebpf, &spec, btf)) {
                Some(Ok(())) => Ok(spec.btf_program),
                Some(Err(err)) => {
                    let text = format!("{err:#}");
                    warn!(
                        "{}: BTF tracepoint refused ({}); using the classic tracepoint",
                        spec.event,
                        text.lines().next().unwrap_or_default()
                    );
                    log::debug!("{}: BTF tracepoint refused: {text}", spec.event);
                    attach(&mut ebpf, &spec).map(|()| spec.program)
                }
                None => attach(&mut ebpf, &spec).map(|()| spec.program),
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
    for kprobe in probes::kprobes() {
        let (function, program) = (kprobe.name, kprobe.program);
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
    Ok(Probes {
        ebpf,
        status,
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

fn attach(ebpf: &mut Ebpf, spec: &Tracepoint) -> anyhow::Result<()> {
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

fn attach_btf(ebpf: &mut Ebpf, spec: &Tracepoint, btf: &Btf) -> anyhow::Result<()> {
    load_btf(ebpf, spec, btf)?;
    attach_loaded_btf(ebpf, spec)
}

fn load_btf(ebpf: &mut Ebpf, spec: &Tracepoint, btf: &Btf) -> anyhow::Result<()> {
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

fn attach_loaded_btf(ebpf: &mut Ebpf, spec: &Tracepoint) -> anyhow::Result<()> {
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
    usable: impl Fn(&Tracepoint) -> bool,
    has_btf: impl Fn(&Tracepoint) -> bool,
) -> anyhow::Result<()> {
    let group = probes::tracepoints().filter(|spec| spec.shares_memory && usable(spec));
    let mut loaded = Vec::new();
    let mut result = Ok(());
    for spec in group {
        if !has_btf(&spec) {
            result = Err(anyhow::anyhow!(
                "the kernel's BTF has no tracepoint {} for it",
                spec.event
            ));
            break;
        }
        match load_btf(ebpf, &spec, btf) {
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

#[cfg(test)]
mod tests {
    use rstwatch_common::probes::{Attach, PROBES, maps};

    /// The probe table and the map names are the contract with rstwatch-ebpf: every program and
    /// map they name is in the object this binary embeds.
    #[test]
    fn the_ebpf_object_has_every_program_and_map_the_tables_name() {
        let object = aya_obj::Object::parse(super::OBJECT).expect("the embedded eBPF object parses");
        for probe in PROBES {
            let mut programs = vec![probe.program];
            if let Attach::Tracepoint { btf_program, .. } = probe.attach {
                programs.push(btf_program);
            }
            for program in programs {
                assert!(
                    object.programs.contains_key(program),
                    "{}: program {program} not in the eBPF object",
                    probe.name
                );
            }
        }
        let names = [
            maps::COUNTS,
            maps::COUNTS_OTHER,
            maps::ERRORS,
            maps::ERRORS_OTHER,
            maps::CONN,
            maps::CLOSED_FLOWS,
            maps::LISTENERS,
            maps::REJECTED,
            maps::LOST,
            maps::EVENTS,
            maps::PORT_LABELS,
        ];
        for map in names {
            assert!(object.maps.contains_key(map), "map {map} not in the eBPF object");
        }
    }
}
