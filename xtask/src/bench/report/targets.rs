//! The targets of issue 7, evaluated per configuration: reported, never asserted.

use serde_json::{Value, json};

use super::{DAEMON_CPU_PCT_MAX, PEAK_RSS_MB_MAX, PROGRAM_NS_MAX, RATE_RATIO_MIN, STARTUP_S_MAX};
use crate::bench::{Config, Workload};

pub fn evaluate(c: &Config, summary: &Value) -> Vec<Value> {
    let name = config_name(c);
    let op = c.workload.op();
    let r = &summary["modes"]["rstwatch"];
    let b = &summary["modes"]["bpftrace"];
    let mut out = Vec::new();
    let mut push = |target: &str, value: Value, limit: String, met: Option<bool>, note: String| {
        out.push(json!({ "config": name, "target": target, "value": value, "limit": limit, "met": met, "note": note }));
    };
    let rate = r["rate_ratio"]["median"].as_f64();
    push(
        &format!("{}s/s with rstwatch / bare (median)", op),
        json!(rate),
        format!(">= {RATE_RATIO_MIN}"),
        rate.map(|v| v >= RATE_RATIO_MIN),
        format!(
            "min {:.3}, max {:.3}; CPU per {op} {:.3}x (median)",
            r["rate_ratio"]["min"].as_f64().unwrap_or(f64::NAN),
            r["rate_ratio"]["max"].as_f64().unwrap_or(f64::NAN),
            r["cpu_ratio"]["median"].as_f64().unwrap_or(f64::NAN)
        ),
    );
    if let (Some(rr), Some(br)) = (rate, b["rate_ratio"]["median"].as_f64()) {
        let rc = r["cpu_ratio"]["median"].as_f64().unwrap_or(f64::NAN);
        let bc = b["cpu_ratio"]["median"].as_f64().unwrap_or(f64::NAN);
        push(
            "better than bpftrace (rate ratio median)",
            json!(rr),
            format!("> bpftrace {br:.3}"),
            Some(rr > br),
            format!("CPU per {op}: rstwatch {rc:.3}x, bpftrace {bc:.3}x"),
        );
    }
    let check = &r["count_check"];
    if !check.is_null() {
        let ok = check["rounds_ok"].as_u64().unwrap_or(0);
        let n = check["rounds"].as_u64().unwrap_or(0);
        push(
            if c.workload == Workload::Refused {
                "counts exact (every round)"
            } else {
                "no reset (every round)"
            },
            json!(format!("{ok}/{n} rounds")),
            "all".into(),
            Some(ok == n && n > 0),
            match check["owner_attributed"]["min"].as_f64() {
                Some(share) => format!(
                    "received resets with the generator as owner: {:.1}% (min over rounds); lost: {}",
                    share * 100.0,
                    check["lost_total"]
                ),
                None => format!("lost: {}", check["lost_total"]),
            },
        );
    }
    let cpu = r["tool"]["cpu_pct_of_core"]["median"].as_f64();
    push(
        "daemon CPU during the run, % of one core (median)",
        json!(cpu),
        format!("<= {DAEMON_CPU_PCT_MAX}"),
        cpu.map(|v| v <= DAEMON_CPU_PCT_MAX),
        format!(
            "{:.0} ns of daemon CPU per {op}",
            r["tool"]["cpu_ns_per_op"]["median"].as_f64().unwrap_or(f64::NAN)
        ),
    );
    let rss = r["tool"]["peak_rss_mb"]["max"].as_f64();
    push(
        "daemon peak RSS, MB (max over rounds)",
        json!(rss),
        format!("<= {PEAK_RSS_MB_MAX}"),
        rss.map(|v| v <= PEAK_RSS_MB_MAX),
        format!(
            "during the run alone: {:.1} MB",
            r["tool"]["peak_rss_storm_mb"]["max"].as_f64().unwrap_or(f64::NAN)
        ),
    );
    if let Some(programs) = summary["programs"]["rstwatch"]["programs"].as_array() {
        for p in programs {
            let ns = p["ns_per_run"].as_f64();
            push(
                &format!("BPF program {} ns per run", p["name"].as_str().unwrap_or("?")),
                json!(ns),
                format!("<= {PROGRAM_NS_MAX}"),
                ns.map(|v| v <= PROGRAM_NS_MAX),
                format!(
                    "{:.2} runs per {op}",
                    p["runs_per_op"].as_f64().unwrap_or(f64::NAN)
                ),
            );
        }
    }
    let startup = r["tool"]["startup_s"]["median"].as_f64();
    push(
        "start-up to attached, s (median)",
        json!(startup),
        format!("<= {STARTUP_S_MAX}"),
        startup.map(|v| v <= STARTUP_S_MAX),
        format!(
            "max {:.3} s",
            r["tool"]["startup_s"]["max"].as_f64().unwrap_or(f64::NAN)
        ),
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
