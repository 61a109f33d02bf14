//! Ordinary connections without a reset: a listener in this process, client threads that connect,
//! send a 64-byte request, read a 64-byte response and close first, and server threads that
//! accept, read the request, answer and close after the client's FIN (so both sides have read
//! everything before they close: no RST for unread data, and TIME_WAIT lands on the client).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rstwatch_tests::netns;

use super::{MAX_ERRORS, Options, Start, ThreadResult, errno, join, sockaddr, spawn_workers, timed};

const MESSAGE: usize = 64;
/// The listener's receive timeout: how often an idle server thread looks at the stop flag.
/// Accepted sockets inherit it; their reads retry until [`EXCHANGE_TIMEOUT`].
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// Longest wait for the peer within one connection (both sides), so nothing blocks unbounded.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits for the workers: (clients, servers, when the clients were done), the time the servers take
/// to notice the stop left out.
pub type Joined = Box<dyn FnOnce() -> Result<(Vec<ThreadResult>, Vec<ThreadResult>, Instant)>>;

/// Per-namespace settings (they vanish with the namespace): every client close leaves a TIME_WAIT
/// socket on an ephemeral port for 60 s, so use the whole port range and let connect() reuse
/// TIME_WAIT ports (the reuse delay, where the kernel has it, from 1 s down to 1 ms).
pub fn tune_namespace() -> Result<()> {
    netns::write_sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    netns::write_sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    if std::path::Path::new("/proc/sys/net/ipv4/tcp_tw_reuse_delay").exists() {
        netns::write_sysctl("net.ipv4.tcp_tw_reuse_delay", "1")?;
    }
    Ok(())
}

fn timeval(d: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    }
}

fn set_rcvtimeo(fd: libc::c_int, d: Duration) -> bool {
    let tv = timeval(d);
    // SAFETY: setsockopt reads a timeval we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        ) == 0
    }
}

fn listener(o: &Options) -> Result<libc::c_int> {
    let sa = sockaddr(o.addr, o.port);
    // SAFETY: plain syscalls on a socket we own; it lives until the process exits.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len) != 0 {
            bail!("bind {}:{}: {}", o.addr, o.port, std::io::Error::last_os_error());
        }
        if libc::listen(fd, 4096) != 0 || !set_rcvtimeo(fd, ACCEPT_POLL) {
            bail!(
                "listen on {}:{}: {}",
                o.addr,
                o.port,
                std::io::Error::last_os_error()
            );
        }
        Ok(fd)
    }
}

/// Read exactly `buf.len()` bytes; `patient` retries timed-out reads until `EXCHANGE_TIMEOUT`.
fn read_full(fd: libc::c_int, buf: &mut [u8], patient: bool) -> bool {
    let mut got = 0;
    let mut give_up: Option<Instant> = None;
    while got < buf.len() {
        // SAFETY: reads into the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n > 0 {
            got += n as usize;
        } else if n < 0 && retry(patient, &mut give_up) {
            continue;
        } else {
            return false;
        }
    }
    true
}

/// Read until the peer's FIN; false on data or an error.
fn read_eof(fd: libc::c_int) -> bool {
    let mut give_up = None;
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reads into a local buffer.
        match unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) } {
            0 => return true,
            n if n < 0 && retry(true, &mut give_up) => continue,
            _ => return false,
        }
    }
}

fn retry(patient: bool, give_up: &mut Option<Instant>) -> bool {
    let e = errno();
    if e == libc::EINTR {
        return true;
    }
    if !patient || (e != libc::EAGAIN && e != libc::EWOULDBLOCK) {
        return false;
    }
    Instant::now() < *give_up.get_or_insert_with(|| Instant::now() + EXCHANGE_TIMEOUT)
}

fn write_full(fd: libc::c_int, buf: &[u8]) -> bool {
    // SAFETY: writes from a buffer we own; 64 bytes fit any socket buffer at once.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) == buf.len() as isize }
}

/// One server thread: accept, read the request, answer, wait for the client's FIN, close.
fn serve(r: &mut ThreadResult, lfd: libc::c_int, stop: &AtomicBool) {
    let mut buf = [0u8; MESSAGE];
    let response = [b'R'; MESSAGE];
    while !stop.load(Ordering::Relaxed) && r.other_errors <= MAX_ERRORS {
        // SAFETY: accept on our listener; the connection is closed below.
        let fd = unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = errno();
            if e != libc::EAGAIN && e != libc::EWOULDBLOCK && e != libc::EINTR {
                r.error();
            }
            continue;
        }
        r.attempts += 1;
        let ok = read_full(fd, &mut buf, true) && write_full(fd, &response) && read_eof(fd);
        if ok {
            r.ops += 1;
        } else {
            r.error();
        }
        // SAFETY: closes the accepted socket.
        unsafe { libc::close(fd) };
    }
}

/// One client connection; true when request and response went through.
fn connection(target: &libc::sockaddr_in, request: &[u8], buf: &mut [u8]) -> bool {
    // SAFETY: plain syscalls on a socket this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let ok = set_rcvtimeo(fd, EXCHANGE_TIMEOUT)
            && libc::connect(
                fd,
                (target as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) == 0
            && write_full(fd, request)
            && read_full(fd, buf, false);
        libc::close(fd);
        ok
    }
}

/// The clock is read every 16 connections.
fn client(r: &mut ThreadResult, target: &libc::sockaddr_in, deadline: Instant, max_attempts: u64) {
    let request = [b'Q'; MESSAGE];
    let mut buf = [0u8; MESSAGE];
    while r.attempts < max_attempts && r.other_errors <= MAX_ERRORS && Instant::now() < deadline {
        for _ in 0..16 {
            r.attempts += 1;
            if connection(target, &request, &mut buf) {
                r.ops += 1;
            } else {
                r.error();
            }
            if r.attempts >= max_attempts {
                break;
            }
        }
    }
}

/// Listen, start the server and client threads; the returned closure waits for the clients, then
/// stops the servers.
pub fn spawn(o: &Options, start: &Arc<Start>) -> Result<Joined> {
    let lfd = listener(o).context("the connection workload's listener")?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let servers = spawn_workers("server", o.threads, &o.netns, start, move |_, _| {
        timed(|r| serve(r, lfd, &s))
    })?;
    let target = sockaddr(o.addr, o.port);
    let max = o.max_attempts;
    let clients = spawn_workers("client", o.threads, &o.netns, start, move |_, deadline| {
        timed(|r| client(r, &target, deadline, max))
    })?;
    Ok(Box::new(move || {
        let clients = join(clients);
        let done = Instant::now();
        // Every connection a client started has been answered: the servers only wait now.
        stop.store(true, Ordering::Relaxed);
        let servers = join(servers)?;
        Ok((clients?, servers, done))
    }))
}
