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
    probes::{self, Probes},
};

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
    pub fn open(idle_threshold: Duration, ring_buffer_bytes: u32) -> anyhow::Result<Session> {
        let tracefs = kernel::tracefs::ensure_mounted()?;
        info!("tracefs at {}", tracefs.display());
        let layout = kernel::resolve(idle_threshold)?;
        let mut probes = probes::load_and_attach(&layout, ring_buffer_bytes)?;
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
