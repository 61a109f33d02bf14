//! A reset storm for benchmarks (`cargo xtask bench`): N threads `connect()` to closed loopback
//! ports in a loop, so that every attempt makes the kernel send one RST (SYN to a closed port) and
//! receive it (the connecting socket is refused). Bounded in count *and* time, loopback only.
//!
//! ```text
//! storm [--netns /run/netns/NAME] [--threads N] [--port P] [--ports K]
//!       [--duration-ms MS] [--max-attempts N] [--addr 127.0.0.1]
//! ```
//! - `--netns`: every generator thread `setns()`s into that network namespace first (so its
//!   `Tcp: OutRsts` counts this storm's resets alone); without it the storm uses the host's loopback.
//! - ports `P .. P+K-1` are used round-robin (thread `t` starts at offset `t`); nothing may listen
//!   there.
//! - stops at `--duration-ms` (default 2000, at most 600000) or after `--max-attempts` per thread
//!   (default 5,000,000), whichever comes first.
//!
//! Prints one JSON object on stdout: attempts, refused, other errors, wall time, the generator
//! threads' CPU time (getrusage RUSAGE_THREAD, user and system; loopback softirq work is charged to
//! the thread that sends), the whole process's CPU time, and the namespace's `Tcp: OutRsts` delta.

use std::net::Ipv4Addr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rstwatch_tests::netns;

struct Options {
    netns: Option<String>,
    threads: usize,
    port: u16,
    ports: u32,
    duration: Duration,
    max_attempts: u64,
    addr: Ipv4Addr,
}

#[derive(Default, Clone, Copy)]
struct ThreadResult {
    attempts: u64,
    refused: u64,
    connected: u64,
    other_errors: u64,
    last_errno: i32,
    user_ns: u64,
    sys_ns: u64,
}

const MAX_DURATION: Duration = Duration::from_secs(600);
const MAX_THREADS: usize = 64;

fn usage() -> ! {
    eprintln!(
        "usage: storm [--netns PATH] [--threads N] [--port P] [--ports K] [--duration-ms MS] [--max-attempts N] [--addr 127.x.y.z]"
    );
    std::process::exit(2)
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
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
            "--netns" => o.netns = Some(value()),
            "--threads" => o.threads = value().parse().context("--threads")?,
            "--port" => o.port = value().parse().context("--port")?,
            "--ports" => o.ports = value().parse().context("--ports")?,
            "--duration-ms" => o.duration = Duration::from_millis(value().parse().context("--duration-ms")?),
            "--max-attempts" => o.max_attempts = value().parse().context("--max-attempts")?,
            "--addr" => o.addr = value().parse().context("--addr")?,
            "-h" | "--help" => usage(),
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
        bail!("--port {} --ports {}: the range must lie within 1..=65535", o.port, o.ports);
    }
    if o.duration.is_zero() || o.duration > MAX_DURATION {
        bail!("--duration-ms must be 1..={}", MAX_DURATION.as_millis());
    }
    if o.max_attempts == 0 {
        bail!("--max-attempts must be at least 1");
    }
    Ok(o)
}

fn thread_cpu() -> (u64, u64) {
    // SAFETY: getrusage fills the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
    (ns(ru.ru_utime), ns(ru.ru_stime))
}

fn process_cpu_ns() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

fn sockaddr(addr: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) },
        sin_zero: [0; 8],
    }
}

/// The loop: one socket per attempt, connect (refused), close. The clock is read every 64
/// attempts, so the time bound costs nothing measurable.
fn storm(targets: &[libc::sockaddr_in], offset: usize, deadline: Instant, max_attempts: u64) -> ThreadResult {
    let mut r = ThreadResult::default();
    let (u0, s0) = thread_cpu();
    let mut i = offset % targets.len();
    'outer: while r.attempts < max_attempts {
        for _ in 0..64 {
            // SAFETY: plain syscalls on a socket this loop owns.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    r.other_errors += 1;
                    r.last_errno = *libc::__errno_location();
                    break 'outer;
                }
                let sa = &targets[i];
                let rc = libc::connect(
                    fd,
                    (sa as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                if rc == 0 {
                    r.connected += 1;
                } else {
                    let e = *libc::__errno_location();
                    if e == libc::ECONNREFUSED {
                        r.refused += 1;
                    } else {
                        r.other_errors += 1;
                        r.last_errno = e;
                    }
                }
                libc::close(fd);
            }
            r.attempts += 1;
            i += 1;
            if i == targets.len() {
                i = 0;
            }
            if r.attempts >= max_attempts {
                break 'outer;
            }
        }
        if r.connected > 0 || r.other_errors > 1000 || Instant::now() >= deadline {
            break;
        }
    }
    let (u1, s1) = thread_cpu();
    r.user_ns = u1 - u0;
    r.sys_ns = s1 - s0;
    r
}

fn main() -> Result<()> {
    let o = parse_args()?;
    if let Some(path) = &o.netns {
        // The main thread joins too: OutRsts below is read in the storm's namespace, and threads
        // spawned from here start in it (each worker also joins explicitly).
        netns::enter(path)?;
    }
    let targets: Arc<Vec<libc::sockaddr_in>> =
        Arc::new((0..o.ports).map(|k| sockaddr(o.addr, (o.port as u32 + k) as u16)).collect());
    let out_rsts_before = netns::tcp_mib_here("OutRsts")?;
    let cpu_before = process_cpu_ns();
    let start_line = Arc::new(Barrier::new(o.threads + 1));
    let mut handles = Vec::new();
    // The deadline is fixed once every thread is ready: set after the barrier below.
    let deadline = Arc::new(std::sync::OnceLock::<Instant>::new());
    for t in 0..o.threads {
        let targets = targets.clone();
        let start_line = start_line.clone();
        let deadline = deadline.clone();
        let ns = o.netns.clone();
        let max = o.max_attempts;
        handles.push(
            std::thread::Builder::new()
                .name(format!("storm-{t}"))
                .spawn(move || -> Result<ThreadResult> {
                    if let Some(path) = &ns {
                        netns::enter(path)?;
                    }
                    start_line.wait();
                    let deadline = *deadline.wait();
                    Ok(storm(&targets, t, deadline, max))
                })?,
        );
    }
    start_line.wait();
    let started = Instant::now();
    let _ = deadline.set(started + o.duration);
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|_| anyhow::anyhow!("a storm thread panicked"))??);
    }
    let wall = started.elapsed();
    let cpu_process = process_cpu_ns() - cpu_before;
    let out_rsts_after = netns::tcp_mib_here("OutRsts")?;

    let sum = |f: fn(&ThreadResult) -> u64| results.iter().map(f).sum::<u64>();
    let attempts = sum(|r| r.attempts);
    let user_ns = sum(|r| r.user_ns);
    let sys_ns = sum(|r| r.sys_ns);
    let last_errno = results.iter().map(|r| r.last_errno).find(|e| *e != 0).unwrap_or(0);
    let json = serde_json::json!({
        "threads": o.threads,
        "port": o.port,
        "ports": o.ports,
        "netns": o.netns,
        "attempts": attempts,
        "refused": sum(|r| r.refused),
        "connected": sum(|r| r.connected),
        "other_errors": sum(|r| r.other_errors),
        "last_errno": last_errno,
        "wall_ns": wall.as_nanos() as u64,
        "user_ns": user_ns,
        "sys_ns": sys_ns,
        "cpu_ns": user_ns + sys_ns,
        "process_cpu_ns": cpu_process,
        "out_rsts_delta": out_rsts_after.wrapping_sub(out_rsts_before),
        "per_thread_attempts": results.iter().map(|r| r.attempts).collect::<Vec<_>>(),
    });
    println!("{json}");
    if sum(|r| r.connected) > 0 {
        bail!("something listens on a storm port: attempts connected instead of being refused");
    }
    if sum(|r| r.other_errors) > 0 {
        bail!("{} attempts failed otherwise than ECONNREFUSED (last errno {last_errno})", sum(|r| r.other_errors));
    }
    Ok(())
}
