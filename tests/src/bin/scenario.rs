//! Run reset scenarios by name, for tracing the kernel (bpftrace), debugging the daemon, and
//! benchmarking. Needs root.
//!
//! ```text
//! scenario --list
//! scenario NAME... [--repeat N] [--check | --metrics HOST:PORT] [--keep-going]
//! scenario all --check
//! ```
//! - without `--check`/`--metrics`: only makes the resets (in a fresh netns) and verifies the
//!   kernel's `Tcp: OutRsts`;
//! - `--check`: starts rstwatch (`$RSTWATCH_BIN` or target/release/rstwatch) and compares its
//!   /metrics deltas, like the tests do;
//! - `--metrics HOST:PORT`: compares against an rstwatch that is already running there
//!   (it must run with `--idle-threshold 1s` for the idle scenario).
//! - `--report`: like `--check`, and prints one machine-readable `RSTW ...` line per probe,
//!   blind spot and scenario (verdict ok / blind / FAIL; see `check::Verdict`), which
//!   `cargo xtask vm-test` reads from each kernel's console. Exit 1 on any FAIL.
//!
//! `RSTW_N` sets N for `refused_many` (default 2000).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rstwatch_tests::check;
use rstwatch_tests::daemon::{self, Daemon};
use rstwatch_tests::netns::NetNs;
use rstwatch_tests::scenarios;

fn usage() -> ! {
    eprintln!(
        "usage: scenario --list | scenario NAME...|all [--repeat N] [--check | --metrics HOST:PORT] [--keep-going]"
    );
    std::process::exit(2)
}

fn main() -> Result<()> {
    let mut names = Vec::new();
    let mut repeat = 1u64;
    let mut check_daemon = false;
    let mut external: Option<SocketAddr> = None;
    let mut keep_going = false;
    let mut report = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--list" | "-l" => {
                for s in scenarios::all() {
                    println!("{:<22} port {}  {}", s.name, s.port, s.about);
                }
                for s in scenarios::kernel_owning() {
                    println!(
                        "{:<22} port {}  {} [only with {}=1]",
                        s.name,
                        s.port,
                        s.about,
                        scenarios::OWNS_KERNEL_ENV
                    );
                }
                return Ok(());
            }
            "--repeat" | "-n" => {
                repeat = args
                    .next()
                    .unwrap_or_else(|| usage())
                    .parse()
                    .context("--repeat")?
            }
            "--check" => check_daemon = true,
            "--report" => {
                report = true;
                check_daemon = true;
            }
            "--metrics" => {
                external = Some(
                    args.next()
                        .unwrap_or_else(|| usage())
                        .parse()
                        .context("--metrics HOST:PORT")?,
                )
            }
            "--keep-going" | "-k" => keep_going = true,
            "-h" | "--help" => usage(),
            n if n.starts_with('-') => usage(),
            n => names.push(n.to_string()),
        }
    }
    if names.is_empty() {
        usage();
    }
    if !rstwatch_tests::is_root() {
        bail!("scenarios need root (network namespaces, TCP_REPAIR)");
    }
    let list: Vec<_> = if names.iter().any(|n| n == "all") {
        scenarios::runnable()
    } else {
        names
            .iter()
            .map(|n| scenarios::find(n).with_context(|| format!("no scenario {n:?} (see --list)")))
            .collect::<Result<_>>()?
    };

    let ext_daemon;
    let d: Option<&Daemon> = if let Some(addr) = external {
        ext_daemon = Daemon {
            addr,
            pid: 0,
            log: PathBuf::from("(external daemon)"),
            bin: PathBuf::new(),
        };
        ext_daemon.scrape().context("scrape the external daemon")?;
        Some(&ext_daemon)
    } else if check_daemon {
        let d = daemon::daemon();
        eprintln!("rstwatch pid {} on {} (log {})", d.pid, d.addr, d.log.display());
        Some(d)
    } else {
        None
    };

    if report {
        let d = d.expect("--report starts the daemon");
        return report_all(d, &list);
    }

    let mut passed = 0u64;
    let mut failed = 0u64;
    for scn in &list {
        let ns = NetNs::new()?;
        let t0 = Instant::now();
        for i in 0..repeat {
            let r = match d {
                Some(d) => check::check_with(d, &ns, scn),
                None => scenarios::run_in(&ns, scn),
            };
            match r {
                Ok(out) => {
                    passed += 1;
                    if repeat == 1 || i == 0 {
                        println!(
                            "ok   {:<22} port {} OutRsts +{} expect {:?}",
                            scn.name,
                            out.port,
                            out.out_rsts,
                            out.expect
                                .iter()
                                .map(|e| format!(
                                    "{} {}/{} +{}",
                                    e.dir,
                                    e.cause,
                                    e.state.unwrap_or("*"),
                                    e.count
                                ))
                                .collect::<Vec<_>>()
                        );
                        for n in &out.notes {
                            println!("     {n}");
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    println!("FAIL {:<22} {e:#}", scn.name);
                    if !keep_going {
                        println!("{passed} passed, {failed} failed");
                        std::process::exit(1);
                    }
                }
            }
        }
        if repeat > 1 {
            let el = t0.elapsed();
            println!(
                "     {} runs in {:.3} s ({:.3} ms/run)",
                repeat,
                el.as_secs_f64(),
                el.as_secs_f64() * 1000.0 / repeat as f64
            );
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// `--report`: what the daemon says it can see here, then each scenario's verdict.
fn report_all(d: &Daemon, list: &[scenarios::Scenario]) -> Result<()> {
    let first = d.scrape().context("first scrape of the daemon")?;
    println!(
        "RSTW kernel {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    for ((name, labels), value) in &first.samples {
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map_or("", |(_, v)| v.as_str())
        };
        if name == "rstwatch_probe_attached" {
            println!("RSTW probe {} {}", label("probe"), *value as i64);
        } else if name == "rstwatch_cause_observable" && *value == 0.0 {
            println!("RSTW blind {}/{}", label("direction"), label("cause"));
        }
    }
    let mut failed = 0;
    for scn in list {
        let ns = NetNs::new()?;
        match check::compare(d, &ns, scn) {
            Ok(compared) => {
                let verdict = compared.verdict();
                let (expected, got) = compared.expected_and_got();
                println!(
                    "RSTW scenario {} {} expected={expected} got={got}",
                    scn.name,
                    verdict.label()
                );
                if verdict != check::Verdict::Ok {
                    println!("{}", compared.message);
                }
                failed += (verdict == check::Verdict::Fail) as u32;
            }
            Err(e) => {
                let first_line = format!("{e:#}").lines().next().unwrap_or_default().to_string();
                println!("RSTW scenario {} FAIL error={first_line}", scn.name);
                println!("{e:#}");
                failed += 1;
            }
        }
    }
    println!("RSTW done failed={failed}");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
