//! A private, named network namespace per test (`ip netns add rstw-<pid>-<n>`), with a way to run code
//! on a thread that has `setns()` into it. Everything a scenario does on the network stays inside it
//! (its loopback only), and per-netns sysctls set there vanish with it.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Create `rstw-<pid>-<n>` and bring its loopback up.
    pub fn new() -> Result<NetNs> {
        static CLEANED: std::sync::Once = std::sync::Once::new();
        CLEANED.call_once(remove_stale);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("rstw-{}-{}", std::process::id(), n);
        run_cmd(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("ip netns add {name} (are you root?)"))?;
        let ns = NetNs { name };
        run_cmd(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Run `f` on a fresh thread that joined this namespace. Sockets created there live in the
    /// namespace whatever thread uses them later; threads spawned from `f` inherit the namespace.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path();
        std::thread::scope(|s| {
            let h = s.spawn(move || -> Result<R> {
                enter(&path)?;
                Ok(f())
            });
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Run a command inside the namespace (`ip netns exec NAME ...`); returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        run_cmd(&mut cmd)
    }

    /// Set a per-namespace sysctl (`net/ipv4/...`) from a thread inside the namespace.
    pub fn sysctl_set(&self, key: &str, value: &str) -> Result<()> {
        let key = key.replace('.', "/");
        self.run(|| write_sysctl(&key, value))?
    }

    /// Read a per-namespace sysctl.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let key = key.replace('.', "/");
        self.run(|| read_sysctl(&key))?
    }

    /// `Tcp:` counters of `/proc/net/snmp` of this namespace (e.g. "OutRsts").
    pub fn tcp_mib(&self, field: &str) -> Result<u64> {
        self.run(|| tcp_mib_here(field))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Remove `rstw-<pid>-<n>` namespaces left behind by test processes that no longer exist (killed
/// before their Drop ran). Only names this crate makes are touched.
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("rstw-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// Join the named network namespace (by path) on the current thread.
pub fn enter(path: &str) -> Result<()> {
    let f = File::open(path).with_context(|| format!("open {path}"))?;
    // SAFETY: plain syscall on a valid fd.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Write `/proc/sys/<key>`; resolved in the calling thread's network namespace.
pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let key = key.replace('.', "/");
    let p = format!("/proc/sys/{key}");
    std::fs::write(&p, value).with_context(|| format!("write {p}"))
}

pub fn read_sysctl(key: &str) -> Result<String> {
    let key = key.replace('.', "/");
    let p = format!("/proc/sys/{key}");
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("read {p}"))?
        .trim()
        .to_string())
}

/// Read a `Tcp:` field of `/proc/thread-self/net/snmp`, i.e. of the calling thread's namespace.
pub fn tcp_mib_here(field: &str) -> Result<u64> {
    snmp_field_here("/proc/thread-self/net/snmp", "Tcp:", field)
}

/// Read a `TcpExt:` field of `/proc/thread-self/net/netstat`.
pub fn tcpext_here(field: &str) -> Result<u64> {
    snmp_field_here("/proc/thread-self/net/netstat", "TcpExt:", field)
}

fn snmp_field_here(file: &str, prefix: &str, field: &str) -> Result<u64> {
    let mut s = String::new();
    File::open(file)
        .with_context(|| format!("open {file}"))?
        .read_to_string(&mut s)?;
    let lines: Vec<&str> = s.lines().filter(|l| l.starts_with(prefix)).collect();
    if lines.len() < 2 {
        bail!("no {prefix} lines in {file}");
    }
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let values: Vec<&str> = lines[1].split_whitespace().collect();
    let i = names
        .iter()
        .position(|n| *n == field)
        .with_context(|| format!("{prefix} {field} not in {file}"))?;
    values[i]
        .parse::<i64>()
        .map(|v| v as u64)
        .with_context(|| format!("{prefix} {field} value {:?}", values[i]))
}

fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
