//! The Prometheus side: metric definitions, and bringing them up to date with the kernel's counts.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    causes::{CAUSES, Cause},
    counts::{LOST_STAGES, OTHER_PORT, PROBE_SKIPPED, SeriesLabels},
    events::Reset,
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
    rate_limited: IntCounterVec,
    /// What each series and loss stage had reached at the previous sync: counters only move by the
    /// kernel's increase since then.
    last_resets: HashMap<SeriesLabels, u64>,
    last_lost: HashMap<&'static str, u64>,
}

/// From "just reused a pooled connection" to "an idle NAT mapping of an hour".
const IDLE_BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0];
const AGE_BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0];

impl Metrics {
    pub fn new(kernel_release: &str) -> anyhow::Result<Metrics> {
        let registry = Registry::new();
        let resets = IntCounterVec::new(
            Opts::new("rstwatch_resets_total", "TCP resets on this host, by direction, cause, local TCP state before the reset, and service port."),
            &["direction", "cause", "state", "port"],
        )?;
        let idle = HistogramVec::new(
            HistogramOpts::new("rstwatch_reset_idle_seconds", "Time since the connection last received a segment from the peer, at the reset.")
                .buckets(IDLE_BUCKETS.to_vec()),
            &["direction", "cause"],
        )?;
        let age = HistogramVec::new(
            HistogramOpts::new("rstwatch_reset_connection_age_seconds", "Age of the connection at the reset (connections opened while rstwatch ran).")
                .buckets(AGE_BUCKETS.to_vec()),
            &["direction", "cause"],
        )?;
        let lost = IntCounterVec::new(
            Opts::new("rstwatch_events_lost_total", "Reset details that were not delivered, by stage. ring_buffer_full: event details dropped, counts still exact; count_map_full: counted under port=\"other\"; count_unrecorded: not counted by cause; probe_skipped: the kernel skipped a reset program (another BPF program was running on that CPU), so the reset was not counted; decode: malformed record."),
            &["stage"],
        )?;
        let probe_attached = IntGaugeVec::new(
            Opts::new("rstwatch_probe_attached", "1 if the probe is attached on this kernel, 0 if not: what this node can see."),
            &["probe"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new("rstwatch_events_rate_limited_total", "Events not written to --events because their cause exceeded --events-rate-limit per second (still counted in rstwatch_resets_total)."),
            &["cause"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("rstwatch_build_info", "rstwatch version and the kernel it runs on."),
            &["version", "kernel"],
        )?;
        for collector in [&resets, &lost, &rate_limited] {
            registry.register(Box::new(collector.clone()))?;
        }
        for collector in [&idle, &age] {
            registry.register(Box::new(collector.clone()))?;
        }
        for collector in [&probe_attached, &build_info] {
            registry.register(Box::new(collector.clone()))?;
        }
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), kernel_release]).set(1);

        // Every series a dashboard sums by cause exists from the first scrape, so rate() sees the
        // first reset of each cause instead of a series appearing with it.
        for info in CAUSES {
            for direction in info.directions {
                resets.with_label_values(&[direction.label(), info.label, info.typical_state, OTHER_PORT]);
                idle.with_label_values(&[direction.label(), info.label]);
                age.with_label_values(&[direction.label(), info.label]);
            }
        }
        for (_, stage) in LOST_STAGES {
            lost.with_label_values(&[stage]);
        }
        lost.with_label_values(&[LOST_DECODE]);
        lost.with_label_values(&[PROBE_SKIPPED]);

        Ok(Metrics {
            registry,
            resets,
            idle,
            age,
            lost,
            probe_attached,
            rate_limited,
            last_resets: HashMap::new(),
            last_lost: HashMap::new(),
        })
    }

    pub fn set_probe_attached(&self, probe: &str, attached: bool) {
        self.probe_attached.with_label_values(&[probe]).set(attached as i64);
    }

    /// Bring `rstwatch_resets_total` up to the kernel's totals.
    pub fn sync_resets(&mut self, series: &BTreeMap<SeriesLabels, u64>) {
        for (labels, total) in series {
            let last = self.last_resets.entry(labels.clone()).or_insert(0);
            // A total can only dip for the microseconds between the kernel counting its own false
            // "received" reset and taking it back; never let the counter go down.
            if *total > *last {
                self.resets
                    .with_label_values(&[labels.direction.label(), labels.cause.label(), labels.state, &labels.port])
                    .inc_by(*total - *last);
                *last = *total;
            }
        }
    }

    pub fn sync_lost(&mut self, lost: &[(&'static str, u64)]) {
        for (stage, total) in lost {
            let last = self.last_lost.entry(stage).or_insert(0);
            if *total > *last {
                self.lost.with_label_values(&[stage]).inc_by(*total - *last);
                *last = *total;
            }
        }
    }

    pub fn count_decode_errors(&self, records: u64) {
        self.lost.with_label_values(&[LOST_DECODE]).inc_by(records);
    }

    pub fn count_rate_limited(&self, cause: Cause) {
        self.rate_limited.with_label_values(&[cause.label()]).inc();
    }

    pub fn observe(&self, reset: &Reset) {
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
