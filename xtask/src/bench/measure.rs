//! One run of a workload in one mode: start the tool, run the generator in a fresh namespace, read
//! the tool's CPU, memory, counts and (in a profile round) its BPF programs' statistics, stop.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::{
    Counts, Mode, ProgStat, Sample, ToolStats, Workload,
    scrape::{Scrape, Scraper},
    system::{self, NetNs},
    tools::{self, Bpftrace, Daemon, StormResult, StormSpec},
};
use crate::setup;

/// What rstwatch counted on the workload's ports: for the storm, `sent/no_listener` and
/// `received/connection_refused` whatever the owner (with `port="other"` when the storm spreads
/// over several ports, since labels are capped, so resets of other processes on uncapped ports may
/// add a few), and the received ones whose owner is the generator (its threads are `storm-N`); for
/// the connection workload, every reset on the listener's port (there should be none).
fn rstwatch_counts(before: &Scrape, after: &Scrape, spec: &StormSpec) -> Counts {
    let in_storm = |port: &str| -> bool {
        if spec.ports > 1 && port == "other" {
            return true;
        }
        port.parse::<u32>()
            .is_ok_and(|p| p >= spec.port as u32 && p < spec.port as u32 + spec.ports)
    };
    let refused = spec.workload == Workload::Refused;
    let resets = |s: &Scrape, direction: &str, cause: &str, by_comm: bool| {
        s.sum("rstwatch_resets_total", |l| {
            l.get("direction") == direction
                && (!refused || l.get("cause") == cause)
                && in_storm(l.get("port"))
                && (!by_comm || l.get("comm").starts_with("storm"))
        })
    };
    let delta = |a: f64, b: f64| (b - a).max(0.0).round() as u64;
    let errors = |s: &Scrape| {
        s.sum("rstwatch_socket_errors_total", |l| {
            l.get("errno") == "ECONNREFUSED" && l.get("comm").starts_with("storm") && in_storm(l.get("port"))
        })
    };
    let lost_before = before.values("rstwatch_events_lost_total", "stage");
    let lost = after
        .values("rstwatch_events_lost_total", "stage")
        .into_iter()
        .map(|(stage, v)| {
            let b = lost_before
                .iter()
                .find(|(s, _)| *s == stage)
                .map_or(0.0, |(_, v)| *v);
            (stage, delta(b, v))
        })
        .collect();
    let counted = |direction, cause, by_comm| {
        delta(
            resets(before, direction, cause, by_comm),
            resets(after, direction, cause, by_comm),
        )
    };
    Counts {
        sent: counted("sent", "no_listener", false),
        received: counted("received", "connection_refused", false),
        received_owned: refused.then(|| counted("received", "connection_refused", true)),
        socket_errors: refused.then(|| delta(errors(before), errors(after))),
        lost,
    }
}

fn prog_stats(pid: u32) -> Vec<system::ProgFd> {
    system::bpf_prog_fds(pid)
}

fn prog_delta(before: &[system::ProgFd], after: &[system::ProgFd]) -> Vec<ProgStat> {
    let names = system::bpf_prog_names();
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id).cloned().unwrap_or_default();
            ProgStat {
                id: a.id,
                name: names
                    .get(&a.id)
                    .cloned()
                    .unwrap_or_else(|| format!("prog {}", a.id)),
                run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
                run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                recursion_misses: a.recursion_misses.saturating_sub(b.recursion_misses),
            }
        })
        .filter(|p| p.run_cnt > 0)
        .collect()
}

/// One run in one mode: start the tool, run the workload in a fresh namespace, read everything,
/// stop.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    rstwatch: &Path,
    storm: &Path,
    spec: &StormSpec,
    mode: &Mode,
    round: u32,
    profile: bool,
    out: &Path,
    n: u32,
) -> anyhow::Result<Sample> {
    system::check_stop()?;
    let netns = NetNs::new(n)?;
    let mut sample = Sample {
        round,
        mode: mode.label(),
        profile,
        storm: StormResult::default(),
        machine_busy_cores: 0.0,
        foreign_tracers: 0,
        tool: None,
        counts: None,
        programs: Vec::new(),
    };
    match mode {
        Mode::Bare => {
            sample.foreign_tracers = system::foreign_tracers(&[]).len();
            let t0 = system::cpu_times();
            let started = Instant::now();
            sample.storm = tools::run_storm(storm, &netns.path(), spec)?;
            sample.machine_busy_cores = system::busy_between(t0, system::cpu_times(), started.elapsed()).0;
        }
        Mode::Rstwatch { label, args } => {
            let log = out.join(format!("{}.log", label.replace(['[', ']'], "_")));
            let mut daemon = Daemon::start(rstwatch, args, log)?;
            let pid = daemon.pid();
            sample.foreign_tracers = system::foreign_tracers(&[pid]).len();
            // Let start-up work (pre-created series, first scrape) settle before measuring.
            system::sleep(Duration::from_millis(300));
            let before = daemon.scrape()?;
            let mut scrapes = None;
            let (mut tool, cpu_end) = observe(&mut sample, pid, daemon.startup, profile, || {
                let scraper = Scraper::start(
                    daemon.addr,
                    Duration::from_secs(1),
                    spec.duration + Duration::from_secs(40),
                );
                let result = tools::run_storm(storm, &netns.path(), spec);
                scrapes = Some(scraper.finish());
                result
            })?;
            let after = daemon.scrape()?;
            system::sleep(Duration::from_millis(500));
            tool.tail_cpu_ns = system::threads_cpu_ns(pid)
                .unwrap_or(cpu_end)
                .saturating_sub(cpu_end);
            if let Some(scrapes) = scrapes {
                tool.scrapes_ok = scrapes.ok;
                tool.scrapes_failed = scrapes.failed;
                tool.scrape_ms = scrapes.latencies_ms;
            }
            sample.counts = Some(rstwatch_counts(&before, &after, spec));
            sample.tool = Some(tool);
            if let Some(status) = daemon.stop()
                && !status.success()
            {
                setup::say(&format!(
                    "rstwatch exited with {status}; log {}",
                    daemon.log.display()
                ));
            }
        }
        Mode::Bpftrace => {
            let bpftrace = Bpftrace::start(&out.join("bpftrace.log"))?;
            let pid = bpftrace.pid();
            sample.foreign_tracers = system::foreign_tracers(&[pid]).len();
            system::sleep(Duration::from_millis(300));
            let (tool, _) = observe(&mut sample, pid, bpftrace.startup, profile, || {
                tools::run_storm(storm, &netns.path(), spec)
            })?;
            let (sent, received, note) = bpftrace.stop()?;
            if let Some(note) = note {
                setup::say(&format!(
                    "bpftrace {note}; see {}",
                    out.join("bpftrace.log").display()
                ));
            }
            // bpftrace counts host-wide and from its start: at least the storm's resets.
            sample.counts = Some(Counts {
                sent,
                received,
                received_owned: None,
                socket_errors: None,
                lost: Vec::new(),
            });
            sample.tool = Some(tool);
        }
    }
    drop(netns);
    Ok(sample)
}

/// Run the workload while the tool `pid` runs, and read what the tool cost: CPU, memory and (in a
/// profile round) its BPF programs. Returns the tool's figures and its CPU time at the end.
fn observe(
    sample: &mut Sample,
    pid: u32,
    startup: Duration,
    profile: bool,
    run: impl FnOnce() -> anyhow::Result<StormResult>,
) -> anyhow::Result<(ToolStats, u64)> {
    let mut tool = ToolStats {
        pid,
        startup,
        rss_before_kib: system::status_kib(pid, "VmRSS").unwrap_or(0),
        peak_rss_startup_kib: system::status_kib(pid, "VmHWM").unwrap_or(0),
        ..ToolStats::default()
    };
    system::reset_peak_rss(pid);
    let progs_before = if profile { prog_stats(pid) } else { Vec::new() };
    let cpu0 = system::threads_cpu_ns(pid).unwrap_or(0);
    let t0 = system::cpu_times();
    let started = Instant::now();
    let result = run();
    let wall = started.elapsed();
    let cpu1 = system::threads_cpu_ns(pid).unwrap_or(0);
    sample.machine_busy_cores = system::busy_between(t0, system::cpu_times(), wall).0;
    sample.storm = result?;
    tool.peak_rss_storm_kib = system::status_kib(pid, "VmHWM").unwrap_or(0);
    tool.rss_after_kib = system::status_kib(pid, "VmRSS").unwrap_or(0);
    if profile {
        sample.programs = prog_delta(&progs_before, &prog_stats(pid));
    }
    tool.cpu_ns = cpu1.saturating_sub(cpu0);
    Ok((tool, cpu1))
}
