//! Plain TCP sockets on loopback, as the scenarios' applications use them: bounded connect,
//! accept and exchange, reads that report the error a reset leaves, and connect(AF_UNSPEC) and
//! TCP Fast Open, two ways of making the kernel send or face a reset.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

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

/// sendto(MSG_FASTOPEN): connect and send `data` in the SYN. The socket should be non-blocking
/// (a blocking one waits for the handshake); returns the bytes queued.
pub fn sendto_fastopen(s: &Socket, data: &[u8], to: SocketAddr) -> Result<usize> {
    s.send_to_with_flags(data, &SockAddr::from(to), libc::MSG_FASTOPEN)
        .context("sendto(MSG_FASTOPEN)")
}
