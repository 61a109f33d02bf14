//! Reset scenarios: real sockets, real kernel resets, each inside its own network namespace.
//!
//! Each scenario runs its socket choreography on a thread inside the namespace, waits for observable
//! kernel state rather than sleeping where timing matters, tears every remaining socket down
//! *silently* (TCP_REPAIR close, or close of an already CLOSEd socket) so cleanup adds no reset, and
//! returns what it expects rstwatch to have counted on its port. The netns's own `Tcp: OutRsts`
//! delta is checked against the expected number of sent resets, so a scenario fails by itself when
//! the kernel did something else than what it was written for.
//!
//! Numbers like (5a) are the rows of the scenario table in tests/README.md (see docs/kernel.md).

use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use socket2::{SockAddr, Socket};

use crate::metrics::Dir;
use crate::netns::{self, NetNs};
use crate::sock::*;

mod close;
mod closing;
mod kernel;
mod listener;
mod support;

pub use close::*;
pub use closing::*;
pub use kernel::*;
pub use listener::*;
pub use support::*;

/// One expected row: `count` resets of (direction, cause[, state]) on the scenario's port.
#[derive(Clone, Debug)]
pub struct Expect {
    pub dir: Dir,
    pub cause: &'static str,
    /// `None`: any state (the sum over `state` is checked).
    pub state: Option<&'static str>,
    pub count: u64,
}

pub fn sent(cause: &'static str, state: Option<&'static str>, count: u64) -> Expect {
    Expect {
        dir: Dir::Sent,
        cause,
        state,
        count,
    }
}
pub fn received(cause: &'static str, state: Option<&'static str>, count: u64) -> Expect {
    Expect {
        dir: Dir::Received,
        cause,
        state,
        count,
    }
}

/// What a scenario did and what rstwatch must show for it.
#[derive(Debug, Default)]
pub struct Outcome {
    pub port: u16,
    /// Rows that must have grown by exactly `count` (also used as the "wait until" condition).
    pub expect: Vec<Expect>,
    /// Exact deltas of all sent / received resets on the port, whatever the cause.
    pub sent_total: u64,
    pub received_total: u64,
    /// `Tcp: OutRsts` delta of the namespace over the scenario (measured).
    pub out_rsts: u64,
    /// What the applications saw (errno etc.), for humans.
    pub notes: Vec<String>,
}

impl Outcome {
    fn new(port: u16, expect: Vec<Expect>) -> Outcome {
        let sent_total = expect
            .iter()
            .filter(|e| e.dir == Dir::Sent)
            .map(|e| e.count)
            .sum();
        let received_total = expect
            .iter()
            .filter(|e| e.dir == Dir::Received)
            .map(|e| e.count)
            .sum();
        Outcome {
            port,
            expect,
            sent_total,
            received_total,
            out_rsts: 0,
            notes: Vec::new(),
        }
    }
    fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }
}

pub type ScenarioFn = fn(u16) -> Result<Outcome>;

pub struct Scenario {
    pub name: &'static str,
    pub port: u16,
    pub about: &'static str,
    /// Per-netns sysctls to set before running (`key`, `value`).
    pub sysctls: &'static [(&'static str, &'static str)],
    pub run: ScenarioFn,
}

/// Set when the runner owns the whole kernel (the `cargo xtask vm-test` VMs): only then do the
/// scenarios that change global sysctls run (see `owning_the_kernel`).
pub const OWNS_KERNEL_ENV: &str = "RSTWATCH_OWNS_KERNEL";

pub fn owning_the_kernel() -> bool {
    std::env::var_os(OWNS_KERNEL_ENV).is_some_and(|v| v == "1")
}

/// Scenarios that need a global (not per-netns) sysctl, which would disturb every other
/// connection of a shared machine: they run only where the runner owns the kernel.
pub fn kernel_owning() -> Vec<Scenario> {
    vec![Scenario {
        name: "memory_pressure",
        port: port_base() + 21,
        about: "(11g) too many orphans (global net.ipv4.tcp_max_orphans = 0): the kernel resets an orphan",
        sysctls: &[],
        run: memory_pressure,
    }]
}

/// First ports of the bands of 100 ports the scenarios can use; each test process takes the first
/// band no other process holds (an exclusive `flock` on a lock file per band, held until exit).
pub const PORT_BANDS: &[u16] = &[21200, 21300, 21400, 21500, 21600, 21700, 21800];

static PORT_BASE: std::sync::OnceLock<(u16, std::fs::File)> = std::sync::OnceLock::new();

/// The first port of this process's band. rstwatch counts the resets of the whole host by port
/// (whatever the netns), so two runs of these scenarios at the same time on the same ports would
/// disturb each other's deltas: each process locks a band of its own. `$RSTW_PORT_BASE`
/// (21000–21900) forces a base (it is locked too, and must be free).
pub fn port_base() -> u16 {
    PORT_BASE
        .get_or_init(|| match lock_band() {
            Ok(v) => v,
            Err(e) => panic!("no port band for the scenarios: {e:#}"),
        })
        .0
}

fn lock_band() -> Result<(u16, std::fs::File)> {
    let candidates: Vec<u16> = match std::env::var("RSTW_PORT_BASE") {
        Ok(v) => match v.parse::<u16>() {
            Ok(b) if (21000..=21900).contains(&b) => vec![b],
            _ => bail!("RSTW_PORT_BASE={v:?}: must be a number in 21000..=21900"),
        },
        Err(_) => PORT_BANDS.to_vec(),
    };
    for base in &candidates {
        let path = std::env::temp_dir().join(format!("rstwatch-tests-ports-{base}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok((*base, f));
        }
    }
    bail!("every port band {candidates:?} is in use by other test processes")
}

#[allow(clippy::identity_op)]
/// Every scenario, with its own port in 21000–21999 (`port_base()` + a fixed offset below 100).
pub fn all() -> Vec<Scenario> {
    let base = port_base();
    vec![
        Scenario {
            name: "refused_v4",
            port: base + 0,
            about: "(1) connect() to a closed IPv4 port",
            sysctls: &[],
            run: |p| refused(p, false),
        },
        Scenario {
            name: "refused_v6",
            port: base + 1,
            about: "(1) connect() to a closed IPv6 port",
            sysctls: &[],
            run: |p| refused(p, true),
        },
        Scenario {
            name: "linger0",
            port: base + 2,
            about: "(2) server close() with SO_LINGER{1,0} after request/response",
            sysctls: &[],
            run: |p| linger0(p, false),
        },
        Scenario {
            name: "linger0_v6",
            port: base + 3,
            about: "(2) same over IPv6",
            sysctls: &[],
            run: |p| linger0(p, true),
        },
        Scenario {
            name: "unread_close",
            port: base + 4,
            about: "(3a) server close() with 39 bytes unread",
            sysctls: &[],
            run: unread_close,
        },
        Scenario {
            name: "stale_keepalive",
            port: base + 5,
            about: "(5a) server idle-closes, client writes 0.5 s later",
            sysctls: &[],
            run: stale_keepalive,
        },
        Scenario {
            name: "half_open",
            port: base + 6,
            about: "(6a) server socket vanishes (TCP_REPAIR close), client writes",
            sysctls: &[],
            run: |p| half_open(p, Duration::ZERO),
        },
        Scenario {
            name: "half_open_idle",
            port: base + 7,
            about: "(6a) same, client idle 2 s before writing",
            sysctls: &[],
            run: |p| half_open(p, Duration::from_secs(2)),
        },
        Scenario {
            name: "keepalive_timeout",
            port: base + 8,
            about: "(9a) keepalive probes to a peer silenced by a drop-all socket filter",
            sysctls: &[],
            run: keepalive_timeout,
        },
        Scenario {
            name: "accept_overflow",
            port: base + 9,
            about: "(7a) accept-queue overflow with tcp_abort_on_overflow=1",
            sysctls: &[
                ("net/ipv4/tcp_abort_on_overflow", "1"),
                ("net/ipv4/tcp_syncookies", "1"),
            ],
            run: accept_overflow,
        },
        Scenario {
            name: "timewait_reconnect",
            port: base + 10,
            about: "(10b) reconnect from the same source port into the server's TIME_WAIT, listener gone",
            sysctls: &[],
            run: timewait_reconnect,
        },
        Scenario {
            name: "listener_closed",
            port: base + 11,
            about: "(14) listener closed with two un-accepted connections",
            sysctls: &[],
            run: listener_closed,
        },
        Scenario {
            name: "admin_abort",
            port: base + 12,
            about: "(11f) ss -K of the server's socket",
            sysctls: &[],
            run: admin_abort,
        },
        Scenario {
            name: "fin_wait2_linger",
            port: base + 13,
            about: "(11e1) TCP_LINGER2=-1, shutdown(SHUT_WR), close() in FIN_WAIT2",
            sysctls: &[],
            run: fin_wait2_linger,
        },
        Scenario {
            name: "last_ack_unsent",
            port: base + 14,
            about: "(11d) LAST_ACK with unsent data, SO_LINGER 0 close",
            sysctls: &[],
            run: last_ack_unsent,
        },
        Scenario {
            name: "data_after_close_fw1",
            port: base + 15,
            about: "(4b) client writes right after the server's close (orphan FIN_WAIT1)",
            sysctls: &[],
            run: data_after_close_fw1,
        },
        Scenario {
            name: "data_after_close_fw2",
            port: base + 16,
            about: "(4c) orphan kept full in FIN_WAIT2 (TCP_LINGER2=120): false receive_reset on the server",
            sysctls: &[],
            run: data_after_close_fw2,
        },
        Scenario {
            name: "refused_many",
            port: base + 17,
            about: "(exactness) N refused connects (N = $RSTW_N, default 2000)",
            sysctls: &[],
            run: |p| refused_many(p, refused_many_n()),
        },
        Scenario {
            name: "timewait_syn",
            port: base + 18,
            about: "(13) in-window SYN (raw socket) into the server's FIN_WAIT2 time-wait socket",
            sysctls: &[],
            run: timewait_syn,
        },
        Scenario {
            name: "disconnect_unspec",
            port: base + 19,
            about: "(other) connect(AF_UNSPEC) on an ESTABLISHED client after request/response",
            sysctls: &[],
            run: disconnect_unspec,
        },
        Scenario {
            name: "fastopen_child_reset",
            port: base + 20,
            about: "(other) TCP Fast Open child in SYN_RECV reset: its SYN-ACK finds no client socket",
            sysctls: &[
                // client (0x1) + server (0x2) + client without cookie (0x4) + server without
                // cookie (0x200)
                ("net/ipv4/tcp_fastopen", "519"),
            ],
            run: fastopen_child_reset,
        },
    ]
}

/// `all()`, plus the kernel-owning scenarios where the runner owns the kernel.
pub fn runnable() -> Vec<Scenario> {
    let mut list = all();
    if owning_the_kernel() {
        list.extend(kernel_owning());
    }
    list
}

pub fn find(name: &str) -> Option<Scenario> {
    all().into_iter().chain(kernel_owning()).find(|s| s.name == name)
}

pub fn refused_many_n() -> u64 {
    std::env::var("RSTW_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Run a scenario inside `ns` (setting its sysctls there first), measuring the namespace's
/// `Tcp: OutRsts` over it, and check that the kernel sent exactly the resets the scenario expects.
pub fn run_in(ns: &NetNs, scn: &Scenario) -> Result<Outcome> {
    if kernel_owning().iter().any(|s| s.name == scn.name) && !owning_the_kernel() {
        bail!(
            "scenario {} changes a global sysctl; it runs only where the runner owns the kernel \
             ({OWNS_KERNEL_ENV}=1, set inside the cargo xtask vm-test VMs)",
            scn.name
        );
    }
    ns.run(|| -> Result<Outcome> {
        for (k, v) in scn.sysctls {
            netns::write_sysctl(k, v)?;
        }
        let before = netns::tcp_mib_here("OutRsts")?;
        let failed_before = netns::tcpext_here("TCPAbortFailed")?;
        let mut out = (scn.run)(scn.port).with_context(|| format!("scenario {}", scn.name))?;
        let after = netns::tcp_mib_here("OutRsts")?;
        let failed = netns::tcpext_here("TCPAbortFailed")? - failed_before;
        if failed != 0 {
            out.note(format!("kernel: TcpExt TCPAbortFailed +{failed}"));
        }
        out.out_rsts = after - before;
        out.port = scn.port;
        ensure!(
            out.out_rsts == out.sent_total,
            "scenario {}: the kernel sent {} resets in the namespace (Tcp: OutRsts), the scenario expects {}; notes: {:?}",
            scn.name,
            out.out_rsts,
            out.sent_total,
            out.notes
        );
        Ok(out)
    })?
}
