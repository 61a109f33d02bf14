//! Each run as results.json keeps it: the raw sample of one round and mode, and its BPF programs'
//! statistics.

use super::model::{CountsReport, ProgramReport, SampleReport, ToolReport};
use crate::bench::{ProgStat, Sample};

pub(super) fn program_report(s: &Sample, p: &ProgStat) -> ProgramReport {
    ProgramReport {
        id: p.id,
        name: p.name.clone(),
        run_cnt: p.run_cnt,
        run_time_ns: p.run_time_ns,
        ns_per_run: p.run_time_ns as f64 / p.run_cnt.max(1) as f64,
        runs_per_op: s.storm.per_op(p.run_cnt),
        ns_per_op: s.storm.per_op(p.run_time_ns),
        recursion_misses: p.recursion_misses,
    }
}

pub(super) fn sample_report(s: &Sample) -> SampleReport {
    SampleReport {
        round: s.round,
        mode: s.mode.clone(),
        profile: s.profile,
        attempts: s.storm.attempts,
        ops: s.storm.ops,
        wall_ns: s.storm.wall_ns,
        rate_per_s: s.storm.rate(),
        cpu_ns: s.storm.cpu_ns,
        cpu_ns_per_op: s.storm.cpu_per_op(),
        user_ns: s.storm.user_ns,
        sys_ns: s.storm.sys_ns,
        out_rsts: s.storm.out_rsts,
        machine_busy_cores: s.machine_busy_cores,
        other_bpf_tracers: s.foreign_tracers,
        storm: s.storm.raw.clone(),
        tool: s.tool.as_ref().map(|t| ToolReport {
            pid: t.pid,
            startup_s: t.startup.as_secs_f64(),
            cpu_ns: t.cpu_ns,
            cpu_pct_of_core: t.cpu_ns as f64 / s.storm.wall_ns.max(1) as f64 * 100.0,
            cpu_ns_per_op: s.storm.per_op(t.cpu_ns),
            tail_cpu_ns: t.tail_cpu_ns,
            rss_before_kib: t.rss_before_kib,
            rss_after_kib: t.rss_after_kib,
            peak_rss_startup_kib: t.peak_rss_startup_kib,
            peak_rss_storm_kib: t.peak_rss_storm_kib,
            scrapes_ok: t.scrapes_ok,
            scrapes_failed: t.scrapes_failed,
            scrape_ms: t.scrape_ms.clone(),
        }),
        counts: s.counts.as_ref().map(|c| CountsReport {
            sent: c.sent,
            received: c.received,
            received_owner_storm: c.received_owned,
            socket_errors_econnrefused: c.socket_errors,
            lost: c.lost.iter().cloned().collect(),
        }),
        programs: s.programs.iter().map(|p| program_report(s, p)).collect(),
    }
}
