//! `rstwatch trace`: resets live on the terminal (or as JSON lines), filtered, with a summary on
//! exit. It loads its own programs, so it works with or without a running daemon.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{ErrorKind, Write as _},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    classify::causes::{Cause, Direction},
    cmd::session::{KernelArgs, Session},
    decode::errno_name,
    enrich::{
        self,
        attribution::Attribution,
        event::{Observation, Process},
    },
    export::{
        counts,
        output::{self, WallClock},
    },
};

#[derive(Args, Clone)]
pub struct TraceOptions {
    /// Only resets whose local, remote or service port is PORT (repeatable).
    #[arg(long)]
    port: Vec<u16>,
    /// Only resets of sockets owned by process PID (repeatable).
    #[arg(long)]
    pid: Vec<u32>,
    /// Only resets of sockets owned by a process with this name (repeatable).
    #[arg(long)]
    comm: Vec<String>,
    /// Only these causes (repeatable), e.g. --cause stale_connection.
    #[arg(long, value_parser = parse_cause)]
    cause: Vec<Cause>,
    /// Only resets sent, or only received, by this host.
    #[arg(long, value_enum)]
    direction: Option<DirectionArg>,
    /// `human` lines with explanations, or `json`: one object per line (fields in README).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    output: Format,
    #[command(flatten)]
    kernel: KernelArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    Sent,
    Received,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Human,
    Json,
}

fn parse_cause(label: &str) -> Result<Cause, String> {
    Cause::from_label(label).ok_or_else(|| {
        let known: Vec<_> = crate::classify::causes::CAUSES
            .iter()
            .map(|info| info.label)
            .collect();
        format!("unknown cause; causes are: {}", known.join(", "))
    })
}

impl TraceOptions {
    fn wants(&self, observation: &Observation) -> bool {
        let (ports, owner, cause, direction) = match observation {
            Observation::Reset(reset) => (
                vec![reset.local.port(), reset.remote.port(), reset.service_port],
                reset.owner.as_ref(),
                Some(reset.cause),
                Some(reset.direction),
            ),
            Observation::SocketError(error) => (
                vec![error.service_port],
                error.owner.as_ref(),
                error.reset.map(|(_, cause, _)| cause),
                error.reset.map(|(direction, ..)| direction),
            ),
        };
        (self.port.is_empty() || self.port.iter().any(|p| ports.contains(p)))
            && (self.pid.is_empty() || owner.is_some_and(|o| self.pid.contains(&o.pid)))
            && (self.comm.is_empty() || owner.is_some_and(|o| self.comm.contains(&o.comm)))
            && (self.cause.is_empty() || cause.is_some_and(|c| self.cause.contains(&c)))
            && match self.direction {
                None => true,
                Some(DirectionArg::Sent) => direction == Some(Direction::Sent),
                Some(DirectionArg::Received) => direction == Some(Direction::Received),
            }
    }
}

/// What the exit summary reports.
#[derive(Default)]
struct Summary {
    by_cause: BTreeMap<(Direction, Cause), u64>,
    by_port: HashMap<u16, u64>,
    by_process: HashMap<String, u64>,
    app_errors: BTreeMap<&'static str, u64>,
}

impl Summary {
    fn add(&mut self, observation: &Observation) {
        let reset = match observation {
            Observation::Reset(reset) => reset,
            Observation::SocketError(error) => {
                *self.app_errors.entry(errno_name(error.errno)).or_default() += 1;
                return;
            }
        };
        *self.by_cause.entry((reset.direction, reset.cause)).or_default() += 1;
        *self.by_port.entry(reset.service_port).or_default() += 1;
        let process = Process::label(reset.owner.as_ref(), reset.skaddr != 0).to_string();
        *self.by_process.entry(process).or_default() += 1;
    }

    fn render(&self, lost: &[(&str, u64)]) -> String {
        let total: u64 = self.by_cause.values().sum();
        let mut text = format!("\n{total} resets\n");
        if total > 0 {
            text.push_str("by cause:\n");
            for ((direction, cause), n) in &self.by_cause {
                text.push_str(&format!("  {n:>8}  {:<8} {cause}\n", direction.label()));
            }
            text.push_str("top ports:\n");
            for (port, n) in top(&self.by_port, 5) {
                text.push_str(&format!("  {n:>8}  {port}\n"));
            }
            text.push_str("top processes (socket owners):\n");
            for (process, n) in top(&self.by_process, 5) {
                text.push_str(&format!("  {n:>8}  {process}\n"));
            }
        }
        for (errno, n) in &self.app_errors {
            text.push_str(&format!("application errors {errno}: {n}\n"));
        }
        for (stage, n) in lost.iter().filter(|(_, n)| *n > 0) {
            text.push_str(&format!("events lost ({stage}): {n}\n"));
        }
        text
    }
}

fn top<K: Clone + Ord>(counts: &HashMap<K, u64>, n: usize) -> Vec<(K, u64)> {
    let mut entries: Vec<_> = counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    entries.truncate(n);
    entries
}

pub async fn run(options: TraceOptions, loader: aya::EbpfLoader<'static>) -> anyhow::Result<()> {
    let session = Session::open(loader, &options.kernel, false, 0)?;
    // Containers from cgroup paths; pod names need the daemon's Kubernetes mode.
    let attribution = Attribution::open(None)
        .map_err(|err| log::warn!("resets will not name containers: {err:#}"))
        .ok()
        .map(Arc::new);
    let decoder = session.decoder(attribution);
    let Session {
        probes, lost, ring, ..
    } = session;
    let clock = WallClock::now();
    // On stderr, so JSON output stays clean; scripts wait for it to know the probes are attached.
    eprintln!("tracing TCP resets (Ctrl-C to stop)");

    let summary = Arc::new(Mutex::new(Summary::default()));
    let printer_summary = summary.clone();
    let mut explained = HashSet::new();
    let filter = options.clone();
    let mut printer = tokio::spawn(enrich::read_events(ring, decoder, move |observations, _| {
        let mut out = std::io::stdout().lock();
        let mut summary = printer_summary.lock().map_err(|_| anyhow!("summary poisoned"))?;
        for observation in observations.iter().filter(|o| filter.wants(o)) {
            summary.add(observation);
            match filter.output {
                Format::Json => writeln!(out, "{}", output::json_line(observation, &clock))?,
                Format::Human => {
                    writeln!(out, "{}", output::human_line(observation, &clock))?;
                    if let Observation::Reset(reset) = observation
                        && explained.insert(reset.cause)
                    {
                        let info = reset.cause.info();
                        writeln!(out, "    why: {}\n    fix: {}", info.meaning, info.remedy)?;
                    }
                }
            }
        }
        out.flush()?;
        Ok(())
    }));

    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let ended = tokio::select! {
        _ = terminate.recv() => None,
        _ = interrupt.recv() => None,
        result = &mut printer => Some(result),
    };
    printer.abort();
    let lost_totals = counts::read_lost(&lost)?;
    drop(probes);
    match ended {
        Some(Ok(Err(err))) if !is_broken_pipe(&err) => return Err(err),
        Some(Err(err)) if err.is_panic() => bail!("trace output panicked: {err}"),
        _ => {}
    }
    let summary = summary.lock().map_err(|_| anyhow!("summary poisoned"))?;
    eprint!("{}", summary.render(&lost_totals));
    Ok(())
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
}
