//! The benchmark's results: the JSON file (typed in `model`) assembled from the runs (`samples`),
//! their summaries (min/median/max over rounds, `summary`) and where they ran (`machine`); the
//! targets of issue 7, the readable table and the PNG chart are in the other submodules.

mod chart;
mod machine;
mod model;
mod samples;
mod summary;
mod table;
mod targets;

use std::time::Duration;

pub use self::{
    chart::{chart, ensure_font},
    model::Report,
    table::{one_line, table},
};
use self::{
    machine::{command_output, machine, processes},
    model::{ConfigReport, Git, Meta, QuietAfter, QuietBefore, QuietReport, RunOptions, Summary, Tracer},
    samples::sample_report,
    summary::{summarise_mode, summarise_programs},
};
use super::{Config, Mode, Options, Plan, Quiet};

/// The targets (issue 7): reported, never asserted.
pub const RATE_RATIO_MIN: f64 = 0.99;
pub const DAEMON_CPU_PCT_MAX: f64 = 2.0;
pub const PEAK_RSS_MB_MAX: f64 = 30.0;
pub const PROGRAM_NS_MAX: f64 = 150.0;
pub const STARTUP_S_MAX: f64 = 1.0;

pub struct Results<'a> {
    pub options: &'a Options,
    pub plan: &'a Plan,
    pub modes: &'a [Mode],
    pub configs: &'a [Config],
    pub quiet_before: &'a Quiet,
    pub busy_after: (f64, Vec<(u32, String, f64)>),
    /// Time spent waiting for a quiet machine, before and between rounds.
    pub waited_total: Duration,
    pub elapsed: Duration,
}

impl Results<'_> {
    pub fn report(&self) -> Report {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
            .lines()
            .count();
        let (o, p) = (self.options, self.plan);
        let mut targets = Vec::new();
        let configs = self
            .configs
            .iter()
            .map(|c| {
                let mut summary = Summary::default();
                for m in self.modes {
                    let label = m.label();
                    summary.modes.insert(label.clone(), summarise_mode(c, &label));
                    if !matches!(m, Mode::Bare) {
                        summary
                            .programs
                            .insert(label.clone(), summarise_programs(c, &label));
                    }
                }
                targets.extend(targets::evaluate(c, &summary));
                ConfigReport {
                    workload: Some(c.workload.name().into()),
                    op: c.workload.op().into(),
                    threads: c.threads,
                    ports: c.ports,
                    summary,
                    samples: c.samples.iter().map(sample_report).collect(),
                }
            })
            .collect();
        let q = self.quiet_before;
        Report {
            meta: Meta {
                date: command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
                command: format!("cargo xtask {}", args.join(" ")),
                machine: machine(),
                git: Git {
                    rev: command_output("git", &["rev-parse", "--short", "HEAD"]),
                    modified_tracked_files: dirty,
                },
                elapsed_s: self.elapsed.as_secs_f64(),
                options: RunOptions {
                    workloads: o.workloads.iter().map(|w| w.name().into()).collect(),
                    quick: o.quick,
                    rounds: p.rounds,
                    duration_s: p.duration,
                    max_attempts_per_thread: o.attempts,
                    threads: p.threads.clone(),
                    ports: p.ports.clone(),
                    port: o.port,
                    wait_quiet_s: p.wait_quiet,
                    modes: self.modes.iter().map(Mode::label).collect(),
                    profile_rounds: if o.no_profile { 0 } else { o.profile_rounds },
                },
                bpftrace_script: super::tools::BPFTRACE_SCRIPT.into(),
            },
            quiet: QuietReport {
                before: QuietBefore {
                    waited_s: q.waited.as_secs_f64(),
                    busy_cores: q.busy_cores,
                    loadavg: q.loadavg.clone(),
                    busy_processes: processes(&q.busy),
                    other_bpf_tracers: q
                        .tracers
                        .iter()
                        .map(|(pid, comm, ids)| Tracer {
                            pid: *pid,
                            comm: comm.clone(),
                            prog_ids: ids.clone(),
                        })
                        .collect(),
                },
                waited_total_s: self.waited_total.as_secs_f64(),
                after: QuietAfter {
                    busy_cores: self.busy_after.0,
                    loadavg: super::system::loadavg(),
                    busy_processes: processes(&self.busy_after.1),
                },
            },
            targets,
            configs,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// A real run's results.json (`--ports 10000 --rounds 1 --no-bpftrace --no-profile`) and the
    /// table the untyped report printed for it.
    const RESULTS: &str = include_str!("fixtures/refused-10k-ports.json");
    const TABLE: &str = include_str!("fixtures/refused-10k-ports.txt");

    /// Objects without their null members: the typed report leaves out what it does not know.
    fn without_nulls(v: Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, without_nulls(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
            other => other,
        }
    }

    #[test]
    fn a_real_results_file_reads_renders_and_writes_back_the_same() {
        let report: Report = serde_json::from_str(RESULTS).unwrap();
        // `println!` adds the last newline.
        assert_eq!(table(&report) + "\n", TABLE);
        let written = serde_json::to_value(&report).unwrap();
        let read: Value = serde_json::from_str(RESULTS).unwrap();
        assert_eq!(without_nulls(written), without_nulls(read));
    }
}
