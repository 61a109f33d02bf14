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

/// The client saw the reset: its socket is CLOSEd and recv fails with ECONNRESET; then it goes
/// silently.
pub(super) fn client_reset(mut c: Socket) -> Result<()> {
    wait_state(&c, TcpState::Close, T)?;
    expect_err(recv_once(&mut c), libc::ECONNRESET, "client recv")?;
    vanish(c)
}

/// The client's socket is CLOSEd, recv reads end of file and the next write (`what`) fails
/// with EPIPE: the reset closed it after the peer's FIN; then it goes silently.
pub(super) fn eof_then_epipe(mut c: Socket, what: &str) -> Result<()> {
    wait_state(&c, TcpState::Close, T)?;
    let r = recv_once(&mut c);
    ensure!(matches!(r, Ok(0)), "client recv: expected EOF, got {r:?}");
    expect_err(c.write(REQUEST), libc::EPIPE, what)?;
    vanish(c)
}
