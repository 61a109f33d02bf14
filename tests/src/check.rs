//! Run a scenario against the daemon and compare the deltas of `rstwatch_resets_total` on the
//! scenario's port with what the kernel did.

use std::io::Write as _;
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
            after.resets_in_state(e.dir, e.cause, st, port) - before.resets_in_state(e.dir, e.cause, st, port)
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
    for (dir, want) in [(Dir::Sent, out.sent_total), (Dir::Received, out.received_total)] {
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
    let compared = compare(d, &NetNs::new()?, scn)?;
    if compared.problems.is_empty() {
        return Ok(compared.out);
    }
    if !only_shortfalls(&compared) {
        bail!(compared.message)
    }
    // Rarely (about 1 run in 100 under load on 6.18) the kernel counts a reset in `Tcp: OutRsts`
    // that no tracepoint reported, for rstwatch or for an independent bpftrace alike: every
    // tracepoint of that timer callback was missing, the socket's CLOSE included. A shortfall
    // is run once more in a fresh namespace; a second shortfall, or any extra count, fails.
    // Straight to the process's stderr: `eprintln!` would be swallowed with a passing test's output.
    let _ = writeln!(
        std::io::stderr(),
        "RETRIED {}: the first run fell short (see below); running it once more\n{}",
        scn.name,
        compared.message
    );
    check_with(d, &NetNs::new()?, scn)
}

/// Every difference is a reset that is missing altogether: each row is at or below what the
/// scenario expects, and on each direction the port's total is short by exactly what its rows
/// are short (a reset counted under another cause or state would leave the total whole).
fn only_shortfalls(compared: &Comparison) -> bool {
    let (before, after, out) = (&compared.before, &compared.after, &compared.out);
    [(Dir::Sent, out.sent_total), (Dir::Received, out.received_total)]
        .into_iter()
        .all(|(dir, want)| {
            let rows = out.expect.iter().filter(|e| e.dir == dir);
            let row_short: Option<f64> = rows
                .map(|e| {
                    let short = e.count as f64 - row_delta(before, after, e, out.port);
                    (short >= 0.0).then_some(short)
                })
                .sum();
            let total_short = want as f64 - total_delta(before, after, dir, out.port);
            row_short == Some(total_short)
        })
}

pub fn check_named(name: &str) -> Result<Outcome> {
    match scenarios::find(name) {
        Some(s) => check(&s),
        None => bail!("no scenario named {name}"),
    }
}

pub fn check_with(d: &Daemon, ns: &NetNs, scn: &Scenario) -> Result<Outcome> {
    let compared = compare(d, ns, scn)?;
    if compared.problems.is_empty() {
        return Ok(compared.out);
    }
    bail!(compared.message)
}

/// A scenario run against the daemon: what the kernel did, what rstwatch counted, and where they
/// differ.
pub struct Comparison {
    pub out: Outcome,
    pub before: Snapshot,
    pub after: Snapshot,
    /// Empty when rstwatch counted exactly what the scenario expects.
    pub problems: Vec<String>,
    /// The full report for humans (empty when there are no problems).
    pub message: String,
}

/// How a scenario went on a kernel, for `cargo xtask vm-test`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Counted differently, but only for causes the daemon itself declares it cannot observe on
    /// this kernel (`rstwatch_cause_observable == 0`): a known blind spot, not a regression.
    Blind,
    Fail,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Blind => "blind",
            Verdict::Fail => "FAIL",
        }
    }
}

/// `rstwatch_cause_observable{direction,cause}` as the daemon exports it (absent = observable).
pub fn observable(snapshot: &Snapshot, dir: Dir, cause: &str) -> bool {
    snapshot
        .get(
            "rstwatch_cause_observable",
            &[("direction", dir.label()), ("cause", cause)],
        )
        .is_none_or(|v| v != 0.0)
}

impl Comparison {
    pub fn verdict(&self) -> Verdict {
        if self.problems.is_empty() {
            return Verdict::Ok;
        }
        let port = self.out.port;
        let blind_in = |dir: Dir| {
            self.out
                .expect
                .iter()
                .any(|e| e.dir == dir && e.count > 0 && !observable(&self.after, dir, e.cause))
        };
        let rows_explained = self
            .out
            .expect
            .iter()
            .filter(|e| row_delta(&self.before, &self.after, e, port) != e.count as f64)
            .all(|e| !observable(&self.after, e.dir, e.cause));
        let totals_explained = [
            (Dir::Sent, self.out.sent_total),
            (Dir::Received, self.out.received_total),
        ]
        .into_iter()
        .filter(|(dir, want)| total_delta(&self.before, &self.after, *dir, port) != *want as f64)
        .all(|(dir, _)| blind_in(dir));
        if rows_explained && totals_explained {
            Verdict::Blind
        } else {
            Verdict::Fail
        }
    }

    /// `direction/cause/state+N` for each expected row, and the same for what was counted.
    pub fn expected_and_got(&self) -> (String, String) {
        let expected = self
            .out
            .expect
            .iter()
            .filter(|e| e.count > 0)
            .map(|e| {
                format!(
                    "{}/{}/{}+{}",
                    e.dir.label(),
                    e.cause,
                    e.state.unwrap_or("*"),
                    e.count
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let got = metrics::port_delta(&self.before, &self.after, self.out.port)
            .iter()
            .map(|((dir, cause, state), delta)| format!("{dir}/{cause}/{state}+{delta}"))
            .collect::<Vec<_>>()
            .join(",");
        (expected, if got.is_empty() { "nothing".into() } else { got })
    }
}

pub fn compare(d: &Daemon, ns: &NetNs, scn: &Scenario) -> Result<Comparison> {
    let before = d.scrape()?;
    let out = scenarios::run_in(ns, scn)?;
    let waited = d.wait_for(WAIT, |s| reached(&before, s, &out));
    let reached_ok = waited.is_ok();
    std::thread::sleep(SETTLE);
    let after = d.scrape()?;
    let problems = mismatches(&before, &after, &out);
    if problems.is_empty() {
        return Ok(Comparison {
            out,
            before,
            after,
            problems,
            message: String::new(),
        });
    }
    let delta = metrics::port_delta(&before, &after, out.port);
    let mut msg = format!(
        "scenario {} (port {}): rstwatch counted something else than the kernel did\n",
        scn.name, out.port
    );
    if !reached_ok {
        msg.push_str(&format!("  (expected counts not reached within {WAIT:?})\n"));
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
    let lost = metrics::changed(&before, &after, "rstwatch_events_lost_total");
    msg.push_str(&format!(
        "  rstwatch_events_lost_total deltas meanwhile (whole host): {}\n",
        if lost.is_empty() {
            "none".to_string()
        } else {
            lost.join("; ")
        }
    ));
    // A count under another port (or none at all) tells a mislabelled key from a lost one.
    for name in ["rstwatch_resets_total", "rstwatch_program_runs_total"] {
        msg.push_str(&format!("  {name} deltas meanwhile (whole host):\n"));
        for line in metrics::changed(&before, &after, name).iter().take(80) {
            msg.push_str(&format!("    {line}\n"));
        }
    }
    msg.push_str(&format!("  applications saw: {:?}\n", out.notes));
    msg.push_str(&format!("  daemon log: {}\n", d.log.display()));
    Ok(Comparison {
        out,
        before,
        after,
        problems,
        message: msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::{received, sent};

    fn snapshot(rows: &[(&str, &str, &str, u64)], blind: &[(&str, &str)]) -> Snapshot {
        let mut text = String::new();
        for (dir, cause, state, n) in rows {
            text.push_str(&format!(
                "rstwatch_resets_total{{direction=\"{dir}\",cause=\"{cause}\",state=\"{state}\",port=\"21200\",comm=\"x\"}} {n}\n"
            ));
        }
        for (dir, cause) in blind {
            text.push_str(&format!(
                "rstwatch_cause_observable{{direction=\"{dir}\",cause=\"{cause}\"}} 0\n"
            ));
        }
        metrics::parse(&text).unwrap()
    }

    fn refused_outcome() -> Outcome {
        let expect = vec![
            sent("no_listener", Some("none"), 1),
            received("connection_refused", Some("syn_sent"), 1),
        ];
        Outcome {
            port: 21200,
            sent_total: 1,
            received_total: 1,
            expect,
            ..Default::default()
        }
    }

    fn compared(after: Snapshot) -> Comparison {
        let out = refused_outcome();
        let before = snapshot(&[], &[]);
        let problems = mismatches(&before, &after, &out);
        Comparison {
            out,
            before,
            after,
            problems,
            message: String::new(),
        }
    }

    fn verdict(after: Snapshot) -> Verdict {
        compared(after).verdict()
    }

    #[test]
    fn a_miss_is_blind_only_where_the_daemon_declared_it() {
        let both = [
            ("sent", "no_listener", "none", 1),
            ("received", "connection_refused", "syn_sent", 1),
        ];
        assert_eq!(verdict(snapshot(&both, &[])), Verdict::Ok);
        let only_received = [("received", "connection_refused", "syn_sent", 1)];
        assert_eq!(verdict(snapshot(&only_received, &[])), Verdict::Fail);
        assert_eq!(
            verdict(snapshot(&only_received, &[("sent", "no_listener")])),
            Verdict::Blind
        );
        // Declared blind for the sent side does not excuse a wrong received count.
        let wrong_received = [
            ("sent", "no_listener", "none", 1),
            ("received", "peer_reset", "syn_sent", 1),
        ];
        assert_eq!(
            verdict(snapshot(&wrong_received, &[("sent", "no_listener")])),
            Verdict::Fail
        );
    }

    #[test]
    fn only_a_reset_missing_altogether_is_run_again() {
        let missing_sent = [("received", "connection_refused", "syn_sent", 1)];
        assert!(only_shortfalls(&compared(snapshot(&missing_sent, &[]))));
        // Counted under another cause: the port's total is whole, so this is a wrong answer.
        let misclassified = [
            ("sent", "unknown_connection", "none", 1),
            ("received", "connection_refused", "syn_sent", 1),
        ];
        assert!(!only_shortfalls(&compared(snapshot(&misclassified, &[]))));
        let extra = [
            ("sent", "no_listener", "none", 2),
            ("received", "connection_refused", "syn_sent", 1),
        ];
        assert!(!only_shortfalls(&compared(snapshot(&extra, &[]))));
    }
}
