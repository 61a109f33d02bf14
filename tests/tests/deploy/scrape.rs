//! `prometheus_scrapes_rstwatch_as_deployed`: rstwatch as the DaemonSet runs it and a real
//! Prometheus in the same "pod" namespace; real resets in another namespace; then everything the
//! dashboard and the alerts ask Prometheus (`queries`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use rstwatch_tests::process::{
    Proc, ensure_tracefs, require_root, rstwatch_bin, run, setpriv, temp_dir, wait_until,
};
use rstwatch_tests::{NetNs, http, scenarios};

use crate::prom::Prom;
use crate::{Manifests, deploy, ensure_prometheus, manifests, queries};

/// Where Prometheus listens, inside the pod's namespace.
const PROM_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[test]
fn prometheus_scrapes_rstwatch_as_deployed() {
    require_root();
    let t0 = Instant::now();
    let dir = temp_dir("prometheus").unwrap();
    if let Err(e) = scrape_test(&dir) {
        panic!(
            "{e:#}\n(logs, configuration and Prometheus data kept in {})",
            dir.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "prometheus_scrapes_rstwatch_as_deployed: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// The resets made, as Prometheus must show them.
pub struct Made {
    /// Scenario name → its port.
    pub ports: BTreeMap<&'static str, u16>,
    /// Just before the first reset.
    pub before: f64,
}

fn scrape_test(dir: &Path) -> Result<()> {
    let started = now();
    ensure_prometheus()?;
    let m = manifests()?;
    ensure_tracefs()?;

    // The "pod": a network namespace of its own, like a pod without hostNetwork.
    let pod = NetNs::new()?;
    let mut daemon = start_rstwatch(&m, &pod, dir)?;
    let alerts = deploy().join("prometheus/alerts.yml");
    let mut prom = start_prometheus(&pod, dir, m.metrics_port, &alerts)?;
    let p = Prom {
        ns: &pod,
        addr: PROM_ADDR,
    };

    // Wait until Prometheus has scraped rstwatch (target up, baseline series present).
    wait_until(
        "rstwatch target up with baseline series",
        Duration::from_secs(20),
        || {
            let up = p.instant("up{job=\"rstwatch\"}", now())?.rows();
            let base = p.instant("count(rstwatch_resets_total)", now())?.rows();
            Ok(up.len() == 1 && up[0].1 == 1.0 && base.first().is_some_and(|r| r.1 > 0.0))
        },
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    let made = make_resets(&p, &daemon)?;
    // One more scrape, so that rates over short windows see the new values twice.
    std::thread::sleep(Duration::from_millis(2500));
    let end = now();

    let mut problems = Vec::new();
    let mut checked = 0;
    let alerts_text = std::fs::read_to_string(&alerts)?;
    queries::metric_names_exist(&p, &alerts_text, &mut problems)?;
    let window = queries::Window {
        started,
        start: made.before - 5.0,
        end,
    };
    queries::dashboard(&p, &window, &made, &mut problems, &mut checked)?;
    queries::alerts(&p, &prom, &alerts_text, end, &mut problems, &mut checked)?;

    // Stop both by PID: rstwatch must exit 0 on SIGTERM (pod termination).
    let prom_status = prom.stop(Duration::from_secs(10));
    let daemon_status = daemon.stop(Duration::from_secs(10));
    drop(pod);
    ensure!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let st = daemon_status?;
    ensure!(
        st.success(),
        "rstwatch exited with {st} on SIGTERM\n{}",
        daemon.log_tail()
    );
    prom_status?;
    eprintln!("{checked} dashboard, variable and alert queries checked against Prometheus");
    Ok(())
}

/// rstwatch in `pod` as the DaemonSet runs it (its uid, gid, capabilities and arguments), but with
/// a 1 s idle threshold so that a 2 s idle connection is idle_reset; ready once its probe is.
fn start_rstwatch(m: &Manifests, pod: &NetNs, dir: &Path) -> Result<Proc> {
    let mut args = m.args.clone();
    if let Some(i) = args.iter().position(|a| a == "--idle-threshold") {
        args[i + 1] = "1s".into();
    }
    let caps = m.caps();
    let mut cmd = setpriv(&rstwatch_bin(), m.run_as_user, m.run_as_group, &caps);
    cmd.args(&args).env("RUST_LOG", "info");
    let mut daemon = Proc::spawn("rstwatch", &mut cmd, Some(pod), dir.join("rstwatch.log"))?;
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, m.metrics_port));
    daemon.wait_ready(Duration::from_secs(20), || {
        pod.run(move || {
            matches!(http::get_ok(metrics, "/healthz"), Ok(b) if b.trim() == "ok")
                && matches!(http::get_ok(metrics, "/metrics"), Ok(b) if b.contains("rstwatch_probe_attached{probe=\"tcp_send_reset\"} 1"))
        })
        .unwrap_or(false)
    })?;
    eprintln!(
        "rstwatch (pid {}) ready as uid {} with {caps:?}, {}",
        daemon.pid(),
        m.run_as_user,
        args.join(" ")
    );
    Ok(daemon)
}

/// Prometheus in `pod`, scraping rstwatch every second, with the alert rules; ready once it says so.
fn start_prometheus(pod: &NetNs, dir: &Path, port: u16, alerts: &Path) -> Result<Proc> {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: rstwatch\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            alerts.display()
        ),
    )?;
    run(Command::new("promtool").arg("check").arg("config").arg(&config))?;
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={PROM_ADDR}"))
        .arg("--storage.tsdb.retention.time=1h");
    let mut prom = Proc::spawn("prometheus", &mut cmd, Some(pod), dir.join("prometheus.log"))?;
    let p = Prom {
        ns: pod,
        addr: PROM_ADDR,
    };
    prom.wait_ready(Duration::from_secs(30), || {
        p.get("/-/ready").is_ok_and(|r| r.status == 200)
    })?;
    eprintln!(
        "prometheus (pid {}) ready on {PROM_ADDR} in the pod's namespace",
        prom.pid()
    );
    Ok(prom)
}

/// Real resets, in another network namespace (an "application pod"), on loopback, in two rounds:
/// a port's series appears with the first reset on it, at 1, and rate()/increase() see only what
/// a series gains after its first sample, so the panels' rates show the second round. After each
/// round Prometheus must have the exact counts on the scenarios' ports; after both,
/// `rstwatch_resets_total` must have risen for every expected cause.
fn make_resets(p: &Prom, daemon: &Proc) -> Result<Made> {
    let before = now();
    let by_cause = |at: f64| -> Result<BTreeMap<(String, String), f64>> {
        Ok(
            p.instant("sum by (direction, cause) (rstwatch_resets_total)", at)?
                .rows()
                .into_iter()
                .map(|(l, v)| ((l["direction"].clone(), l["cause"].clone()), v))
                .collect(),
        )
    };
    let totals_before = by_cause(before)?;
    let app = NetNs::new()?;
    let mut expected: BTreeMap<(u16, String, String), f64> = BTreeMap::new();
    let mut ports = BTreeMap::new();
    for round in 1..=2 {
        for name in [
            "refused_v4",
            "linger0",
            "stale_keepalive",
            "half_open_idle",
            "listener_closed",
        ] {
            let scn = scenarios::find(name).with_context(|| format!("scenario {name}"))?;
            let out = scenarios::run_in(&app, &scn)?;
            eprintln!(
                "round {round}: scenario {name} on port {}: {:?}",
                out.port, out.notes
            );
            ports.insert(name, out.port);
            for e in &out.expect {
                *expected
                    .entry((out.port, e.dir.label().to_string(), e.cause.to_string()))
                    .or_default() += e.count as f64;
            }
        }
        // Through Prometheus: the exact counts on the scenarios' ports.
        let port_re = ports
            .values()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("|");
        let q = format!("sum by (port, direction, cause) (rstwatch_resets_total{{port=~\"{port_re}\"}})");
        let mut seen = BTreeMap::new();
        let r = wait_until(
            "Prometheus has the scenarios' resets",
            Duration::from_secs(20),
            || {
                seen = p
                    .instant(&q, now())?
                    .rows()
                    .into_iter()
                    .filter(|(_, v)| *v != 0.0)
                    .map(|(l, v)| {
                        (
                            (
                                l["port"].parse::<u16>().unwrap_or(0),
                                l["direction"].clone(),
                                l["cause"].clone(),
                            ),
                            v,
                        )
                    })
                    .collect::<BTreeMap<_, _>>();
                Ok(seen == expected)
            },
        );
        r.with_context(|| {
            format!(
                "round {round}: {q}\nPrometheus has {seen:?}\nexpected     {expected:?}\n{}",
                daemon.log_tail()
            )
        })?;
        eprintln!("round {round}: Prometheus has exactly {expected:?}");
        // One more scrape before the next round.
        std::thread::sleep(Duration::from_millis(1200));
    }
    drop(app);
    let causes: BTreeSet<(String, String)> =
        expected.keys().map(|(_, d, c)| (d.clone(), c.clone())).collect();
    // Other tests on this host may add resets of their own at the same time, hence >=.
    let after = by_cause(now())?;
    for dir_cause in &causes {
        let want: f64 = expected
            .iter()
            .filter(|((_, d, c), _)| (d, c) == (&dir_cause.0, &dir_cause.1))
            .map(|(_, v)| v)
            .sum();
        let rose = after.get(dir_cause).copied().unwrap_or(0.0)
            - totals_before.get(dir_cause).copied().unwrap_or(0.0);
        ensure!(
            rose >= want,
            "rstwatch_resets_total{{direction={:?}, cause={:?}}} rose by {rose}, expected at least {want}",
            dir_cause.0,
            dir_cause.1
        );
        eprintln!(
            "rstwatch_resets_total{{direction=\"{}\", cause=\"{}\"}} rose by {rose}",
            dir_cause.0, dir_cause.1
        );
    }
    Ok(Made { ports, before })
}
