//! The benchmark's results: summaries (min/median/max over rounds), the targets of issue 7, a JSON
//! file, a readable table and a PNG chart of the ratios per round.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, anyhow};
use serde_json::{Value, json};

use super::{Config, Mode, Options, Quiet, Sample};

/// The targets (issue 7): reported, never asserted.
pub const RATE_RATIO_MIN: f64 = 0.99;
pub const DAEMON_CPU_PCT_MAX: f64 = 2.0;
pub const PEAK_RSS_MB_MAX: f64 = 30.0;
pub const PROGRAM_NS_MAX: f64 = 150.0;
pub const STARTUP_S_MAX: f64 = 1.0;

pub struct Results<'a> {
    pub options: &'a Options,
    pub modes: &'a [Mode],
    pub configs: &'a [Config],
    pub quiet_before: &'a Quiet,
    pub busy_after: (f64, Vec<(u32, String, f64)>),
    /// Time spent waiting for a quiet machine, before and between rounds.
    pub waited_total: Duration,
    pub elapsed: Duration,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// {min, median, max, n} of a list (null when empty).
fn mmm(values: impl IntoIterator<Item = f64>) -> Value {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Value::Null;
    }
    let med = median(&mut v);
    json!({ "min": v[0], "median": med, "max": v[v.len() - 1], "n": v.len() })
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({
        "kernel": command_output("uname", &["-r"]),
        "os": std::fs::read_to_string("/etc/debian_version").map(|v| format!("Debian {}", v.trim())).unwrap_or_default(),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
    })
}

fn processes(list: &[(u32, String, f64)]) -> Value {
    list.iter()
        .take(8)
        .map(|(pid, comm, share)| json!({ "pid": pid, "comm": comm, "cpu_pct": (share * 1000.0).round() / 10.0 }))
        .collect()
}

fn sample_json(s: &Sample) -> Value {
    let mut v = json!({
        "round": s.round,
        "mode": s.mode,
        "profile": s.profile,
        "attempts": s.storm.attempts,
        "wall_ns": s.storm.wall_ns,
        "rate_per_s": s.storm.rate(),
        "cpu_ns": s.storm.cpu_ns,
        "cpu_ns_per_attempt": s.storm.cpu_per_attempt(),
        "user_ns": s.storm.user_ns,
        "sys_ns": s.storm.sys_ns,
        "out_rsts": s.storm.out_rsts,
        "machine_busy_cores": s.machine_busy_cores,
        "other_bpf_tracers": s.foreign_tracers,
        "storm": s.storm.raw,
    });
    if let Some(t) = &s.tool {
        v["tool"] = json!({
            "pid": t.pid,
            "startup_s": t.startup.as_secs_f64(),
            "cpu_ns": t.cpu_ns,
            "cpu_pct_of_core": t.cpu_ns as f64 / s.storm.wall_ns.max(1) as f64 * 100.0,
            "cpu_ns_per_attempt": t.cpu_ns as f64 / s.storm.attempts.max(1) as f64,
            "tail_cpu_ns": t.tail_cpu_ns,
            "rss_before_kib": t.rss_before_kib,
            "peak_rss_startup_kib": t.peak_rss_startup_kib,
            "peak_rss_storm_kib": t.peak_rss_storm_kib,
            "scrapes_ok": t.scrapes_ok,
            "scrapes_failed": t.scrapes_failed,
            "scrape_ms": t.scrape_ms,
        });
    }
    if let Some(c) = &s.counts {
        let lost: serde_json::Map<String, Value> = c.lost.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        v["counts"] = json!({
            "sent": c.sent,
            "received": c.received,
            "received_owner_storm": c.received_owned,
            "socket_errors_econnrefused": c.socket_errors,
            "lost": lost,
        });
    }
    if !s.programs.is_empty() {
        v["programs"] = s
            .programs
            .iter()
            .map(|p| {
                json!({
                    "id": p.id,
                    "name": p.name,
                    "run_cnt": p.run_cnt,
                    "run_time_ns": p.run_time_ns,
                    "ns_per_run": p.run_time_ns as f64 / p.run_cnt.max(1) as f64,
                    "runs_per_attempt": p.run_cnt as f64 / s.storm.attempts.max(1) as f64,
                    "ns_per_attempt": p.run_time_ns as f64 / s.storm.attempts.max(1) as f64,
                    "recursion_misses": p.recursion_misses,
                })
            })
            .collect();
    }
    v
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn summarise_mode(config: &Config, mode: &str) -> Value {
    let rounds: Vec<&Sample> = config.samples.iter().filter(|s| !s.profile && s.mode == mode).collect();
    let bare = |round: u32| config.samples.iter().find(|s| !s.profile && s.mode == "bare" && s.round == round);
    let paired: Vec<(&Sample, &Sample)> = rounds.iter().filter_map(|s| Some((*s, bare(s.round)?))).collect();
    let mut v = json!({
        "rate_per_s": mmm(rounds.iter().map(|s| s.storm.rate())),
        "cpu_ns_per_attempt": mmm(rounds.iter().map(|s| s.storm.cpu_per_attempt())),
        "machine_busy_cores": mmm(rounds.iter().map(|s| s.machine_busy_cores)),
        "other_busy_cores": mmm(rounds.iter().map(|s| {
            let ours = s.storm.cpu_ns + s.tool.as_ref().map_or(0, |t| t.cpu_ns);
            s.machine_busy_cores - ours as f64 / s.storm.wall_ns.max(1) as f64
        })),
        "other_bpf_tracers_max": rounds.iter().map(|s| s.foreign_tracers).max().unwrap_or(0),
    });
    if mode != "bare" {
        v["rate_ratio"] = mmm(paired.iter().map(|(s, b)| s.storm.rate() / b.storm.rate()));
        v["cpu_ratio"] = mmm(paired.iter().map(|(s, b)| s.storm.cpu_per_attempt() / b.storm.cpu_per_attempt()));
        v["added_cpu_ns_per_attempt"] =
            mmm(paired.iter().map(|(s, b)| s.storm.cpu_per_attempt() - b.storm.cpu_per_attempt()));
        v["total_cpu_ratio"] = mmm(paired.iter().map(|(s, b)| {
            let tool = s.tool.as_ref().map_or(0, |t| t.cpu_ns);
            (s.storm.cpu_ns + tool) as f64 / s.storm.attempts.max(1) as f64 / b.storm.cpu_per_attempt()
        }));
    }
    let tools: Vec<(&Sample, &super::ToolStats)> =
        rounds.iter().filter_map(|s| Some((*s, s.tool.as_ref()?))).collect();
    if !tools.is_empty() {
        v["tool"] = json!({
            "cpu_pct_of_core": mmm(tools.iter().map(|(s, t)| t.cpu_ns as f64 / s.storm.wall_ns.max(1) as f64 * 100.0)),
            "cpu_ns_per_attempt": mmm(tools.iter().map(|(s, t)| t.cpu_ns as f64 / s.storm.attempts.max(1) as f64)),
            "tail_cpu_ms": mmm(tools.iter().map(|(_, t)| t.tail_cpu_ns as f64 / 1e6)),
            "peak_rss_mb": mmm(tools.iter().map(|(_, t)| mb(t.peak_rss_startup_kib.max(t.peak_rss_storm_kib)))),
            "peak_rss_storm_mb": mmm(tools.iter().map(|(_, t)| mb(t.peak_rss_storm_kib))),
            "rss_before_mb": mmm(tools.iter().map(|(_, t)| mb(t.rss_before_kib))),
            "startup_s": mmm(tools.iter().map(|(_, t)| t.startup.as_secs_f64())),
            "scrapes_ok": tools.iter().map(|(_, t)| t.scrapes_ok).sum::<u64>(),
            "scrapes_failed": tools.iter().map(|(_, t)| t.scrapes_failed).sum::<u64>(),
            "scrape_ms": mmm(tools.iter().flat_map(|(_, t)| t.scrape_ms.iter().copied())),
        });
    }
    let counted: Vec<&Sample> = rounds.iter().copied().filter(|s| s.counts.is_some()).collect();
    if !counted.is_empty() {
        let is_rstwatch = mode.starts_with("rstwatch");
        // With several ports the storm's resets past the label cap share port="other" with
        // everyone else's: allow others' resets there (at most 0.1%), and show the difference.
        let slack = |a: u64| if config.ports > 1 { a / 1000 } else { 0 };
        let checks: Vec<Value> = counted
            .iter()
            .map(|s| {
                let c = s.counts.as_ref().expect("filtered");
                let a = s.storm.attempts;
                let close = |n: u64| n >= a && n - a <= slack(a);
                let exact = if is_rstwatch {
                    close(c.sent) && close(c.received) && s.storm.out_rsts == a
                } else {
                    c.sent >= a && c.received >= a && s.storm.out_rsts == a
                };
                json!({
                    "round": s.round, "attempts": a, "out_rsts": s.storm.out_rsts,
                    "sent": c.sent, "received": c.received,
                    "sent_minus_attempts": c.sent as i64 - a as i64,
                    "received_minus_attempts": c.received as i64 - a as i64,
                    "received_owner_storm": c.received_owned,
                    "owner_attributed": c.received_owned.map(|o| o as f64 / a.max(1) as f64),
                    "socket_errors_econnrefused": c.socket_errors, "ok": exact,
                })
            })
            .collect();
        let ok = checks.iter().filter(|c| c["ok"] == json!(true)).count();
        let mut lost = serde_json::Map::new();
        for s in &counted {
            for (stage, n) in &s.counts.as_ref().expect("filtered").lost {
                let e = lost.entry(stage.clone()).or_insert(json!(0));
                *e = json!(e.as_u64().unwrap_or(0) + n);
            }
        }
        v["count_check"] = json!({
            "rule": if is_rstwatch {
                if config.ports > 1 {
                    "attempts == Tcp: OutRsts delta, and sent/no_listener, received/connection_refused (storm ports + port=\"other\") within attempts + 0.1% (others' resets on port=\"other\")"
                } else {
                    "attempts == sent/no_listener == received/connection_refused == Tcp: OutRsts delta"
                }
            } else {
                "bpftrace counts host-wide from its start: sent and received >= attempts; OutRsts == attempts"
            },
            "rounds_ok": ok,
            "rounds": checks.len(),
            "owner_attributed": mmm(checks.iter().filter_map(|c| c["owner_attributed"].as_f64())),
            "per_round": checks,
            "lost_total": lost,
        });
    }
    v
}

fn summarise_programs(config: &Config, mode: &str) -> Value {
    let Some(s) = config.samples.iter().find(|s| s.profile && s.mode == mode) else { return Value::Null };
    let programs = sample_json(s)["programs"].clone();
    let total: f64 = s.programs.iter().map(|p| p.run_time_ns as f64).sum::<f64>() / s.storm.attempts.max(1) as f64;
    json!({
        "attempts": s.storm.attempts,
        "storm_cpu_ns_per_attempt": s.storm.cpu_per_attempt(),
        "programs": programs,
        "total_ns_per_attempt": total,
    })
}

impl Results<'_> {
    pub fn to_json(&self) -> Value {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let git_rev = command_output("git", &["rev-parse", "--short", "HEAD"]);
        let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"]).lines().count();
        let o = self.options;
        let mut targets = Vec::new();
        let configs: Vec<Value> = self
            .configs
            .iter()
            .map(|c| {
                let mut modes = serde_json::Map::new();
                let mut programs = serde_json::Map::new();
                for m in self.modes {
                    let label = m.label();
                    modes.insert(label.clone(), summarise_mode(c, &label));
                    if !matches!(m, Mode::Bare) {
                        programs.insert(label.clone(), summarise_programs(c, &label));
                    }
                }
                let summary = json!({ "modes": modes, "programs": programs });
                targets.extend(evaluate_targets(c, &summary));
                json!({
                    "threads": c.threads,
                    "ports": c.ports,
                    "summary": summary,
                    "samples": c.samples.iter().map(sample_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        let q = self.quiet_before;
        json!({
            "meta": {
                "date": command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
                "command": format!("cargo xtask {}", args.join(" ")),
                "machine": machine(),
                "git": { "rev": git_rev, "modified_tracked_files": dirty },
                "elapsed_s": self.elapsed.as_secs_f64(),
                "options": {
                    "rounds": o.rounds, "duration_s": o.duration, "max_attempts_per_thread": o.attempts,
                    "threads": o.threads, "ports": o.ports, "port": o.port,
                    "modes": self.modes.iter().map(Mode::label).collect::<Vec<_>>(),
                    "profile_rounds": !o.no_profile,
                },
                "bpftrace_script": super::tools::BPFTRACE_SCRIPT,
            },
            "quiet": {
                "before": {
                    "waited_s": q.waited.as_secs_f64(),
                    "busy_cores": q.busy_cores,
                    "loadavg": q.loadavg,
                    "busy_processes": processes(&q.busy),
                    "other_bpf_tracers": q.tracers.iter().map(|(pid, comm, ids)| json!({"pid": pid, "comm": comm, "prog_ids": ids})).collect::<Vec<_>>(),
                },
                "waited_total_s": self.waited_total.as_secs_f64(),
                "after": {
                    "busy_cores": self.busy_after.0,
                    "loadavg": super::system::loadavg(),
                    "busy_processes": processes(&self.busy_after.1),
                },
            },
            "targets": targets,
            "configs": configs,
        })
    }
}

fn evaluate_targets(c: &Config, summary: &Value) -> Vec<Value> {
    let name = format!("{} thread(s), {} port(s)", c.threads, c.ports);
    let r = &summary["modes"]["rstwatch"];
    let b = &summary["modes"]["bpftrace"];
    let mut out = Vec::new();
    let mut push = |target: &str, value: Value, limit: String, met: Option<bool>, note: String| {
        out.push(json!({ "config": name, "target": target, "value": value, "limit": limit, "met": met, "note": note }));
    };
    let rate = r["rate_ratio"]["median"].as_f64();
    push(
        "storm rate with rstwatch / bare (median)",
        json!(rate),
        format!(">= {RATE_RATIO_MIN}"),
        rate.map(|v| v >= RATE_RATIO_MIN),
        format!(
            "min {:.3}, max {:.3}; CPU per attempt {:.3}x (median)",
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
            format!("CPU per attempt: rstwatch {rc:.3}x, bpftrace {bc:.3}x"),
        );
    }
    let check = &r["count_check"];
    if !check.is_null() {
        let ok = check["rounds_ok"].as_u64().unwrap_or(0);
        let n = check["rounds"].as_u64().unwrap_or(0);
        push(
            "counts exact (every round)",
            json!(format!("{ok}/{n} rounds")),
            "all".into(),
            Some(ok == n && n > 0),
            format!(
                "received resets with the generator as owner: {:.1}% (min over rounds); lost: {}",
                check["owner_attributed"]["min"].as_f64().unwrap_or(f64::NAN) * 100.0,
                check["lost_total"]
            ),
        );
    }
    let cpu = r["tool"]["cpu_pct_of_core"]["median"].as_f64();
    push(
        "daemon CPU during the storm, % of one core (median)",
        json!(cpu),
        format!("<= {DAEMON_CPU_PCT_MAX}"),
        cpu.map(|v| v <= DAEMON_CPU_PCT_MAX),
        format!("{:.0} ns of daemon CPU per attempt", r["tool"]["cpu_ns_per_attempt"]["median"].as_f64().unwrap_or(f64::NAN)),
    );
    let rss = r["tool"]["peak_rss_mb"]["max"].as_f64();
    push(
        "daemon peak RSS, MB (max over rounds)",
        json!(rss),
        format!("<= {PEAK_RSS_MB_MAX}"),
        rss.map(|v| v <= PEAK_RSS_MB_MAX),
        format!("during the storm alone: {:.1} MB", r["tool"]["peak_rss_storm_mb"]["max"].as_f64().unwrap_or(f64::NAN)),
    );
    if let Some(programs) = summary["programs"]["rstwatch"]["programs"].as_array() {
        for p in programs {
            let ns = p["ns_per_run"].as_f64();
            push(
                &format!("BPF program {} ns per run", p["name"].as_str().unwrap_or("?")),
                json!(ns),
                format!("<= {PROGRAM_NS_MAX}"),
                ns.map(|v| v <= PROGRAM_NS_MAX),
                format!("{:.2} runs per attempt", p["runs_per_attempt"].as_f64().unwrap_or(f64::NAN)),
            );
        }
    }
    let startup = r["tool"]["startup_s"]["median"].as_f64();
    push(
        "start-up to attached, s (median)",
        json!(startup),
        format!("<= {STARTUP_S_MAX}"),
        startup.map(|v| v <= STARTUP_S_MAX),
        format!("max {:.3} s", r["tool"]["startup_s"]["max"].as_f64().unwrap_or(f64::NAN)),
    );
    out
}

pub fn one_line(s: &Sample) -> String {
    let mut line = format!(
        "{}{:<10} round {:>2}: {:>9.0}/s, {:>6.0} ns CPU/attempt, OutRsts {}",
        if s.profile { "[profile] " } else { "" },
        s.mode,
        s.round,
        s.storm.rate(),
        s.storm.cpu_per_attempt(),
        if s.storm.out_rsts == s.storm.attempts { "= attempts".to_string() } else { format!("{} != {}", s.storm.out_rsts, s.storm.attempts) },
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
    format!("{} / {} / {}", f(&v["min"], digits), f(&v["median"], digits), f(&v["max"], digits))
}

/// The human-readable report.
pub fn table(results: &Value) -> String {
    let mut t = String::new();
    let meta = &results["meta"];
    t += &format!(
        "\nrstwatch reset-storm benchmark — {} — {}\nmachine: {} {} cores, {} GiB, kernel {}, {}; git {} ({} modified tracked files)\n",
        meta["date"].as_str().unwrap_or(""),
        meta["command"].as_str().unwrap_or(""),
        meta["machine"]["cpu"].as_str().unwrap_or(""),
        meta["machine"]["cores"],
        meta["machine"]["memory_gib"],
        meta["machine"]["kernel"].as_str().unwrap_or(""),
        meta["machine"]["os"].as_str().unwrap_or(""),
        meta["git"]["rev"].as_str().unwrap_or(""),
        meta["git"]["modified_tracked_files"],
    );
    let q = &results["quiet"]["before"];
    t += &format!(
        "quiet before: busy {:.2} cores, loadavg {}, waited {:.0} s (in all {:.0} s), other BPF tracers {}; after: busy {:.2} cores\n",
        q["busy_cores"].as_f64().unwrap_or(0.0),
        q["loadavg"].as_str().unwrap_or(""),
        q["waited_s"].as_f64().unwrap_or(0.0),
        results["quiet"]["waited_total_s"].as_f64().unwrap_or(0.0),
        q["other_bpf_tracers"].as_array().map_or(0, |a| a.len()),
        results["quiet"]["after"]["busy_cores"].as_f64().unwrap_or(0.0),
    );
    t += "(min / median / max over rounds; ratios are against the same round's bare storm)\n";
    for c in results["configs"].as_array().into_iter().flatten() {
        t += &format!("\n== {} generator thread(s), {} distinct port(s)\n", c["threads"], c["ports"]);
        t += &format!(
            "{:<20} {:>24} {:>22} {:>22} {:>18} {:>22}\n",
            "mode", "attempts/s", "rate ratio", "CPU ns/attempt", "CPU ratio", "+CPU ns/attempt"
        );
        let modes = c["summary"]["modes"].as_object().cloned().unwrap_or_default();
        let tracers = modes.values().filter_map(|m| m["other_bpf_tracers_max"].as_u64()).max().unwrap_or(0);
        if tracers > 0 {
            t += &format!(
                "WARNING: up to {tracers} other process(es) held BPF tracing programs during these storms (bare ones too): the bare baseline is not bare, ratios understate the overhead\n"
            );
        }
        for (mode, m) in &modes {
            t += &format!(
                "{:<20} {:>24} {:>22} {:>22} {:>18} {:>22}\n",
                mode,
                range(&m["rate_per_s"], 0),
                range(&m["rate_ratio"], 3),
                range(&m["cpu_ns_per_attempt"], 0),
                range(&m["cpu_ratio"], 3),
                range(&m["added_cpu_ns_per_attempt"], 0),
            );
        }
        t += &format!(
            "other load during the storms (machine busy cores minus the storm and the tool), median: {}\n",
            modes.iter().map(|(mode, m)| format!("{mode} {}", f(&m["other_busy_cores"]["median"], 2))).collect::<Vec<_>>().join(", ")
        );
        for (mode, m) in &modes {
            let tool = &m["tool"];
            if tool.is_null() {
                continue;
            }
            t += &format!(
                "{mode}: process CPU during the storm {} % of a core ({} ns/attempt; storm+tool CPU ratio {}), peak RSS {} MB (storm {}), start-up {} s, scrapes {} ok / {} failed ({} ms)\n",
                range(&tool["cpu_pct_of_core"], 1),
                f(&tool["cpu_ns_per_attempt"]["median"], 0),
                f(&m["total_cpu_ratio"]["median"], 3),
                f(&tool["peak_rss_mb"]["max"], 1),
                f(&tool["peak_rss_storm_mb"]["max"], 1),
                range(&tool["startup_s"], 3),
                tool["scrapes_ok"],
                tool["scrapes_failed"],
                range(&tool["scrape_ms"], 1),
            );
        }
        for (mode, m) in &modes {
            let check = &m["count_check"];
            if check.is_null() {
                continue;
            }
            t += &format!("{mode} count check ({}): {}/{} rounds ok; lost {}\n", check["rule"].as_str().unwrap_or(""), check["rounds_ok"], check["rounds"], check["lost_total"]);
            for r in check["per_round"].as_array().into_iter().flatten() {
                let owned = match r["owner_attributed"].as_f64() {
                    Some(share) => format!(", owner comm=storm-N {} ({:.1}%)", r["received_owner_storm"], share * 100.0),
                    None => String::new(),
                };
                t += &format!(
                    "    round {}: attempts {} OutRsts {} sent {} received {}{owned}, ECONNREFUSED errors {}{}\n",
                    r["round"], r["attempts"], r["out_rsts"], r["sent"], r["received"], r["socket_errors_econnrefused"],
                    if r["ok"] == json!(true) { "" } else { "  <-- MISMATCH" }
                );
            }
        }
        for (mode, p) in c["summary"]["programs"].as_object().into_iter().flatten() {
            if p.is_null() {
                continue;
            }
            t += &format!(
                "{mode} BPF programs (profile round, kernel.bpf_stats_enabled=1; {} attempts, storm {} ns CPU/attempt):\n",
                p["attempts"],
                f(&p["storm_cpu_ns_per_attempt"], 0)
            );
            t += &format!("    {:<28} {:>12} {:>10} {:>10} {:>14} {:>10}\n", "program", "runs", "runs/att", "ns/run", "ns/attempt", "rec.miss");
            for prog in p["programs"].as_array().into_iter().flatten() {
                t += &format!(
                    "    {:<28} {:>12} {:>10} {:>10} {:>14} {:>10}\n",
                    prog["name"].as_str().unwrap_or(""),
                    prog["run_cnt"].as_u64().unwrap_or(0),
                    f(&prog["runs_per_attempt"], 2),
                    f(&prog["ns_per_run"], 0),
                    f(&prog["ns_per_attempt"], 0),
                    prog["recursion_misses"].as_u64().unwrap_or(0),
                );
            }
            t += &format!("    {:<28} {:>12} {:>10} {:>10} {:>14}\n", "total", "", "", "", f(&p["total_ns_per_attempt"], 0));
        }
    }
    t += "\n== targets (reported, not asserted)\n";
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

// ---------------------------------------------------------------------------------------------
// Chart

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// The chart draws text with a TTF file (no fontconfig): install DejaVu if there is none.
pub fn ensure_font() -> anyhow::Result<()> {
    if FONT_PATHS.iter().any(|p| Path::new(p).exists()) {
        return Ok(());
    }
    super::system::apt_install(&["fonts-dejavu-core"])
}

fn register_font() -> anyhow::Result<()> {
    let path = FONT_PATHS.iter().find(|p| Path::new(p).exists()).ok_or_else(|| anyhow!("no TTF font found"))?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path).with_context(|| format!("reading {path}"))?.into_boxed_slice());
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a usable font"))
}

/// Two panels, one line per configuration and mode: rate ratio and CPU-per-attempt ratio per round.
pub fn chart(results: &Value, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;

    register_font()?;
    struct Series {
        label: String,
        rate: Vec<(f64, f64)>,
        cpu: Vec<(f64, f64)>,
    }
    let mut series = Vec::new();
    let mut rounds = 1.0f64;
    for c in results["configs"].as_array().into_iter().flatten() {
        let samples = c["samples"].as_array().cloned().unwrap_or_default();
        let bare = |round: &Value| {
            samples.iter().find(|s| s["mode"] == "bare" && s["round"] == *round && s["profile"] == false).cloned()
        };
        let modes = c["summary"]["modes"].as_object().cloned().unwrap_or_default();
        for mode in modes.keys().filter(|m| *m != "bare") {
            let mut s = Series { label: format!("{}t/{}p {}", c["threads"], c["ports"], mode), rate: vec![], cpu: vec![] };
            for sample in samples.iter().filter(|s| s["mode"] == *mode.as_str() && s["profile"] == false) {
                let Some(b) = bare(&sample["round"]) else { continue };
                let round = sample["round"].as_f64().unwrap_or(0.0);
                rounds = rounds.max(round);
                let ratio = |k: &str| sample[k].as_f64().unwrap_or(f64::NAN) / b[k].as_f64().unwrap_or(f64::NAN);
                s.rate.push((round, ratio("rate_per_s")));
                s.cpu.push((round, ratio("cpu_ns_per_attempt")));
            }
            series.push(s);
        }
    }
    let bounds = |pick: fn(&Series) -> &Vec<(f64, f64)>, with: f64| {
        let values: Vec<f64> = series.iter().flat_map(|s| pick(s).iter().map(|p| p.1)).filter(|v| v.is_finite()).collect();
        let lo = values.iter().copied().fold(with, f64::min);
        let hi = values.iter().copied().fold(with, f64::max);
        let pad = ((hi - lo) * 0.08).max(0.01);
        (lo - pad)..(hi + pad)
    };
    let rate_range = bounds(|s| &s.rate, 1.0);
    let cpu_range = bounds(|s| &s.cpu, 1.0);
    let x_range = 0.8..(rounds + 0.2);

    let root = BitMapBackend::new(path, (1500, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let title = format!(
        "rstwatch reset storm: ratios to the same round's bare storm — {}",
        results["meta"]["date"].as_str().unwrap_or("")
    );
    let root = root.titled(&title, ("sans-serif", 24)).map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((1, 2));
    // Warm colours for rstwatch, cool ones for bpftrace, greys and others for variants.
    let warm = [RGBColor(214, 39, 40), RGBColor(255, 127, 14), RGBColor(140, 86, 75), RGBColor(227, 119, 194)];
    let cool = [RGBColor(31, 119, 180), RGBColor(23, 190, 207), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];
    let other = [RGBColor(127, 127, 127), RGBColor(188, 189, 34), RGBColor(60, 60, 60), RGBColor(170, 170, 170)];
    let (mut w, mut c, mut o) = (0, 0, 0);
    let colors: Vec<RGBColor> = series
        .iter()
        .map(|s| {
            let mode = s.label.split_once(' ').map_or("", |(_, m)| m);
            let (set, n) = match mode {
                "rstwatch" => (&warm, &mut w),
                "bpftrace" => (&cool, &mut c),
                _ => (&other, &mut o),
            };
            *n += 1;
            set[(*n - 1) % set.len()]
        })
        .collect();
    for (panel, (caption, y_range, pick, target)) in panels.iter().zip([
        ("storm rate (attempts/s) vs bare — higher is better", rate_range, (|s: &Series| &s.rate) as fn(&Series) -> &Vec<(f64, f64)>, Some(RATE_RATIO_MIN)),
        ("generator CPU per attempt vs bare — lower is better", cpu_range, (|s: &Series| &s.cpu) as fn(&Series) -> &Vec<(f64, f64)>, None),
    ]) {
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range.clone(), y_range.clone())
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("ratio")
            .x_labels(rounds as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let one = [(x_range.start, 1.0), (x_range.end, 1.0)];
        chart.draw_series(LineSeries::new(one, BLACK.stroke_width(1))).map_err(|e| anyhow!("{e}"))?;
        if let Some(target) = target {
            chart
                .draw_series(LineSeries::new([(x_range.start, target), (x_range.end, target)], RED.mix(0.5).stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(format!("target {target}"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.mix(0.5).stroke_width(2)));
        }
        for (i, s) in series.iter().enumerate() {
            let color = colors[i];
            let points: Vec<(f64, f64)> = pick(s).iter().copied().filter(|p| p.1.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
