//! What a benchmark run measures: the command-line options, the plan they resolve to (the
//! defaults of `--quick` or of a full run), the workloads and the modes each round runs.

use std::path::PathBuf;

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
