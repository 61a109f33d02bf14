//! The processes a benchmark round runs: the load generator, the rstwatch daemon and bpftrace.
//! Each is started by this process, bounded in time, and stopped by its PID.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use super::{
    Workload,
    scrape::{Scrape, http_get},
    system,
};

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
// The load generator

#[derive(Clone, Debug)]
pub struct StormSpec {
    pub workload: Workload,
    pub threads: usize,
    pub port: u16,
    pub ports: u32,
    pub duration: Duration,
    pub max_attempts: u64,
}

#[derive(Clone, Debug, Default)]
pub struct StormResult {
    pub attempts: u64,
    /// Completed operations: refused attempts, or connections that went through.
    pub ops: u64,
    pub wall_ns: u64,
    pub cpu_ns: u64,
    pub user_ns: u64,
    pub sys_ns: u64,
    pub out_rsts: u64,
    pub raw: serde_json::Value,
}

impl StormResult {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / (self.wall_ns as f64 / 1e9)
    }

    pub fn cpu_per_op(&self) -> f64 {
        self.cpu_ns as f64 / self.ops.max(1) as f64
    }

    /// `ns` spread over the operations.
    pub fn per_op(&self, ns: u64) -> f64 {
        ns as f64 / self.ops.max(1) as f64
    }
}

/// Run the load generator in the namespace `netns` and wait for it (bounded).
pub fn run_storm(storm_bin: &Path, netns: &str, spec: &StormSpec) -> anyhow::Result<StormResult> {
    let mut command = Command::new(storm_bin);
    command
        .args(["--workload", spec.workload.name()])
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
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", storm_bin.display()))?;
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
        bail!(
            "storm generator failed ({status}): {}{}",
            stderr.trim(),
            stdout.trim()
        );
    }
    let raw: serde_json::Value =
        serde_json::from_str(stdout.trim()).with_context(|| format!("storm output {stdout:?}"))?;
    let get = |k: &str| {
        raw[k]
            .as_u64()
            .ok_or_else(|| anyhow!("storm output has no {k}: {stdout}"))
    };
    Ok(StormResult {
        attempts: get("attempts")?,
        ops: get("ops")?,
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
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut daemon = Daemon {
            child,
            addr,
            log,
            startup: Duration::ZERO,
            attached: Vec::new(),
        };
        let deadline = spawned + Duration::from_secs(30);
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "rstwatch exited during start-up ({status}); log {}:\n{}",
                    daemon.log.display(),
                    tail(&daemon.log)
                );
            }
            if let Ok(scrape) = daemon.scrape() {
                let attached = scrape.values("rstwatch_probe_attached", "probe");
                let required_up = rstwatch_common::probes::required()
                    .all(|p| attached.iter().any(|(name, v)| name == p.name && *v == 1.0));
                if required_up {
                    daemon.startup = spawned.elapsed();
                    daemon.attached = attached;
                    return Ok(daemon);
                }
            }
            if Instant::now() > deadline || system::stopping() {
                daemon.stop();
                bail!(
                    "rstwatch did not attach within 30 s; log {}:\n{}",
                    daemon.log.display(),
                    tail(&daemon.log)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn scrape(&self) -> anyhow::Result<Scrape> {
        Ok(Scrape::parse(&http_get(
            self.addr,
            "/metrics",
            Duration::from_secs(5),
        )?))
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
        let mut b = Bpftrace {
            child,
            lines,
            startup: Duration::ZERO,
        };
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
        let early = self
            .child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| format!("had already exited ({s})"));
        let status = stop_child(&mut self.child, libc::SIGINT, Duration::from_secs(10));
        let note = early.or_else(|| {
            status
                .filter(|s| !s.success())
                .map(|s| format!("exited with {s}"))
        });
        let (mut sent, mut received) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let Some((key, value)) = line.split_once(':') else {
                        continue;
                    };
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
