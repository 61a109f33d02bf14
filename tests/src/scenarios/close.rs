//! Resets by the application that owns the connection: refused, SO_LINGER 0, unread data, stale keep-alive, half-open, keep-alive timeout.

use super::*;

/// (1) connect() to a port with no listener.
pub fn refused(port: u16, v6: bool) -> Result<Outcome> {
    let s = tcp_socket(v6)?;
    let r = s.connect(&SockAddr::from(loopback(v6, port)));
    match r {
        Err(e) if errno(&e) == libc::ECONNREFUSED => {}
        other => bail!("connect: expected ECONNREFUSED, got {other:?}"),
    }
    vanish(s)?;
    let mut o = Outcome::new(
        port,
        vec![
            sent("no_listener", Some("none"), 1),
            received("connection_refused", Some("syn_sent"), 1),
        ],
    );
    o.note("connect → ECONNREFUSED");
    Ok(o)
}

/// (2) Server close() with SO_LINGER{1,0} after a request/response.
pub fn linger0(port: u16, v6: bool) -> Result<Outcome> {
    let (l, c, s) = established_pair(v6, port)?;
    set_linger_zero(&s)?;
    drop(s);
    client_reset(c)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("linger_zero_close", Some("established"), 1),
            received("peer_reset", Some("established"), 1),
        ],
    );
    o.note("client recv → ECONNRESET");
    Ok(o)
}

/// (3a) Server close() while 39 bytes of a second request are unread.
pub fn unread_close(port: u16) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(false, port)?;
    let extra = b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"; // 39 bytes
    assert_eq!(extra.len(), 39);
    c.write_all(extra)?;
    poll_until("39 unread bytes on the server", T, || Ok(unread_bytes(&s)? == 39))?;
    drop(s);
    client_reset(c)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("close_with_unread_data", Some("established"), 1),
            received("peer_reset", Some("established"), 1),
        ],
    );
    o.note("client recv → ECONNRESET");
    Ok(o)
}

/// (5a) Stale pooled keep-alive connection: the server idle-closes (FIN), the client writes its
/// next request 0.5 s later into the server's FIN_WAIT2 timewait socket.
pub fn stale_keepalive(port: u16) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(false, port)?;
    let cport = local_port(&c)?;
    drop(s); // graceful close: FIN
    wait_state(&c, TcpState::CloseWait, T)?;
    // the client's (delayed) ACK of the FIN turns the orphan into a FIN_WAIT2 timewait socket
    wait_proc_state(port, cport, TcpState::FinWait2, T)?;
    std::thread::sleep(Duration::from_millis(500));
    c.write_all(REQUEST).context("client sendall of request #2")?;
    wait_state(&c, TcpState::Close, T)?;
    let r1 = recv_once(&mut c);
    ensure!(
        matches!(r1, Ok(0)),
        "client recv after reset: expected EOF, got {r1:?}"
    );
    let w = c.write(REQUEST);
    expect_err(w, libc::EPIPE, "client second send")?;
    vanish(c)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            // The kernel reports state TIME_WAIT (the timewait mini-socket) with tw_substate
            // FIN_WAIT2; /proc/net/tcp and ss show it as FIN_WAIT2, and so does the label.
            sent("data_after_close", Some("fin_wait2"), 1),
            received("stale_connection", Some("close_wait"), 1),
        ],
    );
    o.note("client: send OK, recv → EOF, send → EPIPE");
    Ok(o)
}

/// (6a) Half-open: the server's accepted socket disappears silently (TCP_REPAIR + close) while
/// the listener stays; the client then writes (after `idle`).
pub fn half_open(port: u16, idle: Duration) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(false, port)?;
    let cport = local_port(&c)?;
    set_repair(&s)?;
    drop(s);
    wait_proc_gone(port, cport, T)?;
    if !idle.is_zero() {
        std::thread::sleep(idle);
    }
    c.write_all(REQUEST)?;
    client_reset(c)?;
    drop(l);
    let rx_cause = if idle >= Duration::from_secs(1) {
        "idle_reset"
    } else {
        "peer_reset"
    };
    let mut o = Outcome::new(
        port,
        vec![
            sent("unknown_connection", Some("listen"), 1),
            received(rx_cause, Some("established"), 1),
        ],
    );
    o.note(format!("client idle {idle:?}, send OK, recv → ECONNRESET"));
    Ok(o)
}

/// (9a) Keepalive timeout: the client probes (IDLE=1, INTVL=1, CNT=2) a peer whose socket drops
/// everything (classic BPF `ret #0`); ~3 s later the client gives up with a RST.
pub fn keepalive_timeout(port: u16) -> Result<Outcome> {
    let (l, mut c, s) = established_pair(false, port)?;
    attach_drop_all_filter(&s)?;
    let t0 = Instant::now();
    set_keepalive(&c, 1, 1, 2)?;
    // blocks until the keepalive timer kills the connection (read timeout is 10 s)
    let r = recv_once(&mut c);
    let waited = t0.elapsed();
    expect_err(r, libc::ETIMEDOUT, "client recv")?;
    ensure!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(8),
        "keepalive timeout after {waited:?}"
    );
    vanish(c)?;
    vanish(s)?; // still ESTABLISHED: the RST was dropped by its filter
    drop(l);
    let mut o = Outcome::new(port, vec![sent("keepalive_timeout", Some("established"), 1)]);
    o.note(format!("client recv → ETIMEDOUT after {waited:?}"));
    Ok(o)
}
