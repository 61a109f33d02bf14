//! The summaries of a configuration: per mode, min/median/max over its rounds of the rate, the
//! CPU per operation and their ratios to the same round's bare run, the tool's own cost, and the
//! count check; per tool, the BPF programs' cost from the least disturbed profile round.

use super::{
    model::{CountCheck, Mmm, ModeSummary, ProgramsSummary, RoundCheck, ToolSummary},
    samples::program_report,
};
use crate::bench::{Config, Sample, ToolStats, Workload};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// {min, median, max, n} of a list (None when empty).
pub(super) fn mmm(values: impl IntoIterator<Item = f64>) -> Option<Mmm> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let median = median(&mut v);
    Some(Mmm {
        min: v[0],
        median,
        max: v[v.len() - 1],
        n: v.len(),
    })
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

pub(super) fn summarise_mode(config: &Config, mode: &str) -> ModeSummary {
    let rounds: Vec<&Sample> = config
        .samples
        .iter()
        .filter(|s| !s.profile && s.mode == mode)
        .collect();
    let same_round = |other: &'static str, round: u32| {
        config
            .samples
            .iter()
            .find(|s| !s.profile && s.mode == other && s.round == round)
    };
    let paired: Vec<(&Sample, &Sample)> = rounds
        .iter()
        .filter_map(|s| Some((*s, same_round("bare", s.round)?)))
        .collect();
    let mut v = ModeSummary {
        rate_per_s: mmm(rounds.iter().map(|s| s.storm.rate())),
        cpu_ns_per_op: mmm(rounds.iter().map(|s| s.storm.cpu_per_op())),
        machine_busy_cores: mmm(rounds.iter().map(|s| s.machine_busy_cores)),
        other_busy_cores: mmm(rounds.iter().map(|s| {
            let ours = s.storm.cpu_ns + s.tool.as_ref().map_or(0, |t| t.cpu_ns);
            s.machine_busy_cores - ours as f64 / s.storm.wall_ns.max(1) as f64
        })),
        other_bpf_tracers_max: rounds.iter().map(|s| s.foreign_tracers).max().unwrap_or(0),
        ..ModeSummary::default()
    };
    if mode != "bare" {
        v.rate_ratio = mmm(paired.iter().map(|(s, b)| s.storm.rate() / b.storm.rate()));
        v.cpu_ratio = mmm(paired
            .iter()
            .map(|(s, b)| s.storm.cpu_per_op() / b.storm.cpu_per_op()));
        v.added_cpu_ns_per_op = mmm(paired
            .iter()
            .map(|(s, b)| s.storm.cpu_per_op() - b.storm.cpu_per_op()));
        v.total_cpu_ratio = mmm(paired.iter().map(|(s, b)| {
            let tool = s.tool.as_ref().map_or(0, |t| t.cpu_ns);
            s.storm.per_op(s.storm.cpu_ns + tool) / b.storm.cpu_per_op()
        }));
    }
    if mode.starts_with("rstwatch") {
        v.cpu_ratio_vs_bpftrace = mmm(rounds.iter().filter_map(|s| {
            Some(s.storm.cpu_per_op() / same_round("bpftrace", s.round)?.storm.cpu_per_op())
        }));
    }
    let tools: Vec<(&Sample, &ToolStats)> = rounds
        .iter()
        .filter_map(|s| Some((*s, s.tool.as_ref()?)))
        .collect();
    if !tools.is_empty() {
        v.tool = Some(ToolSummary {
            cpu_pct_of_core: mmm(tools
                .iter()
                .map(|(s, t)| t.cpu_ns as f64 / s.storm.wall_ns.max(1) as f64 * 100.0)),
            cpu_ns_per_op: mmm(tools.iter().map(|(s, t)| s.storm.per_op(t.cpu_ns))),
            tail_cpu_ms: mmm(tools.iter().map(|(_, t)| t.tail_cpu_ns as f64 / 1e6)),
            peak_rss_mb: mmm(tools
                .iter()
                .map(|(_, t)| mb(t.peak_rss_startup_kib.max(t.peak_rss_storm_kib)))),
            peak_rss_startup_mb: mmm(tools.iter().map(|(_, t)| mb(t.peak_rss_startup_kib))),
            peak_rss_storm_mb: mmm(tools.iter().map(|(_, t)| mb(t.peak_rss_storm_kib))),
            rss_before_mb: mmm(tools.iter().map(|(_, t)| mb(t.rss_before_kib))),
            rss_steady_mb: mmm(tools.iter().map(|(_, t)| mb(t.rss_after_kib))),
            startup_s: mmm(tools.iter().map(|(_, t)| t.startup.as_secs_f64())),
            scrapes_ok: tools.iter().map(|(_, t)| t.scrapes_ok).sum::<u64>(),
            scrapes_failed: tools.iter().map(|(_, t)| t.scrapes_failed).sum::<u64>(),
            scrape_ms: mmm(tools.iter().flat_map(|(_, t)| t.scrape_ms.iter().copied())),
        });
    }
    let counted: Vec<&Sample> = rounds.iter().copied().filter(|s| s.counts.is_some()).collect();
    if !counted.is_empty() {
        v.count_check = Some(count_check(config, mode.starts_with("rstwatch"), &counted));
    }
    v
}

/// Refused storm: every attempt is one reset sent and one received, and the tool counted them.
/// Connections: no reset at all (`Tcp: OutRsts` delta 0; rstwatch counted none on the port).
fn count_check(config: &Config, is_rstwatch: bool, counted: &[&Sample]) -> CountCheck {
    let storm = config.workload == Workload::Refused;
    // With several ports the storm's resets past the label cap share port="other" with
    // everyone else's: allow others' resets there (at most 0.1%), and show the difference.
    let slack = |a: u64| if config.ports > 1 { a / 1000 } else { 0 };
    let checks: Vec<RoundCheck> = counted
        .iter()
        .map(|s| {
            let c = s.counts.as_ref().expect("filtered");
            let a = s.storm.attempts;
            let close = |n: u64| n >= a && n - a <= slack(a);
            let ok = match (storm, is_rstwatch) {
                (true, true) => close(c.sent) && close(c.received) && s.storm.out_rsts == a,
                (true, false) => c.sent >= a && c.received >= a && s.storm.out_rsts == a,
                (false, true) => s.storm.out_rsts == 0 && c.sent == 0 && c.received == 0,
                (false, false) => s.storm.out_rsts == 0,
            };
            RoundCheck {
                round: s.round,
                attempts: a,
                ops: s.storm.ops,
                out_rsts: s.storm.out_rsts,
                active_opens: s.storm.raw["active_opens_delta"].as_u64(),
                sent: c.sent,
                received: c.received,
                sent_minus_attempts: c.sent as i64 - a as i64,
                received_minus_attempts: c.received as i64 - a as i64,
                received_owner_storm: c.received_owned,
                owner_attributed: c.received_owned.map(|o| o as f64 / a.max(1) as f64),
                socket_errors_econnrefused: c.socket_errors,
                ok,
            }
        })
        .collect();
    let mut lost_total = std::collections::BTreeMap::new();
    for s in counted {
        for (stage, n) in &s.counts.as_ref().expect("filtered").lost {
            *lost_total.entry(stage.clone()).or_insert(0) += n;
        }
    }
    let rule = match (storm, is_rstwatch, config.ports > 1) {
        (true, true, true) => {
            "attempts == Tcp: OutRsts delta, and sent/no_listener, received/connection_refused (storm ports + port=\"other\") within attempts + 0.1% (others' resets on port=\"other\")"
        }
        (true, true, false) => {
            "attempts == sent/no_listener == received/connection_refused == Tcp: OutRsts delta"
        }
        (true, false, _) => {
            "bpftrace counts host-wide from its start: sent and received >= attempts; OutRsts == attempts"
        }
        (false, true, _) => {
            "no reset: Tcp: OutRsts delta == 0, and rstwatch counted none on the listener's port"
        }
        (false, false, _) => {
            "no reset: Tcp: OutRsts delta == 0 (bpftrace counts host-wide: shown, not checked)"
        }
    };
    CountCheck {
        rule: rule.into(),
        rounds_ok: checks.iter().filter(|c| c.ok).count(),
        rounds: checks.len(),
        owner_attributed: mmm(checks.iter().filter_map(|c| c.owner_attributed)),
        per_round: checks,
        lost_total,
    }
}

/// A tool's programs also run for everything else on the host (other engineers' tests and storms),
/// which only adds runs: the undisturbed profile rounds are those with the fewest program runs per
/// operation (within 0.5%), and of those the report takes the median one by BPF time. The totals of
/// every round are kept too.
pub(super) fn summarise_programs(config: &Config, mode: &str) -> Option<ProgramsSummary> {
    let rounds: Vec<&Sample> = config
        .samples
        .iter()
        .filter(|s| s.profile && s.mode == mode)
        .collect();
    let runs_per_op = |s: &Sample| s.storm.per_op(s.programs.iter().map(|p| p.run_cnt).sum());
    let ns_per_op = |s: &Sample| s.storm.per_op(s.programs.iter().map(|p| p.run_time_ns).sum());
    let fewest = rounds
        .iter()
        .map(|s| runs_per_op(s))
        .fold(f64::INFINITY, f64::min);
    let mut undisturbed: Vec<&Sample> = rounds
        .iter()
        .copied()
        .filter(|s| runs_per_op(s) <= fewest * 1.005)
        .collect();
    undisturbed.sort_by(|a, b| ns_per_op(a).total_cmp(&ns_per_op(b)));
    let s = undisturbed
        .get(undisturbed.len().saturating_sub(1) / 2)
        .copied()?;
    Some(ProgramsSummary {
        op: config.workload.op().into(),
        round: s.round,
        ops: s.storm.ops,
        storm_cpu_ns_per_op: s.storm.cpu_per_op(),
        programs: s.programs.iter().map(|p| program_report(s, p)).collect(),
        total_ns_per_op: ns_per_op(s),
        total_runs_per_op: runs_per_op(s),
        recursion_misses: s.programs.iter().map(|p| p.recursion_misses).sum::<u64>(),
        rounds: rounds.len(),
        undisturbed_rounds: undisturbed.len(),
        total_ns_per_op_rounds: mmm(rounds.iter().map(|s| ns_per_op(s))),
        total_runs_per_op_rounds: mmm(rounds.iter().map(|s| runs_per_op(s))),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::bench::{
        Counts, ProgStat,
        report::{
            model::{ConfigReport, Report, Summary},
            samples::sample_report,
            table::table,
            targets,
        },
        tools::StormResult,
    };

    fn sample(mode: &str, round: u32, profile: bool, ops: u64, cpu_ns: u64) -> Sample {
        let tool = mode != "bare";
        Sample {
            round,
            mode: mode.into(),
            profile,
            storm: StormResult {
                attempts: ops,
                ops,
                wall_ns: 1_000_000_000,
                cpu_ns,
                out_rsts: ops,
                raw: json!({ "workload": "refused", "active_opens_delta": ops }),
                ..StormResult::default()
            },
            machine_busy_cores: 1.0,
            foreign_tracers: 0,
            tool: tool.then(|| ToolStats {
                startup: Duration::from_millis(200),
                cpu_ns: 10_000_000,
                peak_rss_startup_kib: 20_000,
                peak_rss_storm_kib: 10_000,
                scrapes_ok: 2,
                scrape_ms: vec![1.0, 3.0],
                ..ToolStats::default()
            }),
            counts: tool.then(|| Counts {
                sent: ops,
                received: ops,
                received_owned: Some(ops),
                socket_errors: Some(ops),
                lost: vec![("ring_buffer_full".into(), 5)],
            }),
            programs: if profile {
                vec![ProgStat {
                    id: 7,
                    name: "rstwatch_send_reset_btf".into(),
                    run_cnt: ops,
                    run_time_ns: ops * 100,
                    recursion_misses: 0,
                }]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn summaries_targets_and_table_of_a_run() {
        // Two rounds: rstwatch does 90 % and 80 % of bare's rate at 1.1x its CPU per attempt.
        let config = Config {
            workload: Workload::Refused,
            threads: 1,
            ports: 1,
            samples: vec![
                sample("bare", 1, false, 1000, 1_000_000),
                sample("rstwatch", 1, false, 900, 990_000),
                sample("bare", 2, false, 1000, 1_000_000),
                sample("rstwatch", 2, false, 800, 880_000),
                sample("rstwatch", 1, true, 500, 550_000),
            ],
        };
        let mut summary = Summary::default();
        for mode in ["bare", "rstwatch"] {
            summary.modes.insert(mode.into(), summarise_mode(&config, mode));
        }
        summary
            .programs
            .insert("rstwatch".into(), summarise_programs(&config, "rstwatch"));
        let r = &summary.modes["rstwatch"];
        let ratio = r.rate_ratio.unwrap();
        assert_eq!((ratio.min, ratio.max, ratio.n), (0.8, 0.9, 2));
        assert!((r.cpu_ratio.unwrap().median - 1.1).abs() < 1e-9);
        assert_eq!(summary.modes["bare"].rate_ratio, None);
        let check = r.count_check.as_ref().unwrap();
        assert_eq!((check.rounds_ok, check.rounds), (2, 2));
        assert_eq!(check.lost_total["ring_buffer_full"], 10);
        let tool = r.tool.as_ref().unwrap();
        assert_eq!((tool.peak_rss_mb.unwrap().max, tool.scrapes_ok), (20.48, 4));
        let programs = summary.programs["rstwatch"].as_ref().unwrap();
        assert_eq!((programs.round, programs.total_ns_per_op), (1, 100.0));

        let targets = targets::evaluate(&config, &summary);
        let met = |name: &str| {
            targets
                .iter()
                .find(|t| t.target.starts_with(name))
                .unwrap_or_else(|| panic!("no target {name}"))
                .met
        };
        assert_eq!(met("attempts/s with rstwatch"), Some(false));
        assert_eq!(met("counts exact"), Some(true));
        assert_eq!(met("BPF program rstwatch_send_reset_btf"), Some(true));

        // Through the file and back, as `--report-only` reads it.
        let report = Report {
            targets,
            configs: vec![ConfigReport {
                workload: Some("refused".into()),
                op: "attempt".into(),
                threads: 1,
                ports: 1,
                summary,
                samples: config.samples.iter().map(sample_report).collect(),
            }],
            ..Report::default()
        };
        // (serde_json reads floats back to within an ulp, so the comparison is on the table.)
        let read: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        let text = table(&read);
        assert_eq!(text, table(&report));
        assert!(
            text.contains(
                "rstwatch                      800 / 850 / 900  0.800 / 0.850 / 0.900     1100 / 1100 / 1100"
            ),
            "{text}"
        );
        assert!(text.contains("round 2: attempts 800 completed 800 ActiveOpens 800 OutRsts 800 sent 800"));
        assert!(text.contains(
            "rstwatch_send_reset_btf               500            1.00        100             100"
        ));
        assert!(text.contains("MISSED [refused storm, 1 thread(s), 1 port(s)] attempts/s with rstwatch"));
    }
}
