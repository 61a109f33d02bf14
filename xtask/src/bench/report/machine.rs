//! What the report says about where it ran: the machine (kernel, OS, CPU, memory), the output of
//! small commands (date, git), and the busiest other processes.

use std::process::Command;

use super::model::{BusyProcess, Machine};

pub(super) fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(super) fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Machine {
        kernel: command_output("uname", &["-r"]),
        os: std::fs::read_to_string("/etc/debian_version")
            .map(|v| format!("Debian {}", v.trim()))
            .unwrap_or_default(),
        cpu,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        memory_gib: (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
    }
}

pub(super) fn processes(list: &[(u32, String, f64)]) -> Vec<BusyProcess> {
    list.iter()
        .take(8)
        .map(|(pid, comm, share)| BusyProcess {
            pid: *pid,
            comm: comm.clone(),
            cpu_pct: (share * 1000.0).round() / 10.0,
        })
        .collect()
}
