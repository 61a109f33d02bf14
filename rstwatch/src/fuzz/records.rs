//! Ring-buffer records and their decoding into events, labels, JSON and human lines.

use proptest::prelude::*;
use rstwatch_common::{EVENT_RESET, EVENT_SOCKET_ERROR, ResetEvent, SocketErrorEvent};

use super::{FIXTURES, config};
use crate::{
    classify::{Classifier, causes::CAUSES},
    decode::{self, FalseReceiveFilter, Record},
    enrich::{
        event::{Decoder, Linker, Observation},
        pairing::{self, Pairer},
    },
    export::output::{self, RateLimiter, WallClock},
    load::kernel::tracefs,
};

// ---------------------------------------------------------------------------------------------
// ring-buffer records and their decoding

/// `size` arbitrary bytes starting with `kind`.
fn record_bytes(kind: u32, size: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), size).prop_map(move |mut bytes| {
        bytes[..4].copy_from_slice(&kind.to_ne_bytes());
        bytes
    })
}

fn decoder(hz: u32) -> Decoder {
    let reasons = tracefs::symbolic_values(
        &tracefs::parse_format(FIXTURES[0])
            .expect("fixture parses")
            .print_fmt,
        "reason",
    );
    let reason_names = reasons
        .into_iter()
        .map(|(value, name)| (value as u16, name))
        .collect();
    Decoder {
        classifier: Classifier { reason_names },
        hz,
        attribution: None,
    }
}

fn hz() -> impl Strategy<Value = u32> {
    prop_oneof![prop::sample::select(vec![100u32, 250, 300, 1000]), any::<u32>()]
}

/// What the daemon and `trace` do with a decoded record: none of it may panic, and the JSON line
/// must be one JSON object with the documented labels.
fn check_observation(observation: &Observation, clock: &WallClock, limiter: &mut RateLimiter) {
    let json = output::json_line(observation, clock);
    assert!(!json.contains('\n'), "a JSON event spans lines: {json}");
    let value: serde_json::Value = serde_json::from_str(&json).expect("json_line is JSON");
    let human = output::human_line(observation, clock);
    assert!(!human.is_empty());
    match observation {
        Observation::Reset(reset) => {
            assert_eq!(value["event"], "reset");
            assert!(CAUSES.iter().any(|info| info.label == reset.cause.label()));
            assert!(!reset.state.is_empty());
            let _ = format!("{reset}");
            limiter.allow(reset.cause, reset.monotonic_ns);
        }
        Observation::SocketError(error) => {
            assert_eq!(value["event"], "socket_error");
            let _ = decode::errno_name(error.errno);
        }
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn records_of_any_bytes_decode_or_are_refused(
        kind in prop_oneof![Just(EVENT_RESET), Just(EVENT_SOCKET_ERROR), any::<u32>()],
        mut bytes in prop::collection::vec(any::<u8>(), 0..(size_of::<ResetEvent>() + 64)),
    ) {
        if bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&kind.to_ne_bytes());
        }
        match decode::from_bytes(&bytes) {
            Some(Record::Reset(_)) => prop_assert!(kind == EVENT_RESET && bytes.len() >= size_of::<ResetEvent>()),
            Some(Record::SocketError(_)) => {
                prop_assert!(kind == EVENT_SOCKET_ERROR && bytes.len() >= size_of::<SocketErrorEvent>())
            }
            None => prop_assert!(
                bytes.len() < 4
                    || (kind != EVENT_RESET && kind != EVENT_SOCKET_ERROR)
                    || (kind == EVENT_RESET && bytes.len() < size_of::<ResetEvent>())
                    || (kind == EVENT_SOCKET_ERROR && bytes.len() < size_of::<SocketErrorEvent>())
            ),
        }
    }

    #[test]
    fn any_reset_event_decodes_to_a_well_formed_event(
        bytes in record_bytes(EVENT_RESET, size_of::<ResetEvent>()),
        hz in hz(),
    ) {
        let Some(Record::Reset(ev)) = decode::from_bytes(&bytes) else {
            panic!("a full-size reset record was refused");
        };
        let port_at = std::mem::offset_of!(ResetEvent, key) + std::mem::offset_of!(rstwatch_common::CountKey, port);
        prop_assert_eq!(ev.key.port, u16::from_ne_bytes([bytes[port_at], bytes[port_at + 1]]));
        let decoder = decoder(hz);
        let reset = decoder.decode(&ev);
        prop_assert_eq!(reset.service_port, ev.key.port);
        let mut limiter = RateLimiter::new(3);
        check_observation(&Observation::Reset(Box::new(reset)), &WallClock::now(), &mut limiter);
    }

    #[test]
    fn any_socket_error_event_decodes(
        bytes in record_bytes(EVENT_SOCKET_ERROR, size_of::<SocketErrorEvent>()),
        reset in record_bytes(EVENT_RESET, size_of::<ResetEvent>()),
    ) {
        let (Some(Record::SocketError(error)), Some(Record::Reset(reset))) =
            (decode::from_bytes(&bytes), decode::from_bytes(&reset))
        else {
            panic!("full-size records were refused");
        };
        let decoder = decoder(250);
        let mut linker = Linker::new();
        linker.remember(&decoder.decode(&reset));
        let error = decoder.decode_error(&error, &linker);
        check_observation(&Observation::SocketError(error), &WallClock::now(), &mut RateLimiter::new(1));
    }

    /// The reader's whole path for a burst of arbitrary records: filter, decode, link, pair, write.
    #[test]
    fn a_stream_of_arbitrary_records_goes_through_the_reader_path(
        records in prop::collection::vec(
            prop_oneof![
                record_bytes(EVENT_RESET, size_of::<ResetEvent>()),
                record_bytes(EVENT_SOCKET_ERROR, size_of::<SocketErrorEvent>()),
                prop::collection::vec(any::<u8>(), 0..64),
            ],
            0..24,
        ),
        now_ns in any::<u64>(),
    ) {
        let decoder = decoder(1000);
        let clock = WallClock::now();
        let (mut filter, mut linker, mut limiter) = (FalseReceiveFilter::new(), Linker::new(), RateLimiter::new(2));
        let mut ready = Vec::new();
        for bytes in &records {
            if let Some(record) = decode::from_bytes(bytes) {
                filter.push(record, &mut ready);
            }
        }
        filter.release_older_than(now_ns, &mut ready);
        let mut pairer = Pairer::new();
        let decoded = ready.len();
        // Any read time that has a HOLD_NS after it.
        let read_ns = now_ns / 2;
        for record in ready.drain(..) {
            pairer.push(decoder.observation(record, &mut linker), read_ns);
        }
        let mut out = Vec::new();
        pairer.release(read_ns, &mut out);
        pairer.release(read_ns + pairing::HOLD_NS, &mut out);
        prop_assert_eq!(out.len(), decoded, "pairing neither drops nor duplicates");
        for observation in &out {
            check_observation(observation, &clock, &mut limiter);
        }
    }
}

#[test]
fn extreme_timestamps_format() {
    // The far ends of what a garbled record can say: the JSON and human lines still render.
    let decoder = decoder(250);
    for ts_ns in [0, 1, u64::MAX / 2, u64::MAX] {
        let mut ev: ResetEvent = unsafe { std::mem::zeroed() };
        ev.kind = EVENT_RESET;
        ev.ts_ns = ts_ns;
        ev.age_jiffies = u64::MAX - ts_ns;
        ev.flags = u32::MAX;
        ev.key.facts = u16::MAX;
        ev.now_jiffies = u32::MAX;
        ev.lsndtime = 1;
        let reset = decoder.decode(&ev);
        check_observation(
            &Observation::Reset(Box::new(reset)),
            &WallClock::now(),
            &mut RateLimiter::new(1),
        );
    }
}
