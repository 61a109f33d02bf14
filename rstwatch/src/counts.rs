//! The exact counts kept in the kernel, read at scrape time and turned into labelled series.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use rstwatch_common::{CountKey, ErrorKey, STATE_NONE, extra_fact, lost};

use crate::{
    attribution::Attribution,
    causes::{Cause, Direction},
    classify::{ResetFacts, classify, state_label},
    events::{comm_text, errno_name},
    map_batch,
};

/// Labels of one `rstwatch_resets_total` series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesLabels {
    pub direction: Direction,
    pub cause: Cause,
    pub state: &'static str,
    pub port: String,
    pub comm: String,
    /// Kubernetes mode only: namespace, pod and container of the owner (empty outside a pod).
    pub workload: Option<[String; 3]>,
}

/// Labels of one `rstwatch_socket_errors_total` series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorLabels {
    pub errno: &'static str,
    pub comm: String,
    pub port: String,
}

/// The label value for everything past a cap.
pub const OTHER: &str = "other";

/// Gives values their own label up to a cap; the rest share `other`. A value keeps its label once
/// given, so series never change name under a running Prometheus.
pub struct LabelCap<K> {
    max: usize,
    known: HashMap<K, String>,
}

impl<K: std::hash::Hash + Eq + Clone> LabelCap<K> {
    pub fn new(max: usize) -> Self {
        LabelCap {
            max,
            known: HashMap::new(),
        }
    }

    /// The label for `value` (rendered by `render` the first time), and whether the cap made it
    /// `other`.
    pub fn label(&mut self, value: &K, render: impl FnOnce() -> String) -> (String, bool) {
        if let Some(label) = self.known.get(value) {
            return (label.clone(), false);
        }
        if self.known.len() >= self.max {
            return (OTHER.to_string(), true);
        }
        let label = render();
        self.known.insert(value.clone(), label.clone());
        (label, false)
    }
}

/// The label caps of a daemon, and how many resets each cap sent to `other` so far.
pub struct Labels {
    pub ports: LabelCap<u16>,
    pub comms: LabelCap<[u8; 16]>,
    /// Kubernetes mode: names the owner's pod from its cgroup.
    pub pods: Option<Arc<Attribution>>,
    pub(crate) resets: Memo<CountKey, SeriesLabels>,
    pub(crate) errors: Memo<ErrorKey, ErrorLabels>,
}

/// The series of every key of a count map seen so far. A key's labels never change (a port or
/// comm keeps its label once given, and one past the cap stays `other` since the cap stays full),
/// so a scrape looks its keys up instead of labelling each of up to 17k keys again (issue 12: a
/// scrape in ≤ 5 ms). In Kubernetes mode a key's pod can become known later: there the reset
/// keys are labelled afresh at every scrape.
pub(crate) struct Memo<K, L> {
    /// Index into `series`, and whether the port and comm caps made the key's labels `other`.
    /// foldhash: the keys are the kernel's (not chosen by a remote client), and SipHash was a
    /// third of the userspace time of a scrape.
    by_key: HashMap<K, (usize, [bool; 2]), foldhash::fast::RandomState>,
    series: Vec<L>,
    index: HashMap<L, usize>,
}

impl<K, L> Default for Memo<K, L> {
    fn default() -> Self {
        Memo {
            by_key: HashMap::default(),
            series: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq, L: std::hash::Hash + Eq + Clone> Memo<K, L> {
    fn get(&self, key: &K) -> Option<(usize, [bool; 2])> {
        self.by_key.get(key).copied()
    }

    fn insert(&mut self, key: K, labels: L, capped: [bool; 2]) -> (usize, [bool; 2]) {
        let series = &mut self.series;
        let index = *self.index.entry(labels).or_insert_with_key(|labels| {
            series.push(labels.clone());
            series.len() - 1
        });
        self.by_key.insert(key, (index, capped));
        (index, capped)
    }
}

impl Labels {
    pub fn new(max_ports: usize, max_comms: usize) -> Self {
        Labels {
            ports: LabelCap::new(max_ports),
            comms: LabelCap::new(max_comms),
            pods: None,
            resets: Memo::default(),
            errors: Memo::default(),
        }
    }

    /// The series of a reset key (an index into `self.resets.series`), and which caps made it `other`.
    fn reset_series(&mut self, classifier: &Classifier, key: &CountKey) -> (usize, [bool; 2]) {
        if let Some(known) = self.resets.get(key) {
            return known;
        }
        let (labels, capped) = classifier.labels(key, self);
        self.resets.insert(*key, labels, capped)
    }

    /// The series of a socket-error key (an index into `self.errors.series`).
    fn error_series(&mut self, key: &ErrorKey) -> usize {
        if let Some((known, _)) = self.errors.get(key) {
            return known;
        }
        let labels = ErrorLabels {
            errno: errno_name(key.errno),
            comm: self.comm(&key.comm, true).0,
            port: self.port(key.port).0,
        };
        self.errors.insert(*key, labels, [false; 2]).0
    }

    /// Namespace, pod and container of the owner's cgroup; empty when it is not in a known pod.
    fn workload(&self, cgroup_id: u64) -> Option<[String; 3]> {
        let attribution = self.pods.as_ref()?;
        let pod = attribution.describe(cgroup_id).and_then(|workload| workload.pod);
        Some(match pod {
            Some(pod) => [pod.namespace, pod.pod, pod.container.unwrap_or_default()],
            None => Default::default(),
        })
    }

    /// Port 0 means the kernel could not tell (or its map was full): `other`, not an overflow.
    fn port(&mut self, port: u16) -> (String, bool) {
        if port == 0 {
            return (OTHER.to_string(), false);
        }
        self.ports.label(&port, || port.to_string())
    }

    /// `none` without a socket, `unknown` for a socket whose owner was not seen.
    fn comm(&mut self, comm: &[u8; 16], has_socket: bool) -> (String, bool) {
        if comm[0] == 0 {
            return ((if has_socket { "unknown" } else { "none" }).to_string(), false);
        }
        self.comms.label(comm, || comm_text(comm))
    }
}

/// Totals of resets the caps relabelled `other`, by label name.
pub type Overflow = BTreeMap<&'static str, u64>;

/// Turns kernel count keys into series labels.
#[derive(Clone)]
pub struct Classifier {
    pub reason_names: BTreeMap<u16, String>,
}

impl Classifier {
    pub fn facts(&self, key: &CountKey) -> ResetFacts {
        ResetFacts::from_key(key, |value| self.reason_names.get(&value).map(String::as_str))
    }

    fn labels(&self, key: &CountKey, labels: &mut Labels) -> (SeriesLabels, [bool; 2]) {
        let facts = self.facts(key);
        // The kernel applies the port cap itself (it keeps a flood of ports out of its map).
        let (port, port_capped) = if key.extra_facts & extra_fact::PORT_CAPPED != 0 {
            (OTHER.to_string(), true)
        } else {
            labels.port(key.port)
        };
        let (comm, comm_capped) = labels.comm(&key.comm, key.state != STATE_NONE);
        let series = SeriesLabels {
            direction: facts.direction,
            cause: classify(&facts),
            state: state_label(facts.state_before()),
            port,
            comm,
            workload: labels.workload(key.cgroup_id),
        };
        (series, [port_capped, comm_capped])
    }
}

/// Totals of everything in the kernel's count maps (COUNTS, then COUNTS_OTHER), summed over CPUs,
/// by series; how much of it the label caps sent to `other`; and how many keys each map holds
/// (counted on the way).
pub fn read_series<const N: usize>(
    maps: [&PerCpuHashMap<MapData, CountKey, u64>; N],
    classifier: &Classifier,
    labels: &mut Labels,
) -> anyhow::Result<(BTreeMap<SeriesLabels, u64>, Overflow, [usize; N])> {
    if labels.pods.is_some() {
        labels.resets.by_key.clear();
    }
    let mut totals: HashMap<usize, u64> = HashMap::new();
    let (mut port_overflow, mut comm_overflow) = (0, 0);
    let mut entries = [0; N];
    for (map, entries) in maps.iter().zip(entries.iter_mut()) {
        // Per-CPU slots may individually wrap below zero (see the eBPF `uncount`); the total is
        // their wrapping sum, the true count.
        map_batch::for_each_total(map, |key, total| {
            *entries += 1;
            let (series, [port_capped, comm_capped]) = labels.reset_series(classifier, &key);
            *totals.entry(series).or_insert(0) += total;
            port_overflow += port_capped as u64 * total;
            comm_overflow += comm_capped as u64 * total;
        })
        .context("reading the in-kernel reset counters")?;
    }
    let series = totals
        .into_iter()
        .map(|(series, total)| (labels.resets.series[series].clone(), total))
        .collect();
    Ok((
        series,
        Overflow::from([("port", port_overflow), ("comm", comm_overflow)]),
        entries,
    ))
}

/// Totals of the kernel's socket-error maps (ERRORS, then ERRORS_OTHER), by series; and how many
/// keys each holds.
pub fn read_errors<const N: usize>(
    maps: [&PerCpuHashMap<MapData, ErrorKey, u64>; N],
    labels: &mut Labels,
) -> anyhow::Result<(BTreeMap<ErrorLabels, u64>, [usize; N])> {
    let mut totals: HashMap<usize, u64> = HashMap::new();
    let mut entries = [0; N];
    for (map, entries) in maps.iter().zip(entries.iter_mut()) {
        map_batch::for_each_total(map, |key, total| {
            *entries += 1;
            *totals.entry(labels.error_series(&key)).or_insert(0) += total;
        })
        .context("reading the in-kernel socket-error counters")?;
    }
    let series = totals
        .into_iter()
        .map(|(series, total)| (labels.errors.series[series].clone(), total))
        .collect();
    Ok((series, entries))
}

/// Label values of `rstwatch_events_lost_total{stage}`, by `rstwatch_common::lost` index.
pub const LOST_STAGES: [(u32, &str); 4] = [
    (lost::RING_BUFFER_FULL, "ring_buffer_full"),
    (lost::COUNT_MAP_FULL, "count_map_full"),
    (lost::COUNT_UNRECORDED, "count_unrecorded"),
    (lost::OVER_EVENT_BUDGET, "over_event_budget"),
];

/// Resets the kernel did not let our programs see (see `prog_stats`): not counted at all.
pub const PROBE_SKIPPED: &str = "probe_skipped";

pub fn read_lost(lost_map: &PerCpuArray<MapData, u64>) -> anyhow::Result<Vec<(&'static str, u64)>> {
    LOST_STAGES
        .iter()
        .map(|(index, stage)| {
            let per_cpu = lost_map
                .get(index, 0)
                .context("reading the in-kernel loss counters")?;
            Ok((*stage, per_cpu.iter().sum()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_beyond_the_cap_share_other_and_keep_their_labels() {
        let mut labels = Labels::new(2, 1);
        assert_eq!(labels.port(8080), ("8080".into(), false));
        assert_eq!(labels.port(0), (OTHER.into(), false));
        assert_eq!(labels.port(443), ("443".into(), false));
        assert_eq!(labels.port(22), (OTHER.into(), true));
        assert_eq!(labels.port(8080), ("8080".into(), false));

        let comm = |name: &str| {
            let mut raw = [0u8; 16];
            raw[..name.len()].copy_from_slice(name.as_bytes());
            raw
        };
        assert_eq!(labels.comm(&comm("java"), true), ("java".into(), false));
        assert_eq!(labels.comm(&comm("nginx"), true), (OTHER.into(), true));
        assert_eq!(labels.comm(&[0; 16], true), ("unknown".into(), false));
        assert_eq!(labels.comm(&[0; 16], false), ("none".into(), false));
    }

    #[test]
    fn keys_with_the_same_labels_share_their_series() {
        let mut memo: Memo<u32, &str> = Memo::default();
        assert_eq!(memo.get(&1), None);
        assert_eq!(memo.insert(1, "a", [false, true]), (0, [false, true]));
        assert_eq!(memo.insert(2, "b", [false; 2]), (1, [false; 2]));
        assert_eq!(memo.insert(3, "a", [true, false]), (0, [true, false]));
        assert_eq!(
            (memo.get(&1), memo.get(&3)),
            (Some((0, [false, true])), Some((0, [true, false])))
        );
        assert_eq!(memo.series, ["a", "b"]);
    }
}
