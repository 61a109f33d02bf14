//! Prometheus's HTTP API, reached from inside its network namespace, and its answers as types.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use rstwatch_tests::NetNs;
use rstwatch_tests::http::{self, Response, urlencode};
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub struct Prom<'a> {
    pub ns: &'a NetNs,
    pub addr: SocketAddr,
}

/// The envelope of every API answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer<T> {
    status: String,
    data: Option<T>,
    error_type: Option<String>,
    error: Option<String>,
}

/// A sample: (time, value as Prometheus prints it).
pub type Point = (f64, String);

fn value(p: &Point) -> f64 {
    p.1.parse().unwrap_or(f64::NAN)
}

#[derive(Clone, Debug, Deserialize)]
pub struct Sample {
    pub metric: BTreeMap<String, String>,
    pub value: Point,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Series {
    pub metric: BTreeMap<String, String>,
    pub values: Vec<Point>,
}

/// `data` of a query: what `resultType` says `result` is.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
pub enum QueryData {
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
    Scalar(Point),
    String(serde::de::IgnoredAny),
}

impl QueryData {
    /// (labels, value) rows of an instant vector; (labels, last value) of a matrix.
    pub fn rows(&self) -> Vec<(BTreeMap<String, String>, f64)> {
        match self {
            QueryData::Vector(v) => v.iter().map(|s| (s.metric.clone(), value(&s.value))).collect(),
            QueryData::Matrix(m) => m
                .iter()
                .map(|s| (s.metric.clone(), s.values.last().map(value).unwrap_or(f64::NAN)))
                .collect(),
            QueryData::Scalar(p) => vec![(BTreeMap::new(), value(p))],
            QueryData::String(_) => Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            QueryData::Vector(v) => v.len(),
            QueryData::Matrix(m) => m.len(),
            QueryData::Scalar(_) | QueryData::String(_) => 1,
        }
    }

    /// Some value > 0 in some series (whose `port` label is `port`, if given).
    pub fn positive_on(&self, port: Option<u16>) -> bool {
        let on = |metric: &BTreeMap<String, String>| {
            port.is_none_or(|p| metric.get("port").map(String::as_str) == Some(p.to_string().as_str()))
        };
        match self {
            QueryData::Vector(v) => v.iter().any(|s| on(&s.metric) && value(&s.value) > 0.0),
            QueryData::Matrix(m) => m
                .iter()
                .any(|s| on(&s.metric) && s.values.iter().any(|p| value(p) > 0.0)),
            QueryData::Scalar(_) | QueryData::String(_) => false,
        }
    }
}

/// `/api/v1/rules`.
#[derive(Deserialize)]
pub struct Rules {
    pub groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
pub struct RuleGroup {
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Rule {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub health: String,
    pub last_error: Option<String>,
    pub query: String,
    pub last_evaluation: String,
    pub alerts: Vec<Alert>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
}

impl Prom<'_> {
    pub fn get(&self, path: &str) -> Result<Response> {
        let addr = self.addr;
        let path = path.to_string();
        self.ns.run(move || http::get(addr, &path))?
    }

    /// `data` of a successful API answer; the API's error text otherwise.
    pub fn api<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let Response { status, body } = self.get(path)?;
        let answer: Answer<T> = serde_json::from_str(&body)
            .with_context(|| format!("GET {path}: HTTP {status}, not an API answer: {body:.300}"))?;
        if answer.status != "success" {
            bail!(
                "HTTP {status}: {} {}",
                answer.error_type.as_deref().unwrap_or("?"),
                answer.error.as_deref().unwrap_or("?")
            );
        }
        answer
            .data
            .with_context(|| format!("GET {path}: success without data"))
    }

    pub fn instant(&self, q: &str, at: f64) -> Result<QueryData> {
        self.api(&format!("/api/v1/query?query={}&time={at:.3}", urlencode(q)))
    }

    pub fn range(&self, q: &str, start: f64, end: f64, step: f64) -> Result<QueryData> {
        self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            urlencode(q)
        ))
    }
}
