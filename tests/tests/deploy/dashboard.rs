//! deploy/grafana/rstwatch-dashboard.json: its panels and variables, the queries as Grafana would
//! send them, and `grafana_dashboard_is_well_formed`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::deploy;

/// The parts of a Grafana dashboard these tests read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Dashboard {
    pub uid: Option<String>,
    pub title: Option<String>,
    pub panels: Vec<Panel>,
    pub templating: Templating,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Templating {
    pub list: Vec<Variable>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Variable {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub all_value: Option<String>,
    pub definition: Option<String>,
    /// A string, or `{"query": "..."}` in newer dashboards.
    pub query: serde_json::Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Panel {
    pub id: Option<i64>,
    pub title: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub grid_pos: GridPos,
    pub datasource: DataSource,
    pub targets: Vec<Target>,
    /// A collapsed row's panels.
    pub panels: Vec<Panel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GridPos {
    pub x: Option<i64>,
    pub y: Option<i64>,
    pub w: Option<i64>,
    pub h: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DataSource {
    pub uid: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Target {
    pub ref_id: Option<String>,
    pub expr: Option<String>,
    pub instant: Option<bool>,
    pub datasource: DataSource,
}

pub struct PanelQuery {
    pub panel: String,
    pub kind: String,
    pub ref_id: String,
    pub expr: String,
    pub instant: bool,
    /// The panel says it is empty outside Kubernetes ("Kubernetes mode only"): it must parse, but
    /// this test (no API server) cannot give it data.
    pub kubernetes_only: bool,
}

pub fn path() -> std::path::PathBuf {
    deploy().join("grafana/rstwatch-dashboard.json")
}

pub fn dashboard() -> Result<Dashboard> {
    let path = path();
    serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?)
        .with_context(|| format!("parse {}", path.display()))
}

impl Panel {
    fn title(&self) -> &str {
        self.title.as_deref().unwrap_or("?")
    }
}

impl Dashboard {
    /// Every panel, rows' nested panels included.
    pub fn all_panels(&self) -> Vec<&Panel> {
        let mut out = Vec::new();
        for p in &self.panels {
            out.push(p);
            out.extend(p.panels.iter());
        }
        out
    }

    pub fn queries(&self) -> Vec<PanelQuery> {
        let mut out = Vec::new();
        for p in self.all_panels() {
            for t in &p.targets {
                out.push(PanelQuery {
                    panel: p.title().to_string(),
                    kind: p.kind.as_deref().unwrap_or("?").to_string(),
                    ref_id: t.ref_id.as_deref().unwrap_or("?").to_string(),
                    expr: t.expr.clone().unwrap_or_default(),
                    instant: t.instant == Some(true),
                    kubernetes_only: p.title().contains("Kubernetes mode only"),
                });
            }
        }
        out
    }

    fn query_variables(&self) -> impl Iterator<Item = &Variable> {
        self.templating
            .list
            .iter()
            .filter(|v| v.kind.as_deref() == Some("query"))
    }

    /// Each query variable with its allValue (".*" if it has none).
    pub fn template_vars(&self) -> BTreeMap<String, String> {
        self.query_variables()
            .filter_map(|v| {
                Some((
                    v.name.clone()?,
                    v.all_value.clone().unwrap_or_else(|| ".*".into()),
                ))
            })
            .collect()
    }

    /// `label_values(selector, label)` of the query variables: (variable, selector, label).
    pub fn label_values_queries(&self) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for v in self.query_variables() {
            let name = v.name.as_deref().unwrap_or("?").to_string();
            let q = v.query["query"]
                .as_str()
                .or(v.definition.as_deref())
                .unwrap_or("");
            let inner = q
                .trim()
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .with_context(|| format!("variable {name}: {q:?} is not label_values(selector, label)"))?;
            let (sel, label) = inner
                .rsplit_once(',')
                .with_context(|| format!("variable {name}: {q:?}"))?;
            out.push((name, sel.trim().to_string(), label.trim().to_string()));
        }
        Ok(out)
    }
}

/// Expand Grafana's variables the way a dashboard showing "All" does: every query variable's
/// allValue, `$__rate_interval` (at least 4 scrape intervals), `$__range` (the whole test).
pub fn expand(expr: &str, vars: &BTreeMap<String, String>, rate_interval: &str, range: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", rate_interval)
        .replace("${__rate_interval}", rate_interval)
        .replace("$__interval", rate_interval)
        .replace("$__range", range)
        .replace("${__range}", range);
    for (name, value) in vars {
        s = s
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    s
}

#[test]
fn grafana_dashboard_is_well_formed() {
    let d = dashboard().unwrap();
    assert!(d.uid.as_deref().is_some_and(|u| !u.is_empty()), "dashboard uid");
    assert!(
        d.title.as_deref().is_some_and(|t| !t.is_empty()),
        "dashboard title"
    );
    let vars: Vec<&str> = d
        .templating
        .list
        .iter()
        .filter_map(|v| v.name.as_deref())
        .collect();
    assert!(
        vars.contains(&"datasource"),
        "a datasource variable, so the dashboard imports anywhere"
    );
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, i64, i64, i64, i64)> = Vec::new();
    for p in d.all_panels() {
        let title = p.title().to_string();
        let id = p.id.unwrap_or(-1);
        assert!(ids.insert(id), "panel id {id} ({title}) is not unique");
        let g = &p.grid_pos;
        let (x, y, w, h) = (
            g.x.unwrap_or(-1),
            g.y.unwrap_or(-1),
            g.w.unwrap_or(0),
            g.h.unwrap_or(0),
        );
        assert!(
            x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24,
            "{title}: gridPos {x},{y} {w}x{h}"
        );
        for (other, ox, oy, ow, oh) in &boxes {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "panels {title:?} and {other:?} overlap");
        }
        boxes.push((title.clone(), x, y, w, h));
        if p.kind.as_deref() == Some("row") {
            continue;
        }
        assert_eq!(
            p.datasource.uid.as_deref(),
            Some("${datasource}"),
            "{title}: data source"
        );
        assert!(!p.targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in &p.targets {
            assert!(
                refs.insert(t.ref_id.as_deref().unwrap_or("")),
                "{title}: duplicate refId"
            );
            assert!(
                t.expr.as_deref().is_some_and(|e| e.contains("rstwatch_")),
                "{title}: expr"
            );
            assert_eq!(
                t.datasource.uid.as_deref(),
                Some("${datasource}"),
                "{title}: target data source"
            );
        }
    }
    // The panels are all there.
    let titles: Vec<String> = d
        .all_panels()
        .iter()
        .filter_map(|p| p.title.as_deref())
        .map(str::to_lowercase)
        .collect();
    for want in [
        "sent by cause",
        "received by cause",
        "sent vs received",
        "top service ports",
        "top processes",
        "top pods",
        "stale-connection",
        "idle resets",
        "idle time before",
        "probes attached",
        "lost events",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel about {want:?}: {titles:?}"
        );
    }
}
