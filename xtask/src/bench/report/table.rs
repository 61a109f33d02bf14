//! The human-readable report (from results.json, so `--report-only` prints the same), and the
//! one-line progress of each run.

use super::model::{ConfigReport, Mmm, ProgramsSummary, Report, TargetValue};
use crate::bench::Sample;

pub fn one_line(s: &Sample) -> String {
    let expected = match s.storm.raw["workload"].as_str() {
        Some("connections") => 0,
        _ => s.storm.attempts,
    };
    let mut line = format!(
        "{}{:<10} round {:>2}: {:>9.0}/s, {:>6.0} ns CPU/op, OutRsts {}",
        if s.profile { "[profile] " } else { "" },
        s.mode,
        s.round,
        s.storm.rate(),
        s.storm.cpu_per_op(),
        if s.storm.out_rsts == expected {
            format!("{expected} as expected")
        } else {
            format!("{} != {expected}", s.storm.out_rsts)
        },
    );
    if let Some(t) = &s.tool {
        line += &format!(
            ", tool CPU {:.1}% start {:.2}s",
            t.cpu_ns as f64 / s.storm.wall_ns.max(1) as f64 * 100.0,
            t.startup.as_secs_f64()
        );
    }
    if let Some(c) = &s.counts {
        line += &format!(", counted sent {} received {}", c.sent, c.received);
    }
    line
}

/// A number with `digits` decimals; `-` where it was not measured.
fn f(v: impl Into<Option<f64>>, digits: usize) -> String {
    v.into()
        .filter(|x| x.is_finite())
        .map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn range(v: Option<Mmm>, digits: usize) -> String {
    match v {
        None => "-".into(),
        Some(m) => format!(
            "{} / {} / {}",
            f(m.min, digits),
            f(m.median, digits),
            f(m.max, digits)
        ),
    }
}

/// As results.json has it (`null` where absent).
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Results written before there were workloads hold the reset storm.
fn workload(c: &ConfigReport) -> (&str, &str) {
    match c.workload.as_deref() {
        Some("connections") => ("connections", "connection"),
        _ => ("refused", "attempt"),
    }
}

fn config_title(c: &ConfigReport) -> String {
    match workload(c).0 {
        "connections" => format!(
            "connections: {} client + {} server thread(s); connect, 64 B request, 64 B response, FIN close (no reset)",
            c.threads, c.threads
        ),
        _ => format!(
            "refused storm: {} generator thread(s), {} distinct port(s); one RST sent and received per attempt",
            c.threads, c.ports
        ),
    }
}

fn header(results: &Report) -> String {
    let meta = &results.meta;
    let q = &results.quiet.before;
    format!(
        "\nrstwatch benchmark — {} — {}\nmachine: {} {} cores, {} GiB, kernel {}, {}; git {} ({} modified tracked files)\n\
         quiet before: busy {:.2} cores, loadavg {}, waited {:.0} s (in all {:.0} s), other BPF tracers {}; after: busy {:.2} cores\n\
         (min / median / max over rounds; ratios are against the same round's bare run)\n",
        meta.date,
        meta.command,
        meta.machine.cpu,
        meta.machine.cores,
        json(&meta.machine.memory_gib),
        meta.machine.kernel,
        meta.machine.os,
        meta.git.rev,
        meta.git.modified_tracked_files,
        q.busy_cores,
        q.loadavg,
        q.waited_s,
        results.quiet.waited_total_s,
        q.other_bpf_tracers.len(),
        results.quiet.after.busy_cores,
    )
}

fn modes_table(c: &ConfigReport, op: &str) -> String {
    let mut t = format!(
        "{:<20} {:>24} {:>22} {:>22} {:>18} {:>22}\n",
        "mode",
        format!("{op}s/s"),
        "rate ratio",
        format!("CPU ns/{op}"),
        "CPU ratio",
        format!("+CPU ns/{op}")
    );
    let modes = &c.summary.modes;
    let tracers = modes.values().map(|m| m.other_bpf_tracers_max).max().unwrap_or(0);
    if tracers > 0 {
        t += &format!(
            "WARNING: up to {tracers} other process(es) held BPF tracing programs during these runs (bare ones too): the bare baseline is not bare, ratios understate the overhead\n"
        );
    }
    for (mode, m) in modes {
        t += &format!(
            "{:<20} {:>24} {:>22} {:>22} {:>18} {:>22}\n",
            mode,
            range(m.rate_per_s, 0),
            range(m.rate_ratio, 3),
            range(m.cpu_ns_per_op, 0),
            range(m.cpu_ratio, 3),
            range(m.added_cpu_ns_per_op, 0),
        );
    }
    for (mode, m) in modes.iter().filter(|(_, m)| m.cpu_ratio_vs_bpftrace.is_some()) {
        t += &format!(
            "{mode} / bpftrace, CPU per {op} in the same round: {}\n",
            range(m.cpu_ratio_vs_bpftrace, 3)
        );
    }
    let median = |m: Option<Mmm>| m.map(|m| m.median);
    let max = |m: Option<Mmm>| m.map(|m| m.max);
    t += &format!(
        "other load during the runs (machine busy cores minus the generator and the tool), median: {}\n",
        modes
            .iter()
            .map(|(mode, m)| format!("{mode} {}", f(median(m.other_busy_cores), 2)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (mode, m) in modes {
        let Some(tool) = &m.tool else { continue };
        t += &format!(
            "{mode}: process CPU {} % of a core ({} ns/{op}; generator+tool CPU ratio {}); RSS: start-up peak (VmHWM) {} MB, steady (after the run) {} MB, peak during the run {} MB; start-up {} s; scrapes {} ok / {} failed, latency p50 {} ms, max {} ms\n",
            range(tool.cpu_pct_of_core, 1),
            f(median(tool.cpu_ns_per_op), 0),
            f(median(m.total_cpu_ratio), 3),
            f(max(tool.peak_rss_startup_mb), 1),
            f(median(tool.rss_steady_mb), 1),
            f(max(tool.peak_rss_storm_mb), 1),
            range(tool.startup_s, 3),
            tool.scrapes_ok,
            tool.scrapes_failed,
            f(median(tool.scrape_ms), 1),
            f(max(tool.scrape_ms), 1),
        );
    }
    t
}

fn count_checks(c: &ConfigReport) -> String {
    let mut t = String::new();
    for (mode, m) in &c.summary.modes {
        let Some(check) = &m.count_check else { continue };
        t += &format!(
            "{mode} count check ({}): {}/{} rounds ok; lost {}\n",
            check.rule,
            check.rounds_ok,
            check.rounds,
            json(&check.lost_total)
        );
        for r in &check.per_round {
            let owned = match r.owner_attributed {
                Some(share) => format!(
                    ", owner comm=storm-N {} ({:.1}%)",
                    json(&r.received_owner_storm),
                    share * 100.0
                ),
                None => String::new(),
            };
            let errors = match r.socket_errors_econnrefused {
                Some(n) => format!(", ECONNREFUSED errors {n}"),
                None => String::new(),
            };
            t += &format!(
                "    round {}: attempts {} completed {} ActiveOpens {} OutRsts {} sent {} received {}{owned}{errors}{}\n",
                r.round,
                r.attempts,
                r.ops,
                json(&r.active_opens),
                r.out_rsts,
                r.sent,
                r.received,
                if r.ok { "" } else { "  <-- MISMATCH" }
            );
        }
    }
    t
}

/// The modes that had profile rounds.
fn profiled(c: &ConfigReport) -> impl Iterator<Item = (&String, &ProgramsSummary)> {
    c.summary
        .programs
        .iter()
        .filter_map(|(mode, p)| Some((mode, p.as_ref()?)))
}

fn programs(c: &ConfigReport, op: &str) -> String {
    let mut t = String::new();
    for (mode, p) in profiled(c) {
        t += &format!(
            "{mode} BPF programs (profile round {}: the median of the {} of {} rounds with the fewest runs per {op}; BPF run-time statistics on; {} {op}s, generator {} ns CPU/{op}):\n",
            p.round,
            p.undisturbed_rounds,
            p.rounds,
            p.ops,
            f(p.storm_cpu_ns_per_op, 0)
        );
        let per = format!("ns/{op}");
        let runs = format!("runs/{op}");
        t += &format!(
            "    {:<28} {:>12} {:>15} {:>10} {:>15} {:>10}\n",
            "program", "runs", runs, "ns/run", per, "rec.miss"
        );
        for prog in &p.programs {
            t += &format!(
                "    {:<28} {:>12} {:>15} {:>10} {:>15} {:>10}\n",
                prog.name,
                prog.run_cnt,
                f(prog.runs_per_op, 2),
                f(prog.ns_per_run, 0),
                f(prog.ns_per_op, 0),
                prog.recursion_misses,
            );
        }
        t += &format!(
            "    {:<28} {:>12} {:>15} {:>10} {:>15} {:>10}\n",
            "total",
            "",
            f(p.total_runs_per_op, 2),
            "",
            f(p.total_ns_per_op, 0),
            p.recursion_misses
        );
        t += &format!(
            "    every profile round: {} ns/{op}, {} runs/{op} (more runs: the host's other traffic on the same hooks)\n",
            range(p.total_ns_per_op_rounds, 0),
            range(p.total_runs_per_op_rounds, 2)
        );
    }
    t
}

/// The headline of the profile rounds: all of a tool's BPF time per operation.
fn bpf_summary(results: &Report) -> String {
    let mut t = String::from(
        "\n== BPF time per operation, all programs of the tool (the median undisturbed profile round; min / median / max of all)\n",
    );
    for c in &results.configs {
        let (name, op) = workload(c);
        let what = if name == "refused" {
            "reset (attempt)"
        } else {
            "connection"
        };
        for (mode, p) in profiled(c) {
            t += &format!(
                "  {:<12} {:<9} {:<12} {:>8} ns per {what} ({} runs per {op}, recursion misses {}; all {} rounds: {} ns)\n",
                name,
                format!("{}t/{}p", c.threads, c.ports),
                mode,
                f(p.total_ns_per_op, 0),
                f(p.total_runs_per_op, 2),
                p.recursion_misses,
                p.rounds,
                range(p.total_ns_per_op_rounds, 0),
            );
        }
    }
    t
}

fn targets(results: &Report) -> String {
    let mut t = String::from("\n== targets (reported, not asserted)\n");
    for target in &results.targets {
        let met = match target.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        let value = match &target.value {
            Some(TargetValue::Number(n)) => format!("{n:.3}"),
            Some(TargetValue::Text(s)) => s.clone(),
            None => "null".into(),
        };
        t += &format!(
            "  {:<6} [{}] {}: {} (target {}) {}\n",
            met, target.config, target.target, value, target.limit, target.note
        );
    }
    t
}

/// The human-readable report.
pub fn table(results: &Report) -> String {
    let mut t = header(results);
    for c in &results.configs {
        let (_, op) = workload(c);
        t += &format!("\n== {}\n", config_title(c));
        t += &modes_table(c, op);
        t += &count_checks(c);
        t += &programs(c, op);
    }
    t += &bpf_summary(results);
    t += &targets(results);
    t
}
