//! Hardening (issue 8): bad input, restarts, a cardinality flood. Runs the real binary
//! (`$RSTWATCH_BIN` or `target/release/rstwatch`); needs root.
//!
//! - Bad input: every mistake is one `rstwatch: error: ...` line on stderr, a non-zero exit, and no
//!   panic: unknown flags, malformed/privileged/taken/foreign `--metrics-addr`, label caps and the
//!   ring buffer out of range, unwritable `--events` paths, missing capabilities (as uid 65534
//!   without any, as root without any, as root with CAP_BPF only: the line names what is missing),
//!   BTF hidden, tracefs hidden and unmountable, a required tracepoint missing. The last three run
//!   the daemon in a private mount namespace (`unshare --mount`), which vanishes with it.
//! - Restarts: SIGTERM and SIGINT exit 0 promptly and every program, link and map the daemon held
//!   is gone; after `kill -9` too (the kernel frees them with the last file descriptor: rstwatch
//!   pins nothing). Objects are identified by the ids in the daemon's `/proc/PID/fdinfo` and checked
//!   by id with the bpf syscall; `bpftool prog|link show` counts are printed alongside.
//! - Cardinality flood: refused connects to 20,000 distinct ports and from 300 distinct process names,
//!   in a network namespace of its own; the `port` and `comm` labels stay within the caps, the rest
//!   is counted in `rstwatch_label_overflow_total` (or `count_map_full`), and the count maps' fill
//!   is exported.
//!
//! Modules: `bad_input`, `restarts` (and the BPF objects a daemon holds), `flood`, `memory`.

use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rstwatch_tests::process::{rstwatch_bin, temp_dir};

mod bad_host;
mod bad_input;
mod flood;
mod memory;
mod restarts;

/// Daemons that load programs run one at a time here (timings, the flood).
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// running the binary to its end, bounded

pub struct Outcome {
    pub status: ExitStatus,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Run `cmd` with stdout/stderr to files; kill it (by PID) if it is still running after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Outcome {
    let dir = temp_dir("run").unwrap();
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {timeout:?} (it should have failed); stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        status,
        stderr,
        elapsed,
    }
}

pub fn rstwatch(args: &[&str]) -> Outcome {
    run_bounded(Command::new(rstwatch_bin()).args(args), Duration::from_secs(30))
}

/// The failure is exit `code`, exactly one `rstwatch: error:` line, which is the last line on
/// stderr, and no panic. Returns the line.
pub fn one_error(what: &str, outcome: &Outcome, code: i32) -> String {
    let lines: Vec<&str> = outcome.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("rstwatch: error: "))
        .collect();
    assert!(
        !outcome.stderr.contains("panicked"),
        "{what}: panicked:\n{}",
        outcome.stderr
    );
    assert_eq!(
        outcome.status.code(),
        Some(code),
        "{what}: exit status {}; stderr:\n{}",
        outcome.status,
        outcome.stderr
    );
    assert_eq!(
        errors.len(),
        1,
        "{what}: want one error line; stderr:\n{}",
        outcome.stderr
    );
    assert_eq!(
        lines.last(),
        errors.first().copied(),
        "{what}: the error is not the last line:\n{}",
        outcome.stderr
    );
    eprintln!(
        "{what}: exit {code} after {:.0} ms: {}",
        outcome.elapsed.as_secs_f64() * 1000.0,
        errors[0]
    );
    errors[0].to_string()
}

pub fn assert_says(what: &str, line: &str, needles: &[&str]) {
    for needle in needles {
        assert!(line.contains(needle), "{what}: {needle:?} not in: {line}");
    }
}
