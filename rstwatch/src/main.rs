//! rstwatch: every TCP reset on this host, counted by cause.

mod attribution;
mod causes;
mod classify;
mod compat;
mod counts;
mod daemon;
mod events;
mod http;
mod kernel;
mod map_batch;
mod metrics;
mod output;
mod pairing;
mod probes;
mod prog_stats;
mod session;
mod trace;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod skip;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
        #[arg(long, default_value = "127.0.0.1:9977", value_parser = parse_metrics_addr)]
        metrics_addr: SocketAddr,
        #[command(flatten)]
        kernel: session::KernelArgs,
        /// Distinct service ports that get their own `port` label; the rest are `other`.
        #[arg(long, default_value_t = 200, allow_negative_numbers = true, value_parser = count_in(1, 65535))]
        max_ports: u32,
        /// Distinct process names (of socket owners) that get their own `comm` label; the rest
        /// are `other`.
        #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = count_in(1, 10_000))]
        max_comms: u32,
        /// Also write every reset as one JSON object per line to FILE (appended), or `-` for stdout.
        #[arg(long, value_name = "FILE|-")]
        events: Option<std::path::PathBuf>,
        /// At most this many events per cause per second go to --events; the rest are counted in
        /// rstwatch_events_rate_limited_total, so a reset storm cannot flood logs or disk.
        #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = count_in(1, 1_000_000))]
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
    Trace(trace::TraceOptions),
    /// Print what each cause means and what to do about it (all causes, or one).
    Explain {
        /// A cause label, e.g. stale_connection.
        cause: Option<String>,
    },
}

/// A whole number from `min` to `max`, with one message for every way to miss (negative, too large
/// for any integer type, not a number).
fn count_in(min: u32, max: u32) -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        text.trim()
            .parse::<u32>()
            .ok()
            .filter(|value| (min..=max).contains(value))
            .ok_or_else(|| format!("{text} is not a whole number from {min} to {max}"))
    }
}

/// `IP:PORT` (`[IPv6]:PORT`); host names are not resolved, so a typo cannot bind elsewhere.
fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let hint =
        "expected IP:PORT, e.g. 127.0.0.1:9977, 0.0.0.0:9977 or [::1]:9977 (host names are not resolved)";
    let ip = |host: &str| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
    };
    match text.rsplit_once(':') {
        Some((host, port)) if ip(host) && port.parse::<u16>().is_err() => {
            Err(format!("port {port:?} is not a number from 0 to 65535; {hint}"))
        }
        _ => Err(hint.to_string()),
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| format!("{err} (try 30s, 2m, 1h)"))?;
    if duration.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(duration)
}

pub fn parse_ring_kib(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(kib) if (4..=1024 * 1024).contains(&kib) && kib.is_power_of_two() => Ok(kib),
        _ => Err(format!("{text} is not a power of two between 4 and 1048576")),
    }
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
    // `probes::loader()` parses the kernel's whole BTF (aya's `EbpfLoader::new`), the daemon's
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
            let options = daemon::RunOptions {
                metrics_addr,
                kernel,
                max_ports: max_ports as usize,
                max_comms: max_comms as usize,
                events,
                events_per_cause_per_second: events_rate_limit,
                kubernetes,
                node_name,
            };
            let loader = probes::loader();
            // One thread: the daemon's tasks (a drain every 25 ms, a scrape now and then) never
            // need two cores, and worker threads kept their own stacks and heap pages resident
            // (issue 12: about 0.5 MB of steady RSS).
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")
                .and_then(|rt| rt.block_on(daemon::run(options, loader)))
        }
        Command::Trace(options) => block_on(trace::run(options, probes::loader())),
        Command::Explain { cause } => explain(cause.as_deref()),
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
