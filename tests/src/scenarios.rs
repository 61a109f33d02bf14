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
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
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
        let mut out = (scn.run)(scn.port).with_context(|| format!("scenario {}", scn.name))?;
        let after = netns::tcp_mib_here("OutRsts")?;
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

// ---------------------------------------------------------------------------------------------
// helpers

const T: Duration = Duration::from_secs(5);

/// Remove a socket without sending anything: sockets already CLOSEd (after a reset) or still in
/// SYN_SENT just close; ESTABLISHED ones go through TCP_REPAIR first. Anything else is a bug in the
/// scenario (its close would send a FIN and could provoke more resets), so it is an error.
pub fn vanish(s: Socket) -> Result<()> {
    match tcp_state(&s)? {
        TcpState::Close | TcpState::SynSent | TcpState::Listen => {}
        TcpState::Established => set_repair(&s)?,
        st => bail!("vanish: socket in {st:?} would not close silently"),
    }
    drop(s);
    Ok(())
}

/// Wait until everything the socket sent was acknowledged (SIOCOUTQ == 0), so that no delayed
/// ACK or retransmission is still in flight.
fn wait_acked(s: &Socket) -> Result<()> {
    poll_until("all sent data acked", T, || {
        let mut v: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one int.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(s),
                libc::TIOCOUTQ,
                &mut v as *mut libc::c_int,
            )
        };
        ensure!(rc == 0, "TIOCOUTQ: {}", std::io::Error::last_os_error());
        Ok(v == 0)
    })
}

fn expect_err(r: std::io::Result<usize>, errno_want: i32, what: &str) -> Result<()> {
    match r {
        Err(e) if errno(&e) == errno_want => Ok(()),
        other => bail!("{what}: expected errno {errno_want}, got {other:?}"),
    }
}

fn established_pair(v6: bool, port: u16) -> Result<(Socket, Socket, Socket)> {
    let l = listen(v6, port, 16)?;
    let (mut c, mut s) = pair(v6, &l, port)?;
    exchange(&mut c, &mut s, REQUEST, RESPONSE)?;
    wait_acked(&s)?;
    wait_acked(&c)?;
    Ok((l, c, s))
}

// ---------------------------------------------------------------------------------------------
// scenarios

/// (1) connect() to a port with no listener.
pub fn refused(port: u16, v6: bool) -> Result<Outcome> {
    let s = tcp_socket(v6)?;
    let r = s.connect(&SockAddr::from(loopback(v6, port)));
    match r {
        Err(e) if errno(&e) == libc::ECONNREFUSED => {}
        other => bail!("connect: expected ECONNREFUSED, got {other:?}"),
    }
    vanish(s)?;
    let mut o = Outcome::new(
        port,
        vec![
            sent("no_listener", Some("none"), 1),
            received("connection_refused", Some("syn_sent"), 1),
        ],
    );
    o.note("connect → ECONNREFUSED");
    Ok(o)
}

/// (2) Server close() with SO_LINGER{1,0} after a request/response.
pub fn linger0(port: u16, v6: bool) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(v6, port)?;
    set_linger_zero(&s)?;
    drop(s);
    wait_state(&c, TcpState::Close, T)?;
    expect_err(recv_once(&mut c), libc::ECONNRESET, "client recv")?;
    vanish(c)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("linger_zero_close", Some("established"), 1),
            received("peer_reset", Some("established"), 1),
        ],
    );
    o.note("client recv → ECONNRESET");
    Ok(o)
}

/// (3a) Server close() while 39 bytes of a second request are unread.
pub fn unread_close(port: u16) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(false, port)?;
    let extra = b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"; // 39 bytes
    assert_eq!(extra.len(), 39);
    c.write_all(extra)?;
    poll_until("39 unread bytes on the server", T, || {
        Ok(unread_bytes(&s)? == 39)
    })?;
    drop(s);
    wait_state(&c, TcpState::Close, T)?;
    expect_err(recv_once(&mut c), libc::ECONNRESET, "client recv")?;
    vanish(c)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("close_with_unread_data", Some("established"), 1),
            received("peer_reset", Some("established"), 1),
        ],
    );
    o.note("client recv → ECONNRESET");
    Ok(o)
}

/// (5a) Stale pooled keep-alive connection: the server idle-closes (FIN), the client writes its
/// next request 0.5 s later into the server's FIN_WAIT2 timewait socket.
pub fn stale_keepalive(port: u16) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(false, port)?;
    let cport = local_port(&c)?;
    drop(s); // graceful close: FIN
    wait_state(&c, TcpState::CloseWait, T)?;
    // the client's (delayed) ACK of the FIN turns the orphan into a FIN_WAIT2 timewait socket
    wait_proc_state(port, cport, TcpState::FinWait2, T)?;
    std::thread::sleep(Duration::from_millis(500));
    c.write_all(REQUEST)
        .context("client sendall of request #2")?;
    wait_state(&c, TcpState::Close, T)?;
    let r1 = recv_once(&mut c);
    ensure!(
        matches!(r1, Ok(0)),
        "client recv after reset: expected EOF, got {r1:?}"
    );
    let w = c.write(REQUEST);
    expect_err(w, libc::EPIPE, "client second send")?;
    vanish(c)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            // The kernel reports state TIME_WAIT (the timewait mini-socket) with tw_substate
            // FIN_WAIT2; /proc/net/tcp and ss show it as FIN_WAIT2, and so does the label.
            sent("data_after_close", Some("fin_wait2"), 1),
            received("stale_connection", Some("close_wait"), 1),
        ],
    );
    o.note("client: send OK, recv → EOF, send → EPIPE");
    Ok(o)
}

/// (6a) Half-open: the server's accepted socket disappears silently (TCP_REPAIR + close) while
/// the listener stays; the client then writes (after `idle`).
pub fn half_open(port: u16, idle: Duration) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(false, port)?;
    let cport = local_port(&c)?;
    set_repair(&s)?;
    drop(s);
    wait_proc_gone(port, cport, T)?;
    if !idle.is_zero() {
        std::thread::sleep(idle);
    }
    c.write_all(REQUEST)?;
    wait_state(&c, TcpState::Close, T)?;
    expect_err(recv_once(&mut c), libc::ECONNRESET, "client recv")?;
    vanish(c)?;
    drop(l);
    let rx_cause = if idle >= Duration::from_secs(1) {
        "idle_reset"
    } else {
        "peer_reset"
    };
    let mut o = Outcome::new(
        port,
        vec![
            sent("unknown_connection", Some("listen"), 1),
            received(rx_cause, Some("established"), 1),
        ],
    );
    o.note(format!("client idle {idle:?}, send OK, recv → ECONNRESET"));
    Ok(o)
}

/// (9a) Keepalive timeout: the client probes (IDLE=1, INTVL=1, CNT=2) a peer whose socket drops
/// everything (classic BPF `ret #0`); ~3 s later the client gives up with a RST.
pub fn keepalive_timeout(port: u16) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(false, port)?;
    attach_drop_all_filter(&s)?;
    let t0 = Instant::now();
    set_keepalive(&c, 1, 1, 2)?;
    // blocks until the keepalive timer kills the connection (read timeout is 10 s)
    let r = recv_once(&mut c);
    let waited = t0.elapsed();
    expect_err(r, libc::ETIMEDOUT, "client recv")?;
    ensure!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(8),
        "keepalive timeout after {waited:?}"
    );
    vanish(c)?;
    vanish(s)?; // still ESTABLISHED: the RST was dropped by its filter
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![sent("keepalive_timeout", Some("established"), 1)],
    );
    o.note(format!("client recv → ETIMEDOUT after {waited:?}"));
    Ok(o)
}

/// (7a) Accept-queue overflow with tcp_abort_on_overflow=1 (set in the namespace).
///
/// Deterministic choreography, backlog B = 2: first B "deferred" clients (TCP_DEFER_ACCEPT on the
/// connecting socket delays their final ACK by up to 200 ms) get real request socks; then B + 1
/// plain clients arrive while the request queue is full, so they complete through SYN cookies at
/// once and fill the accept queue (full = more than B queued). When the deferred ACKs arrive, the
/// listener cannot queue the children and, with abort_on_overflow, answers each with a RST
/// (INVALID_SYN from the listener). The listener never accepts.
pub fn accept_overflow(port: u16) -> Result<Outcome> {
    ensure!(
        netns::read_sysctl("net/ipv4/tcp_abort_on_overflow")? == "1",
        "tcp_abort_on_overflow is not 1 in this namespace"
    );
    const BACKLOG: usize = 2;
    let l = listen(false, port, BACKLOG as i32)?;
    let mut deferred = Vec::new();
    for _ in 0..BACKLOG {
        let c = tcp_socket(false)?;
        set_defer_accept(&c, 1)?;
        c.set_nonblocking(true)?;
        match c.connect(&SockAddr::from(loopback(false, port))) {
            Ok(()) => {}
            Err(e) if errno(&e) == libc::EINPROGRESS => {}
            Err(e) => bail!("connect: {e}"),
        }
        // SYN-ACK received: ESTABLISHED on the client, its ACK held back
        wait_state(&c, TcpState::Established, T)?;
        deferred.push(c);
    }
    let mut plain = Vec::new();
    for _ in 0..=BACKLOG {
        let c = connect(false, port)?;
        wait_proc_state(port, local_port(&c)?, TcpState::Established, T)?;
        plain.push(c);
    }
    // The deferred ACKs go out within 200 ms (TCP_DELACK_MAX) and must be answered with RSTs.
    let start = Instant::now();
    let mut states: Vec<TcpState> = Vec::new();
    poll_until(
        "every deferred client to be reset",
        Duration::from_secs(2),
        || {
            states = deferred.iter().map(tcp_state).collect::<Result<_>>()?;
            Ok(states.iter().all(|s| *s == TcpState::Close))
        },
    )
    .with_context(|| format!("deferred client states {states:?}"))?;
    let took = start.elapsed();
    for c in &deferred {
        let mut c2 = c.try_clone()?;
        c2.set_nonblocking(false)?;
        expect_err(recv_once(&mut c2), libc::ECONNRESET, "deferred client recv")?;
    }
    for c in &plain {
        ensure!(
            tcp_state(c)? == TcpState::Established,
            "plain client not ESTABLISHED"
        );
    }
    let reset = deferred.len() as u64;
    // Clean up silently: clients first, then the queued children.
    for c in deferred.into_iter().chain(plain) {
        vanish(c)?;
    }
    l.set_nonblocking(true)?;
    let mut children = 0;
    loop {
        match l.accept() {
            Ok((child, _)) => {
                children += 1;
                vanish(child)?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => bail!("accept: {e}"),
        }
    }
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("accept_queue_overflow", Some("listen"), reset),
            received("handshake_reset", Some("established"), reset),
        ],
    );
    o.note(format!(
        "{reset} deferred clients reset {took:?} after connecting (recv → ECONNRESET); {children} children were queued"
    ));
    Ok(o)
}

/// (10b) Server closes first (TIME_WAIT on the server), client closes, listener closed; the client
/// reconnects from the same source port. The TIME_WAIT socket answers the SYN with an ACK, the
/// SYN_SENT client resets it (invalid ACK), the RST kills the TIME_WAIT, the retransmitted SYN
/// finds no socket: connection refused.
pub fn timewait_reconnect(port: u16) -> Result<Outcome> {
    let l = listen(false, port, 16)?;
    let c = tcp_socket(false)?;
    c.set_reuse_address(true)?;
    c.bind(&SockAddr::from(loopback(false, 0)))?;
    let cport = local_port(&c)?;
    c.connect(&SockAddr::from(loopback(false, port)))?;
    let mut c = c;
    let mut s = accept(&l)?;
    exchange(&mut c, &mut s, REQUEST, RESPONSE)?;
    wait_acked(&s)?;
    wait_acked(&c)?;
    drop(s); // server closes first
    wait_state(&c, TcpState::CloseWait, T)?;
    drop(c); // client closes: LAST_ACK → CLOSED
    wait_proc_state(port, cport, TcpState::TimeWait, T)?;
    wait_proc_gone(cport, port, T)?;
    drop(l);
    let t0 = Instant::now();
    let c2 = tcp_socket(false)?;
    c2.set_reuse_address(true)?;
    c2.bind(&SockAddr::from(loopback(false, cport)))
        .context("rebind the same source port")?;
    let r = c2.connect_timeout(
        &SockAddr::from(loopback(false, port)),
        Duration::from_secs(8),
    );
    let waited = t0.elapsed();
    match r {
        Err(e) if errno(&e) == libc::ECONNREFUSED => {}
        other => bail!("reconnect: expected ECONNREFUSED, got {other:?} after {waited:?}"),
    }
    vanish(c2)?;
    let mut o = Outcome::new(
        port,
        vec![
            sent("invalid_segment", Some("syn_sent"), 1),
            sent("no_listener", Some("none"), 1),
            received("connection_refused", Some("syn_sent"), 1),
        ],
    );
    o.note(format!(
        "reconnect from port {cport} → ECONNREFUSED after {waited:?}"
    ));
    Ok(o)
}

/// (14) The server closes its listening socket while two handshaken connections wait in the accept
/// queue (one with 18 bytes of request). Neither client has received anything.
pub fn listener_closed(port: u16) -> Result<Outcome> {
    let l = listen(false, port, 16)?;
    let mut c1 = connect(false, port)?;
    let mut c2 = connect(false, port)?;
    c1.write_all(b"GET / HTTP/1.1\r\n\r\n")?; // 18 bytes
    for c in [&c1, &c2] {
        wait_proc_state(port, local_port(c)?, TcpState::Established, T)?;
    }
    wait_acked(&c1)?;
    drop(l);
    for c in [&mut c1, &mut c2] {
        wait_state(c, TcpState::Close, T)?;
        expect_err(recv_once(c), libc::ECONNRESET, "client recv")?;
    }
    vanish(c1)?;
    vanish(c2)?;
    let mut o = Outcome::new(
        port,
        vec![
            sent("listener_closed", Some("established"), 2),
            // c1's 18 bytes were acknowledged by its queued child (bytes_acked 19): its request
            // was taken and never answered. c2 sent nothing: still the opening exchange.
            received("reset_before_response", Some("established"), 1),
            received("handshake_reset", Some("established"), 1),
        ],
    );
    o.note("both clients recv → ECONNRESET");
    Ok(o)
}

/// (11f) `ss -K` kills the server's accepted socket (SOCK_DESTROY → tcp_abort).
pub fn admin_abort(port: u16) -> Result<Outcome> {
    let (l, mut c, mut s) = established_pair(false, port)?;
    let out = std::process::Command::new("ss")
        .args([
            "-K",
            "-t",
            "-n",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .context("run ss -K")?;
    ensure!(
        out.status.success(),
        "ss -K failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_state(&c, TcpState::Close, T)?;
    expect_err(recv_once(&mut s), libc::ECONNABORTED, "server recv")?;
    expect_err(recv_once(&mut c), libc::ECONNRESET, "client recv")?;
    vanish(c)?;
    vanish(s)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("admin_abort", Some("established"), 1),
            received("peer_reset", Some("established"), 1),
        ],
    );
    o.note("server recv → ECONNABORTED, client recv → ECONNRESET");
    Ok(o)
}

/// (11e1) TCP_LINGER2 = -1, shutdown(SHUT_WR), then close() in FIN_WAIT2.
pub fn fin_wait2_linger(port: u16) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(false, port)?;
    set_linger2(&s, -1)?;
    s.shutdown(Shutdown::Write)?;
    wait_state(&s, TcpState::FinWait2, T)?;
    wait_state(&c, TcpState::CloseWait, T)?;
    drop(s);
    wait_state(&c, TcpState::Close, T)?;
    let r = recv_once(&mut c);
    ensure!(matches!(r, Ok(0)), "client recv: expected EOF, got {r:?}");
    expect_err(c.write(REQUEST), libc::EPIPE, "client send")?;
    vanish(c)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("fin_wait2_abort", Some("fin_wait2"), 1),
            received("stale_connection", Some("close_wait"), 1),
        ],
    );
    o.note("client recv → EOF, send → EPIPE");
    Ok(o)
}

/// (11d) The client half-closes and stops reading (small receive buffer); the server fills the
/// window, shuts down (LAST_ACK with unsent data) and closes with SO_LINGER 0.
pub fn last_ack_unsent(port: u16) -> Result<Outcome> {
    let l = listen(false, port, 16)?;
    let c = tcp_socket(false)?;
    set_rcvbuf(&c, 4096)?;
    c.connect(&SockAddr::from(loopback(false, port)))?;
    let mut c = c;
    let mut s = accept(&l)?;
    c.shutdown(Shutdown::Write)?;
    wait_state(&s, TcpState::CloseWait, T)?;
    s.set_nonblocking(true)?;
    let chunk = vec![b'x'; 65536];
    let mut written = 0usize;
    let start = Instant::now();
    loop {
        match s.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => bail!("server write: {e}"),
        }
        ensure!(
            written < 256 << 20 && start.elapsed() < T,
            "send buffer never filled"
        );
    }
    poll_until(
        "unsent bytes on the server",
        T,
        || Ok(unsent_bytes(&s)? > 0),
    )?;
    let unsent = unsent_bytes(&s)?;
    wait_state(&c, TcpState::FinWait2, T)?;
    s.shutdown(Shutdown::Write)?;
    ensure!(
        tcp_state(&s)? == TcpState::LastAck,
        "server not in LAST_ACK: {:?}",
        tcp_state(&s)?
    );
    set_linger_zero(&s)?;
    drop(s);
    wait_state(&c, TcpState::Close, T)?;
    let (got, r) = drain(&mut c, 64 << 20);
    expect_err(r, libc::ECONNRESET, "client read")?;
    vanish(c)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("disconnect_with_unsent_data", Some("last_ack"), 1),
            received("reset_while_closing", Some("fin_wait2"), 1),
        ],
    );
    o.note(format!(
        "server wrote {written} bytes, {unsent} unsent at close; client read {got} then ECONNRESET"
    ));
    Ok(o)
}

/// (4b) The client writes immediately after the server's close(): the orphan is still in
/// FIN_WAIT1 (the client's ACK of the FIN is delayed), the data segment ACKs the FIN and carries
/// data → tcp_done + RST (TCP_ABORT_ON_DATA).
pub fn data_after_close_fw1(port: u16) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(false, port)?;
    drop(s);
    c.write_all(REQUEST)?; // inside the 40 ms delayed-ACK window
    wait_state(&c, TcpState::Close, T)?;
    let r = recv_once(&mut c);
    ensure!(matches!(r, Ok(0)), "client recv: expected EOF, got {r:?}");
    expect_err(c.write(REQUEST), libc::EPIPE, "client second send")?;
    vanish(c)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("data_after_close", None, 1),
            received("stale_connection", Some("close_wait"), 1),
        ],
    );
    o.note("client send OK, recv → EOF, send → EPIPE");
    Ok(o)
}

/// (4c) As 4a but with TCP_LINGER2 = 120 s on the server, so the orphan stays a full FIN_WAIT2
/// socket: the client's data makes the kernel call tcp_reset() on the server's orphan (a
/// tcp_receive_reset event although no RST was received) and then send a RST. Only the client's
/// received reset may be counted.
pub fn data_after_close_fw2(port: u16) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(false, port)?;
    let cport = local_port(&c)?;
    set_linger2(&s, 120)?;
    drop(s);
    wait_state(&c, TcpState::CloseWait, T)?;
    wait_proc_state(port, cport, TcpState::FinWait2, T)?;
    std::thread::sleep(Duration::from_millis(200));
    c.write_all(REQUEST)?;
    wait_state(&c, TcpState::Close, T)?;
    let r = recv_once(&mut c);
    ensure!(matches!(r, Ok(0)), "client recv: expected EOF, got {r:?}");
    expect_err(c.write(REQUEST), libc::EPIPE, "client second send")?;
    vanish(c)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("data_after_close", Some("fin_wait2"), 1),
            received("stale_connection", Some("close_wait"), 1),
            received("reset_while_closing", None, 0),
        ],
    );
    o.note(
        "client send OK, recv → EOF, send → EPIPE; server orphan FIN_WAIT2 got a false tcp_reset()",
    );
    Ok(o)
}

/// Exactness: `n` refused connects to a closed port (bounded: at most 60 s).
pub fn refused_many(port: u16, n: u64) -> Result<Outcome> {
    let start = Instant::now();
    let addr = SockAddr::from(loopback(false, port));
    for i in 0..n {
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "only {i} of {n} connects in 60 s"
        );
        let s = tcp_socket(false)?;
        match s.connect(&addr) {
            Err(e) if errno(&e) == libc::ECONNREFUSED => {}
            other => bail!("connect #{i}: expected ECONNREFUSED, got {other:?}"),
        }
    }
    let mut o = Outcome::new(
        port,
        vec![
            sent("no_listener", Some("none"), n),
            received("connection_refused", Some("syn_sent"), n),
        ],
    );
    o.note(format!("{n} connects refused in {:?}", start.elapsed()));
    Ok(o)
}

/// (13, TX TCP_TIMEWAIT_SOCKET with a SYN trigger) The server closes first after a
/// request/response; the client's ACK of the FIN turns the server's orphan into a FIN_WAIT2
/// time-wait socket. The client reads its `write_seq` (= the time-wait's `tw_rcv_nxt`) in repair
/// mode and vanishes; a SYN with that sequence number, from the client's address and port, is
/// in-window for the time-wait, which answers it with a RST (tcp_timewait_state_process:
/// FIN_WAIT2 substate, SYN with seq >= rcv_nxt → TCP_TW_RST). The RST goes to a port without a
/// socket, where it is dropped: nothing is received.
pub fn timewait_syn(port: u16) -> Result<Outcome> {
    let (l, c, s) = established_pair(false, port)?;
    let cport = local_port(&c)?;
    drop(s); // graceful close: FIN
    wait_state(&c, TcpState::CloseWait, T)?;
    wait_proc_state(port, cport, TcpState::FinWait2, T)?;
    let seq = send_queue_seq(&c)?;
    drop(c); // in repair mode: gone without a FIN or RST
    wait_proc_gone(cport, port, T)?;
    send_raw_tcp_v4(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, cport),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        seq,
        TCP_FLAG_SYN,
    )?;
    // The RST also removes the time-wait socket.
    wait_proc_gone(port, cport, T)
        .context("the FIN_WAIT2 time-wait socket did not go away after the SYN")?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            // TIME_WAIT mini-socket in the FIN_WAIT2 substate: labelled fin_wait2.
            sent("timewait_segment", Some("fin_wait2"), 1),
        ],
    );
    o.note(format!(
        "SYN seq {seq} from port {cport} into the FIN_WAIT2 time-wait; its RST met no socket"
    ));
    Ok(o)
}

/// (other, TX TCP_STATE) After a request/response, the client calls connect(AF_UNSPEC):
/// tcp_disconnect() moves the ESTABLISHED socket to CLOSE and sends a RST. Not an orphan, no
/// SO_LINGER 0: none of the TCP_STATE stories fits, so rstwatch says `other`.
pub fn disconnect_unspec(port: u16) -> Result<Outcome> {
    let (l, mut c, mut s) = established_pair(false, port)?;
    disconnect(&c)?;
    ensure!(
        tcp_state(&c)? == TcpState::Close,
        "client not CLOSE after connect(AF_UNSPEC): {:?}",
        tcp_state(&c)?
    );
    wait_state(&s, TcpState::Close, T)?;
    expect_err(recv_once(&mut s), libc::ECONNRESET, "server recv")?;
    // tcp_disconnect() also leaves ECONNRESET on the disconnected socket itself.
    expect_err(recv_once(&mut c), libc::ECONNRESET, "client recv")?;
    vanish(c)?;
    vanish(s)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("other", Some("established"), 1),
            received("peer_reset", Some("established"), 1),
        ],
    );
    o.note("client connect(AF_UNSPEC) → 0, recv → ECONNRESET; server recv → ECONNRESET");
    Ok(o)
}

/// (other, received in SYN_RECV) TCP Fast Open without cookies (tcp_fastopen = 0x207 in the
/// namespace). The client, bound to 127.0.0.2:`port` (so that its side of the flow is on the
/// scenario's port too) with a drop-all socket filter, sends SYN+data with sendto(MSG_FASTOPEN);
/// the server creates a Fast Open child in SYN_RECV at once (accept() returns it) and answers
/// with a SYN-ACK the client's filter drops. The client then vanishes (close in SYN_SENT is
/// silent). The child retransmits its SYN-ACK after ~1 s (the timing this scenario is about);
/// it meets no socket, so the host answers with a RST (NO_SOCKET, trigger SYN|ACK); the RST is
/// in window for the child and tcp_check_req() resets it (reqsk_fastopen_remove + tcp_reset):
/// a received reset in SYN_RECV, a state outside the received table.
pub fn fastopen_child_reset(port: u16) -> Result<Outcome> {
    ensure!(
        netns::read_sysctl("net/ipv4/tcp_fastopen")? == "519",
        "tcp_fastopen is not 0x207 in this namespace"
    );
    let l = listen(false, port, 16)?;
    set_fastopen(&l, 16)?;
    let c = tcp_socket(false)?;
    c.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::new(127, 0, 0, 2),
        port,
    )))
    .context("bind the client to 127.0.0.2")?;
    attach_drop_all_filter(&c)?;
    c.set_nonblocking(true)?;
    let data = b"GET / HTTP/1.1\r\n\r\n"; // 18 bytes, in the SYN
    let queued = sendto_fastopen(&c, data, loopback(false, port))?;
    ensure!(
        queued == data.len(),
        "sendto(MSG_FASTOPEN) queued {queued} bytes, not {}: no SYN-data?",
        data.len()
    );
    let t0 = Instant::now();
    // A Fast Open child is queued for accept() as soon as the SYN is processed.
    let mut child = accept(&l)?;
    ensure!(
        tcp_state(&child)? == TcpState::SynRecv,
        "accepted child in {:?}, not a Fast Open child in SYN_RECV",
        tcp_state(&child)?
    );
    ensure!(
        tcp_state(&c)? == TcpState::SynSent,
        "client in {:?}, not SYN_SENT (its filter should drop the SYN-ACK)",
        tcp_state(&c)?
    );
    vanish(c)?;
    // The SYN-ACK retransmission timer fires after ~1 s (TCP_TIMEOUT_INIT).
    wait_state(&child, TcpState::Close, Duration::from_secs(4))
        .context("the Fast Open child was not reset")?;
    let waited = t0.elapsed();
    // The data of the SYN is still there; then the reset.
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut child, &mut buf)?;
    ensure!(
        &buf[..n] == data,
        "child read {:?}, expected the SYN's data",
        &buf[..n]
    );
    let r = recv_once(&mut child);
    let after_data = format!("{r:?}");
    vanish(child)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("unknown_connection", Some("none"), 1),
            received("other", Some("syn_recv"), 1),
        ],
    );
    o.note(format!(
        "child reset {waited:?} after the SYN; child read the SYN's {n} bytes, then {after_data}"
    ));
    Ok(o)
}

/// (11g) TCP_ABORT_ON_MEMORY. Needs `net.ipv4.tcp_max_orphans` = 0, a global sysctl: run only in a
/// VM (`cargo xtask vm-test`). The server writes to a client that drops everything (so its data
/// stays unacknowledged) and closes: the socket becomes an orphan in FIN_WAIT1, and the orphan
/// count now exceeds the limit, so the kernel resets it, either in close() or on the orphan's
/// next retransmission (tcp_out_of_resources); which one depends on when the kernel last
/// refreshed its orphan count. The client's filter drops the RST.
pub fn memory_pressure(port: u16) -> Result<Outcome> {
    const KEY: &str = "net/ipv4/tcp_max_orphans";
    let (l, c, mut s) = established_pair(false, port)?;
    let (sport, cport) = (port, local_port(&c)?);
    attach_drop_all_filter(&c)?;
    let saved = host_sysctl(KEY, None)?;
    let result = (|| -> Result<()> {
        host_sysctl(KEY, Some("0"))?;
        s.write_all(&[b'x'; 1000])?;
        drop(s);
        wait_proc_gone(sport, cport, T).context("the orphan was never reset")
    })();
    host_sysctl(KEY, Some(&saved))?;
    result?;
    vanish(c)?; // still ESTABLISHED: its filter dropped the data, the FIN and the RST
    drop(l);
    let mut o = Outcome::new(port, vec![sent("memory_pressure", Some("fin_wait1"), 1)]);
    o.note(format!("orphan reset with tcp_max_orphans=0 (restored to {saved})"));
    Ok(o)
}

/// Read (and with `value`, write) a sysctl of the initial network namespace: global ones like
/// tcp_max_orphans exist only there. A thread of its own, because this one is in the test's netns.
fn host_sysctl(key: &'static str, value: Option<&str>) -> Result<String> {
    let value = value.map(str::to_string);
    std::thread::spawn(move || -> Result<String> {
        netns::enter("/proc/1/ns/net")?;
        if let Some(v) = value {
            netns::write_sysctl(key, &v)?;
        }
        netns::read_sysctl(key)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))?
}
