//! Stage 4, enrich: each decoded record becomes a classified `Reset` (or `SocketError`) named
//! with its owner's workload (`attribution`), linked to the error its application got, and paired
//! with the other end's reset when both ends are on this host (`pairing`).

pub mod attribution;
pub mod event;
pub mod pairing;

use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    decode::{FalseReceiveFilter, Record, drain, monotonic_ns},
    enrich::{
        event::{Decoder, Linker, Observation},
        pairing::Pairer,
    },
};

/// Drain the ring buffer as events arrive, hand each batch of real resets to `sink` (with the
/// number of records that did not decode), and release held events on a short tick.
pub async fn read_events(
    ring: RingBuf<MapData>,
    decoder: Decoder,
    mut sink: impl FnMut(Vec<Observation>, u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|err| anyhow::anyhow!("polling the event ring buffer: {err}"))?;
    let mut filter = FalseReceiveFilter::new();
    let mut linker = Linker::new();
    let mut pairer = Pairer::new();
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    let mut ready = Vec::new();
    loop {
        let mut decode_errors = 0u64;
        // The programs write without waking us (BPF_RB_NO_WAKEUP): one wakeup per record cost the
        // daemon and the storming task a context switch each. Drain on the tick instead; a wakeup
        // still arrives if the kernel decides to send one.
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                decode_errors += drain(guard.get_inner_mut(), &mut filter, &mut ready);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                decode_errors += drain(ring.get_mut(), &mut filter, &mut ready);
                filter.release_older_than(monotonic_ns(), &mut ready);
            }
        }
        let now = monotonic_ns();
        let mut observations = Vec::new();
        for record in ready.drain(..) {
            let observation = match record {
                Record::Reset(ev) => {
                    let reset = decoder.decode(&ev);
                    linker.remember(&reset);
                    Observation::Reset(reset)
                }
                Record::SocketError(ev) => Observation::SocketError(decoder.decode_error(&ev, &linker)),
            };
            pairer.push(observation, now);
        }
        // Paired resets go out now, unpaired ones once their wait is over (on a later tick).
        pairer.release(now, &mut observations);
        if observations.is_empty() && decode_errors == 0 {
            continue;
        }
        sink(observations, decode_errors)?;
    }
}
