//! Resets around listeners and administrators: a full accept queue, TIME_WAIT reuse, a listener that closed, `ss -K`.

use super::*;

/// (7a) Accept-queue overflow with tcp_abort_on_overflow=1 (set in the namespace).
///
/// Deterministic choreography, backlog B = 2: first B "deferred" clients (TCP_DEFER_ACCEPT on the
/// connecting socket delays their final ACK by up to 200 ms) get real request socks; then B + 1
/// plain clients arrive while the request queue is full, so they complete through SYN cookies at
/// once and fill the accept queue (full = more than B queued). When the deferred ACKs arrive, the
/// listener cannot queue the children and, with abort_on_overflow, answers each with a RST
/// (INVALID_SYN from the listener). The listener never accepts.
pub fn accept_overflow(port: u16) -> Result<Outcome> {
    ensure!(
        netns::read_sysctl("net/ipv4/tcp_abort_on_overflow")? == "1",
        "tcp_abort_on_overflow is not 1 in this namespace"
    );
    const BACKLOG: usize = 2;
    let l = listen(false, port, BACKLOG as i32)?;
    let mut deferred = Vec::new();
    for _ in 0..BACKLOG {
        let c = tcp_socket(false)?;
        set_defer_accept(&c, 1)?;
        c.set_nonblocking(true)?;
        match c.connect(&SockAddr::from(loopback(false, port))) {
            Ok(()) => {}
            Err(e) if errno(&e) == libc::EINPROGRESS => {}
            Err(e) => bail!("connect: {e}"),
        }
        // SYN-ACK received: ESTABLISHED on the client, its ACK held back
        wait_state(&c, TcpState::Established, T)?;
        deferred.push(c);
    }
    let mut plain = Vec::new();
    for _ in 0..=BACKLOG {
        let c = connect(false, port)?;
        wait_proc_state(port, local_port(&c)?, TcpState::Established, T)?;
        plain.push(c);
    }
    // The deferred ACKs go out within 200 ms (TCP_DELACK_MAX) and must be answered with RSTs.
    let start = Instant::now();
    let mut states: Vec<TcpState> = Vec::new();
    poll_until(
        "every deferred client to be reset",
        Duration::from_secs(2),
        || {
            states = deferred.iter().map(tcp_state).collect::<Result<_>>()?;
            Ok(states.iter().all(|s| *s == TcpState::Close))
        },
    )
    .with_context(|| format!("deferred client states {states:?}"))?;
    let took = start.elapsed();
    for c in &deferred {
        let mut c2 = c.try_clone()?;
        c2.set_nonblocking(false)?;
        expect_err(recv_once(&mut c2), libc::ECONNRESET, "deferred client recv")?;
    }
    for c in &plain {
        ensure!(
            tcp_state(c)? == TcpState::Established,
            "plain client not ESTABLISHED"
        );
    }
    let reset = deferred.len() as u64;
    // Clean up silently: clients first, then the queued children.
    for c in deferred.into_iter().chain(plain) {
        vanish(c)?;
    }
    l.set_nonblocking(true)?;
    let mut children = 0;
    loop {
        match l.accept() {
            Ok((child, _)) => {
                children += 1;
                vanish(child)?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => bail!("accept: {e}"),
        }
    }
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("accept_queue_overflow", Some("listen"), reset),
            received("handshake_reset", Some("established"), reset),
        ],
    );
    o.note(format!(
        "{reset} deferred clients reset {took:?} after connecting (recv → ECONNRESET); {children} children were queued"
    ));
    Ok(o)
}

/// (10b) Server closes first (TIME_WAIT on the server), client closes, listener closed; the client
/// reconnects from the same source port. The TIME_WAIT socket answers the SYN with an ACK, the
/// SYN_SENT client resets it (invalid ACK), the RST kills the TIME_WAIT, the retransmitted SYN
/// finds no socket: connection refused.
pub fn timewait_reconnect(port: u16) -> Result<Outcome> {
    let l = listen(false, port, 16)?;
    let c = tcp_socket(false)?;
    c.set_reuse_address(true)?;
    c.bind(&SockAddr::from(loopback(false, 0)))?;
    let cport = local_port(&c)?;
    c.connect(&SockAddr::from(loopback(false, port)))?;
    let mut c = c;
    let mut s = accept(&l)?;
    exchange(&mut c, &mut s, REQUEST, RESPONSE)?;
    wait_acked(&s)?;
    wait_acked(&c)?;
    drop(s); // server closes first
    wait_state(&c, TcpState::CloseWait, T)?;
    drop(c); // client closes: LAST_ACK → CLOSED
    wait_proc_state(port, cport, TcpState::TimeWait, T)?;
    wait_proc_gone(cport, port, T)?;
    drop(l);
    let t0 = Instant::now();
    let c2 = tcp_socket(false)?;
    c2.set_reuse_address(true)?;
    c2.bind(&SockAddr::from(loopback(false, cport)))
        .context("rebind the same source port")?;
    let r = c2.connect_timeout(&SockAddr::from(loopback(false, port)), Duration::from_secs(8));
    let waited = t0.elapsed();
    match r {
        Err(e) if errno(&e) == libc::ECONNREFUSED => {}
        other => bail!("reconnect: expected ECONNREFUSED, got {other:?} after {waited:?}"),
    }
    vanish(c2)?;
    let mut o = Outcome::new(
        port,
        vec![
            sent("invalid_segment", Some("syn_sent"), 1),
            sent("no_listener", Some("none"), 1),
            received("connection_refused", Some("syn_sent"), 1),
        ],
    );
    o.note(format!(
        "reconnect from port {cport} → ECONNREFUSED after {waited:?}"
    ));
    Ok(o)
}

/// (14) The server closes its listening socket while two handshaken connections wait in the accept
/// queue (one with 18 bytes of request). Neither client has received anything.
pub fn listener_closed(port: u16) -> Result<Outcome> {
    let l = listen(false, port, 16)?;
    let mut c1 = connect(false, port)?;
    let mut c2 = connect(false, port)?;
    c1.write_all(b"GET / HTTP/1.1\r\n\r\n")?; // 18 bytes
    for c in [&c1, &c2] {
        wait_proc_state(port, local_port(c)?, TcpState::Established, T)?;
    }
    wait_acked(&c1)?;
    drop(l);
    for c in [&mut c1, &mut c2] {
        wait_state(c, TcpState::Close, T)?;
        expect_err(recv_once(c), libc::ECONNRESET, "client recv")?;
    }
    vanish(c1)?;
    vanish(c2)?;
    let mut o = Outcome::new(
        port,
        vec![
            sent("listener_closed", Some("established"), 2),
            // c1's 18 bytes were acknowledged by its queued child (bytes_acked 19): its request
            // was taken and never answered. c2 sent nothing: still the opening exchange.
            received("reset_before_response", Some("established"), 1),
            received("handshake_reset", Some("established"), 1),
        ],
    );
    o.note("both clients recv → ECONNRESET");
    Ok(o)
}

/// (11f) `ss -K` kills the server's accepted socket (SOCK_DESTROY → tcp_abort).
pub fn admin_abort(port: u16) -> Result<Outcome> {
    let (l, mut c, mut s) = established_pair(false, port)?;
    let out = std::process::Command::new("ss")
        .args([
            "-K",
            "-t",
            "-n",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .context("run ss -K")?;
    ensure!(
        out.status.success(),
        "ss -K failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_state(&c, TcpState::Close, T)?;
    expect_err(recv_once(&mut s), libc::ECONNABORTED, "server recv")?;
    expect_err(recv_once(&mut c), libc::ECONNRESET, "client recv")?;
    vanish(c)?;
    vanish(s)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("admin_abort", Some("established"), 1),
            received("peer_reset", Some("established"), 1),
        ],
    );
    o.note("server recv → ECONNABORTED, client recv → ECONNRESET");
    Ok(o)
}
