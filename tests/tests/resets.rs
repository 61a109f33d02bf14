//! Real TCP resets, made with real sockets inside a private network namespace per test, checked
//! against the running rstwatch daemon's /metrics (deltas of `rstwatch_resets_total` on the
//! test's own port, for both directions, exact).
//!
//! Needs root and a built daemon (`cargo build --release -p rstwatch`, or `RSTWATCH_BIN`).
//! Run: `cargo test -p rstwatch-tests -- --test-threads=2`.

use rstwatch_tests::check;
use rstwatch_tests::scenarios;

fn run(name: &str) {
    assert!(rstwatch_tests::is_root(), "these tests need root");
    match check::check_named(name) {
        Ok(out) => eprintln!("{name}: ok, {:?}", out.notes),
        Err(e) => panic!("{e:#}"),
    }
}

macro_rules! scenario_tests {
    ($($test:ident),* $(,)?) => {
        $( #[test] fn $test() { run(stringify!($test)); } )*
        const TESTED: &[&str] = &[$(stringify!($test)),*];
    };
}

// Each name is a scenario in rstwatch_tests::scenarios (own port, own netns).
scenario_tests!(
    refused_v4,
    refused_v6,
    linger0,
    linger0_v6,
    unread_close,
    stale_keepalive,
    half_open,
    half_open_idle,
    keepalive_timeout,
    accept_overflow,
    timewait_reconnect,
    listener_closed,
    admin_abort,
    fin_wait2_linger,
    last_ack_unsent,
    data_after_close_fw1,
    data_after_close_fw2,
    refused_many,
    timewait_syn,
    disconnect_unspec,
    fastopen_child_reset,
);

#[test]
fn every_scenario_has_a_test() {
    let mut all: Vec<&str> = scenarios::all().iter().map(|s| s.name).collect();
    let mut tested = TESTED.to_vec();
    all.sort();
    tested.sort();
    assert_eq!(all, tested);
    let mut ports: Vec<u16> = scenarios::all().iter().map(|s| s.port).collect();
    ports.sort();
    let n = ports.len();
    ports.dedup();
    assert_eq!(ports.len(), n, "two scenarios share a port");
    assert!(ports.iter().all(|p| (21000..=21999).contains(p)));
}
