//! The Prometheus side: metric definitions, and bringing them up to date with the kernel's counts.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    classify::causes::{CAUSES, Cause, Direction},
    enrich::event::Timing,
    export::counts::{ErrorLabels, LOST_STAGES, OTHER, Overflow, PROBE_SKIPPED, SeriesLabels},
};

/// Userspace-side loss: a ring-buffer record that did not decode.
pub const LOST_DECODE: &str = "decode";

pub struct Metrics {
    registry: Registry,
    resets: IntCounterVec,
    idle: HistogramVec,
    age: HistogramVec,
    lost: IntCounterVec,
    probe_attached: IntGaugeVec,
    cause_observable: IntGaugeVec,
    rate_limited: IntCounterVec,
    socket_errors: IntCounterVec,
    label_overflow: IntCounterVec,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    program_runs: IntCounterVec,
    program_run_seconds: prometheus::CounterVec,
    program_skipped: IntCounterVec,
    /// What each series had reached at the previous sync, by metric: counters only move by the
    /// kernel's increase since then.
    last: HashMap<(&'static str, Vec<String>), u64>,
}

const RESET_LABELS: [&str; 5] = ["direction", "cause", "state", "port", "comm"];
const RESET_LABELS_KUBERNETES: [&str; 8] = [
    "direction",
    "cause",
    "state",
    "port",
    "comm",
    "namespace",
    "pod",
    "container",
];

/// From "just reused a pooled connection" to "an idle NAT mapping of an hour".
const IDLE_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];
const AGE_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

impl Metrics {
    /// `kubernetes`: `rstwatch_resets_total` also has `namespace`, `pod` and `container` labels.
    pub fn new(kernel_release: &str, kubernetes: bool) -> anyhow::Result<Metrics> {
        let registry = Registry::new();
        let resets = IntCounterVec::new(
            Opts::new(
                "rstwatch_resets_total",
                "TCP resets on this host, by direction, cause, local TCP state before the reset, and service port.",
            ),
            if kubernetes {
                &RESET_LABELS_KUBERNETES
            } else {
                &RESET_LABELS[..]
            },
        )?;
        let idle = HistogramVec::new(
            HistogramOpts::new(
                "rstwatch_reset_idle_seconds",
                "Time since the connection last received a segment from the peer, at the reset.",
            )
            .buckets(IDLE_BUCKETS.to_vec()),
            &["direction", "cause"],
        )?;
        let age = HistogramVec::new(
            HistogramOpts::new(
                "rstwatch_reset_connection_age_seconds",
                "Age of the connection at the reset (connections opened while rstwatch ran), to the kernel's tick (1-10 ms).",
            )
            .buckets(AGE_BUCKETS.to_vec()),
            &["direction", "cause"],
        )?;
        let lost = IntCounterVec::new(
            Opts::new(
                "rstwatch_events_lost_total",
                "Reset details that were not delivered, by stage. ring_buffer_full: event details dropped, counts still exact; count_map_full: counted under port=\"other\"; count_unrecorded: not counted by cause; probe_skipped: the kernel skipped a reset program (another BPF program was running on that CPU), so the reset was not counted; decode: malformed record.",
            ),
            &["stage"],
        )?;
        let probe_attached = IntGaugeVec::new(
            Opts::new(
                "rstwatch_probe_attached",
                "1 if the probe is attached on this kernel, 0 if not: what this node can see.",
            ),
            &["probe"],
        )?;
        let cause_observable = IntGaugeVec::new(
            Opts::new(
                "rstwatch_cause_observable",
                "1 if every reset of this cause is counted under it on this node's kernel, 0 if some or all are missed or counted under another cause (see the start-up log and README \"Kernel compatibility\").",
            ),
            &["direction", "cause"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rstwatch_events_rate_limited_total",
                "Events not written to --events because their cause exceeded --events-rate-limit per second (still counted in rstwatch_resets_total).",
            ),
            &["cause"],
        )?;
        let socket_errors = IntCounterVec::new(
            Opts::new(
                "rstwatch_socket_errors_total",
                "Errors the kernel queued on sockets because of a reset (what the application's next read, write or connect returns), by errno, owning process and service port.",
            ),
            &["errno", "comm", "port"],
        )?;
        let label_overflow = IntCounterVec::new(
            Opts::new(
                "rstwatch_label_overflow_total",
                "Resets counted under port=\"other\" or comm=\"other\" because --max-ports or --max-comms distinct values were already in use.",
            ),
            &["label"],
        )?;
        let map_entries = IntGaugeVec::new(
            Opts::new(
                "rstwatch_map_entries",
                "Keys in the in-kernel count maps at the last scrape (counts: rstwatch_resets_total's, by port and owner; counts_other: the resets counted without port and owner because counts was full; errors and errors_other: the same for rstwatch_socket_errors_total). They never evict: once counts (errors) is at rstwatch_map_capacity, resets (socket errors) with new keys are counted under port=\"other\" and comm=\"unknown\" or \"none\" (rstwatch_events_lost_total{stage=\"count_map_full\"}).",
            ),
            &["map"],
        )?;
        let map_capacity = IntGaugeVec::new(
            Opts::new(
                "rstwatch_map_capacity",
                "Maximum entries of each bounded in-kernel map. counts, counts_other, errors and errors_other: exact counters (see rstwatch_map_entries); conn, closed_flows, listeners, rejected: LRU maps of per-connection memory, which evict their oldest entries when full (their fill is not exported: full is their normal state under churn, and counting it would walk 65536 keys per scrape).",
            ),
            &["map"],
        )?;
        let program_runs = IntCounterVec::new(
            Opts::new(
                "rstwatch_program_runs_total",
                "Runs of each rstwatch kernel program, counted by the kernel while kernel.bpf_stats_enabled=1 (0 otherwise).",
            ),
            &["probe"],
        )?;
        let program_run_seconds = prometheus::CounterVec::new(
            Opts::new(
                "rstwatch_program_run_seconds_total",
                "CPU time spent in each rstwatch kernel program, measured by the kernel while kernel.bpf_stats_enabled=1 (0 otherwise): rstwatch's own cost.",
            ),
            &["probe"],
        )?;
        let program_skipped = IntCounterVec::new(
            Opts::new(
                "rstwatch_program_recursion_misses_total",
                "Times the kernel skipped an rstwatch program because another BPF tracing program was running on that CPU (bpf_prog_info.recursion_misses); for the reset probes each is a reset not counted (also in rstwatch_events_lost_total{stage=\"probe_skipped\"}).",
            ),
            &["probe"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "rstwatch_build_info",
                "rstwatch version and the kernel it runs on.",
            ),
            &["version", "kernel"],
        )?;
        registry.register(Box::new(program_run_seconds.clone()))?;
        for collector in [
            &resets,
            &lost,
            &rate_limited,
            &socket_errors,
            &label_overflow,
            &program_runs,
            &program_skipped,
        ] {
            registry.register(Box::new(collector.clone()))?;
        }
        for collector in [&idle, &age] {
            registry.register(Box::new(collector.clone()))?;
        }
        for collector in [
            &probe_attached,
            &cause_observable,
            &build_info,
            &map_entries,
            &map_capacity,
        ] {
            registry.register(Box::new(collector.clone()))?;
        }
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), kernel_release])
            .set(1);

        // Every series a dashboard sums by cause exists from the first scrape, so rate() sees the
        // first reset of each cause instead of a series appearing with it.
        for info in CAUSES {
            for direction in info.directions {
                let base = [direction.label(), info.label, info.typical_state, OTHER, OTHER];
                if kubernetes {
                    resets.with_label_values(&[&base[..], &["", "", ""]].concat());
                } else {
                    resets.with_label_values(&base);
                }
                idle.with_label_values(&[direction.label(), info.label]);
                age.with_label_values(&[direction.label(), info.label]);
            }
        }
        for (_, stage) in LOST_STAGES {
            lost.with_label_values(&[stage]);
        }
        lost.with_label_values(&[LOST_DECODE]);
        lost.with_label_values(&[PROBE_SKIPPED]);
        for label in ["port", "comm"] {
            label_overflow.with_label_values(&[label]);
        }

        Ok(Metrics {
            registry,
            resets,
            idle,
            age,
            lost,
            probe_attached,
            cause_observable,
            rate_limited,
            socket_errors,
            label_overflow,
            map_entries,
            map_capacity,
            program_runs,
            program_run_seconds,
            program_skipped,
            last: HashMap::new(),
        })
    }

    pub fn set_probe_attached(&self, probe: &str, attached: bool) {
        self.probe_attached
            .with_label_values(&[probe])
            .set(attached as i64);
    }

    pub fn set_cause_observable(&self, direction: Direction, cause: Cause, observable: bool) {
        self.cause_observable
            .with_label_values(&[direction.label(), cause.label()])
            .set(observable as i64);
    }

    pub fn set_map_capacity(&self, map: &str, capacity: u32) {
        self.map_capacity
            .with_label_values(&[map])
            .set(i64::from(capacity));
    }

    pub fn set_map_entries(&self, map: &str, entries: usize) {
        self.map_entries.with_label_values(&[map]).set(entries as i64);
    }

    /// Bring the counters kept in the kernel up to its totals.
    pub fn sync(
        &mut self,
        resets: &BTreeMap<SeriesLabels, u64>,
        errors: &BTreeMap<ErrorLabels, u64>,
        lost: &[(&'static str, u64)],
        overflow: &Overflow,
    ) {
        for (l, total) in resets {
            let mut values = vec![l.direction.label(), l.cause.label(), l.state, &l.port, &l.comm];
            if let Some(workload) = &l.workload {
                values.extend(workload.iter().map(String::as_str));
            }
            advance(&mut self.last, "resets", &self.resets, &values, *total);
        }
        for (l, total) in errors {
            advance(
                &mut self.last,
                "socket_errors",
                &self.socket_errors,
                &[l.errno, &l.comm, &l.port],
                *total,
            );
        }
        for (stage, total) in lost {
            advance(&mut self.last, "lost", &self.lost, &[stage], *total);
        }
        for (label, total) in overflow {
            advance(
                &mut self.last,
                "label_overflow",
                &self.label_overflow,
                &[label],
                *total,
            );
        }
    }

    /// Bring one program's kernel-kept totals (`prog_stats`) into its counters.
    pub fn set_program_stats(&mut self, probe: &str, stats: &crate::load::prog_stats::ProgStats) {
        // Every attached program has its series from the first scrape, at 0 without bpf_stats.
        self.program_runs.with_label_values(&[probe]);
        self.program_run_seconds.with_label_values(&[probe]);
        self.program_skipped.with_label_values(&[probe]);
        advance(
            &mut self.last,
            "program_runs",
            &self.program_runs,
            &[probe],
            stats.run_cnt,
        );
        advance(
            &mut self.last,
            "program_skipped",
            &self.program_skipped,
            &[probe],
            stats.recursion_misses,
        );
        let seen = self
            .last
            .entry(("program_run_ns", vec![probe.to_string()]))
            .or_insert(0);
        if stats.run_time_ns > *seen {
            let added = (stats.run_time_ns - *seen) as f64 / 1e9;
            self.program_run_seconds.with_label_values(&[probe]).inc_by(added);
            *seen = stats.run_time_ns;
        }
    }

    pub fn count_decode_errors(&self, records: u64) {
        self.lost.with_label_values(&[LOST_DECODE]).inc_by(records);
    }

    pub fn count_rate_limited(&self, cause: Cause) {
        self.rate_limited.with_label_values(&[cause.label()]).inc();
    }

    pub fn observe(&self, reset: &Timing) {
        let labels = [reset.direction.label(), reset.cause.label()];
        if let Some(idle) = reset.idle {
            self.idle.with_label_values(&labels).observe(idle.as_secs_f64());
        }
        if let Some(age) = reset.age {
            self.age.with_label_values(&labels).observe(age.as_secs_f64());
        }
    }

    pub fn encode(&self) -> anyhow::Result<Vec<u8>> {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .context("encoding metrics")?;
        Ok(buffer)
    }
}

/// Move one counter up to `total`. A total can only dip for the microseconds between the kernel
/// counting its own false "received" reset and taking it back: never let a counter go down.
fn advance(
    last: &mut HashMap<(&'static str, Vec<String>), u64>,
    metric: &'static str,
    counter: &IntCounterVec,
    values: &[&str],
    total: u64,
) {
    let seen = last
        .entry((metric, values.iter().map(|v| v.to_string()).collect()))
        .or_insert(0);
    if total > *seen {
        counter.with_label_values(values).inc_by(total - *seen);
        *seen = total;
    }
}
