//! Resets of closing connections: FIN_WAIT2 linger, LAST_ACK with unsent data, data after close.

use super::*;

/// (11e1) TCP_LINGER2 = -1, shutdown(SHUT_WR), then close() in FIN_WAIT2.
pub fn fin_wait2_linger(port: u16) -> Result<Outcome> {
    let (l, c, s) = established_pair(false, port)?;
    set_linger2(&s, -1)?;
    s.shutdown(Shutdown::Write)?;
    wait_state(&s, TcpState::FinWait2, T)?;
    wait_state(&c, TcpState::CloseWait, T)?;
    drop(s);
    eof_then_epipe(c, "client send")?;
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
    poll_until("unsent bytes on the server", T, || Ok(unsent_bytes(&s)? > 0))?;
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
    eof_then_epipe(c, "client second send")?;
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
    eof_then_epipe(c, "client second send")?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("data_after_close", Some("fin_wait2"), 1),
            received("stale_connection", Some("close_wait"), 1),
            received("reset_while_closing", None, 0),
        ],
    );
    o.note("client send OK, recv → EOF, send → EPIPE; server orphan FIN_WAIT2 got a false tcp_reset()");
    Ok(o)
}
