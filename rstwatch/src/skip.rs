//! Tests that need something of the host (root, cgroup2, the kernel's BTF, tracefs) say so when
//! they cannot run, instead of passing quietly; the logic itself is tested on fixtures.

/// A check that did not run, said out loud: `SKIPPED: <reason>` on stderr, and a failure under
/// `CI=true`, where the host is set up to run every check (as tests/src/process.rs does).
pub fn skipped(reason: impl std::fmt::Display) {
    eprintln!("SKIPPED: {reason}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true: a check did not run: {reason}");
    }
}
