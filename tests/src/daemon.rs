//! One rstwatch daemon per test process, started on first use and killed when the process exits.
//!
//! The daemon is spawned from a dedicated thread that never exits, with `PR_SET_PDEATHSIG(SIGKILL)`
//! set in the child: the kernel kills it when that thread (that is, the test process) goes away,
//! however the process ends. (A `Drop` on a static or `atexit` would not run reliably.)

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::http;
use crate::process::{Proc, free_port, tail};

use crate::metrics::{self, Snapshot};

pub struct Daemon {
    pub addr: SocketAddr,
    pub pid: u32,
    pub log: PathBuf,
    pub bin: PathBuf,
}

static DAEMON: OnceLock<std::result::Result<Daemon, String>> = OnceLock::new();

pub use crate::process::binary_path;

/// The daemon of this process, started on first call. Panics (with the reason) if it cannot start,
/// so every test that needs it fails loudly instead of being skipped.
pub fn daemon() -> &'static Daemon {
    match DAEMON.get_or_init(|| start().map_err(|e| format!("{e:#}"))) {
        Ok(d) => d,
        Err(e) => panic!("rstwatch daemon is not available: {e}"),
    }
}

/// Scrape the process's daemon (started on first use).
pub fn scrape() -> Result<Snapshot> {
    daemon().scrape()
}

/// `rstwatch_resets_total{direction, cause, port}` summed over `state`, from the process's daemon.
pub fn resets(dir: crate::metrics::Dir, cause: &str, port: u16) -> f64 {
    daemon().resets(dir, cause, port).expect("scrape /metrics")
}

/// Extra daemon arguments from `$RSTWATCH_DAEMON_ARGS` (split on whitespace).
pub fn extra_args() -> Vec<String> {
    std::env::var("RSTWATCH_DAEMON_ARGS")
        .map(|args| args.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

fn start() -> Result<Daemon> {
    let bin = binary_path();
    if !bin.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p rstwatch` or set RSTWATCH_BIN",
            bin.display()
        );
    }
    let port = free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let log = std::env::temp_dir().join(format!("rstwatch-tests-{}.log", std::process::id()));
    let logf = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let logf2 = logf.try_clone()?;

    let (tx, rx) = mpsc::channel::<std::result::Result<u32, String>>();
    let bin2 = bin.clone();
    std::thread::Builder::new()
        .name("rstwatch-daemon-keeper".into())
        .spawn(move || {
            let mut cmd = Command::new(&bin2);
            cmd.args([
                "run",
                "--metrics-addr",
                &addr.to_string(),
                "--idle-threshold",
                "1s",
                "--max-ports",
                "5000",
            ])
            // e.g. `--program-type tracepoint`: the whole suite again on classic tracepoints.
            .args(extra_args())
            .stdin(Stdio::null())
            .stdout(Stdio::from(logf))
            .stderr(Stdio::from(logf2));
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The keeper thread may already be gone (it never exits, but be safe).
                    if libc::getppid() == 1 {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id()));
                    // Reap it if it dies on its own; otherwise stay alive for the process's lifetime
                    // so that PDEATHSIG fires only when the whole test process exits.
                    let _ = child.wait();
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("spawn {}: {e}", bin2.display())));
                }
            }
        })?;
    let pid = rx
        .recv()
        .map_err(|_| anyhow!("daemon keeper thread died"))?
        .map_err(|e| anyhow!(e))?;

    let d = Daemon { addr, pid, log, bin };
    // Wait (bounded) for the metrics endpoint and the attached probe.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_err;
    loop {
        if !process_alive(pid) {
            bail!(
                "rstwatch exited during start-up; log {}:\n{}",
                d.log.display(),
                tail(&d.log, 40)
            );
        }
        match d.scrape() {
            Ok(s) => {
                if ready(&s) {
                    return Ok(d);
                }
                last_err = "rstwatch_probe_attached{probe=\"tcp_send_reset\"} is not 1".into();
            }
            Err(e) => last_err = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!(
                "rstwatch not ready after 20 s ({last_err}); log {}:\n{}",
                d.log.display(),
                tail(&d.log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie counts as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .map(|r| r.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

impl Daemon {
    /// GET /metrics, parsed.
    pub fn scrape(&self) -> Result<Snapshot> {
        let body = http::get_ok(self.addr, "/metrics")?;
        metrics::parse(&body)
    }

    /// `rstwatch_resets_total` for (direction, cause, port), summed over `state`, scraped now.
    pub fn resets(&self, dir: crate::metrics::Dir, cause: &str, port: u16) -> Result<f64> {
        Ok(self.scrape()?.resets(dir, cause, port))
    }

    pub fn scrape_text(&self) -> Result<String> {
        http::get_ok(self.addr, "/metrics")
    }

    /// Poll /metrics until `cond` holds, at most `timeout`. Returns the last snapshot either way
    /// (Ok if the condition held, Err with the last snapshot attached otherwise).
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&Snapshot) -> bool,
    ) -> std::result::Result<Snapshot, (String, Option<Snapshot>)> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            match self.scrape() {
                Ok(s) => {
                    if cond(&s) {
                        return Ok(s);
                    }
                    last = Some(s);
                }
                Err(e) => {
                    if Instant::now() > deadline {
                        return Err((format!("scrape failed: {e:#}"), last));
                    }
                }
            }
            if Instant::now() > deadline {
                return Err((format!("condition not met after {timeout:?}"), last));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A daemon of one test, with its own flags, to signal and watch exit (the shared [`daemon()`]
/// outlives every test). Ready once `tcp_send_reset` is attached; killed when dropped.
pub struct OwnDaemon {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl OwnDaemon {
    pub fn start(extra: &[&str]) -> Result<OwnDaemon> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let log = std::env::temp_dir().join(format!(
            "rstwatch-tests-{}-daemon-{}.log",
            std::process::id(),
            addr.port()
        ));
        let mut cmd = Command::new(crate::process::rstwatch_bin());
        cmd.args(["run", "--metrics-addr", &addr.to_string()])
            .args(extra)
            .env("RUST_LOG", "info");
        let mut proc = Proc::spawn("rstwatch", &mut cmd, None, log)?;
        proc.wait_ready(Duration::from_secs(30), || {
            http::get_ok(addr, "/metrics").is_ok_and(|text| metrics::parse(&text).is_ok_and(|s| ready(&s)))
        })?;
        Ok(OwnDaemon { proc, addr })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn scrape(&self) -> Result<Snapshot> {
        metrics::parse(&http::get_ok(self.addr, "/metrics")?)
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.proc.log);
    }
}

/// The daemon serves metrics with its first program attached.
fn ready(s: &Snapshot) -> bool {
    s.get("rstwatch_probe_attached", &[("probe", "tcp_send_reset")]) == Some(1.0)
}
