//! The one process kit of the tests: where the binary is, commands run to completion, children
//! that die with the test and stop by PID, scratch directories, ports, polling.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::NetNs;

/// The workspace root (the parent of this crate).
pub fn workspace() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(&manifest).to_path_buf()
}

/// Path of the binary: `$RSTWATCH_BIN`, else `rstwatch` in the release directory cargo builds
/// into (`$CARGO_TARGET_DIR`, relative to the workspace, or `<workspace>/target`).
pub fn binary_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RSTWATCH_BIN") {
        return PathBuf::from(p);
    }
    let ws = workspace();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => ws.join(dir),
        _ => ws.join("target"),
    };
    target.join("release").join("rstwatch")
}

/// [`binary_path`], which must exist: a test that needs the binary fails without it.
pub fn rstwatch_bin() -> PathBuf {
    let bin = binary_path();
    assert!(
        bin.exists(),
        "{} does not exist: `cargo build --release -p rstwatch` or set RSTWATCH_BIN",
        bin.display()
    );
    bin
}

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert!(crate::is_root(), "these tests need root");
}

/// The child dies with the test's thread (PR_SET_PDEATHSIG), however the test ends (a failed
/// assertion, a killed `cargo test`), so nothing it starts is left attached; given a network
/// namespace file, it enters it before exec (nothing else about the child changes). `netns` must
/// stay open until the command is spawned.
pub fn dies_with_test<'c>(cmd: &'c mut Command, netns: Option<&File>) -> &'c mut Command {
    let ns_fd = netns.map(|f| f.as_raw_fd());
    // SAFETY: only async-signal-safe calls (prctl, setns) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = ns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Run a command to completion; Ok(stdout) if it exits 0, else an error with both outputs.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// `apt-get install` Debian packages (after `apt-get update`), without recommends or prompts.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let apt = |args: &[&str]| {
        run(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["update", "-qq"])?;
    apt(&[&["install", "-y", "-qq", "--no-install-recommends"], packages].concat())?;
    Ok(())
}

pub fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A fresh, empty `$TMPDIR/rstwatch-tests-<pid>-<what>-<n>` (tests run in parallel: each call
/// gets its own).
pub fn temp_dir(what: &str) -> Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("rstwatch-tests-{}-{what}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// A loopback port nobody listens on now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// tracefs mounted, as the daemon finds it on a configured node: it mounts it itself as root, but
/// a run without CAP_SYS_ADMIN (a non-root container, `setpriv`) must find it mounted.
pub fn ensure_tracefs() -> Result<()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])).map(|_| ())
}

/// `setpriv` running `bin` as `uid`/`gid` with exactly `caps` (any case: "BPF", "perfmon") in the
/// inheritable, ambient and bounding sets and nothing else; a non-zero uid also drops the groups.
/// (An image gets the same from file capabilities; ambient capabilities give it without them.)
pub fn setpriv(bin: &Path, uid: u32, gid: u32, caps: &[&str]) -> Command {
    let set: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    if uid != 0 {
        cmd.args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".to_string(),
        ]);
    }
    cmd.args([format!("--inh-caps={set}"), format!("--bounding-set={set}")]);
    // setpriv refuses to raise an empty ambient set.
    if !caps.is_empty() {
        cmd.arg(format!("--ambient-caps={set}"));
    }
    cmd.arg("--").arg(bin);
    cmd
}

/// Poll `f` until it says true, at most `timeout`; the last error, if any, is in the failure.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!("{e:#}"),
        }
        ensure!(Instant::now() < deadline, "{what}: not after {timeout:?} {last}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process a test started, its stdout and stderr in a log file; stopped by PID, killed when
/// dropped, and by the kernel when the test's thread ends.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawn `cmd` with stdout+stderr to `log`, inside `netns` if given.
    pub fn spawn(name: &str, cmd: &mut Command, netns: Option<&NetNs>, log: PathBuf) -> Result<Proc> {
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let ns_file = match netns {
            Some(ns) => Some(File::open(ns.path()).with_context(|| format!("open {}", ns.path()))?),
            None => None,
        };
        let child = dies_with_test(cmd, ns_file.as_ref())
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Some(status) once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Poll `ready` until it holds, at most `timeout`; an error with the log's tail if the process
    /// exits first or is not ready in time.
    pub fn wait_ready(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited during start-up ({status})\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if ready() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} not ready in {timeout:?}\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send `signal` to it, by PID.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = self.pid();
        ensure!(pid != 0, "{} already stopped", self.name);
        // SAFETY: our own child, not yet reaped, so the PID is still ours.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        ensure!(
            rc == 0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Wait (bounded) for it to exit.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("already stopped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "{} still running after {timeout:?}:\n{}",
                self.name,
                tail(&self.log, 30)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        // SAFETY: signalling our own child by its PID (not yet reaped, so the PID is still ours).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        let st = child.wait()?;
        bail!(
            "{} (pid {}) ignored SIGTERM for {grace:?}; killed ({st})",
            self.name,
            child.id()
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        format!(
            "{} log {}:\n{}",
            self.name,
            self.log.display(),
            tail(&self.log, 30)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A check that did not run, said out loud: `SKIPPED: <reason>` on stderr, and a failure under
/// `CI=true`, where the host is set up to run every check.
pub fn skipped(reason: &str) {
    eprintln!("SKIPPED: {reason}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true: a check did not run: {reason}");
    }
}
