//! `rstwatch run`: load, attach, count, serve, and shut down cleanly.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::ProgramFd,
};
use log::{info, warn};
use rstwatch_common::CountKey;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    counts::{self, Classifier, PortLabels},
    events::{self, Decoder, FalseReceiveFilter},
    http::{self, Exporter},
    kernel,
    metrics::Metrics,
    prog_stats, probes,
};

pub struct RunOptions {
    pub metrics_addr: SocketAddr,
    pub idle_threshold: Duration,
    pub max_ports: usize,
    pub ring_buffer_bytes: u32,
}

/// The kernel's counters and the Prometheus view of them, updated together at each scrape.
struct Counters {
    metrics: Metrics,
    counts: PerCpuHashMap<MapData, CountKey, u64>,
    lost: PerCpuArray<MapData, u64>,
    classifier: Classifier,
    ports: PortLabels,
    reset_programs: Vec<ProgramFd>,
}

struct Shared(Mutex<Counters>);

impl Exporter for Shared {
    fn metrics(&self) -> anyhow::Result<Vec<u8>> {
        let mut counters = self.0.lock().map_err(|_| anyhow!("metrics state poisoned"))?;
        let Counters { metrics, counts, lost, classifier, ports, reset_programs } = &mut *counters;
        let series = counts::read_series(counts, classifier, ports)?;
        metrics.sync_resets(&series);
        let mut lost = counts::read_lost(lost)?;
        let mut skipped = 0;
        for program in reset_programs.iter() {
            skipped += prog_stats::recursion_misses(program)?;
        }
        lost.push((counts::PROBE_SKIPPED, skipped));
        metrics.sync_lost(&lost);
        metrics.encode()
    }
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let tracefs = kernel::tracefs::ensure_mounted()?;
    info!("tracefs at {}", tracefs.display());
    let layout = kernel::resolve(options.idle_threshold)?;
    // Claim the address before touching the kernel, so a taken port fails fast and cleanly.
    let listener = http::bind(options.metrics_addr).await?;

    let mut probes = probes::load_and_attach(&layout, options.ring_buffer_bytes)?;
    let counts = PerCpuHashMap::try_from(take_map(&mut probes.ebpf, "COUNTS")?)?;
    let lost = PerCpuArray::try_from(take_map(&mut probes.ebpf, "LOST")?)?;
    let ring = RingBuf::try_from(take_map(&mut probes.ebpf, "EVENTS")?)?;

    let metrics = Metrics::new(&layout.release)?;
    for (probe, attached) in &probes.attached {
        metrics.set_probe_attached(probe, *attached);
    }
    let classifier = Classifier { reason_names: layout.reason_names.clone() };
    let decoder = Decoder { classifier: classifier.clone(), hz: layout.hz };
    let shared = Arc::new(Shared(Mutex::new(Counters {
        metrics,
        counts,
        lost,
        classifier,
        ports: PortLabels::new(options.max_ports),
        reset_programs: std::mem::take(&mut probes.reset_programs),
    })));

    info!("serving metrics on http://{}/metrics", options.metrics_addr);
    let server = tokio::spawn(http::serve(listener, shared.clone()));
    let reader = tokio::spawn(read_events(ring, decoder, shared.clone()));

    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
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

fn take_map(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object (build problem)"))
}

fn task_failure(task: &str, result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match result {
        Ok(Ok(())) => anyhow!("{task} stopped unexpectedly"),
        Ok(Err(err)) => err.context(format!("{task} failed")),
        Err(err) => anyhow!("{task} panicked: {err}"),
    }
}

/// Drain the ring buffer as events arrive; release held events on a short tick.
async fn read_events(ring: RingBuf<MapData>, decoder: Decoder, shared: Arc<Shared>) -> anyhow::Result<()> {
    // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|err| anyhow!("polling the event ring buffer: {err}"))?;
    let mut filter = FalseReceiveFilter::new();
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    let mut ready = Vec::new();
    loop {
        let mut decode_errors = 0u64;
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    match events::from_bytes(&item) {
                        Some(ev) => filter.push(ev, &mut ready),
                        None => decode_errors += 1,
                    }
                }
                guard.clear_ready();
            }
            _ = tick.tick() => filter.release_older_than(monotonic_ns(), &mut ready),
        }
        if ready.is_empty() && decode_errors == 0 {
            continue;
        }
        let counters = shared.0.lock().map_err(|_| anyhow!("metrics state poisoned"))?;
        for _ in 0..decode_errors {
            counters.metrics.count_decode_error();
        }
        if decode_errors > 0 {
            warn!("{decode_errors} malformed event records (daemon and eBPF object out of step?)");
        }
        for ev in ready.drain(..) {
            let reset = decoder.decode(&ev);
            log::debug!("{reset}");
            counters.metrics.observe(&reset);
        }
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
