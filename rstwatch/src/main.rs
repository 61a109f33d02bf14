//! rstwatch: every TCP reset on this host, counted by cause.

mod causes;
mod classify;
mod counts;
mod daemon;
mod events;
mod http;
mod kernel;
mod metrics;
mod output;
mod probes;
mod prog_stats;
mod session;
mod trace;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Explains every TCP reset on this host: who, when in the connection's life, and why.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: count every reset by cause and serve Prometheus metrics.
    Run {
        /// Where to serve /metrics and /healthz. Loopback by default; use 0.0.0.0:9977 to let a
        /// Prometheus on another host scrape it.
        #[arg(long, default_value = "127.0.0.1:9977")]
        metrics_addr: SocketAddr,
        #[command(flatten)]
        kernel: session::KernelArgs,
        /// Distinct service ports that get their own `port` label; the rest are `other`.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=65535))]
        max_ports: u32,
        /// Distinct process names (of socket owners) that get their own `comm` label; the rest
        /// are `other`.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10000))]
        max_comms: u32,
        /// Also write every reset as one JSON object per line to FILE (appended), or `-` for stdout.
        #[arg(long, value_name = "FILE|-")]
        events: Option<std::path::PathBuf>,
        /// At most this many events per cause per second go to --events; the rest are counted in
        /// rstwatch_events_rate_limited_total, so a reset storm cannot flood logs or disk.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        events_rate_limit: u32,
    },
    /// Watch resets live, one line each (or JSON), with the cause's meaning and remedy.
    Trace(trace::TraceOptions),
    /// Print what each cause means and what to do about it (all causes, or one).
    Explain {
        /// A cause label, e.g. stale_connection.
        cause: Option<String>,
    },
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| format!("{err} (try 30s, 2m, 1h)"))?;
    if duration.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(duration)
}

pub fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text.parse().map_err(|err| format!("{err}"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1024 * 1024 {
        return Err(format!("{kib} is not a power of two between 4 and 1048576"));
    }
    Ok(kib)
}

fn block_on(task: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(task)
}

fn explain(cause: Option<&str>) -> anyhow::Result<()> {
    let selected: Vec<_> = match cause {
        None => causes::CAUSES.iter().collect(),
        Some(label) => {
            let cause = causes::Cause::from_label(label).ok_or_else(|| {
                let known: Vec<_> = causes::CAUSES.iter().map(|info| info.label).collect();
                anyhow::anyhow!("unknown cause {label:?}; causes are: {}", known.join(", "))
            })?;
            vec![cause.info()]
        }
    };
    for info in selected {
        let directions: Vec<_> = info.directions.iter().map(|d| d.label()).collect();
        println!(
            "{} ({})\n  what happened:  {}\n  who sees what:  {}\n  what to do:     {}\n",
            info.label,
            directions.join(", "),
            info.meaning,
            info.app_error,
            info.remedy
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon narrates its start-up; trace keeps the terminal for resets.
    let default_level = if matches!(cli.command, Command::Run { .. }) { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level)).init();
    let result = match cli.command {
        Command::Run {
            metrics_addr,
            kernel,
            max_ports,
            max_comms,
            events,
            events_rate_limit,
        } => {
            let options = daemon::RunOptions {
                metrics_addr,
                kernel,
                max_ports: max_ports as usize,
                max_comms: max_comms as usize,
                events,
                events_per_cause_per_second: events_rate_limit,
            };
            block_on(daemon::run(options))
        }
        Command::Trace(options) => block_on(trace::run(options)),
        Command::Explain { cause } => explain(cause.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rstwatch: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
