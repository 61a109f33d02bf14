//! A tiny parser for the Prometheus text exposition format (version 0.0.4) and helpers to read
//! `rstwatch_resets_total` out of a scrape.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context, Result, bail};

/// `(metric name, labels sorted by name)`.
pub type Key = (String, Vec<(String, String)>);

/// One scrape of `/metrics`: every sample, keyed by name and sorted labels.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub samples: BTreeMap<Key, f64>,
}

/// Which way a reset went, as the daemon labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    Sent,
    Received,
}

impl Dir {
    pub fn label(self) -> &'static str {
        match self {
            Dir::Sent => "sent",
            Dir::Received => "received",
        }
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

pub const RESETS_TOTAL: &str = "rstwatch_resets_total";

/// Parse the Prometheus text format. Comment and blank lines are skipped; timestamps after the value
/// are ignored.
pub fn parse(text: &str) -> Result<Snapshot> {
    let mut samples = BTreeMap::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = parse_line(line).with_context(|| format!("line {}: {line:?}", lineno + 1))?;
        samples.insert(key, value);
    }
    Ok(Snapshot { samples })
}

fn parse_line(line: &str) -> Result<(Key, f64)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value")?;
    let name = line[..name_end].to_string();
    if name.is_empty() {
        bail!("empty metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let consumed: usize;
        loop {
            // skip separators
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some(&(i, '}')) => {
                    consumed = i + 1;
                    break;
                }
                None => bail!("unterminated label set"),
                _ => {}
            }
            let mut lname = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                lname.push(c);
            }
            let lname = lname.trim().to_string();
            match chars.next() {
                Some((_, '"')) => {}
                _ => bail!("label {lname} has no quoted value"),
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, other)) => {
                            value.push('\\');
                            value.push(other);
                        }
                        None => bail!("dangling escape"),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                bail!("unterminated label value");
            }
            labels.push((lname, value));
        }
        rest = &r[consumed..];
    }
    let value_str = rest.split_whitespace().next().context("no value")?;
    let value = match value_str {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().with_context(|| format!("bad value {v:?}"))?,
    };
    labels.sort();
    Ok(((name, labels), value))
}

impl Snapshot {
    /// The value of one sample, if present. `labels` need not be sorted.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        self.samples.get(&(name.to_string(), l)).copied()
    }

    /// Sum of every sample of `name` whose labels include all of `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|((n, labels), _)| {
                n == name
                    && filter
                        .iter()
                        .all(|(fk, fv)| labels.iter().any(|(k, v)| k == fk && v == fv))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// `rstwatch_resets_total` for (direction, cause, port), summed over `state`.
    pub fn resets(&self, dir: Dir, cause: &str, port: u16) -> f64 {
        let port = port.to_string();
        self.sum(
            RESETS_TOTAL,
            &[("direction", dir.label()), ("cause", cause), ("port", &port)],
        )
    }

    /// `rstwatch_resets_total` for one (direction, cause, state, port).
    pub fn resets_in_state(&self, dir: Dir, cause: &str, state: &str, port: u16) -> f64 {
        let port = port.to_string();
        self.sum(
            RESETS_TOTAL,
            &[
                ("direction", dir.label()),
                ("cause", cause),
                ("state", state),
                ("port", &port),
            ],
        )
    }

    /// Every reset of one direction on `port`, whatever the cause.
    pub fn resets_on_port(&self, dir: Dir, port: u16) -> f64 {
        let port = port.to_string();
        self.sum(RESETS_TOTAL, &[("direction", dir.label()), ("port", &port)])
    }

    /// All `rstwatch_resets_total` rows for `port`: (direction, cause, state) → value.
    pub fn port_rows(&self, port: u16) -> BTreeMap<(String, String, String), f64> {
        self.port_label_rows(&port.to_string())
    }

    /// Same for any `port` label value (e.g. "other").
    pub fn port_label_rows(&self, port: &str) -> BTreeMap<(String, String, String), f64> {
        let mut out = BTreeMap::new();
        for ((n, labels), v) in &self.samples {
            if n != RESETS_TOTAL {
                continue;
            }
            let get = |k: &str| {
                labels
                    .iter()
                    .find(|(lk, _)| lk == k)
                    .map(|(_, lv)| lv.clone())
                    .unwrap_or_default()
            };
            if get("port") != port {
                continue;
            }
            *out.entry((get("direction"), get("cause"), get("state")))
                .or_insert(0.0) += *v;
        }
        out
    }
}

/// Rows of `after - before` for `port` that are not zero.
pub fn port_delta(before: &Snapshot, after: &Snapshot, port: u16) -> BTreeMap<(String, String, String), f64> {
    port_label_delta(before, after, &port.to_string())
}

/// Rows of `after - before` for a `port` label value that are not zero.
pub fn port_label_delta(
    before: &Snapshot,
    after: &Snapshot,
    port: &str,
) -> BTreeMap<(String, String, String), f64> {
    let b = before.port_label_rows(port);
    let a = after.port_label_rows(port);
    let mut out = BTreeMap::new();
    for (k, v) in a.iter().map(|(k, v)| (k.clone(), *v)) {
        let d = v - b.get(&k).copied().unwrap_or(0.0);
        if d != 0.0 {
            out.insert(k, d);
        }
    }
    for (k, v) in b {
        if !a.contains_key(&k) && v != 0.0 {
            // a series that vanished: report it as a negative delta
            out.insert(k, -v);
        }
    }
    out
}

/// Every sample of metric `name` that changed between the two snapshots, as `labels delta`
/// lines (a failure message's view of the whole host).
pub fn changed(before: &Snapshot, after: &Snapshot, name: &str) -> Vec<String> {
    after
        .samples
        .iter()
        .filter(|((n, _), _)| n == name)
        .filter_map(|(key, v)| {
            let d = v - before.samples.get(key).copied().unwrap_or(0.0);
            let labels = key
                .1
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            (d != 0.0).then(|| format!("{labels} {d:+}"))
        })
        .collect()
}

/// Render a delta table for failure messages.
pub fn format_rows(rows: &BTreeMap<(String, String, String), f64>) -> String {
    if rows.is_empty() {
        return "    (no change)\n".to_string();
    }
    let mut s = String::new();
    for ((dir, cause, state), v) in rows {
        s.push_str(&format!(
            "    direction={dir:<8} cause={cause:<28} state={state:<12} {v:+}\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_escapes() {
        let text = r#"
# HELP rstwatch_resets_total Resets.
# TYPE rstwatch_resets_total counter
rstwatch_resets_total{direction="sent",cause="no_listener",state="none",port="21001"} 3
rstwatch_resets_total{port="21001",state="syn_sent",cause="connection_refused",direction="received"} 2
rstwatch_resets_total{direction="sent",cause="no_listener",state="listen",port="21001"} 1
rstwatch_probe_attached{probe="tcp_send_reset"} 1
weird{a="x\"y\\z\n",b="1"} 1.5e3 1700000000
plain 7
"#;
        let s = parse(text).unwrap();
        assert_eq!(s.resets(Dir::Sent, "no_listener", 21001), 4.0);
        assert_eq!(s.resets_in_state(Dir::Sent, "no_listener", "none", 21001), 3.0);
        assert_eq!(s.resets(Dir::Received, "connection_refused", 21001), 2.0);
        assert_eq!(s.resets(Dir::Received, "connection_refused", 21002), 0.0);
        assert_eq!(
            s.get("rstwatch_probe_attached", &[("probe", "tcp_send_reset")]),
            Some(1.0)
        );
        assert_eq!(s.get("weird", &[("b", "1"), ("a", "x\"y\\z\n")]), Some(1500.0));
        assert_eq!(s.get("plain", &[]), Some(7.0));
        assert_eq!(s.resets_on_port(Dir::Sent, 21001), 4.0);
    }

    #[test]
    fn delta_rows() {
        let a =
            parse(r#"rstwatch_resets_total{direction="sent",cause="x",state="none",port="1"} 3"#).unwrap();
        let b = parse(
            "rstwatch_resets_total{direction=\"sent\",cause=\"x\",state=\"none\",port=\"1\"} 5\n\
             rstwatch_resets_total{direction=\"received\",cause=\"y\",state=\"none\",port=\"1\"} 1\n",
        )
        .unwrap();
        let d = port_delta(&a, &b, 1);
        assert_eq!(d.len(), 2);
        assert_eq!(d[&("sent".into(), "x".into(), "none".into())], 2.0);
    }
}
