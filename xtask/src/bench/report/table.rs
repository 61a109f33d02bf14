//! The human-readable report (from results.json, so `--report-only` prints the same), and the
//! one-line progress of each run.

use serde_json::{Value, json};

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

fn f(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn range(v: &Value, digits: usize) -> String {
    if v.is_null() {
        return "-".into();
    }
    format!(
        "{} / {} / {}",
        f(&v["min"], digits),
        f(&v["median"], digits),
        f(&v["max"], digits)
    )
}

/// Results written before there were workloads hold the reset storm.
fn workload(c: &Value) -> (&str, &str) {
    match c["workload"].as_str() {
        Some("connections") => ("connections", "connection"),
        _ => ("refused", "attempt"),
    }
}

fn config_title(c: &Value) -> String {
    match workload(c).0 {
        "connections" => format!(
            "connections: {} client + {} server thread(s); connect, 64 B request, 64 B response, FIN close (no reset)",
            c["threads"], c["threads"]
        ),
        _ => format!(
            "refused storm: {} generator thread(s), {} distinct port(s); one RST sent and received per attempt",
            c["threads"], c["ports"]
        ),
    }
}

fn header(results: &Value) -> String {
    let meta = &results["meta"];
    let q = &results["quiet"]["before"];
    format!(
        "\nrstwatch benchmark — {} — {}\nmachine: {} {} cores, {} GiB, kernel {}, {}; git {} ({} modified tracked files)\n\
         quiet before: busy {:.2} cores, loadavg {}, waited {:.0} s (in all {:.0} s), other BPF tracers {}; after: busy {:.2} cores\n\
         (min / median / max over rounds; ratios are against the same round's bare run)\n",
        meta["date"].as_str().unwrap_or(""),
        meta["command"].as_str().unwrap_or(""),
        meta["machine"]["cpu"].as_str().unwrap_or(""),
        meta["machine"]["cores"],
        meta["machine"]["memory_gib"],
        meta["machine"]["kernel"].as_str().unwrap_or(""),
        meta["machine"]["os"].as_str().unwrap_or(""),
        meta["git"]["rev"].as_str().unwrap_or(""),
        meta["git"]["modified_tracked_files"],
        q["busy_cores"].as_f64().unwrap_or(0.0),
        q["loadavg"].as_str().unwrap_or(""),
        q["waited_s"].as_f64().unwrap_or(0.0),
        results["quiet"]["waited_total_s"].as_f64().unwrap_or(0.0),
        q["other_bpf_tracers"].as_array().map_or(0, |a| a.len()),
        results["quiet"]["after"]["busy_cores"].as_f64().unwrap_or(0.0),
    )
}

fn modes_table(c: &Value, op: &str) -> String {
    let mut t = format!(
        "{:<20} {:>24} {:>22} {:>22} {:>18} {:>22}\n",
        "mode",
        format!("{op}s/s"),
        "rate ratio",
        format!("CPU ns/{op}"),
        "CPU ratio",
        format!("+CPU ns/{op}")
    );
    let modes = c["summary"]["modes"].as_object().cloned().unwrap_or_default();
    let tracers = modes
        .values()
        .filter_map(|m| m["other_bpf_tracers_max"].as_u64())
        .max()
        .unwrap_or(0);
    if tracers > 0 {
        t += &format!(
            "WARNING: up to {tracers} other process(es) held BPF tracing programs during these runs (bare ones too): the bare baseline is not bare, ratios understate the overhead\n"
        );
    }
    for (mode, m) in &modes {
        t += &format!(
            "{:<20} {:>24} {:>22} {:>22} {:>18} {:>22}\n",
            mode,
            range(&m["rate_per_s"], 0),
            range(&m["rate_ratio"], 3),
            range(&m["cpu_ns_per_op"], 0),
            range(&m["cpu_ratio"], 3),
            range(&m["added_cpu_ns_per_op"], 0),
        );
    }
    for (mode, m) in modes
        .iter()
        .filter(|(_, m)| !m["cpu_ratio_vs_bpftrace"].is_null())
    {
        t += &format!(
            "{mode} / bpftrace, CPU per {op} in the same round: {}\n",
            range(&m["cpu_ratio_vs_bpftrace"], 3)
        );
    }
    t += &format!(
        "other load during the runs (machine busy cores minus the generator and the tool), median: {}\n",
        modes
            .iter()
            .map(|(mode, m)| format!("{mode} {}", f(&m["other_busy_cores"]["median"], 2)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (mode, tool) in modes
        .iter()
        .map(|(mode, m)| (mode, &m["tool"]))
        .filter(|(_, tool)| !tool.is_null())
    {
        t += &format!(
            "{mode}: process CPU {} % of a core ({} ns/{op}; generator+tool CPU ratio {}); RSS: start-up peak (VmHWM) {} MB, steady (after the run) {} MB, peak during the run {} MB; start-up {} s; scrapes {} ok / {} failed, latency p50 {} ms, max {} ms\n",
            range(&tool["cpu_pct_of_core"], 1),
            f(&tool["cpu_ns_per_op"]["median"], 0),
            f(&modes[mode]["total_cpu_ratio"]["median"], 3),
            f(&tool["peak_rss_startup_mb"]["max"], 1),
            f(&tool["rss_steady_mb"]["median"], 1),
            f(&tool["peak_rss_storm_mb"]["max"], 1),
            range(&tool["startup_s"], 3),
            tool["scrapes_ok"],
            tool["scrapes_failed"],
            f(&tool["scrape_ms"]["median"], 1),
            f(&tool["scrape_ms"]["max"], 1),
        );
    }
    t
}

fn count_checks(c: &Value) -> String {
    let mut t = String::new();
    for (mode, m) in c["summary"]["modes"].as_object().into_iter().flatten() {
        let check = &m["count_check"];
        if check.is_null() {
            continue;
        }
        t += &format!(
            "{mode} count check ({}): {}/{} rounds ok; lost {}\n",
            check["rule"].as_str().unwrap_or(""),
            check["rounds_ok"],
            check["rounds"],
            check["lost_total"]
        );
        for r in check["per_round"].as_array().into_iter().flatten() {
            let owned = match r["owner_attributed"].as_f64() {
                Some(share) => format!(
                    ", owner comm=storm-N {} ({:.1}%)",
                    r["received_owner_storm"],
                    share * 100.0
                ),
                None => String::new(),
            };
            let errors = match r["socket_errors_econnrefused"].as_u64() {
                Some(n) => format!(", ECONNREFUSED errors {n}"),
                None => String::new(),
            };
            t += &format!(
                "    round {}: attempts {} completed {} ActiveOpens {} OutRsts {} sent {} received {}{owned}{errors}{}\n",
                r["round"],
                r["attempts"],
                r["ops"],
                r["active_opens"],
                r["out_rsts"],
                r["sent"],
                r["received"],
                if r["ok"] == json!(true) {
                    ""
                } else {
                    "  <-- MISMATCH"
                }
            );
        }
    }
    t
}

fn programs(c: &Value, op: &str) -> String {
    let mut t = String::new();
    for (mode, p) in c["summary"]["programs"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, p)| !p.is_null())
    {
        t += &format!(
            "{mode} BPF programs (profile round {}: the median of the {} of {} rounds with the fewest runs per {op}; BPF run-time statistics on; {} {op}s, generator {} ns CPU/{op}):\n",
            p["round"],
            p["undisturbed_rounds"],
            p["rounds"],
            p["ops"],
            f(&p["storm_cpu_ns_per_op"], 0)
        );
        let per = format!("ns/{op}");
        let runs = format!("runs/{op}");
        t += &format!(
            "    {:<28} {:>12} {:>15} {:>10} {:>15} {:>10}\n",
            "program", "runs", runs, "ns/run", per, "rec.miss"
        );
        for prog in p["programs"].as_array().into_iter().flatten() {
            t += &format!(
                "    {:<28} {:>12} {:>15} {:>10} {:>15} {:>10}\n",
                prog["name"].as_str().unwrap_or(""),
                prog["run_cnt"].as_u64().unwrap_or(0),
                f(&prog["runs_per_op"], 2),
                f(&prog["ns_per_run"], 0),
                f(&prog["ns_per_op"], 0),
                prog["recursion_misses"].as_u64().unwrap_or(0),
            );
        }
        t += &format!(
            "    {:<28} {:>12} {:>15} {:>10} {:>15} {:>10}\n",
            "total",
            "",
            f(&p["total_runs_per_op"], 2),
            "",
            f(&p["total_ns_per_op"], 0),
            p["recursion_misses"].as_u64().unwrap_or(0)
        );
        t += &format!(
            "    every profile round: {} ns/{op}, {} runs/{op} (more runs: the host's other traffic on the same hooks)\n",
            range(&p["total_ns_per_op_rounds"], 0),
            range(&p["total_runs_per_op_rounds"], 2)
        );
    }
    t
}

/// The headline of the profile rounds: all of a tool's BPF time per operation.
fn bpf_summary(results: &Value) -> String {
    let mut t = String::from(
        "\n== BPF time per operation, all programs of the tool (the median undisturbed profile round; min / median / max of all)\n",
    );
    for c in results["configs"].as_array().into_iter().flatten() {
        let (name, op) = workload(c);
        let what = if name == "refused" {
            "reset (attempt)"
        } else {
            "connection"
        };
        for (mode, p) in c["summary"]["programs"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, p)| !p.is_null())
        {
            t += &format!(
                "  {:<12} {:<9} {:<12} {:>8} ns per {what} ({} runs per {op}, recursion misses {}; all {} rounds: {} ns)\n",
                name,
                format!("{}t/{}p", c["threads"], c["ports"]),
                mode,
                f(&p["total_ns_per_op"], 0),
                f(&p["total_runs_per_op"], 2),
                p["recursion_misses"].as_u64().unwrap_or(0),
                p["rounds"],
                range(&p["total_ns_per_op_rounds"], 0),
            );
        }
    }
    t
}

fn targets(results: &Value) -> String {
    let mut t = String::from("\n== targets (reported, not asserted)\n");
    for target in results["targets"].as_array().into_iter().flatten() {
        let met = match target["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        let value = match &target["value"] {
            Value::Number(n) => format!("{:.3}", n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        t += &format!(
            "  {:<6} [{}] {}: {} (target {}) {}\n",
            met,
            target["config"].as_str().unwrap_or(""),
            target["target"].as_str().unwrap_or(""),
            value,
            target["limit"].as_str().unwrap_or(""),
            target["note"].as_str().unwrap_or("")
        );
    }
    t
}

/// The human-readable report.
pub fn table(results: &Value) -> String {
    let mut t = header(results);
    for c in results["configs"].as_array().into_iter().flatten() {
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
