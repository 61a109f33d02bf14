//! `cargo xtask bench`: the reset-storm benchmark (issue 7).
//!
//! For each configuration (generator threads × distinct destination ports) it runs several rounds;
//! each round runs every mode once, in an order that rotates from round to round:
//! - `bare`: the storm alone;
//! - `rstwatch`: `rstwatch run` (full enrichment) with a scraper on /metrics every second;
//! - `bpftrace`: a bpftrace script counting `tcp_send_reset` and `tcp_receive_reset` in a map;
//! - any `--variant LABEL=ARGS`: rstwatch with extra arguments.
//!
//! Every storm runs in a fresh network namespace (so its `Tcp: OutRsts` delta is its own), bounded
//! by time and count, against closed loopback ports. Ratios are per round against that round's bare
//! storm: the rate ratio (attempts/s) and the CPU-per-attempt ratio (getrusage of the generator
//! threads), summarised as min/median/max. After the rounds, one profile round per tool runs with
//! `kernel.bpf_stats_enabled=1` (restored afterwards) for each BPF program's run_time_ns/run_cnt;
//! it is kept out of the ratios, because the statistics themselves cost time per program run.

mod report;
mod system;
mod tools;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::{
    system::{NetNs, SysctlGuard},
    tools::{Bpftrace, Daemon, Scrape, Scraper, StormResult, StormSpec},
};
use crate::setup;

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Alternating rounds per configuration (each round runs every mode once).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Length of each storm in seconds (its time bound).
    #[arg(long, default_value_t = 2.0)]
    pub duration: f64,
    /// At most this many connect() attempts per generator thread per storm (its count bound).
    #[arg(long, default_value_t = 2_000_000)]
    pub attempts: u64,
    /// Generator thread counts to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Numbers of distinct destination ports to measure (comma-separated); every pair of a
    /// thread count and a port count is one configuration.
    #[arg(long, value_delimiter = ',', default_value = "1,10000")]
    pub ports: Vec<u32>,
    /// First destination port: the storm uses PORT..PORT+K-1, closed in its own namespace.
    #[arg(long, default_value_t = 20000)]
    pub port: u16,
    /// Leave out the bpftrace peer baseline.
    #[arg(long)]
    pub no_bpftrace: bool,
    /// Leave out the per-program profile rounds (kernel.bpf_stats_enabled=1).
    #[arg(long)]
    pub no_profile: bool,
    /// An extra rstwatch mode with extra daemon arguments, e.g. `ring4k=--ring-buffer-kib 4`.
    #[arg(long = "variant", value_name = "LABEL=ARGS")]
    pub variants: Vec<String>,
    /// Wait at most this many seconds in all for a quiet machine (no other process busy, no other
    /// BPF tracer) before the first round and between rounds; then measure anyway (0: never wait).
    #[arg(long, default_value_t = 120)]
    pub wait_quiet: u64,
    /// Do not wait for other processes' BPF tracing programs to go away (they are still reported:
    /// they run in every mode, bare included, so ratios understate the overhead).
    #[arg(long)]
    pub ignore_other_tracers: bool,
    /// Where results.json and ratios.png go (relative to the workspace root).
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Use target/release/rstwatch and target/release/storm as they are.
    #[arg(long)]
    pub no_build: bool,
    /// Measure nothing: print the table and redraw the chart from OUT/results.json.
    #[arg(long)]
    pub report_only: bool,
}

/// A way of running the storm.
#[derive(Clone, Debug)]
pub enum Mode {
    Bare,
    Rstwatch { label: String, args: Vec<String> },
    Bpftrace,
}

impl Mode {
    pub fn label(&self) -> String {
        match self {
            Mode::Bare => "bare".into(),
            Mode::Rstwatch { label, .. } => label.clone(),
            Mode::Bpftrace => "bpftrace".into(),
        }
    }
}

/// What the observed tool did during a storm.
#[derive(Clone, Debug, Default)]
pub struct ToolStats {
    pub pid: u32,
    pub startup: Duration,
    /// CPU time (utime+stime, all threads) during the storm, and in the 0.5 s after it.
    pub cpu_ns: u64,
    pub tail_cpu_ns: u64,
    pub rss_before_kib: u64,
    /// Peak RSS from start until the storm began, and during the storm (VmHWM reset before it).
    pub peak_rss_startup_kib: u64,
    pub peak_rss_storm_kib: u64,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    /// Latency of each /metrics scrape during the storm, ms.
    pub scrape_ms: Vec<f64>,
}

/// The count check: what the storm did against what the tool counted.
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
    /// Busy cores of the whole machine during the storm (/proc/stat).
    pub machine_busy_cores: f64,
    pub foreign_tracers: usize,
    pub tool: Option<ToolStats>,
    pub counts: Option<Counts>,
    pub programs: Vec<ProgStat>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub threads: usize,
    pub ports: u32,
    pub samples: Vec<Sample>,
}

pub struct Quiet {
    pub waited: Duration,
    pub busy_cores: f64,
    pub loadavg: String,
    pub busy: Vec<(u32, String, f64)>,
    pub tracers: Vec<(u32, String, Vec<u32>)>,
}

pub fn run(root: &Path, options: Options) -> anyhow::Result<()> {
    if options.report_only {
        let out = root.join(&options.out);
        let path = out.join("results.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        report::chart(&json, &out.join("ratios.png"))?;
        println!("{}", report::table(&json));
        return Ok(());
    }
    if !setup::is_root() {
        bail!("the benchmark loads eBPF programs, creates network namespaces and sets sysctls: run as root");
    }
    if !(0.1..=60.0).contains(&options.duration) {
        bail!("--duration must be between 0.1 and 60 seconds");
    }
    if options.threads.is_empty() || options.threads.iter().any(|t| !(1..=16).contains(t)) {
        bail!("--threads: 1 to 16 each");
    }
    if options.ports.is_empty() || options.ports.iter().any(|k| *k == 0 || options.port as u32 + k - 1 > 65535) {
        bail!("--ports: each range PORT..PORT+K-1 must lie within 1..=65535");
    }
    let out = root.join(&options.out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    system::install_stop_handler();
    system::restore_leftover_sysctls(&out);
    system::remove_stale_netns();

    let mut modes = vec![Mode::Bare, Mode::Rstwatch { label: "rstwatch".into(), args: Vec::new() }];
    if !options.no_bpftrace {
        modes.push(Mode::Bpftrace);
    }
    for variant in &options.variants {
        let (label, args) = variant.split_once('=').context("--variant LABEL=ARGS")?;
        modes.push(Mode::Rstwatch {
            label: format!("rstwatch[{label}]"),
            args: args.split_whitespace().map(str::to_string).collect(),
        });
    }

    // Tools and binaries.
    if !options.no_bpftrace && !system::on_path("bpftrace") {
        system::apt_install(&["bpftrace"])?;
    }
    if !system::on_path("ip") {
        system::apt_install(&["iproute2"])?;
    }
    if !system::on_path("bpftool") && system::apt_install(&["bpftool"]).is_err() {
        setup::say("bpftool is not available: BPF programs are named by id only");
    }
    report::ensure_font()?;
    let (rstwatch, storm) = if options.no_build {
        (root.join("target/release/rstwatch"), root.join("target/release/storm"))
    } else {
        setup::ensure_build_tools()?;
        let rstwatch = crate::build_release(root)?;
        setup::say("building target/release/storm (the storm generator, rstwatch-tests)");
        crate::cargo(root, &["build", "--release", "-p", "rstwatch-tests", "--bin", "storm"], &[])?;
        (rstwatch, root.join("target/release/storm"))
    };
    for binary in [&rstwatch, &storm] {
        if !binary.exists() {
            bail!("{} is missing (build it, or drop --no-build)", binary.display());
        }
    }

    let mut wait_budget = Duration::from_secs(options.wait_quiet);
    let quiet = wait_for_quiet(&mut wait_budget, Duration::from_secs(2), true, options.ignore_other_tracers)?;
    let started = Instant::now();
    let mut configs = Vec::new();
    let mut netns_n = 0u32;
    for &threads in &options.threads {
        for &ports in &options.ports {
            system::check_stop()?;
            let spec = StormSpec {
                threads,
                port: options.port,
                ports,
                duration: Duration::from_secs_f64(options.duration),
                max_attempts: options.attempts,
            };
            setup::say(&format!(
                "configuration: {threads} generator thread(s), {ports} port(s); {} rounds of {}",
                options.rounds,
                modes.iter().map(Mode::label).collect::<Vec<_>>().join(", ")
            ));
            let mut config = Config { threads, ports, samples: Vec::new() };
            for round in 1..=options.rounds {
                if round > 1 && !wait_budget.is_zero() {
                    // Between rounds too: other engineers' builds and tests come and go.
                    wait_for_quiet(&mut wait_budget, Duration::from_secs(1), false, options.ignore_other_tracers)?;
                }
                for k in 0..modes.len() {
                    let mode = &modes[(k + round as usize - 1) % modes.len()];
                    netns_n += 1;
                    let sample = measure(&rstwatch, &storm, &spec, mode, round, false, &out, netns_n)?;
                    eprintln!("xtask:   {}", report::one_line(&sample));
                    config.samples.push(sample);
                }
            }
            if !options.no_profile {
                for mode in modes.iter().filter(|m| !matches!(m, Mode::Bare)) {
                    let _stats = SysctlGuard::set("kernel.bpf_stats_enabled", "1", &out)?;
                    netns_n += 1;
                    let sample = measure(&rstwatch, &storm, &spec, mode, 0, true, &out, netns_n)?;
                    eprintln!("xtask:   {}", report::one_line(&sample));
                    config.samples.push(sample);
                }
            }
            configs.push(config);
        }
    }
    let finished_quiet = system::busy_processes(Duration::from_secs(1), 0.05, &[]);
    let results = report::Results {
        options: &options,
        modes: &modes,
        configs: &configs,
        quiet_before: &quiet,
        busy_after: finished_quiet,
        waited_total: Duration::from_secs(options.wait_quiet).saturating_sub(wait_budget),
        elapsed: started.elapsed(),
    };
    let json = results.to_json();
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let chart = out.join("ratios.png");
    report::chart(&json, &chart)?;
    println!("{}", report::table(&json));
    setup::say(&format!("wrote {} and {}", json_path.display(), chart.display()));
    Ok(())
}

/// Wait (bounded by what is left of `budget`) until no other process uses much CPU and no other
/// BPF tracer is loaded; say what was seen.
fn wait_for_quiet(budget: &mut Duration, window: Duration, verbose: bool, tracers_ok: bool) -> anyhow::Result<Quiet> {
    let started = Instant::now();
    loop {
        system::check_stop()?;
        let (busy_cores, busy) = system::busy_processes(window, 0.05, &[]);
        let tracers = system::foreign_tracers(&[]);
        let quiet = busy_cores < 0.15 && (tracers_ok || tracers.is_empty());
        let spent = started.elapsed();
        if quiet || spent >= *budget {
            *budget = budget.saturating_sub(spent);
            if !quiet && verbose {
                setup::say(&format!(
                    "the machine is not quiet (busy {busy_cores:.2} cores, {} other BPF tracer(s)); measuring anyway",
                    tracers.len()
                ));
            }
            return Ok(Quiet { waited: spent, busy_cores, loadavg: system::loadavg(), busy, tracers });
        }
        if verbose || spent.is_zero() {
            let who: Vec<String> =
                busy.iter().take(3).map(|(pid, comm, s)| format!("{comm}[{pid}] {:.0}%", s * 100.0)).collect();
            let tr: Vec<String> =
                tracers.iter().map(|(pid, comm, ids)| format!("{comm}[{pid}] {} progs", ids.len())).collect();
            setup::say(&format!(
                "waiting for a quiet machine (busy {busy_cores:.2} cores: {}; other BPF tracers: {}); {}s of waiting left",
                if who.is_empty() { "-".into() } else { who.join(", ") },
                if tr.is_empty() { "none".into() } else { tr.join(", ") },
                budget.saturating_sub(spent).as_secs()
            ));
        }
        system::sleep(Duration::from_secs(2));
    }
}

/// Storm attempts counted by rstwatch: `sent/no_listener` and `received/connection_refused` on the
/// storm's ports, whatever the owner (with `port="other"` when the storm spreads over several ports,
/// since labels are capped, so resets of other processes on uncapped ports may add a few), and the
/// received ones whose owner is the generator (its threads are `storm-N`).
fn rstwatch_counts(before: &Scrape, after: &Scrape, spec: &StormSpec) -> Counts {
    let in_storm = |port: &str| -> bool {
        if spec.ports > 1 && port == "other" {
            return true;
        }
        port.parse::<u32>()
            .is_ok_and(|p| p >= spec.port as u32 && p < spec.port as u32 + spec.ports)
    };
    let resets = |s: &Scrape, direction: &str, cause: &str, by_comm: bool| {
        s.sum("rstwatch_resets_total", |l| {
            l.get("direction") == direction
                && l.get("cause") == cause
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
            let b = lost_before.iter().find(|(s, _)| *s == stage).map_or(0.0, |(_, v)| *v);
            (stage, delta(b, v))
        })
        .collect();
    let counted = |direction, cause, by_comm| {
        delta(resets(before, direction, cause, by_comm), resets(after, direction, cause, by_comm))
    };
    Counts {
        sent: counted("sent", "no_listener", false),
        received: counted("received", "connection_refused", false),
        received_owned: Some(counted("received", "connection_refused", true)),
        socket_errors: Some(delta(errors(before), errors(after))),
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
                name: names.get(&a.id).cloned().unwrap_or_else(|| format!("prog {}", a.id)),
                run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
                run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                recursion_misses: a.recursion_misses.saturating_sub(b.recursion_misses),
            }
        })
        .filter(|p| p.run_cnt > 0)
        .collect()
}

/// One storm in one mode: start the tool, storm in a fresh namespace, read everything, stop.
#[allow(clippy::too_many_arguments)]
fn measure(
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
            let mut tool = ToolStats {
                pid,
                startup: daemon.startup,
                rss_before_kib: system::status_kib(pid, "VmRSS").unwrap_or(0),
                peak_rss_startup_kib: system::status_kib(pid, "VmHWM").unwrap_or(0),
                ..ToolStats::default()
            };
            system::reset_peak_rss(pid);
            let progs_before = if profile { prog_stats(pid) } else { Vec::new() };
            let cpu0 = system::process_cpu_ns(pid).unwrap_or(0);
            let t0 = system::cpu_times();
            let started = Instant::now();
            let scraper = Scraper::start(daemon.addr, Duration::from_secs(1), spec.duration + Duration::from_secs(40));
            let result = tools::run_storm(storm, &netns.path(), spec);
            let scrapes = scraper.finish();
            let wall = started.elapsed();
            let cpu1 = system::process_cpu_ns(pid).unwrap_or(0);
            sample.machine_busy_cores = system::busy_between(t0, system::cpu_times(), wall).0;
            sample.storm = result?;
            tool.peak_rss_storm_kib = system::status_kib(pid, "VmHWM").unwrap_or(0);
            if profile {
                sample.programs = prog_delta(&progs_before, &prog_stats(pid));
            }
            let after = daemon.scrape()?;
            system::sleep(Duration::from_millis(500));
            tool.cpu_ns = cpu1.saturating_sub(cpu0);
            tool.tail_cpu_ns = system::process_cpu_ns(pid).unwrap_or(cpu1).saturating_sub(cpu1);
            tool.scrapes_ok = scrapes.ok;
            tool.scrapes_failed = scrapes.failed;
            tool.scrape_ms = scrapes.latencies_ms;
            sample.counts = Some(rstwatch_counts(&before, &after, spec));
            sample.tool = Some(tool);
            if let Some(status) = daemon.stop()
                && !status.success()
            {
                setup::say(&format!("rstwatch exited with {status}; log {}", daemon.log.display()));
            }
        }
        Mode::Bpftrace => {
            let bpftrace = Bpftrace::start(&out.join("bpftrace.log"))?;
            let pid = bpftrace.pid();
            sample.foreign_tracers = system::foreign_tracers(&[pid]).len();
            system::sleep(Duration::from_millis(300));
            let mut tool = ToolStats {
                pid,
                startup: bpftrace.startup,
                rss_before_kib: system::status_kib(pid, "VmRSS").unwrap_or(0),
                peak_rss_startup_kib: system::status_kib(pid, "VmHWM").unwrap_or(0),
                ..ToolStats::default()
            };
            system::reset_peak_rss(pid);
            let progs_before = if profile { prog_stats(pid) } else { Vec::new() };
            let cpu0 = system::process_cpu_ns(pid).unwrap_or(0);
            let t0 = system::cpu_times();
            let started = Instant::now();
            let result = tools::run_storm(storm, &netns.path(), spec);
            let wall = started.elapsed();
            let cpu1 = system::process_cpu_ns(pid).unwrap_or(0);
            sample.machine_busy_cores = system::busy_between(t0, system::cpu_times(), wall).0;
            sample.storm = result?;
            tool.peak_rss_storm_kib = system::status_kib(pid, "VmHWM").unwrap_or(0);
            if profile {
                sample.programs = prog_delta(&progs_before, &prog_stats(pid));
            }
            tool.cpu_ns = cpu1.saturating_sub(cpu0);
            let (sent, received, note) = bpftrace.stop()?;
            if let Some(note) = note {
                setup::say(&format!("bpftrace {note}; see {}", out.join("bpftrace.log").display()));
            }
            // bpftrace counts host-wide and from its start: at least the storm's resets.
            sample.counts = Some(Counts { sent, received, received_owned: None, socket_errors: None, lost: Vec::new() });
            sample.tool = Some(tool);
        }
    }
    drop(netns);
    Ok(sample)
}
