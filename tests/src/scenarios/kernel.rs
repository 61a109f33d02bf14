//! The kernel's own corners: a burst of refusals, SYN to TIME_WAIT, AF_UNSPEC disconnect, TCP Fast Open, memory pressure.

use super::*;

/// Exactness: `n` refused connects to a closed port (bounded: at most 60 s).
pub fn refused_many(port: u16, n: u64) -> Result<Outcome> {
    let start = Instant::now();
    let addr = SockAddr::from(loopback(false, port));
    for i in 0..n {
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "only {i} of {n} connects in 60 s"
        );
        let s = tcp_socket(false)?;
        match s.connect(&addr) {
            Err(e) if errno(&e) == libc::ECONNREFUSED => {}
            other => bail!("connect #{i}: expected ECONNREFUSED, got {other:?}"),
        }
    }
    let mut o = Outcome::new(
        port,
        vec![
            sent("no_listener", Some("none"), n),
            received("connection_refused", Some("syn_sent"), n),
        ],
    );
    o.note(format!("{n} connects refused in {:?}", start.elapsed()));
    Ok(o)
}

/// (13, TX TCP_TIMEWAIT_SOCKET with a SYN trigger) The server closes first after a
/// request/response; the client's ACK of the FIN turns the server's orphan into a FIN_WAIT2
/// time-wait socket. The client reads its `write_seq` (= the time-wait's `tw_rcv_nxt`) in repair
/// mode and vanishes; a SYN with that sequence number, from the client's address and port, is
/// in-window for the time-wait, which answers it with a RST (tcp_timewait_state_process:
/// FIN_WAIT2 substate, SYN with seq >= rcv_nxt → TCP_TW_RST). The RST goes to a port without a
/// socket, where it is dropped: nothing is received.
pub fn timewait_syn(port: u16) -> Result<Outcome> {
    let (l, c, s) = established_pair(false, port)?;
    let cport = local_port(&c)?;
    drop(s); // graceful close: FIN
    wait_state(&c, TcpState::CloseWait, T)?;
    wait_proc_state(port, cport, TcpState::FinWait2, T)?;
    let seq = send_queue_seq(&c)?;
    drop(c); // in repair mode: gone without a FIN or RST
    wait_proc_gone(cport, port, T)?;
    send_raw_tcp_v4(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, cport),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        seq,
        TCP_FLAG_SYN,
    )?;
    // The RST also removes the time-wait socket.
    wait_proc_gone(port, cport, T).context("the FIN_WAIT2 time-wait socket did not go away after the SYN")?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            // TIME_WAIT mini-socket in the FIN_WAIT2 substate: labelled fin_wait2.
            sent("timewait_segment", Some("fin_wait2"), 1),
        ],
    );
    o.note(format!(
        "SYN seq {seq} from port {cport} into the FIN_WAIT2 time-wait; its RST met no socket"
    ));
    Ok(o)
}

/// (other, TX TCP_STATE) After a request/response, the client calls connect(AF_UNSPEC):
/// tcp_disconnect() moves the ESTABLISHED socket to CLOSE and sends a RST. Not an orphan, no
/// SO_LINGER 0: none of the TCP_STATE stories fits, so rstwatch says `other`.
pub fn disconnect_unspec(port: u16) -> Result<Outcome> {
    let (l, mut c, mut s) = established_pair(false, port)?;
    disconnect(&c)?;
    ensure!(
        tcp_state(&c)? == TcpState::Close,
        "client not CLOSE after connect(AF_UNSPEC): {:?}",
        tcp_state(&c)?
    );
    wait_state(&s, TcpState::Close, T)?;
    expect_err(recv_once(&mut s), libc::ECONNRESET, "server recv")?;
    // tcp_disconnect() also leaves ECONNRESET on the disconnected socket itself.
    expect_err(recv_once(&mut c), libc::ECONNRESET, "client recv")?;
    vanish(c)?;
    vanish(s)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("other", Some("established"), 1),
            received("peer_reset", Some("established"), 1),
        ],
    );
    o.note("client connect(AF_UNSPEC) → 0, recv → ECONNRESET; server recv → ECONNRESET");
    Ok(o)
}

/// (other, received in SYN_RECV) TCP Fast Open without cookies (tcp_fastopen = 0x207 in the
/// namespace). The client, bound to 127.0.0.2:`port` (so that its side of the flow is on the
/// scenario's port too) with a drop-all socket filter, sends SYN+data with sendto(MSG_FASTOPEN);
/// the server creates a Fast Open child in SYN_RECV at once (accept() returns it) and answers
/// with a SYN-ACK the client's filter drops. The client then vanishes (close in SYN_SENT is
/// silent). The child retransmits its SYN-ACK after ~1 s (the timing this scenario is about);
/// it meets no socket, so the host answers with a RST (NO_SOCKET, trigger SYN|ACK); the RST is
/// in window for the child and tcp_check_req() resets it (reqsk_fastopen_remove + tcp_reset):
/// a received reset in SYN_RECV, a state outside the received table.
pub fn fastopen_child_reset(port: u16) -> Result<Outcome> {
    ensure!(
        netns::read_sysctl("net/ipv4/tcp_fastopen")? == "519",
        "tcp_fastopen is not 0x207 in this namespace"
    );
    let l = listen(false, port, 16)?;
    set_fastopen(&l, 16)?;
    let c = tcp_socket(false)?;
    c.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::new(127, 0, 0, 2),
        port,
    )))
    .context("bind the client to 127.0.0.2")?;
    attach_drop_all_filter(&c)?;
    c.set_nonblocking(true)?;
    let data = b"GET / HTTP/1.1\r\n\r\n"; // 18 bytes, in the SYN
    let queued = sendto_fastopen(&c, data, loopback(false, port))?;
    ensure!(
        queued == data.len(),
        "sendto(MSG_FASTOPEN) queued {queued} bytes, not {}: no SYN-data?",
        data.len()
    );
    let t0 = Instant::now();
    // A Fast Open child is queued for accept() as soon as the SYN is processed.
    let mut child = accept(&l)?;
    ensure!(
        tcp_state(&child)? == TcpState::SynRecv,
        "accepted child in {:?}, not a Fast Open child in SYN_RECV",
        tcp_state(&child)?
    );
    ensure!(
        tcp_state(&c)? == TcpState::SynSent,
        "client in {:?}, not SYN_SENT (its filter should drop the SYN-ACK)",
        tcp_state(&c)?
    );
    vanish(c)?;
    // The SYN-ACK retransmission timer fires after ~1 s (TCP_TIMEOUT_INIT).
    wait_state(&child, TcpState::Close, Duration::from_secs(4))
        .context("the Fast Open child was not reset")?;
    let waited = t0.elapsed();
    // The data of the SYN is still there; then the reset.
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut child, &mut buf)?;
    ensure!(
        &buf[..n] == data,
        "child read {:?}, expected the SYN's data",
        &buf[..n]
    );
    let r = recv_once(&mut child);
    let after_data = format!("{r:?}");
    vanish(child)?;
    drop(l);
    let mut o = Outcome::new(
        port,
        vec![
            sent("unknown_connection", Some("none"), 1),
            received("other", Some("syn_recv"), 1),
        ],
    );
    o.note(format!(
        "child reset {waited:?} after the SYN; child read the SYN's {n} bytes, then {after_data}"
    ));
    Ok(o)
}

/// (11g) TCP_ABORT_ON_MEMORY. Needs `net.ipv4.tcp_max_orphans` = 0, a global sysctl: run only in a
/// VM (`cargo xtask vm-test`). The server writes to a client that drops everything (so its data
/// stays unacknowledged) and closes: the socket becomes an orphan in FIN_WAIT1, and the orphan
/// count now exceeds the limit, so the kernel resets it, either in close() or on the orphan's
/// next retransmission (tcp_out_of_resources); which one depends on when the kernel last
/// refreshed its orphan count. The client's filter drops the RST.
pub fn memory_pressure(port: u16) -> Result<Outcome> {
    const KEY: &str = "net/ipv4/tcp_max_orphans";
    let (l, c, mut s) = established_pair(false, port)?;
    let (sport, cport) = (port, local_port(&c)?);
    attach_drop_all_filter(&c)?;
    let saved = host_sysctl(KEY, None)?;
    let result = (|| -> Result<()> {
        host_sysctl(KEY, Some("0"))?;
        s.write_all(&[b'x'; 1000])?;
        drop(s);
        wait_proc_gone(sport, cport, T).context("the orphan was never reset")
    })();
    host_sysctl(KEY, Some(&saved))?;
    result?;
    vanish(c)?; // still ESTABLISHED: its filter dropped the data, the FIN and the RST
    drop(l);
    let mut o = Outcome::new(port, vec![sent("memory_pressure", Some("fin_wait1"), 1)]);
    o.note(format!(
        "orphan reset with tcp_max_orphans=0 (restored to {saved})"
    ));
    Ok(o)
}

/// Read (and with `value`, write) a sysctl of the initial network namespace: global ones like
/// tcp_max_orphans exist only there. A thread of its own, because this one is in the test's netns.
pub(super) fn host_sysctl(key: &'static str, value: Option<&str>) -> Result<String> {
    let value = value.map(str::to_string);
    std::thread::spawn(move || -> Result<String> {
        netns::enter("/proc/1/ns/net")?;
        if let Some(v) = value {
            netns::write_sysctl(key, &v)?;
        }
        netns::read_sysctl(key)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))?
}
