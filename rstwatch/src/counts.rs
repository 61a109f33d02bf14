//! The exact counts kept in the kernel, read at scrape time and turned into labelled series.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use rstwatch_common::{CountKey, lost};

use crate::{
    causes::{Cause, Direction},
    classify::{ResetFacts, classify, state_label},
};

/// Labels of one `rstwatch_resets_total` series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesLabels {
    pub direction: Direction,
    pub cause: Cause,
    pub state: &'static str,
    pub port: String,
}

/// Gives ports their own label value up to a cap; the rest share `other`. A port keeps its label
/// once given, so series never change name under a running Prometheus.
pub struct PortLabels {
    max: usize,
    known: HashMap<u16, String>,
}

pub const OTHER_PORT: &str = "other";

impl PortLabels {
    pub fn new(max: usize) -> Self {
        PortLabels { max, known: HashMap::new() }
    }

    pub fn label(&mut self, port: u16) -> String {
        if port == 0 {
            return OTHER_PORT.to_string();
        }
        if let Some(label) = self.known.get(&port) {
            return label.clone();
        }
        if self.known.len() >= self.max {
            return OTHER_PORT.to_string();
        }
        let label = port.to_string();
        self.known.insert(port, label.clone());
        label
    }
}

/// Turns kernel count keys into series labels.
#[derive(Clone)]
pub struct Classifier {
    pub reason_names: BTreeMap<u16, String>,
}

impl Classifier {
    pub fn facts(&self, key: &CountKey) -> ResetFacts {
        ResetFacts::from_key(key, |value| self.reason_names.get(&value).cloned())
    }

    pub fn labels(&self, key: &CountKey, ports: &mut PortLabels) -> SeriesLabels {
        let facts = self.facts(key);
        SeriesLabels {
            direction: facts.direction,
            cause: classify(&facts),
            state: state_label(facts.state_before()),
            port: ports.label(key.port),
        }
    }
}

/// Totals of everything in the kernel's count map, summed over CPUs, by series.
pub fn read_series(
    counts: &PerCpuHashMap<MapData, CountKey, u64>,
    classifier: &Classifier,
    ports: &mut PortLabels,
) -> anyhow::Result<BTreeMap<SeriesLabels, u64>> {
    let mut series = BTreeMap::new();
    for entry in counts.iter() {
        let (key, per_cpu) = entry.context("reading the in-kernel reset counters")?;
        // Per-CPU slots may individually wrap below zero (see the eBPF `uncount`); their sum is
        // the true count.
        let total = per_cpu.iter().fold(0u64, |sum, value| sum.wrapping_add(*value));
        *series.entry(classifier.labels(&key, ports)).or_insert(0u64) += total;
    }
    Ok(series)
}

/// Label values of `rstwatch_events_lost_total{stage}`, by `rstwatch_common::lost` index.
pub const LOST_STAGES: [(u32, &str); 3] = [
    (lost::RING_BUFFER_FULL, "ring_buffer_full"),
    (lost::COUNT_MAP_FULL, "count_map_full"),
    (lost::COUNT_UNRECORDED, "count_unrecorded"),
];

/// Resets the kernel did not let our programs see (see `prog_stats`): not counted at all.
pub const PROBE_SKIPPED: &str = "probe_skipped";

pub fn read_lost(lost_map: &PerCpuArray<MapData, u64>) -> anyhow::Result<Vec<(&'static str, u64)>> {
    LOST_STAGES
        .iter()
        .map(|(index, stage)| {
            let per_cpu = lost_map.get(index, 0).context("reading the in-kernel loss counters")?;
            Ok((*stage, per_cpu.iter().sum()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_beyond_the_cap_share_other_and_keep_their_labels() {
        let mut ports = PortLabels::new(2);
        assert_eq!(ports.label(8080), "8080");
        assert_eq!(ports.label(0), OTHER_PORT);
        assert_eq!(ports.label(443), "443");
        assert_eq!(ports.label(22), OTHER_PORT);
        assert_eq!(ports.label(8080), "8080");
    }
}
