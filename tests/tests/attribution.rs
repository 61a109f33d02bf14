//! Who felt it: the socket's owner (not whichever task ran the softirq), the errors applications
//! got, and resets no TCP stack sent (a firewall REJECT), against the daemon's real /metrics and
//! `rstwatch trace` JSON.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rstwatch_tests::{NetNs, daemon, scenarios, scrape, sock::*, trace_json::TraceJson};

/// Ports 21960–21969 belong to these tests.
const OWNER_PORT: u16 = 21960;
const ERRORS_PORT: u16 = 21961;
const REFUSED_PORT: u16 = 21962;
const REJECT_SYN_PORT: u16 = 21963;
const REJECT_DATA_PORT: u16 = 21964;

const T: Duration = Duration::from_secs(5);

fn series(filter: &[(&str, &str)]) -> Result<f64> {
    Ok(scrape()?.sum("rstwatch_resets_total", filter))
}

fn errors(filter: &[(&str, &str)]) -> Result<f64> {
    Ok(scrape()?.sum("rstwatch_socket_errors_total", filter))
}

/// Poll /metrics until `value()` reaches `expected` (bounded); then return what it is.
fn settle(expected: f64, value: impl Fn() -> Result<f64>) -> Result<f64> {
    let deadline = Instant::now() + T;
    loop {
        let now = value()?;
        if now >= expected || Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run `f` on a new thread (inside the caller's netns) whose comm is `name`.
fn named<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn_scoped(s, f)
            .expect("spawn")
            .join()
            .expect("join")
    })
}

/// The test process's name (its main thread's comm), which the `comm` label must carry whichever
/// of its threads connected or listened.
fn process_comm() -> String {
    std::fs::read_to_string(format!("/proc/{}/comm", std::process::id()))
        .map(|comm| comm.trim().to_string())
        .expect("/proc/PID/comm")
}

#[test]
fn the_owner_is_named_not_the_task_that_ran_the_softirq() -> Result<()> {
    daemon();
    let ns = NetNs::new()?;
    let port = OWNER_PORT.to_string();
    let process = process_comm();
    let trace = TraceJson::start(&["--port", &port])?;
    ns.run(|| -> Result<()> {
        let listener = named("rstw-listener", || listen(false, OWNER_PORT, 8))?;
        let mut client = named("rstw-client", || connect(false, OWNER_PORT))?;
        // The server side runs, and resets, in a task with another name: on loopback the client's
        // receive_reset runs inside that task's close().
        named("rstw-server", || -> Result<()> {
            let mut server = accept(&listener)?;
            client.write_all(b"ping")?;
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf)?;
            server.write_all(b"pong")?;
            client.read_exact(&mut buf)?;
            set_linger_zero(&server)?;
            drop(server);
            Ok(())
        })?;
        let err = client
            .read(&mut [0u8; 8])
            .expect_err("the client must see the reset");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET));
        Ok(())
    })??;

    let received = [
        ("direction", "received"),
        ("cause", "peer_reset"),
        ("port", port.as_str()),
    ];
    let by_process = settle(1.0, || {
        series(&[received.as_slice(), &[("comm", process.as_str())]].concat())
    })?;
    assert_eq!(
        by_process, 1.0,
        "the label names the process, whichever thread connected"
    );
    for thread in ["rstw-client", "rstw-server"] {
        assert_eq!(series(&[received.as_slice(), &[("comm", thread)]].concat())?, 0.0);
    }
    let sent = [
        ("direction", "sent"),
        ("cause", "linger_zero_close"),
        ("port", port.as_str()),
    ];
    assert_eq!(
        series(&[sent.as_slice(), &[("comm", process.as_str())]].concat())?,
        1.0
    );
    assert_eq!(
        settle(1.0, || errors(&[
            ("errno", "ECONNRESET"),
            ("comm", process.as_str()),
            ("port", &port)
        ]))?,
        1.0,
        "the client's read got ECONNRESET"
    );

    // The events name the threads: the client's received reset belongs to the thread that
    // connected, though it ran in the server thread's close(); the accepted socket belongs to the
    // thread that listened. Both ends are on this host, so each names the other.
    let lines = trace.stop()?;
    let reset = |direction: &str| {
        lines
            .iter()
            .find(|l| l["event"] == "reset" && l["direction"] == direction)
            .with_context(|| format!("no {direction} reset in {lines:#?}"))
    };
    let rx = reset("received")?;
    assert_eq!(
        (rx["comm"].as_str(), rx["thread"].as_str()),
        (Some(process.as_str()), Some("rstw-client")),
        "{rx}"
    );
    assert_eq!(rx["context_comm"], "rstw-server", "{rx}");
    assert_eq!(rx["peer_cause"], "linger_zero_close", "{rx}");
    assert_eq!(rx["peer_comm"].as_str(), Some(process.as_str()), "{rx}");
    let tx = reset("sent")?;
    assert_eq!(tx["thread"], "rstw-listener", "{tx}");
    assert_eq!(tx["peer_cause"], "peer_reset", "{tx}");
    Ok(())
}

#[test]
fn application_errors_are_counted_with_their_process_and_linked_to_the_reset() -> Result<()> {
    daemon();
    let ns = NetNs::new()?;
    let port = ERRORS_PORT.to_string();
    let refused_port = REFUSED_PORT.to_string();
    let trace = TraceJson::start(&["--port", &port])?;
    ns.run(|| named("rstw-stale", || scenarios::stale_keepalive(ERRORS_PORT)))??;
    ns.run(|| named("rstw-refused", || scenarios::refused(REFUSED_PORT, false)))??;

    let process = process_comm();
    let epipe = settle(1.0, || {
        errors(&[("errno", "EPIPE"), ("comm", &process), ("port", &port)])
    })?;
    assert_eq!(epipe, 1.0, "a reset in CLOSE_WAIT hands the app EPIPE");
    let refused = settle(1.0, || {
        errors(&[
            ("errno", "ECONNREFUSED"),
            ("comm", &process),
            ("port", &refused_port),
        ])
    })?;
    assert_eq!(refused, 1.0);

    let lines = trace.stop()?;
    let error = lines
        .iter()
        .find(|l| l["event"] == "socket_error")
        .with_context(|| format!("no socket_error line in {lines:#?}"))?;
    assert_eq!(error["errno"], "EPIPE");
    assert_eq!(error["comm"].as_str(), Some(process.as_str()));
    assert_eq!(error["thread"], "rstw-stale");
    assert_eq!(error["reset_cause"], "stale_connection");
    assert_eq!(error["reset_direction"], "received");
    let reset = lines
        .iter()
        .find(|l| l["event"] == "reset" && l["cause"] == "stale_connection")
        .context("no stale_connection reset line")?;
    assert_eq!(error["reset_time"], reset["time"], "linked to that very reset");
    assert_eq!(reset["comm"].as_str(), Some(process.as_str()));
    assert_eq!(reset["thread"], "rstw-stale");
    assert!(reset["cgroup_id"].as_u64().unwrap() > 0, "{reset}");
    Ok(())
}

#[test]
fn a_firewall_reject_is_injected_not_sent() -> Result<()> {
    daemon();
    let ns = NetNs::new()?;
    ns.exec(&["nft", "add", "table", "inet", "rstw"])?;
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "rstw",
        "input",
        "{ type filter hook input priority 0; }",
    ])?;
    let syn_rule = format!("tcp dport {REJECT_SYN_PORT} reject with tcp reset");
    let mut rule = vec!["nft", "add", "rule", "inet", "rstw", "input"];
    rule.extend(syn_rule.split(' '));
    ns.exec(&rule)?;

    let before_out_rsts = ns.tcp_mib("OutRsts")?;
    ns.run(|| -> Result<()> {
        let _listener = listen(false, REJECT_SYN_PORT, 8)?;
        match connect(false, REJECT_SYN_PORT) {
            Err(e) if format!("{e:#}").contains("refused") => Ok(()),
            other => bail!("connect through a REJECT rule: {:?}", other.map(|_| "connected")),
        }
    })??;

    // Mid-connection: the rule arrives after the handshake; the client's next segment is rejected.
    let (listener, mut client, server) = ns.run(|| -> Result<_> {
        let listener = listen(false, REJECT_DATA_PORT, 8)?;
        let client = connect(false, REJECT_DATA_PORT)?;
        let server = accept(&listener)?;
        Ok((listener, client, server))
    })??;
    let data_rule = format!("tcp dport {REJECT_DATA_PORT} reject with tcp reset");
    let mut rule = vec!["nft", "add", "rule", "inet", "rstw", "input"];
    rule.extend(data_rule.split(' '));
    ns.exec(&rule)?;
    client.write_all(b"hello")?;
    let err = wait_readable(&client, T).and_then(|_| Ok(client.read(&mut [0u8; 8])?));
    assert!(
        matches!(&err, Err(e) if format!("{e:#}").contains("reset")),
        "client: {err:?}"
    );
    let out_rsts = ns.tcp_mib("OutRsts")? - before_out_rsts;
    drop((listener, server));

    let syn_port = REJECT_SYN_PORT.to_string();
    let data_port = REJECT_DATA_PORT.to_string();
    let injected = |port: &str, state: &str| {
        series(&[
            ("direction", "received"),
            ("cause", "injected"),
            ("port", port),
            ("state", state),
        ])
    };
    assert_eq!(settle(1.0, || injected(&syn_port, "syn_sent"))?, 1.0);
    assert_eq!(settle(1.0, || injected(&data_port, "established"))?, 1.0);
    for port in [&syn_port, &data_port] {
        assert_eq!(
            series(&[("direction", "sent"), ("port", port)])?,
            0.0,
            "no TCP stack sent these"
        );
        assert_eq!(
            series(&[
                ("direction", "received"),
                ("cause", "connection_refused"),
                ("port", port)
            ])?,
            0.0
        );
    }
    assert_eq!(out_rsts, 0, "the kernel's own count agrees: TCP sent no reset");
    Ok(())
}
