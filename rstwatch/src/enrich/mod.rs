//! Stage 4, enrich: each decoded record becomes a classified `Reset` (or `SocketError`) named
//! with its owner's workload (`attribution`), linked to the error its application got, and paired
//! with the other end's reset when both ends are on this host (`pairing`).

pub mod attribution;
pub mod event;
pub mod pairing;

use aya::maps::{MapData, RingBuf};

use crate::{
    decode::{Drain, Record, monotonic_ns},
    enrich::{
        event::{Decoder, Linker, Observation, Timing},
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
    let mut drain = Drain::new(ring)?;
    let mut linker = Linker::new();
    let mut pairer = Pairer::new();
    loop {
        // One read time for a whole drain (taken at its first record), as `Pairer::push` wants.
        let mut read_at = None;
        let decode_errors = drain
            .next(|record| {
                let observation = decoder.observation(record, &mut linker);
                pairer.push(observation, *read_at.get_or_insert_with(monotonic_ns));
                Ok(())
            })
            .await?;
        let now = read_at.unwrap_or_else(monotonic_ns);
        let mut observations = Vec::new();
        // Paired resets go out now, unpaired ones once their wait is over (on a later tick).
        pairer.release(now, &mut observations);
        if pairer.shrink_when_empty() {
            // The burst's events are freed by now (or on their way out); give their pages back.
            // SAFETY: glibc's malloc_trim only releases free heap pages.
            unsafe { libc::malloc_trim(0) };
        }
        if observations.is_empty() && decode_errors == 0 {
            continue;
        }
        sink(observations, decode_errors)?;
    }
}

/// What the metrics need of a daemon that writes no events: each reset's `Timing`, handed to
/// `sink` in batches (with the number of records that did not decode). No owner, no strings, no
/// pairing: in a storm this is the daemon's work for each reset of the event budget.
pub async fn read_timings(
    ring: RingBuf<MapData>,
    decoder: Decoder,
    mut sink: impl FnMut(&[Timing], u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    /// Enough to make a batch worth its lock, small enough to stay in the cache.
    const BATCH: usize = 256;
    let mut drain = Drain::new(ring)?;
    let mut timings = Vec::with_capacity(BATCH);
    loop {
        let decode_errors = drain
            .next(|record| {
                if let Record::Reset(ev) = record {
                    timings.push(decoder.timing(&ev));
                    if timings.len() == BATCH {
                        sink(&timings, 0)?;
                        timings.clear();
                    }
                }
                Ok(())
            })
            .await?;
        if !timings.is_empty() || decode_errors > 0 {
            sink(&timings, decode_errors)?;
            timings.clear();
        }
    }
}
