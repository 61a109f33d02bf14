//! Run a scenario against the daemon and compare the deltas of `rstwatch_resets_total` on the
//! scenario's port with what the kernel did.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::daemon::{self, Daemon};
use crate::metrics::{self, Dir, Snapshot};
use crate::netns::NetNs;
use crate::scenarios::{self, Expect, Outcome, Scenario};

/// How long to wait for the expected counts to show up in /metrics.
pub const WAIT: Duration = Duration::from_secs(5);
/// After they did, how long to wait for stray extra counts before the final, exact comparison.
pub const SETTLE: Duration = Duration::from_millis(300);

fn row_delta(before: &Snapshot, after: &Snapshot, e: &Expect, port: u16) -> f64 {
    match e.state {
        Some(st) => {
            after.resets_in_state(e.dir, e.cause, st, port)
                - before.resets_in_state(e.dir, e.cause, st, port)
        }
        None => after.resets(e.dir, e.cause, port) - before.resets(e.dir, e.cause, port),
    }
}

fn total_delta(before: &Snapshot, after: &Snapshot, dir: Dir, port: u16) -> f64 {
    after.resets_on_port(dir, port) - before.resets_on_port(dir, port)
}

/// Problems of `after` against the outcome (empty = all good).
pub fn mismatches(before: &Snapshot, after: &Snapshot, out: &Outcome) -> Vec<String> {
    let mut v = Vec::new();
    for e in &out.expect {
        let d = row_delta(before, after, e, out.port);
        if d != e.count as f64 {
            v.push(format!(
                "{} cause={} state={}: delta {d}, expected {}",
                e.dir,
                e.cause,
                e.state.unwrap_or("*"),
                e.count
            ));
        }
    }
    for (dir, want) in [
        (Dir::Sent, out.sent_total),
        (Dir::Received, out.received_total),
    ] {
        let d = total_delta(before, after, dir, out.port);
        if d != want as f64 {
            v.push(format!(
                "all {dir} resets on port {}: delta {d}, expected {want}",
                out.port
            ));
        }
    }
    v
}

fn reached(before: &Snapshot, now: &Snapshot, out: &Outcome) -> bool {
    out.expect
        .iter()
        .all(|e| row_delta(before, now, e, out.port) >= e.count as f64)
        && total_delta(before, now, Dir::Sent, out.port) >= out.sent_total as f64
        && total_delta(before, now, Dir::Received, out.port) >= out.received_total as f64
}

/// Run `scn` in a fresh namespace against the process's daemon; Err with a full report if the
/// daemon's counters do not match.
pub fn check(scn: &Scenario) -> Result<Outcome> {
    let d = daemon::daemon();
    let ns = NetNs::new()?;
    check_with(d, &ns, scn)
}

pub fn check_named(name: &str) -> Result<Outcome> {
    match scenarios::find(name) {
        Some(s) => check(&s),
        None => bail!("no scenario named {name}"),
    }
}

pub fn check_with(d: &Daemon, ns: &NetNs, scn: &Scenario) -> Result<Outcome> {
    let before = d.scrape()?;
    let out = scenarios::run_in(ns, scn)?;
    let waited = d.wait_for(WAIT, |s| reached(&before, s, &out));
    let reached_ok = waited.is_ok();
    std::thread::sleep(SETTLE);
    let after = d.scrape()?;
    let problems = mismatches(&before, &after, &out);
    if problems.is_empty() {
        return Ok(out);
    }
    let delta = metrics::port_delta(&before, &after, out.port);
    let mut msg = format!(
        "scenario {} (port {}): rstwatch counted something else than the kernel did\n",
        scn.name, out.port
    );
    if !reached_ok {
        msg.push_str(&format!(
            "  (expected counts not reached within {WAIT:?})\n"
        ));
    }
    for p in &problems {
        msg.push_str(&format!("  - {p}\n"));
    }
    msg.push_str("  expected rows:\n");
    for e in &out.expect {
        msg.push_str(&format!(
            "    direction={:<8} cause={:<28} state={:<12} +{}\n",
            e.dir.label(),
            e.cause,
            e.state.unwrap_or("*"),
            e.count
        ));
    }
    msg.push_str(&format!(
        "  totals expected: sent +{}, received +{}; kernel Tcp: OutRsts in the netns +{}\n",
        out.sent_total, out.received_total, out.out_rsts
    ));
    msg.push_str("  rstwatch_resets_total deltas on the port:\n");
    msg.push_str(&metrics::format_rows(&delta));
    let other = metrics::port_label_delta(&before, &after, "other");
    if !other.is_empty() {
        msg.push_str("  meanwhile on port=\"other\" (the whole host, any test):\n");
        msg.push_str(&metrics::format_rows(&other));
    }
    let lost: Vec<String> = after
        .samples
        .iter()
        .filter(|((n, _), _)| n == "rstwatch_events_lost_total")
        .filter_map(|((n, l), v)| {
            let b = before
                .samples
                .get(&(n.clone(), l.clone()))
                .copied()
                .unwrap_or(0.0);
            let stage = l
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            (v - b != 0.0).then(|| format!("{stage} {:+}", v - b))
        })
        .collect();
    msg.push_str(&format!(
        "  rstwatch_events_lost_total deltas meanwhile (whole host): {}\n",
        if lost.is_empty() {
            "none".to_string()
        } else {
            lost.join("; ")
        }
    ));
    msg.push_str(&format!("  applications saw: {:?}\n", out.notes));
    msg.push_str(&format!("  daemon log: {}\n", d.log.display()));
    bail!(msg)
}
