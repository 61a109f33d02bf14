//! What one run measured: the workload's result, the observed tool's cost, what it counted and
//! its BPF programs' statistics; and the runs of one configuration together.

use std::time::Duration;

use super::{Workload, tools::StormResult};

/// What the observed tool did during a run.
#[derive(Clone, Debug, Default)]
pub struct ToolStats {
    pub pid: u32,
    pub startup: Duration,
    /// Time on CPU of all its threads (schedstat) during the run, and in the 0.5 s after it.
    pub cpu_ns: u64,
    pub tail_cpu_ns: u64,
    pub rss_before_kib: u64,
    /// Resident memory right after the run: the steady state under load.
    pub rss_after_kib: u64,
    /// Peak RSS from start until the run began, and during the run (VmHWM reset before it).
    pub peak_rss_startup_kib: u64,
    pub peak_rss_storm_kib: u64,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    /// Latency of each /metrics scrape during the run, ms.
    pub scrape_ms: Vec<f64>,
}

/// The count check: what the workload did against what the tool counted (for the connection
/// workload: resets on its port, which should be none).
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub sent: u64,
    pub received: u64,
    /// Received resets attributed to the storm's threads (`comm="storm-N"`): owner attribution.
    pub received_owned: Option<u64>,
    pub socket_errors: Option<u64>,
    pub lost: Vec<(String, u64)>,
}

#[derive(Clone, Debug)]
pub struct ProgStat {
    pub id: u32,
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub recursion_misses: u64,
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub round: u32,
    pub mode: String,
    pub profile: bool,
    pub storm: StormResult,
    /// Busy cores of the whole machine during the run (/proc/stat).
    pub machine_busy_cores: f64,
    pub foreign_tracers: usize,
    pub tool: Option<ToolStats>,
    pub counts: Option<Counts>,
    pub programs: Vec<ProgStat>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub workload: Workload,
    pub threads: usize,
    pub ports: u32,
    pub samples: Vec<Sample>,
}
