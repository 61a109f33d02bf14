//! The processes a benchmark round runs: the storm generator, the rstwatch daemon (with a scraper
//! hitting /metrics every second), and bpftrace. Each is started by this process, bounded in time,
//! and stopped by its PID.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use super::system;

/// Children die with the thread that started them (the benchmark's main thread).
fn die_with_parent(command: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Send `signal` to a child, then wait up to `grace` for it to exit; SIGKILL (by PID) after that.
fn stop_child(child: &mut Child, signal: libc::c_int, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait().ok()
}

// ---------------------------------------------------------------------------------------------
// Storm

#[derive(Clone, Debug)]
pub struct StormSpec {
    pub threads: usize,
    pub port: u16,
    pub ports: u32,
    pub duration: Duration,
    pub max_attempts: u64,
}

#[derive(Clone, Debug, Default)]
pub struct StormResult {
    pub attempts: u64,
    pub wall_ns: u64,
    pub cpu_ns: u64,
    pub user_ns: u64,
    pub sys_ns: u64,
    pub out_rsts: u64,
    pub raw: serde_json::Value,
}

impl StormResult {
    pub fn rate(&self) -> f64 {
        self.attempts as f64 / (self.wall_ns as f64 / 1e9)
    }

    pub fn cpu_per_attempt(&self) -> f64 {
        self.cpu_ns as f64 / self.attempts.max(1) as f64
    }
}

/// Run the storm generator in the namespace `netns` and wait for it (bounded).
pub fn run_storm(storm_bin: &Path, netns: &str, spec: &StormSpec) -> anyhow::Result<StormResult> {
    let mut command = Command::new(storm_bin);
    command
        .args(["--netns", netns])
        .args(["--threads", &spec.threads.to_string()])
        .args(["--port", &spec.port.to_string()])
        .args(["--ports", &spec.ports.to_string()])
        .args(["--duration-ms", &spec.duration.as_millis().to_string()])
        .args(["--max-attempts", &spec.max_attempts.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut command, libc::SIGKILL);
    let mut child = command.spawn().with_context(|| format!("starting {}", storm_bin.display()))?;
    let deadline = Instant::now() + spec.duration + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline || system::stopping() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the storm generator did not finish in time (or the benchmark was interrupted)");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child.stdout.take().map(|mut s| s.read_to_string(&mut stdout));
    child.stderr.take().map(|mut s| s.read_to_string(&mut stderr));
    if !status.success() {
        bail!("storm generator failed ({status}): {}{}", stderr.trim(), stdout.trim());
    }
    let raw: serde_json::Value =
        serde_json::from_str(stdout.trim()).with_context(|| format!("storm output {stdout:?}"))?;
    let get = |k: &str| raw[k].as_u64().ok_or_else(|| anyhow!("storm output has no {k}: {stdout}"));
    Ok(StormResult {
        attempts: get("attempts")?,
        wall_ns: get("wall_ns")?,
        cpu_ns: get("cpu_ns")?,
        user_ns: get("user_ns")?,
        sys_ns: get("sys_ns")?,
        out_rsts: get("out_rsts_delta")?,
        raw,
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP and the Prometheus text format

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP header end"))?;
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
            let Ok(value) = value.split_whitespace().next().unwrap_or("").parse::<f64>() else { continue };
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
                let l = labels.iter().find(|(k, _)| k == label).map(|(_, v)| v.clone()).unwrap_or_default();
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
        self.0.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
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

// ---------------------------------------------------------------------------------------------
// The rstwatch daemon

pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    /// Spawn to /metrics answering with the reset probes attached.
    pub startup: Duration,
    pub attached: Vec<(String, f64)>,
}

const PROBES_REQUIRED: &[&str] = &["tcp_send_reset", "tcp_receive_reset"];

impl Daemon {
    /// Start `rstwatch run` on a free loopback port and wait (at most 30 s) until /metrics answers
    /// with every `rstwatch_probe_attached` at 1 (at least the two reset probes).
    pub fn start(binary: &Path, extra_args: &[String], log: PathBuf) -> anyhow::Result<Daemon> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let logf = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .args(["run", "--metrics-addr", &addr.to_string()])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(logf.try_clone()?))
            .stderr(Stdio::from(logf));
        die_with_parent(&mut command, libc::SIGTERM);
        let spawned = Instant::now();
        let child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
        let mut daemon = Daemon { child, addr, log, startup: Duration::ZERO, attached: Vec::new() };
        let deadline = spawned + Duration::from_secs(30);
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                bail!("rstwatch exited during start-up ({status}); log {}:\n{}", daemon.log.display(), tail(&daemon.log));
            }
            if let Ok(scrape) = daemon.scrape() {
                let attached = scrape.values("rstwatch_probe_attached", "probe");
                let required_up = PROBES_REQUIRED
                    .iter()
                    .all(|p| attached.iter().any(|(name, v)| name == p && *v == 1.0));
                if required_up {
                    daemon.startup = spawned.elapsed();
                    daemon.attached = attached;
                    return Ok(daemon);
                }
            }
            if Instant::now() > deadline || system::stopping() {
                daemon.stop();
                bail!("rstwatch did not attach within 30 s; log {}:\n{}", daemon.log.display(), tail(&daemon.log));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn scrape(&self) -> anyhow::Result<Scrape> {
        Ok(Scrape::parse(&http_get(self.addr, "/metrics", Duration::from_secs(5))?))
    }

    /// SIGTERM (the daemon detaches and exits 0), SIGKILL after 10 s.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
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
                            l.lock().expect("not poisoned").push(t.elapsed().as_secs_f64() * 1e3);
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
        Scraper { stop, ok, failed, latencies, handle: Some(handle) }
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

// ---------------------------------------------------------------------------------------------
// bpftrace

/// Counts both reset tracepoints in a hash map, like the issue's peer baseline.
pub const BPFTRACE_SCRIPT: &str = r#"BEGIN { printf("ready\n"); }
tracepoint:tcp:tcp_send_reset { @rst["sent"] = count(); }
tracepoint:tcp:tcp_receive_reset { @rst["received"] = count(); }
"#;

pub struct Bpftrace {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub startup: Duration,
}

impl Bpftrace {
    /// Start the script; its stderr goes to `log`.
    pub fn start(log: &Path) -> anyhow::Result<Bpftrace> {
        let logf = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new("bpftrace");
        command
            .args(["-e", BPFTRACE_SCRIPT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(logf));
        die_with_parent(&mut command, libc::SIGTERM);
        let spawned = Instant::now();
        let mut child = command.spawn().context("starting bpftrace")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut b = Bpftrace { child, lines, startup: Duration::ZERO };
        let deadline = spawned + Duration::from_secs(60);
        loop {
            match b.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.trim() == "ready" => break,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = b.child.wait()?;
                    bail!("bpftrace exited during start-up ({status})");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() > deadline || system::stopping() {
                        stop_child(&mut b.child, libc::SIGKILL, Duration::from_secs(1));
                        bail!("bpftrace not ready after 60 s");
                    }
                }
            }
        }
        b.startup = spawned.elapsed();
        Ok(b)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT: bpftrace prints its maps and exits. Returns (sent, received) counts, and how it
    /// ended when that was not a plain exit after the SIGINT.
    pub fn stop(mut self) -> anyhow::Result<(u64, u64, Option<String>)> {
        let early = self.child.try_wait().ok().flatten().map(|s| format!("had already exited ({s})"));
        let status = stop_child(&mut self.child, libc::SIGINT, Duration::from_secs(10));
        let note = early.or_else(|| status.filter(|s| !s.success()).map(|s| format!("exited with {s}")));
        let (mut sent, mut received) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let Some((key, value)) = line.split_once(':') else { continue };
                    let value: u64 = value.trim().parse().unwrap_or(0);
                    match key.trim() {
                        "@rst[sent]" => sent = value,
                        "@rst[received]" => received = value,
                        _ => {}
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        Ok((sent, received, note))
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGINT, Duration::from_secs(5));
    }
}
