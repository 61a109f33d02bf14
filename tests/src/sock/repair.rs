//! TCP_REPAIR: closing a socket silently (no FIN, no RST), and reading the sequence number it
//! would send next, so a scenario can hand-make a segment the peer accepts.

use std::io;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};
use socket2::Socket;

use super::options::setsockopt_int;

/// TCP_REPAIR = 1: a later close() removes the socket silently (no FIN, no RST).
pub fn set_repair(s: &Socket) -> Result<()> {
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR, 1).context("TCP_REPAIR")
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
