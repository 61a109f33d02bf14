//! results.json, typed: written by `Results::report`, read back by the table, the chart and
//! `--report-only`. Fields are only ever added; files from before a field existed still read
//! (`default`). serde_json writes a non-finite number as null, so every float reads null as NaN.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Results before the typed model wrote a mode without programs as null.
fn empty_if_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// min / median / max / count over rounds; absent (null) where there were none.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Mmm {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Report {
    pub meta: Meta,
    pub quiet: QuietReport,
    pub targets: Vec<Target>,
    pub configs: Vec<ConfigReport>,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Meta {
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub git: Git,
    #[serde(deserialize_with = "nan_if_null")]
    pub elapsed_s: f64,
    pub options: RunOptions,
    pub bpftrace_script: String,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Machine {
    pub kernel: String,
    pub os: String,
    pub cpu: String,
    pub cores: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub memory_gib: f64,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Git {
    pub rev: String,
    pub modified_tracked_files: usize,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct RunOptions {
    pub workloads: Vec<String>,
    pub quick: bool,
    pub rounds: u32,
    #[serde(deserialize_with = "nan_if_null")]
    pub duration_s: f64,
    pub max_attempts_per_thread: u64,
    pub threads: Vec<usize>,
    pub ports: Vec<u32>,
    pub port: u16,
    pub wait_quiet_s: u64,
    pub modes: Vec<String>,
    pub profile_rounds: u32,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct QuietReport {
    pub before: QuietBefore,
    #[serde(deserialize_with = "nan_if_null")]
    pub waited_total_s: f64,
    pub after: QuietAfter,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct QuietBefore {
    #[serde(deserialize_with = "nan_if_null")]
    pub waited_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub busy_cores: f64,
    pub loadavg: String,
    pub busy_processes: Vec<BusyProcess>,
    pub other_bpf_tracers: Vec<Tracer>,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct QuietAfter {
    #[serde(deserialize_with = "nan_if_null")]
    pub busy_cores: f64,
    pub loadavg: String,
    pub busy_processes: Vec<BusyProcess>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct BusyProcess {
    pub pid: u32,
    pub comm: String,
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_pct: f64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Tracer {
    pub pid: u32,
    pub comm: String,
    pub prog_ids: Vec<u32>,
}

/// One target of issue 7 for one configuration: reported, never asserted.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Target {
    pub config: String,
    pub target: String,
    pub value: Option<TargetValue>,
    pub limit: String,
    /// None where the run did not measure it.
    pub met: Option<bool>,
    pub note: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(untagged)]
pub enum TargetValue {
    Number(f64),
    Text(String),
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ConfigReport {
    /// Absent in results written before there were workloads: those hold the reset storm.
    pub workload: Option<String>,
    pub op: String,
    pub threads: usize,
    pub ports: u32,
    pub summary: Summary,
    pub samples: Vec<SampleReport>,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Summary {
    /// By mode label (`bare`, `rstwatch`, `bpftrace`, variants).
    pub modes: BTreeMap<String, ModeSummary>,
    /// By mode label; None where the mode had no profile round.
    pub programs: BTreeMap<String, Option<ProgramsSummary>>,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ModeSummary {
    pub rate_per_s: Option<Mmm>,
    pub cpu_ns_per_op: Option<Mmm>,
    pub machine_busy_cores: Option<Mmm>,
    pub other_busy_cores: Option<Mmm>,
    pub other_bpf_tracers_max: usize,
    /// This and the next three: against the same round's bare run (not for `bare` itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_ratio: Option<Mmm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ratio: Option<Mmm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_cpu_ns_per_op: Option<Mmm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_cpu_ratio: Option<Mmm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ratio_vs_bpftrace: Option<Mmm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_check: Option<CountCheck>,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ToolSummary {
    pub cpu_pct_of_core: Option<Mmm>,
    pub cpu_ns_per_op: Option<Mmm>,
    pub tail_cpu_ms: Option<Mmm>,
    pub peak_rss_mb: Option<Mmm>,
    pub peak_rss_startup_mb: Option<Mmm>,
    pub peak_rss_storm_mb: Option<Mmm>,
    pub rss_before_mb: Option<Mmm>,
    pub rss_steady_mb: Option<Mmm>,
    pub startup_s: Option<Mmm>,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    pub scrape_ms: Option<Mmm>,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct CountCheck {
    pub rule: String,
    pub rounds_ok: usize,
    pub rounds: usize,
    pub owner_attributed: Option<Mmm>,
    pub per_round: Vec<RoundCheck>,
    pub lost_total: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct RoundCheck {
    pub round: u32,
    pub attempts: u64,
    pub ops: u64,
    pub out_rsts: u64,
    /// `Tcp: ActiveOpens` delta, as the generator reported it.
    pub active_opens: Option<u64>,
    pub sent: u64,
    pub received: u64,
    pub sent_minus_attempts: i64,
    pub received_minus_attempts: i64,
    pub received_owner_storm: Option<u64>,
    pub owner_attributed: Option<f64>,
    pub socket_errors_econnrefused: Option<u64>,
    pub ok: bool,
}

/// The median undisturbed profile round of a mode (see `summarise_programs`).
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ProgramsSummary {
    pub op: String,
    pub round: u32,
    pub ops: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub storm_cpu_ns_per_op: f64,
    #[serde(deserialize_with = "empty_if_null")]
    pub programs: Vec<ProgramReport>,
    #[serde(deserialize_with = "nan_if_null")]
    pub total_ns_per_op: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub total_runs_per_op: f64,
    pub recursion_misses: u64,
    pub rounds: usize,
    pub undisturbed_rounds: usize,
    pub total_ns_per_op_rounds: Option<Mmm>,
    pub total_runs_per_op_rounds: Option<Mmm>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct ProgramReport {
    pub id: u32,
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub ns_per_run: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub runs_per_op: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub ns_per_op: f64,
    pub recursion_misses: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct SampleReport {
    pub round: u32,
    pub mode: String,
    pub profile: bool,
    pub attempts: u64,
    pub ops: u64,
    pub wall_ns: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub rate_per_s: f64,
    pub cpu_ns: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_ns_per_op: f64,
    pub user_ns: u64,
    pub sys_ns: u64,
    pub out_rsts: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub machine_busy_cores: f64,
    pub other_bpf_tracers: usize,
    /// The generator's own JSON line, as it printed it.
    pub storm: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<CountsReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgramReport>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct ToolReport {
    pub pid: u32,
    #[serde(deserialize_with = "nan_if_null")]
    pub startup_s: f64,
    pub cpu_ns: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_pct_of_core: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_ns_per_op: f64,
    pub tail_cpu_ns: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub peak_rss_startup_kib: u64,
    pub peak_rss_storm_kib: u64,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    pub scrape_ms: Vec<f64>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct CountsReport {
    pub sent: u64,
    pub received: u64,
    pub received_owner_storm: Option<u64>,
    pub socket_errors_econnrefused: Option<u64>,
    pub lost: BTreeMap<String, u64>,
}
