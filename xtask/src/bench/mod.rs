//! `cargo xtask bench`: the benchmark (issues 7 and 12), on two workloads:
//! - `refused`: the reset storm, `connect()` to closed loopback ports (one RST sent and one
//!   received per attempt);
//! - `connections`: ordinary connections without a reset (connect, 64-byte request, 64-byte
//!   response, FIN close), what a host running rstwatch mostly does.
//!
//! For each workload and configuration (generator threads × distinct destination ports; the
//! connection workload has one port) it runs several rounds; each round runs every mode once, in an
//! order that rotates from round to round:
//! - `bare`: the workload alone;
//! - `rstwatch`: `rstwatch run` (full enrichment) with a scraper on /metrics every second;
//! - `bpftrace`: a bpftrace script counting `tcp_send_reset` and `tcp_receive_reset` in a map;
//! - any `--variant LABEL=ARGS`: rstwatch with extra arguments.
//!
//! Every run is in a fresh network namespace (so its `Tcp: OutRsts` delta is its own), bounded by
//! time and count, on loopback. Ratios are per round against that round's bare run: the rate ratio
//! (operations/s) and the CPU-per-operation ratio (getrusage of the generator threads), summarised
//! as min/median/max. After the rounds, profile rounds per tool run with BPF run-time statistics
//! on (`BPF_ENABLE_STATS`) for each BPF program's run_time_ns/run_cnt; they are kept out of the
//! ratios, because the statistics themselves cost time per program run.

mod measure;
mod report;
mod scrape;
mod system;
mod tools;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::tools::{StormResult, StormSpec};
use crate::setup;

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Workloads to measure (comma-separated): `refused` (the reset storm) and `connections`
    /// (ordinary connections, no reset).
    #[arg(long, value_delimiter = ',', default_value = "refused,connections")]
    pub workloads: Vec<Workload>,
    /// A before/after comparison in a few minutes: unless given, 3 rounds of 1 s, 1 generator
    /// thread, 1 port, at most 20 s of waiting for a quiet machine.
    #[arg(long)]
    pub quick: bool,
    /// Alternating rounds per configuration (each round runs every mode once) [default: 5].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,
    /// Length of each run in seconds (its time bound) [default: 2].
    #[arg(long)]
    pub duration: Option<f64>,
    /// At most this many attempts (connect() calls) per generator thread per run (its count bound).
    #[arg(long, default_value_t = 2_000_000)]
    pub attempts: u64,
    /// Generator thread counts to measure (comma-separated) [default: 1,2]. The connection
    /// workload runs as many server threads as client threads.
    #[arg(long, value_delimiter = ',')]
    pub threads: Option<Vec<usize>>,
    /// Numbers of distinct destination ports of the reset storm (comma-separated) [default:
    /// 1,10000]; every pair of a thread count and a port count is one configuration.
    #[arg(long, value_delimiter = ',')]
    pub ports: Option<Vec<u32>>,
    /// First destination port: the storm uses PORT..PORT+K-1, closed in its own namespace; the
    /// connection workload listens on PORT in its own.
    #[arg(long, default_value_t = 20000)]
    pub port: u16,
    /// Leave out the bpftrace peer baseline.
    #[arg(long)]
    pub no_bpftrace: bool,
    /// Leave out the per-program profile rounds (BPF run-time statistics on).
    #[arg(long)]
    pub no_profile: bool,
    /// Profile rounds per tool and configuration. A tool's programs also run for other processes'
    /// connections and resets on the host; the report takes the round with the fewest program runs
    /// per operation, the least disturbed one.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub profile_rounds: u32,
    /// An extra rstwatch mode with extra daemon arguments, e.g. `ring4k=--ring-buffer-kib 4`.
    #[arg(long = "variant", value_name = "LABEL=ARGS")]
    pub variants: Vec<String>,
    /// Wait at most this many seconds in all for a quiet machine (no other process busy, no other
    /// BPF tracer) before the first round and between rounds; then measure anyway (0: never wait)
    /// [default: 120].
    #[arg(long)]
    pub wait_quiet: Option<u64>,
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

impl Options {
    /// The settings in effect: the given ones, else the defaults of `--quick` or of a full run.
    pub fn plan(&self) -> Plan {
        let q = self.quick;
        Plan {
            rounds: self.rounds.unwrap_or(if q { 3 } else { 5 }),
            duration: self.duration.unwrap_or(if q { 1.0 } else { 2.0 }),
            threads: self
                .threads
                .clone()
                .unwrap_or(if q { vec![1] } else { vec![1, 2] }),
            ports: self
                .ports
                .clone()
                .unwrap_or(if q { vec![1] } else { vec![1, 10_000] }),
            wait_quiet: self.wait_quiet.unwrap_or(if q { 20 } else { 120 }),
        }
    }
}

pub struct Plan {
    pub rounds: u32,
    pub duration: f64,
    pub threads: Vec<usize>,
    pub ports: Vec<u32>,
    pub wait_quiet: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// connect() to closed ports: one RST sent and one received per attempt.
    Refused,
    /// connect, 64-byte request, 64-byte response, FIN close: no reset.
    Connections,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Refused => "refused",
            Workload::Connections => "connections",
        }
    }

    /// What one operation is, in the report.
    pub fn op(self) -> &'static str {
        match self {
            Workload::Refused => "attempt",
            Workload::Connections => "connection",
        }
    }
}

/// A way of running the workload.
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

/// What the observed tool did during a run.
#[derive(Clone, Debug, Default)]
pub struct ToolStats {
    pub pid: u32,
    pub startup: Duration,
    /// Time on CPU of all its threads (schedstat) during the run, and in the 0.5 s after it.
    pub cpu_ns: u64,
    pub tail_cpu_ns: u64,
    pub rss_before_kib: u64,
    /// Resident memory right after the run: the steady state under load.
    pub rss_after_kib: u64,
    /// Peak RSS from start until the run began, and during the run (VmHWM reset before it).
    pub peak_rss_startup_kib: u64,
    pub peak_rss_storm_kib: u64,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    /// Latency of each /metrics scrape during the run, ms.
    pub scrape_ms: Vec<f64>,
}

/// The count check: what the workload did against what the tool counted (for the connection
/// workload: resets on its port, which should be none).
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
    /// Busy cores of the whole machine during the run (/proc/stat).
    pub machine_busy_cores: f64,
    pub foreign_tracers: usize,
    pub tool: Option<ToolStats>,
    pub counts: Option<Counts>,
    pub programs: Vec<ProgStat>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub workload: Workload,
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
        let report: report::Report =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        report::chart(&report, &out.join("ratios.png"))?;
        println!("{}", report::table(&report));
        return Ok(());
    }
    if !setup::is_root() {
        bail!("the benchmark loads eBPF programs, creates network namespaces and sets sysctls: run as root");
    }
    let plan = options.plan();
    if !(0.1..=60.0).contains(&plan.duration) {
        bail!("--duration must be between 0.1 and 60 seconds");
    }
    if plan.threads.is_empty() || plan.threads.iter().any(|t| !(1..=16).contains(t)) {
        bail!("--threads: 1 to 16 each");
    }
    if plan.ports.is_empty()
        || plan
            .ports
            .iter()
            .any(|k| *k == 0 || options.port as u32 + k - 1 > 65535)
    {
        bail!("--ports: each range PORT..PORT+K-1 must lie within 1..=65535");
    }
    if options.workloads.is_empty() {
        bail!("--workloads: at least one of refused, connections");
    }
    let out = root.join(&options.out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    system::install_stop_handler();
    system::restore_leftover_sysctls(&out);
    system::remove_stale_netns();

    let mut modes = vec![
        Mode::Bare,
        Mode::Rstwatch {
            label: "rstwatch".into(),
            args: Vec::new(),
        },
    ];
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
        (
            crate::release_dir(root).join("rstwatch"),
            crate::release_dir(root).join("storm"),
        )
    } else {
        setup::ensure_build_tools()?;
        let rstwatch = crate::build_release(root)?;
        setup::say("building target/release/storm (the storm generator, rstwatch-tests)");
        crate::cargo(
            root,
            &["build", "--release", "-p", "rstwatch-tests", "--bin", "storm"],
            &[],
        )?;
        (rstwatch, crate::release_dir(root).join("storm"))
    };
    for binary in [&rstwatch, &storm] {
        if !binary.exists() {
            bail!("{} is missing (build it, or drop --no-build)", binary.display());
        }
    }

    let mut wait_budget = Duration::from_secs(plan.wait_quiet);
    let quiet = wait_for_quiet(
        &mut wait_budget,
        Duration::from_secs(2),
        true,
        options.ignore_other_tracers,
    )?;
    let started = Instant::now();
    let mut configs = Vec::new();
    let mut netns_n = 0u32;
    for &workload in &options.workloads {
        // One listener port for connections: distinct ports matter to the reset storm's labels.
        let port_counts = if workload == Workload::Connections {
            vec![1]
        } else {
            plan.ports.clone()
        };
        for &threads in &plan.threads {
            for &ports in &port_counts {
                system::check_stop()?;
                let spec = StormSpec {
                    workload,
                    threads,
                    port: options.port,
                    ports,
                    duration: Duration::from_secs_f64(plan.duration),
                    max_attempts: options.attempts,
                };
                setup::say(&format!(
                    "workload {}: {threads} generator thread(s), {ports} port(s); {} rounds of {}",
                    workload.name(),
                    plan.rounds,
                    modes.iter().map(Mode::label).collect::<Vec<_>>().join(", ")
                ));
                let mut config = Config {
                    workload,
                    threads,
                    ports,
                    samples: Vec::new(),
                };
                for round in 1..=plan.rounds {
                    if round > 1 && !wait_budget.is_zero() {
                        // Between rounds too: other engineers' builds and tests come and go.
                        wait_for_quiet(
                            &mut wait_budget,
                            Duration::from_secs(1),
                            false,
                            options.ignore_other_tracers,
                        )?;
                    }
                    for k in 0..modes.len() {
                        let mode = &modes[(k + round as usize - 1) % modes.len()];
                        netns_n += 1;
                        let sample =
                            measure::measure(&rstwatch, &storm, &spec, mode, round, false, &out, netns_n)?;
                        eprintln!("xtask:   {}", report::one_line(&sample));
                        config.samples.push(sample);
                    }
                }
                let tools: Vec<&Mode> = modes.iter().filter(|m| !matches!(m, Mode::Bare)).collect();
                for round in (1..=options.profile_rounds).filter(|_| !options.no_profile) {
                    for k in 0..tools.len() {
                        let mode = tools[(k + round as usize - 1) % tools.len()];
                        // Statistics on while this fd is open, whatever others do with the
                        // kernel.bpf_stats_enabled sysctl meanwhile (another benchmark's restore).
                        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
                            .context("BPF_ENABLE_STATS for the profile round")?;
                        netns_n += 1;
                        let sample =
                            measure::measure(&rstwatch, &storm, &spec, mode, round, true, &out, netns_n)?;
                        eprintln!("xtask:   {}", report::one_line(&sample));
                        config.samples.push(sample);
                    }
                }
                configs.push(config);
            }
        }
    }
    let finished_quiet = system::busy_processes(Duration::from_secs(1), 0.05, &[]);
    let results = report::Results {
        options: &options,
        plan: &plan,
        modes: &modes,
        configs: &configs,
        quiet_before: &quiet,
        busy_after: finished_quiet,
        waited_total: Duration::from_secs(plan.wait_quiet).saturating_sub(wait_budget),
        elapsed: started.elapsed(),
    };
    let report = results.report();
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let chart = out.join("ratios.png");
    report::chart(&report, &chart)?;
    println!("{}", report::table(&report));
    setup::say(&format!("wrote {} and {}", json_path.display(), chart.display()));
    Ok(())
}

/// Wait (bounded by what is left of `budget`) until no other process uses much CPU and no other
/// BPF tracer is loaded; say what was seen.
fn wait_for_quiet(
    budget: &mut Duration,
    window: Duration,
    verbose: bool,
    tracers_ok: bool,
) -> anyhow::Result<Quiet> {
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
            return Ok(Quiet {
                waited: spent,
                busy_cores,
                loadavg: system::loadavg(),
                busy,
                tracers,
            });
        }
        if verbose || spent.is_zero() {
            let who: Vec<String> = busy
                .iter()
                .take(3)
                .map(|(pid, comm, s)| format!("{comm}[{pid}] {:.0}%", s * 100.0))
                .collect();
            let tr: Vec<String> = tracers
                .iter()
                .map(|(pid, comm, ids)| format!("{comm}[{pid}] {} progs", ids.len()))
                .collect();
            setup::say(&format!(
                "waiting for a quiet machine (busy {busy_cores:.2} cores: {}; other BPF tracers: {}); {}s of waiting left",
                if who.is_empty() {
                    "-".into()
                } else {
                    who.join(", ")
                },
                if tr.is_empty() {
                    "none".into()
                } else {
                    tr.join(", ")
                },
                budget.saturating_sub(spent).as_secs()
            ));
        }
        system::sleep(Duration::from_secs(2));
    }
}
