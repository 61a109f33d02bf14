//! Everything a command needs from the kernel, opened once: layout, programs, maps.

use std::{sync::Arc, time::Duration};

use anyhow::anyhow;
use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use log::info;
use rstwatch_common::{CountKey, ErrorKey, probes::maps};

use crate::{
    classify::{
        Classifier,
        coverage::{self, Coverage},
    },
    cmd::args::{count_in, parse_duration, parse_ring_kib},
    enrich::{attribution::Attribution, event::Decoder},
    load::{
        attach::{self, Probes, ProgramType},
        kernel::{self, KernelLayout},
    },
};

/// What every command that loads the programs can tune.
#[derive(clap::Args, Clone, Debug)]
pub struct KernelArgs {
    /// A received reset on a connection idle at least this long before its last send counts as
    /// `idle_reset` (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub idle_threshold: Duration,
    /// Size of the kernel-to-daemon event ring buffer in KiB (a power of two, at least 4).
    /// Counters are exact whatever its size; it bounds how many event details survive a burst.
    #[arg(long, default_value_t = 1024, allow_negative_numbers = true, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,
    /// At most this many reset events per second (over all CPUs) reach userspace; past it only
    /// their loss is counted (`over_event_budget`). Counters are exact regardless; this keeps the
    /// daemon cheap in a reset storm. 0 = no limit.
    #[arg(long, default_value_t = 10_000, allow_negative_numbers = true, value_parser = count_in(0, u32::MAX))]
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
    /// What the attached probes let this node see.
    pub coverage: Coverage,
    pub counts: PerCpuHashMap<MapData, CountKey, u64>,
    /// Where resets go, without port and owner, once `counts` is full.
    pub counts_other: PerCpuHashMap<MapData, CountKey, u64>,
    pub errors: PerCpuHashMap<MapData, ErrorKey, u64>,
    /// Where socket errors go, without port and owner, once `errors` is full.
    pub errors_other: PerCpuHashMap<MapData, ErrorKey, u64>,
    pub lost: PerCpuArray<MapData, u64>,
    pub ring: RingBuf<MapData>,
    /// `max_entries` of the bounded maps, by `rstwatch_map_capacity{map}` label.
    pub capacities: Vec<(&'static str, u32)>,
}

/// The bounded maps whose capacity is exported: the exact count maps (which never evict: when
/// `counts` or `errors` is full, new keys are counted without port and owner in `counts_other`
/// or `errors_other`) and the LRU
/// maps (which evict their oldest entries).
pub const MAPS: [(&str, &str); 8] = [
    (maps::COUNTS, "counts"),
    (maps::COUNTS_OTHER, "counts_other"),
    (maps::ERRORS, "errors"),
    (maps::ERRORS_OTHER, "errors_other"),
    (maps::CONN, "conn"),
    (maps::CLOSED_FLOWS, "closed_flows"),
    (maps::LISTENERS, "listeners"),
    (maps::REJECTED, "rejected"),
];

fn capacity(ebpf: &aya::Ebpf, name: &str) -> anyhow::Result<u32> {
    let data = match ebpf.map(name) {
        Some(
            Map::HashMap(data)
            | Map::LruHashMap(data)
            | Map::PerCpuHashMap(data)
            | Map::PerCpuLruHashMap(data),
        ) => data,
        Some(_) => return Err(anyhow!("map {name} is not a hash map (build problem)")),
        None => return Err(anyhow!("map {name} missing from the eBPF object (build problem)")),
    };
    Ok(data.info()?.max_entries())
}

impl Session {
    /// `count_by_cgroup`: count by the owner's cgroup too (per-pod labels in Kubernetes mode).
    /// `max_ports`: service ports with counts of their own (`--max-ports`; 0 = all).
    /// `loader`: `load::attach::loader()`, made first thing in `main` (see there).
    pub fn open(
        loader: aya::EbpfLoader<'static>,
        args: &KernelArgs,
        count_by_cgroup: bool,
        max_ports: u32,
    ) -> anyhow::Result<Session> {
        let mut layout = kernel::resolve(args.idle_threshold)?;
        let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow!("{what}: {err}"))? as u32;
        layout.config.events_per_cpu_per_second = args.max_events_per_second.div_ceil(cpus.max(1));
        layout.config.count_by_cgroup = count_by_cgroup as u32;
        layout.config.max_ports = max_ports;
        let mut probes =
            attach::load_and_attach(loader, &layout, args.ring_buffer_kib * 1024, args.program_type)?;
        let coverage = Coverage::of(&probes.status, &layout);
        info!(
            "{}",
            coverage::summary(&layout.release, &probes.status, &coverage)
        );
        let capacities = MAPS
            .iter()
            .map(|&(name, label)| Ok((label, capacity(&probes.ebpf, name)?)))
            .collect::<anyhow::Result<_>>()?;
        let counts = PerCpuHashMap::try_from(take_map(&mut probes.ebpf, maps::COUNTS)?)?;
        let counts_other = PerCpuHashMap::try_from(take_map(&mut probes.ebpf, maps::COUNTS_OTHER)?)?;
        let errors = PerCpuHashMap::try_from(take_map(&mut probes.ebpf, maps::ERRORS)?)?;
        let errors_other = PerCpuHashMap::try_from(take_map(&mut probes.ebpf, maps::ERRORS_OTHER)?)?;
        let lost = PerCpuArray::try_from(take_map(&mut probes.ebpf, maps::LOST)?)?;
        let ring = RingBuf::try_from(take_map(&mut probes.ebpf, maps::EVENTS)?)?;
        Ok(Session {
            layout,
            probes,
            coverage,
            counts,
            counts_other,
            errors,
            errors_other,
            lost,
            ring,
            capacities,
        })
    }

    pub fn classifier(&self) -> Classifier {
        Classifier {
            reason_names: self.layout.reason_names.clone(),
        }
    }

    pub fn decoder(&self, attribution: Option<Arc<Attribution>>) -> Decoder {
        Decoder {
            classifier: self.classifier(),
            hz: self.layout.config.hz,
            attribution,
        }
    }
}

fn take_map(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object (build problem)"))
}
