//! `rstwatch run`: load, attach, count, serve, optionally write events, and shut down cleanly.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use log::{info, warn};
use rstwatch_common::{CountKey, ErrorKey};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    classify::{Classifier, causes::Cause, coverage},
    cmd::session::{KernelArgs, Session},
    enrich::{self, attribution, event::Observation},
    export::{
        counts::{self, Labels},
        http::{self, Exporter},
        metrics::Metrics,
        output::{self, RateLimiter, WallClock},
    },
    load::{
        attach::{AttachedProgram, ProbeStatus},
        prog_stats,
    },
};

pub struct RunOptions {
    pub metrics_addr: SocketAddr,
    pub kernel: KernelArgs,
    pub max_ports: usize,
    pub max_comms: usize,
    /// Where to write JSON events: a file (appended to), `-` for stdout, or nowhere.
    pub events: Option<PathBuf>,
    pub events_per_cause_per_second: u32,
    /// `--kubernetes`: name pods (also on when running in a pod with a service account).
    pub kubernetes: bool,
    pub node_name: Option<String>,
}

/// The kernel's counters and the Prometheus view of them, updated together at each scrape.
struct Counters {
    metrics: Metrics,
    counts: PerCpuHashMap<MapData, CountKey, u64>,
    counts_other: PerCpuHashMap<MapData, CountKey, u64>,
    errors: PerCpuHashMap<MapData, ErrorKey, u64>,
    errors_other: PerCpuHashMap<MapData, ErrorKey, u64>,
    lost: PerCpuArray<MapData, u64>,
    classifier: Classifier,
    labels: Labels,
    programs: Vec<AttachedProgram>,
}

struct Shared(Mutex<Counters>);

impl Shared {
    fn lock(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Counters>> {
        self.0.lock().map_err(|_| anyhow!("metrics state poisoned"))
    }
}

impl Exporter for Shared {
    fn metrics(&self) -> anyhow::Result<Vec<u8>> {
        let mut counters = self.lock()?;
        let Counters {
            metrics,
            counts,
            counts_other,
            errors,
            errors_other,
            lost,
            classifier,
            labels,
            programs,
        } = &mut *counters;
        let (resets, overflow, [count_entries, other_entries]) =
            counts::read_series([counts, counts_other], classifier, labels)?;
        let (errors, [error_entries, other_error_entries]) =
            counts::read_errors([errors, errors_other], labels)?;
        metrics.set_map_entries("counts", count_entries);
        metrics.set_map_entries("counts_other", other_entries);
        metrics.set_map_entries("errors_other", other_error_entries);
        metrics.set_map_entries("errors", error_entries);
        let mut lost = counts::read_lost(lost)?;
        let mut skipped = 0;
        for program in programs.iter() {
            let stats = prog_stats::read(&program.fd)?;
            if program.counts_resets {
                skipped += stats.recursion_misses;
            }
            metrics.set_program_stats(program.probe, &stats);
        }
        lost.push((counts::PROBE_SKIPPED, skipped));
        metrics.sync(&resets, &errors, &lost, &overflow);
        let body = metrics.encode();
        // A scrape with 16k keys in the count maps allocates a few MB for a moment, on whichever
        // worker thread serves it; glibc would keep those pages (issue 12: steady RSS ≤ 12 MB).
        // SAFETY: glibc's malloc_trim only releases free heap pages.
        unsafe { libc::malloc_trim(0) };
        body
    }
}

pub async fn run(options: RunOptions, loader: aya::EbpfLoader<'static>) -> anyhow::Result<()> {
    // Check what the user gave us before touching the kernel, so mistakes fail fast and cleanly.
    let mut event_writer = options.events.as_deref().map(open_event_output).transpose()?;
    let listener = http::bind(options.metrics_addr).await?;
    // From here on SIGTERM/SIGINT mean a clean exit 0, even during start-up (handled once it is done).
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let pods = if attribution::pods::watch::wanted(options.kubernetes) {
        let node = attribution::pods::watch::node_name(options.node_name.as_deref())?;
        let index = attribution::PodIndex::default();
        attribution::pods::watch::start(&node, index.clone()).await?;
        info!("Kubernetes mode: watching the pods of node {node}");
        Some(index)
    } else {
        None
    };
    let kubernetes = pods.is_some();
    // Without a cgroup2 mount there is nothing to resolve ids against: count resets all the same.
    let attribution = attribution::Attribution::open(pods)
        .map_err(|err| warn!("resets will not name containers: {err:#}"))
        .ok()
        .map(Arc::new);

    let session = Session::open(loader, &options.kernel, kubernetes, options.max_ports as u32)?;
    let metrics = Metrics::new(&session.layout.release, kubernetes)?;
    for (probe, how) in &session.probes.status {
        match how {
            ProbeStatus::Attached(_) => metrics.set_probe_attached(probe, true),
            ProbeStatus::Missing(_) => metrics.set_probe_attached(probe, false),
            ProbeStatus::NotNeeded(_) => {}
        }
    }
    for (direction, cause, visibility) in session.coverage.table() {
        metrics.set_cause_observable(direction, cause, visibility == coverage::Visibility::Seen);
    }
    for (map, capacity) in &session.capacities {
        metrics.set_map_capacity(map, *capacity);
    }
    let decoder = session.decoder(attribution.clone());
    let Session {
        mut probes,
        counts,
        counts_other,
        errors,
        errors_other,
        lost,
        ring,
        ..
    } = session;
    let shared = Arc::new(Shared(Mutex::new(Counters {
        metrics,
        counts,
        counts_other,
        errors,
        errors_other,
        lost,
        classifier: decoder.classifier.clone(),
        labels: Labels {
            pods: attribution.filter(|_| kubernetes),
            ..Labels::new(options.max_ports, options.max_comms)
        },
        programs: std::mem::take(&mut probes.programs),
    })));

    // Start-up parsed the kernel's 5 MB BTF and freed it; give that memory back to the system.
    // SAFETY: glibc's malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
    info!("serving metrics on http://{}/metrics", options.metrics_addr);
    let server = tokio::spawn(http::serve(listener, shared.clone()));
    let clock = WallClock::now();
    let mut limiter = RateLimiter::new(options.events_per_cause_per_second);
    let reader_shared = shared.clone();
    let count_decode_errors = |counters: &Counters, decode_errors: u64| {
        if decode_errors > 0 {
            warn!("{decode_errors} malformed event records (daemon and eBPF object out of step?)");
            counters.metrics.count_decode_errors(decode_errors);
        }
    };
    // Without --events (or debug logging) only the histograms need the events: they skip the
    // decoding of owners and addresses and the pairing of both ends, which were most of the
    // daemon's CPU in a reset storm.
    let reader = if event_writer.is_none() && !log::log_enabled!(log::Level::Debug) {
        tokio::spawn(enrich::read_timings(
            ring,
            decoder,
            move |timings, decode_errors| {
                let counters = reader_shared.lock()?;
                count_decode_errors(&counters, decode_errors);
                timings.iter().for_each(|timing| counters.metrics.observe(timing));
                Ok(())
            },
        ))
    } else {
        tokio::spawn(enrich::read_events(
            ring,
            decoder,
            move |observations: Vec<Observation>, decode_errors| {
                let counters = reader_shared.lock()?;
                count_decode_errors(&counters, decode_errors);
                for observation in &observations {
                    let (cause, monotonic_ns) = match observation {
                        Observation::Reset(reset) => {
                            log::debug!("{reset}");
                            counters.metrics.observe(&reset.timing());
                            (reset.cause, reset.monotonic_ns)
                        }
                        // An application error shares the budget of the reset that caused it.
                        Observation::SocketError(error) => (
                            error.reset.map_or(Cause::Other, |(_, cause, _)| cause),
                            error.monotonic_ns,
                        ),
                    };
                    if let Some(writer) = event_writer.as_mut() {
                        if limiter.allow(cause, monotonic_ns) {
                            writeln!(writer, "{}", output::json_line(observation, &clock))
                                .context("writing an event")?;
                        } else {
                            counters.metrics.count_rate_limited(cause);
                        }
                    }
                }
                if let Some(writer) = event_writer.as_mut() {
                    writer.flush().context("writing events")?;
                }
                Ok(())
            },
        ))
    };

    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM: detaching and exiting"),
        _ = interrupt.recv() => info!("SIGINT: detaching and exiting"),
        result = server => return Err(task_failure("metrics server", result)),
        result = reader => return Err(task_failure("event reader", result)),
    }
    // Dropping the Ebpf object detaches every program and frees the maps.
    drop(probes);
    Ok(())
}

fn open_event_output(path: &std::path::Path) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::LineWriter::new(std::io::stdout())));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open --events file {} for appending", path.display()))?;
    Ok(Box::new(std::io::BufWriter::new(file)))
}

fn task_failure(task: &str, result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match result {
        Ok(Ok(())) => anyhow!("{task} stopped unexpectedly"),
        Ok(Err(err)) => err.context(format!("{task} failed")),
        Err(err) => anyhow!("{task} panicked: {err}"),
    }
}
