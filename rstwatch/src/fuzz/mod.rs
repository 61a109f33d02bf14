//! Property tests ("fuzzing" with proptest) of everything that reads input rstwatch does not
//! control: tracefs `format` files (the kernel's text), cgroup paths (named by container runtimes
//! and kubelet, and by anyone who may create a cgroup), ring-buffer records (bytes from the eBPF
//! side, which a daemon/object mismatch or a kernel bug could garble), and the decoding of those
//! records into events, labels, JSON and human lines. Property: never panic, and what is accepted is
//! well formed. Each target runs a bounded number of cases in every `cargo test` (about a second in
//! all, release build; `RSTWATCH_FUZZ_CASES=N` for more), with a new random seed each run; a failure
//! prints the minimal input, which then belongs in a regression test below.

mod cgroup;
mod records;
mod tracefs;

use proptest::prelude::*;

/// Real format files: the seeds the format targets edit, and the print fmt the decoder names
/// reasons from.
const FIXTURES: [&str; 7] = [
    include_str!("../load/kernel/fixtures/6.18/tcp_send_reset.format"),
    include_str!("../load/kernel/fixtures/6.18/tcp_receive_reset.format"),
    include_str!("../load/kernel/fixtures/6.18/inet_sock_set_state.format"),
    include_str!("../load/kernel/fixtures/6.18/inet_sk_error_report.format"),
    include_str!("../load/kernel/fixtures/6.18/kfree_skb.format"),
    include_str!("../load/kernel/fixtures/6.1/tcp_send_reset.format"),
    include_str!("../load/kernel/fixtures/6.1/tcp_receive_reset.format"),
];

/// `cases` per target, or `$RSTWATCH_FUZZ_CASES` for a longer run
/// (`RSTWATCH_FUZZ_CASES=200000 cargo test --release -p rstwatch fuzz`).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("RSTWATCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    // No regression files written into the source tree: a failure prints its minimal input.
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
