//! Root integration tests for rstwatch.
//!
//! Real sockets make real TCP resets inside private network namespaces (one per test, loopback
//! only); the tests compare the daemon's `/metrics` deltas on the scenario's port with what the
//! kernel did (checked independently through the namespace's `Tcp: OutRsts`).
//!
//! - [`netns::NetNs`]: a named netns, a way to run code inside it, per-netns sysctls and MIBs.
//! - [`daemon::daemon`]: one rstwatch daemon per test process (`$RSTWATCH_BIN` or
//!   `<workspace>/target/release/rstwatch`), killed with the process (PR_SET_PDEATHSIG).
//! - [`metrics`]: the Prometheus text parser, `resets(direction, cause, port)`.
//! - [`http`]: the HTTP client (loopback GET: `/metrics`, `/healthz`, Prometheus's API).
//! - [`process`]: the binary's path, commands run to completion, children that die with the test
//!   ([`process::Proc`]), scratch directories, free ports, `setpriv`, polling.
//! - [`scenarios`]: the reset scenarios (also runnable one by one with the `scenario` binary).
//! - [`check`]: scenario + daemon + exact delta comparison.
//! - [`apps`]: real applications (nginx, redis, haproxy, a JVM on Apache HttpClient, curl) run in a
//!   namespace of their own, for `tests/apps.rs`.
//! - [`trace_json`]: `rstwatch trace --output json` around a piece of a test.
//!
//! Everything here needs root (netns, TCP_REPAIR, BPF).

pub mod apps;
pub mod check;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod netns;
pub mod process;
pub mod scenarios;
pub mod sock;
pub mod trace_json;

pub use daemon::{Daemon, daemon, resets, scrape};
pub use metrics::{Dir, Snapshot};
pub use netns::NetNs;

/// true when running as root (the tests need it).
pub fn is_root() -> bool {
    // SAFETY: trivial syscall.
    unsafe { libc::geteuid() == 0 }
}
