//! The load generator of `cargo xtask bench`, with two workloads, both on loopback, bounded in count
//! *and* time:
//! - `refused` (the reset storm): N threads `connect()` to closed ports in a loop, so that every
//!   attempt makes the kernel send one RST (SYN to a closed port) and receive it (refused);
//! - `connections` (what a host mostly does): N client threads each connect to a listener in this
//!   process, write a 64-byte request, read a 64-byte response and close; N server threads accept,
//!   read the request, answer, read until the client's FIN and close. No reset at all: the
//!   namespace's `Tcp: OutRsts` delta shows it.
//!
//! ```text
//! storm [--workload refused|connections] [--netns /run/netns/NAME] [--threads N] [--port P]
//!       [--ports K] [--duration-ms MS] [--max-attempts N] [--addr 127.0.0.1]
//! ```
//! - `--netns`: every thread `setns()`s into that network namespace first (so its `Tcp:` counters
//!   are this run's alone; the connection workload also widens the namespace's ephemeral port range
//!   and lets connect() reuse TIME_WAIT ports there); without it the host's loopback is used.
//! - `refused`: ports `P .. P+K-1` are used round-robin (thread `t` starts at offset `t`); nothing
//!   may listen there. `connections`: the listener is on `P` (`--ports` must be 1).
//! - stops at `--duration-ms` (default 2000, at most 600000) or after `--max-attempts` per thread
//!   (default 5,000,000), whichever comes first.
//!
//! Prints one JSON object on stdout: attempts, completed operations (refused attempts or complete
//! connections), errors, wall time, the threads' CPU time (getrusage RUSAGE_THREAD, user and
//! system; loopback softirq work is charged to the thread that sends), the whole process's CPU
//! time, and the namespace's `Tcp: OutRsts` and `ActiveOpens` deltas.

mod connections;
mod refused;

use std::net::Ipv4Addr;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rstwatch_tests::netns;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Refused,
    Connections,
}

struct Options {
    workload: Workload,
    netns: Option<String>,
    threads: usize,
    port: u16,
    ports: u32,
    duration: Duration,
    max_attempts: u64,
    addr: Ipv4Addr,
}

/// What one thread did. `ops` counts completed operations: refused attempts, or connections that
/// exchanged request and response and closed.
#[derive(Default, Clone, Copy)]
pub struct ThreadResult {
    pub attempts: u64,
    pub ops: u64,
    /// `refused`: attempts that connected (something listens on a storm port).
    pub connected: u64,
    pub other_errors: u64,
    pub last_errno: i32,
    pub user_ns: u64,
    pub sys_ns: u64,
}

impl ThreadResult {
    pub fn error(&mut self) {
        self.other_errors += 1;
        self.last_errno = errno();
    }
}

/// Where every thread waits until all are ready, and the deadline fixed then.
pub struct Start {
    line: Barrier,
    deadline: OnceLock<Instant>,
}

impl Start {
    pub fn wait(&self) -> Instant {
        self.line.wait();
        *self.deadline.wait()
    }
}

const MAX_DURATION: Duration = Duration::from_secs(600);
const MAX_THREADS: usize = 64;
/// A thread gives up after this many failed operations (e.g. no ephemeral port left).
pub const MAX_ERRORS: u64 = 1000;

fn usage() -> ! {
    eprintln!(
        "usage: storm [--workload refused|connections] [--netns PATH] [--threads N] [--port P] [--ports K] [--duration-ms MS] [--max-attempts N] [--addr 127.x.y.z]"
    );
    std::process::exit(2)
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        workload: Workload::Refused,
        netns: None,
        threads: 1,
        port: 20000,
        ports: 1,
        duration: Duration::from_millis(2000),
        max_attempts: 5_000_000,
        addr: Ipv4Addr::LOCALHOST,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--workload" => {
                o.workload = match value().as_str() {
                    "refused" => Workload::Refused,
                    "connections" => Workload::Connections,
                    other => bail!("--workload {other}: refused or connections"),
                }
            }
            "--netns" => o.netns = Some(value()),
            "--threads" => o.threads = value().parse().context("--threads")?,
            "--port" => o.port = value().parse().context("--port")?,
            "--ports" => o.ports = value().parse().context("--ports")?,
            "--duration-ms" => o.duration = Duration::from_millis(value().parse().context("--duration-ms")?),
            "--max-attempts" => o.max_attempts = value().parse().context("--max-attempts")?,
            "--addr" => o.addr = value().parse().context("--addr")?,
            _ => usage(),
        }
    }
    if !o.addr.is_loopback() {
        bail!("--addr {}: the storm only targets loopback (127.0.0.0/8)", o.addr);
    }
    if o.threads == 0 || o.threads > MAX_THREADS {
        bail!("--threads must be 1..={MAX_THREADS}");
    }
    if o.ports == 0 || o.port as u32 + o.ports - 1 > 65535 || o.port == 0 {
        bail!(
            "--port {} --ports {}: the range must lie within 1..=65535",
            o.port,
            o.ports
        );
    }
    if o.workload == Workload::Connections && o.ports != 1 {
        bail!("--workload connections listens on one port: --ports must be 1");
    }
    if o.duration.is_zero() || o.duration > MAX_DURATION {
        bail!("--duration-ms must be 1..={}", MAX_DURATION.as_millis());
    }
    if o.max_attempts == 0 {
        bail!("--max-attempts must be at least 1");
    }
    Ok(o)
}

pub fn errno() -> i32 {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn rusage_ns(who: libc::c_int) -> (u64, u64) {
    // SAFETY: getrusage fills the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
    (ns(ru.ru_utime), ns(ru.ru_stime))
}

/// Run `work` and charge the calling thread's CPU time during it to the result.
pub fn timed(work: impl FnOnce(&mut ThreadResult)) -> ThreadResult {
    let mut r = ThreadResult::default();
    let (u0, s0) = rusage_ns(libc::RUSAGE_THREAD);
    work(&mut r);
    let (u1, s1) = rusage_ns(libc::RUSAGE_THREAD);
    r.user_ns = u1 - u0;
    r.sys_ns = s1 - s0;
    r
}

pub fn sockaddr(addr: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Spawn `n` threads named `{name}-{t}` that join the namespace, wait at the start line and run
/// `body(t, deadline)`.
pub fn spawn_workers<F>(
    name: &str,
    n: usize,
    ns: &Option<String>,
    start: &Arc<Start>,
    body: F,
) -> Result<Vec<std::thread::JoinHandle<Result<ThreadResult>>>>
where
    F: Fn(usize, Instant) -> ThreadResult + Send + Sync + 'static,
{
    let body = Arc::new(body);
    (0..n)
        .map(|t| {
            let (ns, start, body) = (ns.clone(), start.clone(), body.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{t}"))
                .spawn(move || -> Result<ThreadResult> {
                    if let Some(path) = &ns {
                        netns::enter(path)?;
                    }
                    let deadline = start.wait();
                    Ok(body(t, deadline))
                })
                .context("spawning a thread")
        })
        .collect()
}

pub fn join(handles: Vec<std::thread::JoinHandle<Result<ThreadResult>>>) -> Result<Vec<ThreadResult>> {
    handles
        .into_iter()
        .map(|h| h.join().map_err(|_| anyhow::anyhow!("a storm thread panicked"))?)
        .collect()
}

fn main() -> Result<()> {
    let o = parse_args()?;
    if let Some(path) = &o.netns {
        // The main thread joins too: the counters below are read in the run's namespace, and
        // threads spawned from here start in it (each worker also joins explicitly).
        netns::enter(path)?;
    }
    let workers = o.threads
        + match o.workload {
            Workload::Refused => 0,
            Workload::Connections => o.threads,
        };
    let start = Arc::new(Start {
        line: Barrier::new(workers + 1),
        deadline: OnceLock::new(),
    });
    let run: connections::Joined = match o.workload {
        Workload::Refused => {
            let handles = refused::spawn(&o, &start)?;
            Box::new(move || Ok((join(handles)?, Vec::new(), Instant::now())))
        }
        Workload::Connections => {
            if o.netns.is_some() {
                connections::tune_namespace()?;
            }
            connections::spawn(&o, &start)?
        }
    };
    let out_rsts_before = netns::tcp_mib_here("OutRsts")?;
    let opens_before = netns::tcp_mib_here("ActiveOpens")?;
    let (user_before, sys_before) = rusage_ns(libc::RUSAGE_SELF);
    start.line.wait();
    let started = Instant::now();
    let _ = start.deadline.set(started + o.duration);
    let (clients, servers, done) = run()?;
    let wall = done - started;
    let (user_after, sys_after) = rusage_ns(libc::RUSAGE_SELF);
    let cpu_process = (user_after + sys_after).saturating_sub(user_before + sys_before);
    let out_rsts_delta = netns::tcp_mib_here("OutRsts")?.wrapping_sub(out_rsts_before);
    let opens_delta = netns::tcp_mib_here("ActiveOpens")?.wrapping_sub(opens_before);

    let all: Vec<&ThreadResult> = clients.iter().chain(&servers).collect();
    let sum = |rs: &[&ThreadResult], f: fn(&ThreadResult) -> u64| rs.iter().map(|r| f(r)).sum::<u64>();
    let client_refs: Vec<&ThreadResult> = clients.iter().collect();
    let server_refs: Vec<&ThreadResult> = servers.iter().collect();
    let (user_ns, sys_ns) = (sum(&all, |r| r.user_ns), sum(&all, |r| r.sys_ns));
    let errors = sum(&all, |r| r.other_errors);
    let connected = sum(&client_refs, |r| r.connected);
    let last_errno = all.iter().map(|r| r.last_errno).find(|e| *e != 0).unwrap_or(0);
    let json = serde_json::json!({
        "workload": match o.workload { Workload::Refused => "refused", Workload::Connections => "connections" },
        "threads": o.threads,
        "server_threads": servers.len(),
        "port": o.port,
        "ports": o.ports,
        "netns": o.netns,
        "attempts": sum(&client_refs, |r| r.attempts),
        "ops": sum(&client_refs, |r| r.ops),
        "served": sum(&server_refs, |r| r.ops),
        "connected": connected,
        "other_errors": errors,
        "last_errno": last_errno,
        "wall_ns": wall.as_nanos() as u64,
        "user_ns": user_ns,
        "sys_ns": sys_ns,
        "cpu_ns": user_ns + sys_ns,
        "server_cpu_ns": sum(&server_refs, |r| r.user_ns + r.sys_ns),
        "process_cpu_ns": cpu_process,
        "out_rsts_delta": out_rsts_delta,
        "active_opens_delta": opens_delta,
        "per_thread_ops": clients.iter().map(|r| r.ops).collect::<Vec<_>>(),
    });
    println!("{json}");
    if o.workload == Workload::Refused && connected > 0 {
        bail!("something listens on a storm port: attempts connected instead of being refused");
    }
    if errors > 0 {
        bail!(
            "{errors} operations failed (last errno {last_errno}: {})",
            std::io::Error::from_raw_os_error(last_errno)
        );
    }
    Ok(())
}
