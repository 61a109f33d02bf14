//! The benchmark's load generator (`storm`) does what the benchmark claims of it, counted by the
//! kernel of its private namespace: one reset sent per refused attempt, and none at all in the
//! connection workload, where every connection is a real handshake, exchange and close.
//!
//! Needs root. Run: `cargo test --release -p rstwatch-tests --test storm`.

use std::process::Command;

use rstwatch_tests::netns::NetNs;
use serde_json::Value;

/// At most `max` attempts per thread: the refused storm stays small beside the other tests'
/// daemons, which count every namespace's resets (on port 20000 only: one label).
fn storm(netns: &NetNs, workload: &str, threads: u32, max: u32) -> Value {
    assert!(rstwatch_tests::is_root(), "these tests need root");
    let out = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args([
            "--workload",
            workload,
            "--netns",
            &netns.path(),
            "--threads",
            &threads.to_string(),
        ])
        .args([
            "--port",
            "20000",
            "--duration-ms",
            "500",
            "--max-attempts",
            &max.to_string(),
        ])
        .output()
        .expect("starting storm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "storm {workload} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("storm output {stdout:?}: {e}"))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn refused_storm_is_one_reset_per_attempt() {
    let ns = NetNs::new().expect("netns");
    let v = storm(&ns, "refused", 2, 500);
    assert!(n(&v, "attempts") > 0, "{v}");
    assert_eq!(n(&v, "ops"), n(&v, "attempts"), "every attempt refused: {v}");
    assert_eq!(
        n(&v, "out_rsts_delta"),
        n(&v, "attempts"),
        "one RST per attempt: {v}"
    );
    assert_eq!(
        n(&v, "active_opens_delta"),
        n(&v, "attempts"),
        "one SYN per attempt: {v}"
    );
}

#[test]
fn connection_workload_sends_no_reset() {
    let ns = NetNs::new().expect("netns");
    let v = storm(&ns, "connections", 2, 3000);
    let ops = n(&v, "ops");
    assert!(ops > 0, "{v}");
    assert_eq!(n(&v, "attempts"), ops, "every connection completed: {v}");
    assert_eq!(n(&v, "served"), ops, "the servers answered each one: {v}");
    assert_eq!(
        n(&v, "active_opens_delta"),
        ops,
        "one handshake per connection: {v}"
    );
    assert_eq!(n(&v, "out_rsts_delta"), 0, "no reset: {v}");
    // Both sides closed: the clients' sockets are in TIME_WAIT (client-first close), none is left
    // open in the namespace.
    let states = ns.exec(&["ss", "-Htan"]).expect("ss");
    assert!(
        states
            .lines()
            .all(|l| l.starts_with("TIME-WAIT") || l.starts_with("LISTEN")),
        "sockets left behind:\n{states}"
    );
}
