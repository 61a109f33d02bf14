//! Waiting for a quiet machine before and between rounds: other engineers' builds, tests and BPF
//! tracers share this machine and would disturb the measurement; what was seen is reported.

use std::time::{Duration, Instant};

use super::system;
use crate::setup;

pub struct Quiet {
    pub waited: Duration,
    pub busy_cores: f64,
    pub loadavg: String,
    pub busy: Vec<(u32, String, f64)>,
    pub tracers: Vec<(u32, String, Vec<u32>)>,
}

/// Wait (bounded by what is left of `budget`) until no other process uses much CPU and no other
/// BPF tracer is loaded; say what was seen.
pub fn wait_for_quiet(
    budget: &mut Duration,
    window: Duration,
    verbose: bool,
    tracers_ok: bool,
) -> anyhow::Result<Quiet> {
    let started = Instant::now();
    loop {
        system::check_stop()?;
        let (busy_cores, busy) = system::busy_processes(window, 0.05, &[]);
        let tracers = system::foreign_tracers(&[]);
        let quiet = busy_cores < 0.15 && (tracers_ok || tracers.is_empty());
        let spent = started.elapsed();
        if quiet || spent >= *budget {
            *budget = budget.saturating_sub(spent);
            if !quiet && verbose {
                setup::say(&format!(
                    "the machine is not quiet (busy {busy_cores:.2} cores, {} other BPF tracer(s)); measuring anyway",
                    tracers.len()
                ));
            }
            return Ok(Quiet {
                waited: spent,
                busy_cores,
                loadavg: system::loadavg(),
                busy,
                tracers,
            });
        }
        if verbose || spent.is_zero() {
            let who: Vec<String> = busy
                .iter()
                .take(3)
                .map(|(pid, comm, s)| format!("{comm}[{pid}] {:.0}%", s * 100.0))
                .collect();
            let tr: Vec<String> = tracers
                .iter()
                .map(|(pid, comm, ids)| format!("{comm}[{pid}] {} progs", ids.len()))
                .collect();
            setup::say(&format!(
                "waiting for a quiet machine (busy {busy_cores:.2} cores: {}; other BPF tracers: {}); {}s of waiting left",
                if who.is_empty() {
                    "-".into()
                } else {
                    who.join(", ")
                },
                if tr.is_empty() {
                    "none".into()
                } else {
                    tr.join(", ")
                },
                budget.saturating_sub(spent).as_secs()
            ));
        }
        system::sleep(Duration::from_secs(2));
    }
}
