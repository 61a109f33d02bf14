//! The targets of issue 7, evaluated per configuration: reported, never asserted.

use super::{
    DAEMON_CPU_PCT_MAX, PEAK_RSS_MB_MAX, PROGRAM_NS_MAX, RATE_RATIO_MIN, STARTUP_S_MAX,
    model::{Mmm, ModeSummary, Summary, Target, TargetValue},
};
use crate::bench::{Config, Workload};

/// A statistic of a summary, NaN where the run did not measure it.
fn pick(m: Option<Mmm>, stat: fn(Mmm) -> f64) -> f64 {
    m.map_or(f64::NAN, stat)
}

fn number(v: Option<f64>) -> Option<TargetValue> {
    v.map(TargetValue::Number)
}

pub fn evaluate(c: &Config, summary: &Summary) -> Vec<Target> {
    let name = config_name(c);
    let op = c.workload.op();
    let none = ModeSummary::default();
    let r = summary.modes.get("rstwatch").unwrap_or(&none);
    let b = summary.modes.get("bpftrace").unwrap_or(&none);
    let tool = r.tool.as_ref();
    let tool_stat = |pick: fn(&super::model::ToolSummary) -> Option<Mmm>| tool.and_then(pick);
    let mut out = Vec::new();
    let mut push =
        |target: &str, value: Option<TargetValue>, limit: String, met: Option<bool>, note: String| {
            out.push(Target {
                config: name.clone(),
                target: target.into(),
                value,
                limit,
                met,
                note,
            });
        };
    let rate = r.rate_ratio.map(|m| m.median);
    push(
        &format!("{}s/s with rstwatch / bare (median)", op),
        number(rate),
        format!(">= {RATE_RATIO_MIN}"),
        rate.map(|v| v >= RATE_RATIO_MIN),
        format!(
            "min {:.3}, max {:.3}; CPU per {op} {:.3}x (median)",
            pick(r.rate_ratio, |m| m.min),
            pick(r.rate_ratio, |m| m.max),
            pick(r.cpu_ratio, |m| m.median)
        ),
    );
    if let (Some(rr), Some(br)) = (rate, b.rate_ratio.map(|m| m.median)) {
        let rc = pick(r.cpu_ratio, |m| m.median);
        let bc = pick(b.cpu_ratio, |m| m.median);
        push(
            "better than bpftrace (rate ratio median)",
            number(Some(rr)),
            format!("> bpftrace {br:.3}"),
            Some(rr > br),
            format!("CPU per {op}: rstwatch {rc:.3}x, bpftrace {bc:.3}x"),
        );
    }
    if let Some(check) = &r.count_check {
        let (ok, n) = (check.rounds_ok, check.rounds);
        let lost = serde_json::to_string(&check.lost_total).unwrap_or_default();
        push(
            if c.workload == Workload::Refused {
                "counts exact (every round)"
            } else {
                "no reset (every round)"
            },
            Some(TargetValue::Text(format!("{ok}/{n} rounds"))),
            "all".into(),
            Some(ok == n && n > 0),
            match check.owner_attributed {
                Some(share) => format!(
                    "received resets with the generator as owner: {:.1}% (min over rounds); lost: {lost}",
                    share.min * 100.0,
                ),
                None => format!("lost: {lost}"),
            },
        );
    }
    let cpu = tool_stat(|t| t.cpu_pct_of_core).map(|m| m.median);
    push(
        "daemon CPU during the run, % of one core (median)",
        number(cpu),
        format!("<= {DAEMON_CPU_PCT_MAX}"),
        cpu.map(|v| v <= DAEMON_CPU_PCT_MAX),
        format!(
            "{:.0} ns of daemon CPU per {op}",
            pick(tool_stat(|t| t.cpu_ns_per_op), |m| m.median)
        ),
    );
    let rss = tool_stat(|t| t.peak_rss_mb).map(|m| m.max);
    push(
        "daemon peak RSS, MB (max over rounds)",
        number(rss),
        format!("<= {PEAK_RSS_MB_MAX}"),
        rss.map(|v| v <= PEAK_RSS_MB_MAX),
        format!(
            "during the run alone: {:.1} MB",
            pick(tool_stat(|t| t.peak_rss_storm_mb), |m| m.max)
        ),
    );
    if let Some(Some(programs)) = summary.programs.get("rstwatch") {
        for p in &programs.programs {
            // A NaN (no runs measured) is no value, as serde_json writes it.
            let ns = Some(p.ns_per_run).filter(|v| v.is_finite());
            push(
                &format!("BPF program {} ns per run", p.name),
                number(ns),
                format!("<= {PROGRAM_NS_MAX}"),
                ns.map(|v| v <= PROGRAM_NS_MAX),
                format!("{:.2} runs per {op}", p.runs_per_op),
            );
        }
    }
    let startup = tool_stat(|t| t.startup_s).map(|m| m.median);
    push(
        "start-up to attached, s (median)",
        number(startup),
        format!("<= {STARTUP_S_MAX}"),
        startup.map(|v| v <= STARTUP_S_MAX),
        format!("max {:.3} s", pick(tool_stat(|t| t.startup_s), |m| m.max)),
    );
    out
}

pub fn config_name(c: &Config) -> String {
    match c.workload {
        Workload::Refused => format!("refused storm, {} thread(s), {} port(s)", c.threads, c.ports),
        Workload::Connections => format!(
            "connections, {} client + {} server thread(s)",
            c.threads, c.threads
        ),
    }
}
