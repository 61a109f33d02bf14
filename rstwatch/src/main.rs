//! rstwatch: every TCP reset on this host, counted by cause.

// The pipeline, in the order data flows (each stage imports only the ones before it):
mod classify; // 3. a cause for each reset's facts, and which causes this node can observe
mod cmd;
mod decode; // 2. ring-buffer bytes into records
mod enrich; // 4. records into resets: owner's workload, linked errors, both ends paired
mod export; // 5. counts, Prometheus metrics and their HTTP server, JSON and human lines
mod load; // 1. the kernel's layout, the eBPF programs loaded and attached, its maps read // the subcommands that run the pipeline

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod skip;

use std::{net::SocketAddr, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::cmd::args;

#[derive(Parser)]
#[command(
    version,
    about = "Explains every TCP reset on this host: who, when in the connection's life, and why."
)]
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
        #[arg(long, default_value = "127.0.0.1:9977", value_parser = args::parse_metrics_addr)]
        metrics_addr: SocketAddr,
        #[command(flatten)]
        kernel: cmd::session::KernelArgs,
        /// Distinct service ports that get their own `port` label; the rest are `other`.
        #[arg(long, default_value_t = 200, allow_negative_numbers = true, value_parser = args::count_in(1, 65535))]
        max_ports: u32,
        /// Distinct process names (of socket owners) that get their own `comm` label; the rest
        /// are `other`.
        #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = args::count_in(1, 10_000))]
        max_comms: u32,
        /// Also write every reset as one JSON object per line to FILE (appended), or `-` for stdout.
        #[arg(long, value_name = "FILE|-")]
        events: Option<std::path::PathBuf>,
        /// At most this many events per cause per second go to --events; the rest are counted in
        /// rstwatch_events_rate_limited_total, so a reset storm cannot flood logs or disk.
        #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = args::count_in(1, 1_000_000))]
        events_rate_limit: u32,
        /// Name the pod and container of each reset's owner from the Kubernetes API (watching
        /// this node's pods) and add `namespace`, `pod`, `container` labels. On by itself when
        /// running in a pod with a service account.
        #[arg(long)]
        kubernetes: bool,
        /// This node's name in Kubernetes; default $NODE_NAME (set it from the downward API).
        #[arg(long, value_name = "NAME")]
        node_name: Option<String>,
    },
    /// Watch resets live, one line each (or JSON), with the cause's meaning and remedy.
    Trace(cmd::trace::TraceOptions),
    /// Print what each cause means and what to do about it (all causes, or one).
    Explain {
        /// A cause label, e.g. stale_connection.
        cause: Option<String>,
    },
}

fn block_on(task: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(task)
}

/// A command-line mistake as one line (`rstwatch: error: ...`) instead of clap's block with a usage
/// summary: log collectors keep it whole. Help and version go to stdout as usual.
fn parse_args() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            eprintln!(
                "rstwatch: error: {} (see rstwatch --help)",
                one_line(&err.render().to_string())
            );
            Err(ExitCode::from(2))
        }
    }
}

/// clap's message without its usage block, its lines joined with `; `.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .map(|line| line.strip_prefix("error: ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("; ")
}

fn main() -> ExitCode {
    // One malloc arena for all threads: each tokio worker would otherwise get its own and keep
    // the memory freed in it (issue 12: about 0.5 MB at rest, 3 MB after a storm of scrapes).
    // The daemon allocates little and rarely; it does not need per-thread arenas to scale.
    // SAFETY: mallopt only sets a glibc malloc parameter; called before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // The daemon narrates its start-up; trace keeps the terminal for resets.
    let default_level = if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level)).init();
    // `load::attach::loader()` parses the kernel's whole BTF (aya's `EbpfLoader::new`), the daemon's
    // peak memory: it is called before the async runtime starts, while the process is smallest.
    let result = match cli.command {
        Command::Run {
            metrics_addr,
            kernel,
            max_ports,
            max_comms,
            events,
            events_rate_limit,
            kubernetes,
            node_name,
        } => {
            let options = cmd::run::RunOptions {
                metrics_addr,
                kernel,
                max_ports: max_ports as usize,
                max_comms: max_comms as usize,
                events,
                events_per_cause_per_second: events_rate_limit,
                kubernetes,
                node_name,
            };
            let loader = load::attach::loader();
            // One thread: the daemon's tasks (a drain every 25 ms, a scrape now and then) never
            // need two cores, and worker threads kept their own stacks and heap pages resident
            // (issue 12: about 0.5 MB of steady RSS).
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")
                .and_then(|rt| rt.block_on(cmd::run::run(options, loader)))
        }
        Command::Trace(options) => block_on(cmd::trace::run(options, load::attach::loader())),
        Command::Explain { cause } => cmd::explain::explain(cause.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rstwatch: error: {}", error_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, like `{err:#}`, but without a cause that only repeats
/// what the one before already said (some library errors print their source in their own text).
fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain().map(|c| c.to_string()) {
        if !line.is_empty() && line.ends_with(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_line_drops_causes_that_only_repeat() {
        let io = std::io::Error::from_raw_os_error(2);
        let err = anyhow::Error::new(io)
            .context("i/o error: No such file or directory (os error 2)")
            .context("reading BTF /sys/kernel/btf/vmlinux");
        assert_eq!(
            super::error_line(&err),
            "reading BTF /sys/kernel/btf/vmlinux: i/o error: No such file or directory (os error 2)"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_line(&plain), "outer: inner");
    }
}
