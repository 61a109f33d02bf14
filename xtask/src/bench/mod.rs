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
mod options;
mod quiet;
mod report;
mod sample;
mod scrape;
mod system;
mod tools;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub use self::{
    options::{Mode, Options, Plan, Workload},
    quiet::Quiet,
    sample::{Config, Counts, ProgStat, Sample, ToolStats},
};
use self::{quiet::wait_for_quiet, tools::StormSpec};
use crate::setup;

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
