//! What the scenarios share: silent teardown, waits on acknowledged data, errno checks.

use super::*;

pub(super) const T: Duration = Duration::from_secs(5);

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
pub(super) fn wait_acked(s: &Socket) -> Result<()> {
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

pub(super) fn expect_err(r: std::io::Result<usize>, errno_want: i32, what: &str) -> Result<()> {
    match r {
        Err(e) if errno(&e) == errno_want => Ok(()),
        other => bail!("{what}: expected errno {errno_want}, got {other:?}"),
    }
}

pub(super) fn established_pair(v6: bool, port: u16) -> Result<(Socket, Socket, Socket)> {
    let l = listen(v6, port, 16)?;
    let (mut c, mut s) = pair(v6, &l, port)?;
    exchange(&mut c, &mut s, REQUEST, RESPONSE)?;
    wait_acked(&s)?;
    wait_acked(&c)?;
    Ok((l, c, s))
}
