//! Everything a command needs from the kernel, opened once: layout, programs, maps.

use std::{sync::Arc, time::Duration};

use anyhow::anyhow;
use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use log::info;
use rstwatch_common::{CountKey, ErrorKey};

use crate::{
    attribution::Attribution,
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
    #[arg(long, default_value_t = 1024, allow_negative_numbers = true, value_parser = crate::parse_ring_kib)]
    pub ring_buffer_kib: u32,
    /// At most this many reset events per second (over all CPUs) reach userspace; past it only
    /// their loss is counted (`over_event_budget`). Counters are exact regardless; this keeps the
    /// daemon cheap in a reset storm. 0 = no limit.
    #[arg(long, default_value_t = 10_000, allow_negative_numbers = true, value_parser = crate::count_in(0, u32::MAX))]
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
    ("COUNTS", "counts"),
    ("COUNTS_OTHER", "counts_other"),
    ("ERRORS", "errors"),
    ("ERRORS_OTHER", "errors_other"),
    ("CONN", "conn"),
    ("CLOSED_FLOWS", "closed_flows"),
    ("LISTENERS", "listeners"),
    ("REJECTED", "rejected"),
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

/// tracefs exists but this process may not look into it: say that, and which capability would
/// let it, instead of only the failure of the mount attempted as a fallback.
fn explain_tracefs(err: anyhow::Error) -> anyhow::Error {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let tracefs_at = |dir: &str| {
        mountinfo.lines().any(|line| {
            let mut halves = line.split(" - ");
            let mount_point = halves.next().and_then(|head| head.split(' ').nth(4));
            let fstype = halves.next().and_then(|tail| tail.split(' ').next());
            mount_point == Some(dir) && fstype == Some("tracefs")
        })
    };
    let denied = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .find_map(
            |dir| match std::fs::metadata(std::path::Path::new(dir).join("events")) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && tracefs_at(dir) => {
                    Some((dir, e))
                }
                _ => None,
            },
        );
    let Some((dir, denial)) = denied else {
        return err;
    };
    let privileges = probes::Privileges::current();
    let missing = privileges.missing(&[probes::CAP_BPF, probes::CAP_PERFMON, probes::CAP_DAC_READ_SEARCH]);
    // The mount tried as a fallback failed with this (its message says "not mounted", which is wrong here).
    let mount_failure = format!("{err}")
        .split_once("(os error ")
        .and_then(|(_, rest)| rest.split(')').next()?.parse().ok())
        .map(|errno| {
            format!(
                "; mounting a tracefs of its own failed too: {}",
                std::io::Error::from_raw_os_error(errno)
            )
        })
        .unwrap_or_default();
    anyhow!(
        "tracefs is mounted at {dir} but uid {} cannot read it ({denial}): run rstwatch as root, or as \
         non-root with CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH (to read tracefs); this process lacks {}{mount_failure}",
        privileges.uid,
        if missing.is_empty() {
            "none of them (is tracefs mounted with a gid= option?)".to_string()
        } else {
            missing.join(", ")
        },
    )
}

impl Session {
    /// `count_by_cgroup`: count by the owner's cgroup too (per-pod labels in Kubernetes mode).
    /// `max_ports`: service ports with counts of their own (`--max-ports`; 0 = all).
    /// `loader`: `probes::loader()`, made first thing in `main` (see there).
    pub fn open(
        loader: aya::EbpfLoader<'static>,
        args: &KernelArgs,
        count_by_cgroup: bool,
        max_ports: u32,
    ) -> anyhow::Result<Session> {
        let tracefs = kernel::tracefs::ensure_mounted().map_err(explain_tracefs)?;
        info!("tracefs at {}", tracefs.display());
        let mut layout = kernel::resolve(args.idle_threshold)?;
        let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow!("{what}: {err}"))? as u32;
        layout.config.events_per_cpu_per_second = args.max_events_per_second.div_ceil(cpus.max(1));
        layout.config.count_by_cgroup = count_by_cgroup as u32;
        layout.config.max_ports = max_ports;
        let mut probes =
            probes::load_and_attach(loader, &layout, args.ring_buffer_kib * 1024, args.program_type)?;
        let capacities = MAPS
            .iter()
            .map(|&(name, label)| Ok((label, capacity(&probes.ebpf, name)?)))
            .collect::<anyhow::Result<_>>()?;
        let counts = PerCpuHashMap::try_from(take_map(&mut probes.ebpf, "COUNTS")?)?;
        let counts_other = PerCpuHashMap::try_from(take_map(&mut probes.ebpf, "COUNTS_OTHER")?)?;
        let errors = PerCpuHashMap::try_from(take_map(&mut probes.ebpf, "ERRORS")?)?;
        let errors_other = PerCpuHashMap::try_from(take_map(&mut probes.ebpf, "ERRORS_OTHER")?)?;
        let lost = PerCpuArray::try_from(take_map(&mut probes.ebpf, "LOST")?)?;
        let ring = RingBuf::try_from(take_map(&mut probes.ebpf, "EVENTS")?)?;
        Ok(Session {
            layout,
            probes,
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
            hz: self.layout.hz,
            attribution,
        }
    }
}

fn take_map(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object (build problem)"))
}
