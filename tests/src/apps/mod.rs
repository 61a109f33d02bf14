//! Software this project did not write, made to reset connections the way it does in production:
//! Debian's nginx, redis-server, haproxy and curl, and a JVM client on Debian's Apache HttpClient
//! 4.5. Each test runs its applications in a network namespace of its own (loopback only), under
//! the test process's rstwatch daemon and an `rstwatch trace`, and checks what both ends' owners
//! were counted as, the error the client got, and what the client printed.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::process::workspace;
use crate::{NetNs, Snapshot, daemon, trace_json::TraceJson};

/// What the suite runs: `(a file the package installs, the Debian package)`.
pub fn packages() -> impl Iterator<Item = (&'static str, &'static str)> {
    include_str!("packages.txt")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split_once(' '))
}

const CLASSPATH_JARS: &[&str] = &[
    "/usr/share/java/httpclient.jar",
    "/usr/share/java/httpcore.jar",
    "/usr/share/java/commons-logging.jar",
];

/// Bounded waits: applications start in well under a second; a JVM in about one.
pub const START: Duration = Duration::from_secs(20);
const COUNTED: Duration = Duration::from_secs(10);

/// Install what is missing (idempotent; `cargo xtask test` does the same before the tests).
pub fn ensure_installed() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let missing: Vec<&str> = packages()
            .filter(|(path, _)| !Path::new(path).exists())
            .map(|(_, package)| package)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!("apps: installing Debian packages {missing:?}");
        crate::process::apt_install(&missing).map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!("installing the applications: {e}"))
}

/// `<workspace>/target/apps/<name>`, emptied.
pub fn work_dir(name: &str) -> Result<PathBuf> {
    let dir = workspace().join("target/apps").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// A source file of this module (`java/AppClients.java`, `upload_server.py`).
pub fn source(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/apps")
        .join(name)
}

/// `java` arguments for the JVM clients, compiled once per test process with javac against
/// Debian's jars (no Maven).
pub fn java_client(args: &[&str]) -> Result<Vec<String>> {
    static CLASSES: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let classes = CLASSES
        .get_or_init(|| {
            let out = workspace().join("target/apps/java");
            let built = std::fs::create_dir_all(&out)
                .map_err(anyhow::Error::from)
                .and_then(|_| {
                    let result = Command::new("javac")
                        .arg("-d")
                        .arg(&out)
                        .args(["-cp", &CLASSPATH_JARS.join(":")])
                        .arg(source("java/AppClients.java"))
                        .output()
                        .context("running javac")?;
                    ensure!(
                        result.status.success(),
                        "javac: {}",
                        String::from_utf8_lossy(&result.stderr)
                    );
                    Ok(())
                });
            built.map(|_| out).map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("compiling the JVM clients: {e}"))?;
    let classpath = format!("{}:{}", classes.display(), CLASSPATH_JARS.join(":"));
    let mut all = vec!["-cp".to_string(), classpath, "AppClients".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    Ok(all)
}

/// One application process inside a namespace; its output goes to `<dir>/<name>.log`. Stopped
/// when dropped, and killed by the kernel when the test's thread ends (PR_SET_PDEATHSIG; a
/// killed test process can leave nginx's workers behind, which only a graceful stop takes along).
pub struct App {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl App {
    pub fn start(ns: &NetNs, dir: &Path, name: &str, program: &str, args: &[String]) -> Result<App> {
        let netns = File::open(ns.path()).with_context(|| format!("open {}", ns.path()))?;
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = crate::process::dies_with_test(&mut command, Some(&netns))
            .spawn()
            .with_context(|| format!("starting {name} ({program})"))?;
        Ok(App {
            name: name.into(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stdin(&mut self) -> Result<&mut ChildStdin> {
        self.child.stdin.as_mut().context("stdin already closed")
    }

    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Wait until it printed `needle`.
    pub fn wait_printed(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.output().contains(needle) {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not print {needle:?} in {timeout:?}:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "{} still running after {timeout:?}:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as an OOM killer or `kill -9` does; reaped.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        self.child
            .kill()
            .with_context(|| format!("kill -9 {}", self.child.id()))?;
        Ok(self.child.wait()?)
    }
}

impl Drop for App {
    /// SIGTERM first, so that a master process (nginx) stops its workers, which would otherwise
    /// outlive it; SIGKILL if it has not exited within a few seconds.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One application test: its namespace, directory, port, the daemon's counters before it, and a
/// trace of its port.
pub struct AppTest {
    pub ns: NetNs,
    pub dir: PathBuf,
    pub port: u16,
    before: Snapshot,
    trace: Option<TraceJson>,
}

/// A row of `rstwatch_resets_total` the test expects on its port: direction, cause, owner process.
pub struct Reset(pub &'static str, pub &'static str, pub &'static str);
/// A row of `rstwatch_socket_errors_total`: errno and the process that got it.
pub struct AppError(pub &'static str, pub &'static str);

impl AppTest {
    pub fn new(name: &str, port: u16) -> Result<AppTest> {
        assert!(crate::is_root(), "these tests need root");
        ensure_installed()?;
        daemon();
        let dir = work_dir(name)?;
        let ns = NetNs::new()?;
        let before = daemon().scrape()?;
        // No event budget: another engineer's reset storm must not crowd this test's events out.
        let port_text = port.to_string();
        let trace = TraceJson::start(&["--port", &port_text, "--max-events-per-second", "0"])?;
        Ok(AppTest {
            ns,
            dir,
            port,
            before,
            trace: Some(trace),
        })
    }

    pub fn start(&self, name: &str, program: &str, args: &[impl AsRef<str>]) -> Result<App> {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        App::start(&self.ns, &self.dir, name, program, &args)
    }

    /// Write a configuration file into the test's directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> Result<String> {
        let path = self.dir.join(name);
        File::create(&path)?.write_all(text.as_bytes())?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// Wait until something listens on `port` in the namespace.
    pub fn wait_listening(&self, port: u16) -> Result<()> {
        let deadline = Instant::now() + START;
        let filter = format!("sport = :{port}");
        while self.ns.exec(&["ss", "-Hltn", &filter])?.trim().is_empty() {
            ensure!(
                Instant::now() < deadline,
                "nothing listens on port {port} after {START:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Check the counters on the test's port: exactly `resets` (and nothing else), and at least
    /// the `errors`; then stop the trace, print its events into the test log, check that each
    /// received reset's event names the sent one (both ends are on this host), and return them.
    pub fn expect(&mut self, resets: &[Reset], errors: &[AppError]) -> Result<Vec<Value>> {
        let port = self.port.to_string();
        let delta = |after: &Snapshot, metric: &str, filter: &[(&str, &str)]| {
            after.sum(metric, filter) - self.before.sum(metric, filter)
        };
        let reset_filter = |r: &Reset| {
            [
                ("direction", r.0),
                ("cause", r.1),
                ("comm", r.2),
                ("port", port.as_str()),
            ]
        };
        let error_filter = |e: &AppError| [("errno", e.0), ("comm", e.1), ("port", port.as_str())];
        let total = |after: &Snapshot, direction: &str| {
            delta(
                after,
                "rstwatch_resets_total",
                &[("direction", direction), ("port", port.as_str())],
            )
        };
        let wanted = |direction: &str| resets.iter().filter(|r| r.0 == direction).count() as f64;
        let settled = daemon().wait_for(COUNTED, |after| {
            resets
                .iter()
                .all(|r| delta(after, "rstwatch_resets_total", &reset_filter(r)) >= 1.0)
                && errors
                    .iter()
                    .all(|e| delta(after, "rstwatch_socket_errors_total", &error_filter(e)) >= 1.0)
        });
        let after = match settled {
            Ok(after) => after,
            Err((why, last)) => {
                let last = last.unwrap_or_default();
                let rows =
                    crate::metrics::format_rows(&crate::metrics::port_delta(&self.before, &last, self.port));
                // On a shared machine another engineer's 10k-port storm can fill the label cap or
                // the kernel's count map; then this port's resets are counted under "other".
                let overflow = delta(&last, "rstwatch_label_overflow_total", &[]);
                let map_full = delta(
                    &last,
                    "rstwatch_events_lost_total",
                    &[("stage", "count_map_full")],
                );
                bail!(
                    "port {}: {why}; counted:\n{rows}(label overflow +{overflow}, count_map_full +{map_full})",
                    self.port
                );
            }
        };
        let events = self.trace.take().context("expect() runs once")?.stop()?;
        for event in &events {
            eprintln!("rstwatch: {}", summary(event));
        }
        for r in resets {
            let got = delta(&after, "rstwatch_resets_total", &reset_filter(r));
            ensure!(
                got == 1.0,
                "{} {} owned by {}: counted {got}, expected 1",
                r.0,
                r.1,
                r.2
            );
        }
        for direction in ["sent", "received"] {
            let got = total(&after, direction);
            ensure!(
                got == wanted(direction),
                "{direction} resets on port {port}: {got}, expected {}",
                wanted(direction)
            );
        }
        if let (Some(sent), Some(received)) = (
            resets.iter().find(|r| r.0 == "sent"),
            resets.iter().find(|r| r.0 == "received"),
        ) {
            let rx = event(&events, "received")?;
            ensure!(
                (
                    rx["cause"] == received.1,
                    rx["comm"] == received.2,
                    rx["peer_cause"] == sent.1,
                    rx["peer_comm"] == sent.2
                ) == (true, true, true, true),
                "the received event must be {} of {} and name {} of {}: {rx}",
                received.1,
                received.2,
                sent.1,
                sent.2
            );
        }
        Ok(events)
    }
}

/// The reset event of one direction among the trace's events.
pub fn event<'a>(events: &'a [Value], direction: &str) -> Result<&'a Value> {
    events
        .iter()
        .find(|e| e["event"] == "reset" && e["direction"] == direction)
        .with_context(|| format!("no {direction} reset event in {events:#?}"))
}

/// One line per event for the test log.
fn summary(event: &Value) -> String {
    let field = |name: &str| match &event[name] {
        Value::Null => None,
        Value::String(s) => Some(format!("{name}={s}")),
        other => Some(format!("{name}={other}")),
    };
    [
        "event",
        "direction",
        "cause",
        "errno",
        "reset_cause",
        "state",
        "comm",
        "pid",
        "thread",
        "peer_cause",
        "peer_comm",
        "peer_kernel_reason",
        "kernel_reason",
        "bytes_acked",
        "bytes_received",
    ]
    .iter()
    .filter_map(|name| field(name))
    .collect::<Vec<_>>()
    .join(" ")
}
