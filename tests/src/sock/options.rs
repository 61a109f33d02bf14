//! Socket options and ioctls the scenarios set or read to steer the kernel into a reset path:
//! linger, keepalive, buffer sizes, defer-accept, Fast Open, a drop-everything filter, and the
//! queue sizes.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use socket2::Socket;

pub(super) fn setsockopt_int(s: &Socket, level: i32, name: i32, val: i32) -> io::Result<()> {
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

/// TCP_FASTOPEN on a listener (queue length `qlen`).
pub fn set_fastopen(s: &Socket, qlen: i32) -> Result<()> {
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, qlen).context("TCP_FASTOPEN")
}
