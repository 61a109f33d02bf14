//! What the dashboard and the alerts ask Prometheus, asked of the Prometheus that scraped the
//! deployed rstwatch (`scrape`): each problem is collected, so one run reports them all.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use rstwatch_tests::http::urlencode;
use rstwatch_tests::process::{Proc, wait_until};

use crate::dashboard::{self, expand};
use crate::prom::{Prom, QueryData, Rules};
use crate::scrape::Made;

/// The time range the queries look at: the test's start (for `$__range`), the first reset less a
/// margin, and the last scrape.
pub struct Window {
    pub started: f64,
    pub start: f64,
    pub end: f64,
}

/// Every metric name the dashboard and the alerts use exists in Prometheus.
pub fn metric_names_exist(p: &Prom, alerts_text: &str, problems: &mut Vec<String>) -> Result<()> {
    let names: BTreeSet<String> = p
        .api::<Vec<String>>("/api/v1/label/__name__/values")?
        .into_iter()
        .collect();
    let dash_text = std::fs::read_to_string(dashboard::path())?;
    for text in [alerts_text, &dash_text] {
        for (i, _) in text.match_indices("rstwatch_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // "rstwatch_cause_observable" and similar are only mentioned in descriptions.
            let is_series = ["_total", "_bucket", "_info", "_attached"]
                .iter()
                .any(|s| name.ends_with(s));
            if is_series && !names.contains(&name) {
                problems.push(format!("metric {name} is used but Prometheus has no such series"));
            }
        }
    }
    Ok(())
}

/// Every dashboard query parses and returns data, the panels show the scenarios where they
/// should, and every template variable has values.
pub fn dashboard(
    p: &Prom,
    w: &Window,
    made: &Made,
    problems: &mut Vec<String>,
    checked: &mut usize,
) -> Result<()> {
    let d = dashboard::dashboard()?;
    let vars = d.template_vars();
    let range = format!("{}s", (w.end - w.started).ceil() as u64 + 60);
    let query = |instant: bool, expr: &str| {
        if instant {
            p.instant(expr, w.end)
        } else {
            p.range(expr, w.start, w.end, 1.0)
        }
    };
    let mut results: BTreeMap<String, QueryData> = BTreeMap::new();
    for q in d.queries() {
        let expr = expand(&q.expr, &vars, "10s", &range);
        let label = format!("panel {:?} ({}) {}", q.panel, q.kind, q.ref_id);
        if expr.contains('$') {
            problems.push(format!("{label}: unexpanded variable in {expr}"));
            continue;
        }
        match query(q.instant, &expr) {
            Ok(data) if data.len() > 0 => {
                *checked += 1;
                results.insert(format!("{}/{}", q.panel, q.ref_id), data);
            }
            Ok(_) if q.kubernetes_only => *checked += 1,
            Ok(_) => problems.push(format!("{label}: no data for {expr}")),
            Err(e) => problems.push(format!("{label}: {e:#}\n    {expr}")),
        }
    }
    // ... and shows the scenarios where it should, with the dashboard's port filter set to the
    // scenarios' ports (other tests on this host make resets of their own on other ports).
    let ports = &made.ports;
    let mut our_vars = vars.clone();
    our_vars.insert(
        "port".into(),
        ports
            .values()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("|"),
    );
    let (refused, stale, idle, unanswered) = (
        ports["refused_v4"],
        ports["stale_keepalive"],
        ports["half_open_idle"],
        ports["listener_closed"],
    );
    let semantic: [(&str, Option<u16>); 8] = [
        ("top service ports", Some(refused)),
        ("reset before any response", Some(unanswered)),
        ("stale-connection resets", Some(stale)),
        ("data after close", Some(stale)),
        ("idle resets by service port", Some(idle)),
        ("idle time before received resets", None),
        ("resets sent by cause", None),
        ("resets received by cause", None),
    ];
    for (title_part, port) in semantic {
        let Some(q) = d
            .queries()
            .into_iter()
            .find(|q| q.panel.to_lowercase().contains(title_part))
        else {
            problems.push(format!("no panel {title_part:?}"));
            continue;
        };
        let expr = expand(&q.expr, &our_vars, "10s", &range);
        match query(q.instant, &expr) {
            Ok(data) if data.positive_on(port) => {}
            Ok(data) => problems.push(format!(
                "panel {:?}: no positive value{} in {:?}\n    {expr}",
                q.panel,
                port.map(|p| format!(" on port {p}")).unwrap_or_default(),
                data.rows()
            )),
            Err(e) => problems.push(format!("panel {:?}: {e:#}", q.panel)),
        }
    }
    match results
        .iter()
        .find(|(k, _)| k.to_lowercase().contains("probes attached per node"))
    {
        Some((_, d)) if d.rows().len() >= 3 && d.rows().iter().all(|(_, v)| *v == 1.0) => {}
        other => problems.push(format!(
            "panel \"Probes attached per node\": every probe should be 1: {:?}",
            other.map(|(_, d)| d.rows())
        )),
    }

    // Template variables.
    for (name, sel, label) in d.label_values_queries()? {
        let sel = expand(&sel, &vars, "10s", &range);
        match p.api::<Vec<String>>(&format!(
            "/api/v1/label/{label}/values?match[]={}&start={:.3}&end={:.3}",
            urlencode(&sel),
            w.start,
            w.end
        )) {
            Ok(v) if !v.is_empty() => *checked += 1,
            Ok(_) => problems.push(format!(
                "variable {name}: no values for label_values({sel}, {label})"
            )),
            Err(e) => problems.push(format!("variable {name}: {e:#}")),
        }
    }
    Ok(())
}

/// Alert rules: loaded, evaluated by Prometheus without error, each expression parses, and the
/// "rstwatch is down" alerts quiet while it is up.
pub fn alerts(
    p: &Prom,
    prom: &Proc,
    alerts_text: &str,
    end: f64,
    problems: &mut Vec<String>,
    checked: &mut usize,
) -> Result<()> {
    let n_alerts = alerts_text
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let mut rules = Vec::new();
    wait_until("every alert rule evaluated", Duration::from_secs(15), || {
        rules = p
            .api::<Rules>("/api/v1/rules")?
            .groups
            .into_iter()
            .flat_map(|g| g.rules)
            .filter(|r| r.kind == "alerting")
            .collect::<Vec<_>>();
        Ok(rules.len() == n_alerts
            && rules
                .iter()
                .all(|r| !r.last_evaluation.is_empty() && !r.last_evaluation.starts_with("0001-")))
    })
    .with_context(|| {
        format!(
            "{} alerting rules loaded, alerts.yml has {n_alerts}\n{}",
            rules.len(),
            prom.log_tail()
        )
    })?;
    for r in &rules {
        let name = &r.name;
        if r.health != "ok" {
            problems.push(format!("alert {name}: health {:?}: {:?}", r.health, r.last_error));
        }
        match p.instant(&r.query, end) {
            Ok(_) => *checked += 1,
            Err(e) => problems.push(format!("alert {name}: {e:#}\n    {}", r.query)),
        }
        let firing: Vec<String> = r.alerts.iter().map(|a| format!("{:?}", a.labels)).collect();
        if (name == "RstwatchDown" || name == "RstwatchProbeNotAttached") && !firing.is_empty() {
            problems.push(format!(
                "alert {name} is active while rstwatch is up and attached: {firing:?}"
            ));
        }
    }
    Ok(())
}
