//! Everything a command needs from the kernel, opened once: layout, programs, maps.

use std::time::Duration;

use anyhow::anyhow;
use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use log::info;
use rstwatch_common::{CountKey, ErrorKey};

use crate::{
    counts::Classifier,
    events::Decoder,
    kernel::{self, KernelLayout},
    probes::{self, Probes, ProgramType},
};

/// What every command that loads the programs can tune.
#[derive(clap::Args, Clone, Debug)]
pub struct KernelArgs {
    /// A received reset on a connection idle at least this long before its last send counts as
    /// `idle_reset` (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub idle_threshold: Duration,
    /// Size of the kernel-to-daemon event ring buffer in KiB (a power of two, at least 4).
    /// Counters are exact whatever its size; it bounds how many event details survive a burst.
    #[arg(long, default_value_t = 4096, value_parser = crate::parse_ring_kib)]
    pub ring_buffer_kib: u32,
    /// At most this many reset events per second (over all CPUs) reach userspace; past it only
    /// their loss is counted (`over_event_budget`). Counters are exact regardless; this keeps the
    /// daemon cheap in a reset storm. 0 = no limit.
    #[arg(long, default_value_t = 10_000)]
    pub max_events_per_second: u32,
    /// `auto`: BTF tracepoints (tp_btf) where the kernel has them, classic tracepoints elsewhere;
    /// `tracepoint`: classic tracepoints only.
    #[arg(long, value_enum, default_value_t = ProgramType::Auto)]
    pub program_type: ProgramType,
}

pub struct Session {
    pub layout: KernelLayout,
    /// Owns the programs: dropping it detaches them.
    pub probes: Probes,
    pub counts: PerCpuHashMap<MapData, CountKey, u64>,
    pub errors: PerCpuHashMap<MapData, ErrorKey, u64>,
    pub lost: PerCpuArray<MapData, u64>,
    pub ring: RingBuf<MapData>,
}

impl Session {
    pub fn open(args: &KernelArgs) -> anyhow::Result<Session> {
        let tracefs = kernel::tracefs::ensure_mounted()?;
        info!("tracefs at {}", tracefs.display());
        let mut layout = kernel::resolve(args.idle_threshold)?;
        let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow!("{what}: {err}"))? as u32;
        layout.config.events_per_cpu_per_second = args.max_events_per_second.div_ceil(cpus.max(1));
        let mut probes = probes::load_and_attach(&layout, args.ring_buffer_kib * 1024, args.program_type)?;
        let counts = PerCpuHashMap::try_from(take_map(&mut probes.ebpf, "COUNTS")?)?;
        let errors = PerCpuHashMap::try_from(take_map(&mut probes.ebpf, "ERRORS")?)?;
        let lost = PerCpuArray::try_from(take_map(&mut probes.ebpf, "LOST")?)?;
        let ring = RingBuf::try_from(take_map(&mut probes.ebpf, "EVENTS")?)?;
        Ok(Session { layout, probes, counts, errors, lost, ring })
    }

    pub fn classifier(&self) -> Classifier {
        Classifier { reason_names: self.layout.reason_names.clone() }
    }

    pub fn decoder(&self) -> Decoder {
        Decoder { classifier: self.classifier(), hz: self.layout.hz }
    }
}

fn take_map(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object (build problem)"))
}
