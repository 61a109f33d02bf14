//! What the benchmark reads from and sets on the machine: process CPU and memory from /proc,
//! the machine's busy time, sysctls left changed by an interrupted run, network namespaces,
//! and a stop flag for Ctrl-C / SIGTERM.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

// ---------------------------------------------------------------------------------------------
// Stop flag

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM set a flag the loops check, so the benchmark restores what it changed.
pub fn install_stop_handler() {
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

pub fn check_stop() -> anyhow::Result<()> {
    if stopping() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleep in small steps, waking early on a stop request.
pub fn sleep(d: Duration) {
    let end = Instant::now() + d;
    while !stopping() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

fn clock_ticks() -> u64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// utime + stime of a whole process (all its threads, live and exited), in ns, from /proc/PID/stat.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3 (index 0 here), utime 14 (index 11), stime 15 (index 12).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000_000 / clock_ticks())
}

/// Time on CPU of a process's live threads, in ns (/proc/PID/task/*/schedstat): exact where
/// /proc/PID/stat counts clock ticks (10 ms), which is too coarse for a daemon over a 1 s run.
/// Threads that exit in between take their time with them; a tool's threads live as long as it.
pub fn threads_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let ns = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Some(ns)
}

/// A field of /proc/PID/status in KiB (VmHWM, VmRSS).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Reset the process's peak RSS (VmHWM) to its current RSS (`echo 5 > /proc/PID/clear_refs`).
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The machine

/// Busy and total jiffies over all CPUs (/proc/stat `cpu` line; idle and iowait are not busy).
#[derive(Clone, Copy)]
pub struct CpuTimes {
    busy: u64,
}

pub fn cpu_times() -> CpuTimes {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    CpuTimes {
        busy: total.saturating_sub(idle),
    }
}

/// Busy cores between two readings (e.g. 1.0 = one core fully busy), and the busy CPU time in ns.
pub fn busy_between(a: CpuTimes, b: CpuTimes, wall: Duration) -> (f64, u64) {
    let busy_ns = b.busy.saturating_sub(a.busy) * 1_000_000_000 / clock_ticks();
    (busy_ns as f64 / wall.as_nanos().max(1) as f64, busy_ns)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Processes that used more than `min_share` of a core over `window`, busiest first, excluding
/// `ours`: (pid, comm, share of one core).
pub fn busy_processes(window: Duration, min_share: f64, ours: &[u32]) -> (f64, Vec<(u32, String, f64)>) {
    let before: BTreeMap<u32, u64> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, process_cpu_ns(p)?)))
        .collect();
    let t0 = cpu_times();
    let started = Instant::now();
    sleep(window);
    let wall = started.elapsed();
    let (busy_cores, _) = busy_between(t0, cpu_times(), wall);
    let mut busy = Vec::new();
    for pid in all_pids() {
        if ours.contains(&pid) {
            continue;
        }
        let Some(after) = process_cpu_ns(pid) else {
            continue;
        };
        let share =
            after.saturating_sub(before.get(&pid).copied().unwrap_or(after)) as f64 / wall.as_nanos() as f64;
        if share >= min_share {
            busy.push((pid, comm(pid), share));
        }
    }
    busy.sort_by(|a, b| b.2.total_cmp(&a.2));
    (busy_cores, busy)
}

/// Other processes holding BPF tracing programs (tracepoint, kprobe, raw tracepoint, tracing,
/// perf event): they run during every mode, bare included, and take CPU from the storm.
pub fn foreign_tracers(ours: &[u32]) -> Vec<(u32, String, Vec<u32>)> {
    const TRACING_TYPES: &[u32] = &[2, 5, 7, 17, 26];
    let me = std::process::id();
    let mut found = Vec::new();
    for pid in all_pids() {
        if pid == me || ours.contains(&pid) {
            continue;
        }
        let ids: Vec<u32> = bpf_prog_fds(pid)
            .into_iter()
            .filter(|p| TRACING_TYPES.contains(&p.prog_type))
            .map(|p| p.id)
            .collect();
        if !ids.is_empty() {
            found.push((pid, comm(pid), ids));
        }
    }
    found
}

/// A BPF program a process holds, as its fdinfo shows it.
#[derive(Clone, Debug, Default)]
pub struct ProgFd {
    pub id: u32,
    pub prog_type: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub recursion_misses: u64,
}

/// The BPF programs `pid` holds open (anon_inode:bpf-prog), from /proc/PID/fdinfo, by id.
pub fn bpf_prog_fds(pid: u32) -> Vec<ProgFd> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut progs: BTreeMap<u32, ProgFd> = BTreeMap::new();
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.as_os_str() != "anon_inode:bpf-prog" {
            continue;
        }
        let fd = entry.file_name();
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy())) else {
            continue;
        };
        let mut p = ProgFd::default();
        for line in info.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k {
                "prog_id" => p.id = v.parse().unwrap_or(0),
                "prog_type" => p.prog_type = v.parse().unwrap_or(0),
                "run_time_ns" => p.run_time_ns = v.parse().unwrap_or(0),
                "run_cnt" => p.run_cnt = v.parse().unwrap_or(0),
                "recursion_misses" => p.recursion_misses = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        if p.id != 0 {
            progs.insert(p.id, p);
        }
    }
    progs.into_values().collect()
}

/// Program names by id (`bpftool prog show --json`); empty when bpftool is missing.
pub fn bpf_prog_names() -> BTreeMap<u32, String> {
    let Ok(out) = Command::new("bpftool").args(["prog", "show", "--json"]).output() else {
        return BTreeMap::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return BTreeMap::new();
    };
    v.as_array()
        .map(|progs| {
            progs
                .iter()
                .filter_map(|p| Some((p["id"].as_u64()? as u32, p["name"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Sysctls

/// Put back sysctls that a benchmark killed mid-run left changed (notes `restore-<key>` in
/// `state_dir`; earlier versions set `kernel.bpf_stats_enabled` for the profile rounds).
pub fn restore_leftover_sysctls(state_dir: &Path) {
    let Ok(dir) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_prefix("restore-") else {
            continue;
        };
        if let Ok(value) = std::fs::read_to_string(entry.path()) {
            let value = value.trim();
            if write_sysctl(key, value).is_ok() {
                eprintln!("xtask bench: restored {key} = {value}, left changed by an interrupted run");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn write_sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))
}

// ---------------------------------------------------------------------------------------------
// Network namespaces

const NETNS_PREFIX: &str = "rstwbench-";

/// A fresh network namespace (`rstwbench-<pid>-<n>`, loopback up), deleted on drop. The storm runs
/// in it, so its `Tcp: OutRsts` counts the storm's resets and nothing else.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(n: u32) -> anyhow::Result<NetNs> {
        let name = format!("{NETNS_PREFIX}{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Delete namespaces of earlier benchmark runs whose process is gone.
pub fn remove_stale_netns() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|r| r.split('-').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !alive(pid) {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// `apt-get install` what the benchmark needs, if missing (root only).
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: installing Debian packages: {}", packages.join(" "));
    let _ = Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("starting apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed: {status}", packages.join(" "));
    }
    Ok(())
}
