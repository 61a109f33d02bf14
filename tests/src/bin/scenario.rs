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
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--list" | "-l" => {
                for s in scenarios::all() {
                    println!("{:<22} port {}  {}", s.name, s.port, s.about);
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
        scenarios::all()
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
        eprintln!(
            "rstwatch pid {} on {} (log {})",
            d.pid,
            d.addr,
            d.log.display()
        );
        Some(d)
    } else {
        None
    };

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
