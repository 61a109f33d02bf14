//! /metrics: one GET, the Prometheus text format, and a scraper hitting it every second during a
//! run, like a Prometheus would.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail};

pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// One sample of a scrape: metric name, labels, value.
type Row = (String, Vec<(String, String)>, f64);

/// One scrape.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    rows: Vec<Row>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut rows = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rfind('}') {
                Some(end) => (&line[..=end], line[end + 1..].trim()),
                None => match line.split_once(' ') {
                    Some((s, v)) => (s, v.trim()),
                    None => continue,
                },
            };
            let Ok(value) = value.split_whitespace().next().unwrap_or("").parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            rows.push((name.to_string(), labels, value));
        }
        Scrape { rows }
    }

    /// Sum of `name` over the rows whose labels pass `keep`.
    pub fn sum(&self, name: &str, keep: impl Fn(&Labels) -> bool) -> f64 {
        self.rows
            .iter()
            .filter(|(n, labels, _)| n == name && keep(&Labels(labels)))
            .map(|(_, _, v)| *v)
            .sum()
    }

    pub fn values(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        self.rows
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, labels, v)| {
                let l = labels
                    .iter()
                    .find(|(k, _)| k == label)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                (l, *v)
            })
            .collect()
    }
}

/// The labels of one row.
pub struct Labels<'a>(&'a [(String, String)]);

impl Labels<'_> {
    /// A label's value; "" when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((name.trim().to_string(), value));
    }
    labels
}

/// GET /metrics every `period` until stopped (bounded by `max`), like a Prometheus would.
pub struct Scraper {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    latencies: Arc<std::sync::Mutex<Vec<f64>>>,
    handle: Option<JoinHandle<()>>,
}

/// What the scraper saw: successful and failed scrapes, and each successful one's latency (ms).
pub struct Scrapes {
    pub ok: u64,
    pub failed: u64,
    pub latencies_ms: Vec<f64>,
}

impl Scraper {
    pub fn start(addr: SocketAddr, period: Duration, max: Duration) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f, l) = (stop.clone(), ok.clone(), failed.clone(), latencies.clone());
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut next = started;
            while !s.load(Ordering::SeqCst) && started.elapsed() < max {
                if Instant::now() >= next {
                    let t = Instant::now();
                    match http_get(addr, "/metrics", Duration::from_secs(2)) {
                        Ok(_) => {
                            o.fetch_add(1, Ordering::SeqCst);
                            l.lock()
                                .expect("not poisoned")
                                .push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        Err(_) => {
                            f.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    next += period;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Scraper {
            stop,
            ok,
            failed,
            latencies,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> Scrapes {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        Scrapes {
            ok: self.ok.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            latencies_ms: std::mem::take(&mut *self.latencies.lock().expect("not poisoned")),
        }
    }
}
