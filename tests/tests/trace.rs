//! `rstwatch trace` and `rstwatch run --events`: real resets in a private netns, read back as JSON
//! lines and as the human view (in a narrow tmux pane and through a closed pipe).

use std::{
    io::{BufRead, BufReader, Read},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rstwatch_tests::daemon::OwnDaemon;
use rstwatch_tests::trace_json::Trace;
use rstwatch_tests::{NetNs, daemon::binary_path, scenarios};
use serde_json::Value;

/// Ports 21950–21959 belong to these tests (the scenario tests lock blocks in 21200–21899).
const JSON_PORT: u16 = 21950;
const FILTER_PORT: u16 = 21951;
const TMUX_PORT: u16 = 21952;
const PIPE_PORT: u16 = 21953;
const EVENTS_PORT: u16 = 21954;
const BUDGET_PORT: u16 = 21955;

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

fn with(lines: &[Value], field: &str, value: &str) -> Vec<Value> {
    lines.iter().filter(|l| l[field] == value).cloned().collect()
}

#[test]
fn json_lines_describe_real_resets() -> Result<()> {
    let ns = NetNs::new()?;
    let port = JSON_PORT.to_string();
    let trace = Trace::start(&["--output", "json", "--port", &port])?;
    ns.run(|| scenarios::linger0(JSON_PORT, false))??;
    ns.run(|| scenarios::refused(JSON_PORT, true))??;
    let (stdout, stderr, code) = trace.stop()?;
    assert_eq!(code, 0, "stderr: {stderr}");
    let lines = json_lines(&stdout);

    let linger = with(&with(&lines, "cause", "linger_zero_close"), "direction", "sent");
    assert_eq!(linger.len(), 1, "{stdout}");
    let linger = &linger[0];
    assert_eq!(linger["kernel_reason"], "TCP_STATE");
    assert_eq!(linger["state"], "established");
    assert_eq!(linger["local_port"], JSON_PORT);
    assert_eq!(linger["service_port"], JSON_PORT);
    assert_eq!(linger["linger_zero"], true);
    assert_eq!(linger["local_addr"], "127.0.0.1");
    assert!(linger["bytes_received"].as_u64().unwrap() > 0, "{linger}");
    assert!(linger["age_seconds"].as_f64().is_some(), "{linger}");
    assert!(linger["time"].as_str().unwrap().ends_with('Z'));

    let peer = with(&with(&lines, "cause", "peer_reset"), "direction", "received");
    assert_eq!(peer.len(), 1, "{stdout}");
    assert_eq!(peer[0]["remote_port"], JSON_PORT);
    assert_eq!(peer[0]["kernel_reason"], Value::Null);

    let errors = with(&lines, "event", "socket_error");
    let lines = with(&lines, "event", "reset");
    let refused = with(&lines, "cause", "no_listener");
    assert_eq!(refused.len(), 1, "{stdout}");
    assert_eq!(refused[0]["local_addr"], "::1");
    assert_eq!(refused[0]["state"], "none");
    assert_eq!(refused[0]["trigger_flags"], "SYN");
    assert_eq!(with(&lines, "cause", "connection_refused").len(), 1, "{stdout}");
    assert_eq!(lines.len(), 4, "nothing else on this port: {stdout}");
    // What the applications got, each linked to its reset.
    let errnos: Vec<_> = errors
        .iter()
        .map(|e| (e["errno"].as_str().unwrap(), e["reset_cause"].as_str()))
        .collect();
    assert_eq!(
        errnos,
        [
            ("ECONNRESET", Some("peer_reset")),
            ("ECONNREFUSED", Some("connection_refused"))
        ],
        "{stdout}"
    );
    assert!(stderr.contains("4 resets"), "summary: {stderr}");
    Ok(())
}

#[test]
fn filters_keep_only_what_was_asked() -> Result<()> {
    let ns = NetNs::new()?;
    let port = FILTER_PORT.to_string();
    let trace = Trace::start(&[
        "--output",
        "json",
        "--port",
        &port,
        "--direction",
        "received",
        "--cause",
        "peer_reset",
    ])?;
    ns.run(|| scenarios::linger0(FILTER_PORT, false))??;
    ns.run(|| scenarios::refused(FILTER_PORT, false))??;
    let (stdout, stderr, code) = trace.stop()?;
    assert_eq!(code, 0, "stderr: {stderr}");
    let lines = json_lines(&stdout);
    let resets = with(&lines, "event", "reset");
    assert_eq!(resets.len(), 1, "{stdout}");
    assert_eq!(resets[0]["cause"], "peer_reset");
    assert_eq!(resets[0]["direction"], "received");
    // The error the client got is kept with the reset that caused it; nothing else passes.
    let errors = with(&lines, "event", "socket_error");
    assert_eq!(errors.len(), 1, "{stdout}");
    assert_eq!(errors[0]["reset_cause"], "peer_reset");
    assert_eq!(lines.len(), 2, "{stdout}");

    let output = Command::new(binary_path())
        .args(["trace", "--cause", "no_such_cause"])
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("causes are: no_listener"));
    Ok(())
}

fn tmux(args: &[&str]) -> Result<String> {
    let out = Command::new("tmux").args(args).output().context("running tmux")?;
    if !out.status.success() {
        bail!("tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for_pane(session: &str, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let screen = tmux(&["capture-pane", "-p", "-J", "-S", "-200", "-t", session])?;
        if screen.contains(needle) {
            return Ok(screen);
        }
        if Instant::now() > deadline {
            bail!("{needle:?} never appeared; screen:\n{screen}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn human_view_renders_in_a_narrow_terminal() -> Result<()> {
    let ns = NetNs::new()?;
    let session = format!("rstwatch-trace-{}", std::process::id());
    let command = format!(
        "{} trace --port {TMUX_PORT}; echo EXIT=$?; sleep 30",
        binary_path().display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-x",
        "38",
        "-y",
        "40",
        "-s",
        &session,
        &command,
    ])?;
    let result = (|| -> Result<()> {
        wait_for_pane(&session, "tracing TCP resets", Duration::from_secs(20))?;
        ns.run(|| scenarios::linger0(TMUX_PORT, false))??;
        let screen = wait_for_pane(&session, "linger_zero_close", Duration::from_secs(5))?;
        assert!(
            screen.contains("why: The application chose an abortive close"),
            "{screen}"
        );
        assert!(screen.contains("peer_reset"), "{screen}");
        tmux(&["send-keys", "-t", &session, "C-c", ""])?;
        let screen = wait_for_pane(&session, "EXIT=", Duration::from_secs(10))?;
        assert!(screen.contains("EXIT=0"), "{screen}");
        assert!(
            screen.contains("2 resets") && screen.contains("top ports"),
            "{screen}"
        );
        assert!(!screen.contains("panicked"), "{screen}");
        Ok(())
    })();
    let _ = tmux(&["kill-session", "-t", &session]);
    result
}

#[test]
fn a_closed_pipe_ends_trace_cleanly() -> Result<()> {
    let ns = NetNs::new()?;
    let port = PIPE_PORT.to_string();
    let mut trace = Trace::start(&["--port", &port])?;
    let mut stdout = BufReader::new(trace.child.stdout.take().expect("piped"));
    ns.run(|| scenarios::refused(PIPE_PORT, false))??;
    let mut first = String::new();
    stdout.read_line(&mut first)?;
    assert!(
        first.contains("no_listener") || first.contains("connection_refused"),
        "{first}"
    );
    drop(stdout); // like `rstwatch trace | head -1`
    let deadline = Instant::now() + Duration::from_secs(10);
    while trace.child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = trace.child.kill();
            bail!("trace kept running after its output pipe closed");
        }
        ns.run(|| scenarios::refused(PIPE_PORT, false))??;
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = trace.child.wait()?;
    let mut stderr = String::new();
    trace.stderr.read_to_string(&mut stderr)?;
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

#[test]
fn run_writes_events_and_rate_limits_them_per_cause() -> Result<()> {
    let ns = NetNs::new()?;
    let dir = rstwatch_tests::process::temp_dir("events")?;
    let events = dir.join("events.jsonl");
    let events_arg = events.to_string_lossy().into_owned();
    let mut daemon = OwnDaemon::start(&["--events-rate-limit", "5", "--events", &events_arg])?;
    let result = (|| -> Result<()> {
        // 50 refused connects in well under a second: 5 of each cause per second get through.
        let started = Instant::now();
        ns.run(|| scenarios::refused_many(EVENTS_PORT, 50))??;
        let elapsed_seconds = started.elapsed().as_secs() + 1;
        std::thread::sleep(Duration::from_millis(500));
        let text = std::fs::read_to_string(&events)?;
        let lines = json_lines(&text);
        // The limit is per cause and host-wide: other tests' resets share the budget, so check
        // the limit on everything written, and the accounting on this port.
        let written = |port: Option<u16>| {
            lines
                .iter()
                .filter(|l| l["event"] == "reset" && l["cause"] == "no_listener")
                .filter(|l| port.is_none_or(|p| l["service_port"] == p))
                .count() as u64
        };
        let no_listener = written(Some(EVENTS_PORT));
        let written_all = written(None);
        assert!(
            written_all >= 1 && written_all <= 5 * (elapsed_seconds + 1),
            "{written_all} no_listener events written in {elapsed_seconds}s: {text}"
        );
        let limited = daemon
            .scrape()?
            .get("rstwatch_events_rate_limited_total", &[("cause", "no_listener")])
            .context("no rate-limit counter")? as u64;
        // The limit is per cause, host-wide: resets other tests make meanwhile may add to it.
        assert!(
            limited + no_listener >= 50,
            "every event is either written or counted: {limited} + {no_listener}"
        );
        Ok(())
    })();
    let status = daemon.proc.stop(Duration::from_secs(10))?;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    Ok(())
}

#[test]
fn the_event_budget_drops_details_never_counts() -> Result<()> {
    let ns = NetNs::new()?;
    // `--events -`: the events go to stdout, which shares the daemon's log file with its log
    // lines; the events are the lines that are JSON objects.
    let mut daemon = OwnDaemon::start(&["--max-events-per-second", "2", "--events", "-"])?;
    let result = (|| -> Result<()> {
        ns.run(|| scenarios::refused_many(BUDGET_PORT, 300))??;
        std::thread::sleep(Duration::from_millis(300));
        let metrics = daemon.scrape()?;
        let port = BUDGET_PORT.to_string();
        let sent = metrics.sum(
            "rstwatch_resets_total",
            &[("port", &port), ("cause", "no_listener")],
        ) as u64;
        assert_eq!(sent, 300, "counts do not depend on events");
        let dropped = metrics.sum("rstwatch_events_lost_total", &[("stage", "over_event_budget")]) as u64;
        assert!(
            dropped >= 600 - 2 * 2 * 2 - 10,
            "{dropped} event details dropped of 600+"
        );
        Ok(())
    })();
    daemon.proc.stop(Duration::from_secs(10))?;
    let log = daemon.log_text();
    result?;
    let events: String = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    let delivered = json_lines(&events)
        .iter()
        .filter(|l| l["service_port"] == BUDGET_PORT)
        .count();
    assert!(delivered <= 12, "at most ~2 per second got through: {delivered}");
    Ok(())
}
