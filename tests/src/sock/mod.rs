//! Socket helpers for the scenarios: thin wrappers over setsockopt/ioctl/TCP_INFO, and bounded polling
//! of kernel-visible socket state (`/proc/thread-self/net/tcp{,6}`).

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// TCP states as numbered by the kernel (`include/net/tcp_states.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    pub fn from_u8(v: u8) -> Option<TcpState> {
        use TcpState::*;
        Some(match v {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => return None,
        })
    }
}

pub fn loopback(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0))
    } else {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }
}

fn domain(v6: bool) -> Domain {
    if v6 { Domain::IPV6 } else { Domain::IPV4 }
}

/// A fresh TCP socket (blocking), with bounded read/write timeouts so no scenario can hang forever.
pub fn tcp_socket(v6: bool) -> Result<Socket> {
    let s = Socket::new(domain(v6), Type::STREAM, Some(Protocol::TCP))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Listener on loopback `port` with SO_REUSEADDR.
pub fn listen(v6: bool, port: u16, backlog: i32) -> Result<Socket> {
    let s = tcp_socket(v6)?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(loopback(v6, port)))
        .with_context(|| format!("bind port {port}"))?;
    s.listen(backlog)?;
    Ok(s)
}

pub fn connect(v6: bool, port: u16) -> Result<Socket> {
    let s = tcp_socket(v6)?;
    s.connect_timeout(&SockAddr::from(loopback(v6, port)), Duration::from_secs(5))
        .with_context(|| format!("connect to port {port}"))?;
    Ok(s)
}

/// accept() with a bounded wait.
pub fn accept(listener: &Socket) -> Result<Socket> {
    wait_readable(listener, Duration::from_secs(5)).context("accept: nothing to accept")?;
    let (s, _) = listener.accept()?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Connect a client to `listener` (bound to `port`) and accept it: (client, server side).
pub fn pair(v6: bool, listener: &Socket, port: u16) -> Result<(Socket, Socket)> {
    let c = connect(v6, port)?;
    let s = accept(listener)?;
    Ok((c, s))
}

/// Client sends `req`, server reads all of it, server answers `resp`, client reads all of it.
pub fn exchange(client: &mut Socket, server: &mut Socket, req: &[u8], resp: &[u8]) -> Result<()> {
    client.write_all(req)?;
    let mut buf = vec![0u8; req.len()];
    server.read_exact(&mut buf).context("server read request")?;
    server.write_all(resp)?;
    let mut buf = vec![0u8; resp.len()];
    client.read_exact(&mut buf).context("client read response")?;
    Ok(())
}

pub const REQUEST: &[u8] = b"GET /resource HTTP/1.1\r\nHost: rstwatch.test\r\n\r\n";
pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

pub fn local_port(s: &Socket) -> Result<u16> {
    Ok(s.local_addr()?.as_socket().context("not an inet socket")?.port())
}

/// poll() for readability, bounded.
pub fn wait_readable(s: &Socket, timeout: Duration) -> Result<()> {
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    match rc {
        1 => Ok(()),
        0 => bail!("timed out after {timeout:?}"),
        _ => Err(io::Error::last_os_error().into()),
    }
}

fn setsockopt_int(s: &Socket, level: i32, name: i32, val: i32) -> io::Result<()> {
    // SAFETY: pointer to a live i32 with its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &val as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SO_LINGER {on, 0}: close() aborts with a RST.
pub fn set_linger_zero(s: &Socket) -> Result<()> {
    s.set_linger(Some(Duration::ZERO))?;
    Ok(())
}

/// TCP_REPAIR = 1: a later close() removes the socket silently (no FIN, no RST).
pub fn set_repair(s: &Socket) -> Result<()> {
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR, 1).context("TCP_REPAIR")
}

/// TCP_LINGER2 (seconds; -1 = abort from FIN_WAIT2 at close).
pub fn set_linger2(s: &Socket, secs: i32) -> Result<()> {
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_LINGER2, secs).context("TCP_LINGER2")
}

/// TCP_DEFER_ACCEPT on a connecting socket delays the final ACK of the handshake.
pub fn set_defer_accept(s: &Socket, secs: i32) -> Result<()> {
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, secs).context("TCP_DEFER_ACCEPT")
}

pub fn set_rcvbuf(s: &Socket, bytes: usize) -> Result<()> {
    s.set_recv_buffer_size(bytes)?;
    Ok(())
}

/// Keepalive with idle/interval in seconds and `count` probes.
pub fn set_keepalive(s: &Socket, idle: u64, intvl: u64, count: u32) -> Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(idle))
        .with_interval(Duration::from_secs(intvl))
        .with_retries(count);
    s.set_tcp_keepalive(&ka)?;
    Ok(())
}

/// A classic BPF socket filter of one instruction, `ret #0`: the socket drops every segment it
/// receives (after the socket lookup, before TCP sees it).
pub fn attach_drop_all_filter(s: &Socket) -> Result<()> {
    let mut insns = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_mut_ptr(),
    };
    // SAFETY: valid sock_fprog pointing at a live array.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_ATTACH_FILTER: {}", io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl_int(s: &Socket, req: libc::c_ulong) -> Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), req as _, &mut v as *mut libc::c_int) };
    if rc != 0 {
        bail!("ioctl {req:#x}: {}", io::Error::last_os_error());
    }
    Ok(v)
}

/// Bytes received but not read (SIOCINQ).
pub fn unread_bytes(s: &Socket) -> Result<i32> {
    ioctl_int(s, libc::FIONREAD as libc::c_ulong)
}

/// Bytes written but not yet sent (SIOCOUTQNSD).
pub fn unsent_bytes(s: &Socket) -> Result<i32> {
    const SIOCOUTQNSD: libc::c_ulong = 0x894B;
    ioctl_int(s, SIOCOUTQNSD)
}

/// Current TCP state from TCP_INFO.
pub fn tcp_state(s: &Socket) -> Result<TcpState> {
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: buffer of the right size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        bail!("TCP_INFO: {}", io::Error::last_os_error());
    }
    // SAFETY: zero-initialised and filled by the kernel.
    let st = unsafe { info.assume_init() }.tcpi_state;
    TcpState::from_u8(st).with_context(|| format!("unknown tcp state {st}"))
}

/// Poll `cond` every millisecond or so until it holds, at most `timeout`.
pub fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn wait_state(s: &Socket, want: TcpState, timeout: Duration) -> Result<()> {
    let mut last = None;
    poll_until(&format!("TCP state {want:?}"), timeout, || {
        let st = tcp_state(s)?;
        last = Some(st);
        Ok(st == want)
    })
    .with_context(|| format!("last state {last:?}"))
}

/// One row of /proc/net/tcp{,6}.
#[derive(Clone, Debug)]
pub struct ProcTcp {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: u8,
}

/// Sockets of the calling thread's namespace (full, timewait and request socks all show up).
pub fn proc_tcp_here() -> Result<Vec<ProcTcp>> {
    let mut out = Vec::new();
    for f in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("read {f}")),
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 4 {
                continue;
            }
            let port = |c: &str| -> Result<u16> {
                let p = c.rsplit(':').next().context("addr")?;
                Ok(u16::from_str_radix(p, 16)?)
            };
            out.push(ProcTcp {
                local_port: port(cols[1])?,
                remote_port: port(cols[2])?,
                state: u8::from_str_radix(cols[3], 16)?,
            });
        }
    }
    Ok(out)
}

/// Wait until the socket (local_port, remote_port) is in `state` in this thread's namespace.
pub fn wait_proc_state(local_port: u16, remote_port: u16, state: TcpState, timeout: Duration) -> Result<()> {
    let mut last = Vec::new();
    poll_until(
        &format!("{local_port}->{remote_port} in {state:?} in /proc/net/tcp"),
        timeout,
        || {
            last = proc_tcp_here()?
                .into_iter()
                .filter(|r| r.local_port == local_port && r.remote_port == remote_port)
                .collect();
            Ok(last.iter().any(|r| r.state == state as u8))
        },
    )
    .with_context(|| format!("last rows {last:?}"))
}

/// Wait until no socket with this 4-tuple's ports exists any more.
pub fn wait_proc_gone(local_port: u16, remote_port: u16, timeout: Duration) -> Result<()> {
    poll_until("socket to disappear", timeout, || {
        Ok(!proc_tcp_here()?
            .iter()
            .any(|r| r.local_port == local_port && r.remote_port == remote_port))
    })
}

/// The errno of an io::Error (0 if none).
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// recv() once into a small buffer: Ok(n) or the error.
pub fn recv_once(s: &mut Socket) -> io::Result<usize> {
    let mut buf = [0u8; 4096];
    s.read(&mut buf)
}

/// Read until an error or EOF, at most `limit` bytes; returns (bytes read, final result).
pub fn drain(s: &mut Socket, limit: usize) -> (usize, io::Result<usize>) {
    let mut total = 0;
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (total, Ok(0)),
            Ok(n) => {
                total += n;
                if total >= limit {
                    return (total, Ok(n));
                }
            }
            Err(e) => return (total, Err(e)),
        }
    }
}

/// SO_ERROR (pending socket error).
pub fn take_error(s: &Socket) -> Option<io::Error> {
    s.take_error().ok().flatten()
}

/// The sequence number of the next byte the socket would send (its `write_seq`), read through
/// TCP_REPAIR (TCP_REPAIR_QUEUE = TCP_SEND_QUEUE, then TCP_QUEUE_SEQ). The socket is left in
/// repair mode, so its close() is silent in any state.
pub fn send_queue_seq(s: &Socket) -> Result<u32> {
    const TCP_SEND_QUEUE: i32 = 2;
    set_repair(s)?;
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        .context("TCP_REPAIR_QUEUE")?;
    let mut v: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: pointer to a live u32 with its size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUEUE_SEQ,
            &mut v as *mut u32 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        bail!("TCP_QUEUE_SEQ: {}", io::Error::last_os_error());
    }
    Ok(v)
}

/// One's-complement sum of 16-bit big-endian words (RFC 1071), not yet inverted.
fn csum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for w in &mut chunks {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A bare 20-byte IPv4 TCP header (no options) with a correct checksum over the pseudo-header.
pub fn tcp_segment_v4(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, ack: u32, flags: u8) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&src.port().to_be_bytes());
    h[2..4].copy_from_slice(&dst.port().to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[12] = 5 << 4; // data offset: 5 words
    h[13] = flags;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes()); // window
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&(h.len() as u16).to_be_bytes());
    let sum = csum_fold(csum_add(csum_add(0, &pseudo), &h));
    h[16..18].copy_from_slice(&sum.to_be_bytes());
    h
}

pub const TCP_FLAG_SYN: u8 = 0x02;

/// Send one hand-made TCP segment from `src` to `dst` through a raw IPv4 socket (the kernel adds
/// the IP header; the source address must be one the kernel would pick for `dst`, i.e. 127.0.0.1
/// on loopback). Only for loopback inside a scenario's namespace.
pub fn send_raw_tcp_v4(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, flags: u8) -> Result<()> {
    ensure_loopback(*src.ip())?;
    ensure_loopback(*dst.ip())?;
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP)).context("raw socket")?;
    let seg = tcp_segment_v4(src, dst, seq, 0, flags);
    let n = raw
        .send_to(&seg, &SockAddr::from(SocketAddrV4::new(*dst.ip(), 0)))
        .context("raw sendto")?;
    if n != seg.len() {
        bail!("raw sendto: {n} of {} bytes", seg.len());
    }
    Ok(())
}

fn ensure_loopback(ip: Ipv4Addr) -> Result<()> {
    if !ip.is_loopback() {
        bail!("{ip} is not a loopback address");
    }
    Ok(())
}

/// connect(AF_UNSPEC): `tcp_disconnect()` on a connected socket (a RST from ESTABLISHED).
pub fn disconnect(s: &Socket) -> Result<()> {
    // SAFETY: an all-zero sockaddr with family AF_UNSPEC, passed with its size.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    let rc = unsafe {
        libc::connect(
            s.as_raw_fd(),
            &sa,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("connect(AF_UNSPEC): {}", io::Error::last_os_error());
    }
    Ok(())
}

/// TCP_FASTOPEN on a listener (queue length `qlen`).
pub fn set_fastopen(s: &Socket, qlen: i32) -> Result<()> {
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, qlen).context("TCP_FASTOPEN")
}

/// sendto(MSG_FASTOPEN): connect and send `data` in the SYN. The socket should be non-blocking
/// (a blocking one waits for the handshake); returns the bytes queued.
pub fn sendto_fastopen(s: &Socket, data: &[u8], to: SocketAddr) -> Result<usize> {
    s.send_to_with_flags(data, &SockAddr::from(to), libc::MSG_FASTOPEN)
        .context("sendto(MSG_FASTOPEN)")
}
