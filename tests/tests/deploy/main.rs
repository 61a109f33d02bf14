//! The production packaging under `deploy/`, proven against real programs:
//!
//! - `prometheus_scrapes_rstwatch_as_deployed`: rstwatch runs the way `deploy/kubernetes/daemonset.yaml`
//!   runs it (uid/gid 65534, exactly the manifest's capabilities and nothing else, `--metrics-addr
//!   0.0.0.0:9977` in a network namespace of its own as a pod without hostNetwork would), next to a
//!   real Prometheus (Debian's package) that scrapes it every second and loads
//!   `deploy/prometheus/alerts.yml`. Real resets are made in *another* network namespace (refused
//!   connect, SO_LINGER=0 close, stale keep-alive connection, idle half-open connection); then,
//!   through Prometheus's HTTP API only: `rstwatch_resets_total` rose for each expected cause, with
//!   the exact counts on the scenarios' ports; every Grafana panel query and template variable of
//!   `deploy/grafana/rstwatch-dashboard.json` parses and returns data; every alert rule was evaluated
//!   by Prometheus without error and every alert expression parses. Both processes are stopped by
//!   PID, rstwatch with SIGTERM (exit 0, as on pod termination).
//! - `capability_set_is_minimal`: without any one of the manifest's capabilities the daemon fails
//!   to start, with the error recorded in deploy/README.md; as root, CAP_BPF + CAP_PERFMON suffice.
//! - `alert_rules_and_configs_pass_promtool`: `promtool check rules`, `promtool test rules`
//!   (deploy/prometheus/alerts_test.yml), `promtool check config`.
//! - `kubernetes_manifests_validate`: deploy/kubernetes/check_manifests.py (the PyPI package
//!   `kubernetes-validate`, bundled schemas, strict mode, Kubernetes 1.25 and newest) in a virtualenv
//!   under target/deploy-tools.
//! - `grafana_dashboard_is_well_formed`: ids, layout, data source variable, targets.
//!
//! Modules: `dashboard` (the Grafana dashboard, typed), `prom` (Prometheus's HTTP API, typed),
//! `scrape` and `queries` (the Prometheus test), `caps`, `checks` (promtool, the manifests).
//!
//! Needs root. Installs Debian's `prometheus` package (apt-get, only if `prometheus`/`promtool` are
//! missing) and the validator (pip, into target/deploy-tools/venv, only if missing).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, ensure};
use rstwatch_tests::process::{apt_install, on_path, run, workspace};
use serde::Deserialize;

mod caps;
mod checks;
mod dashboard;
mod prom;
mod queries;
mod scrape;

fn deploy() -> PathBuf {
    workspace().join("deploy")
}

/// Debian's `prometheus` package (prometheus + promtool), installed once if missing. On Debian the
/// package's maintainer script asks invoke-rc.d to start the system service; on these machines
/// there is no systemd and policy-rc.d denies it, and the tests never use that service anyway.
fn ensure_prometheus() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        if on_path("prometheus") && on_path("promtool") {
            return Ok(());
        }
        eprintln!("deploy tests: installing Debian's prometheus package (apt-get)");
        apt_install(&["prometheus"]).map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A virtualenv with `kubernetes-validate` under target/deploy-tools; created once if missing.
fn validator_python() -> Result<PathBuf> {
    static VENV: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = workspace().join("target").join("deploy-tools").join("venv");
        let python = venv.join("bin").join("python");
        let ready = || {
            python.exists()
                && Command::new(&python)
                    .args(["-c", "import kubernetes_validate, yaml"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        };
        if ready() {
            return Ok(python);
        }
        eprintln!(
            "deploy tests: installing kubernetes-validate (PyPI) into {}",
            venv.display()
        );
        let make = || -> Result<()> {
            // python3 from PATH (pyenv's on these machines), else Debian's, with its venv module.
            let made = run(Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg("--clear")
                .arg(&venv))
            .or_else(|_| {
                run(Command::new("/usr/bin/python3")
                    .arg("-m")
                    .arg("venv")
                    .arg("--clear")
                    .arg(&venv))
            });
            if made.is_err() {
                eprintln!("deploy tests: installing Debian's python3-venv (apt-get)");
                apt_install(&["python3-venv"])?;
                run(Command::new("/usr/bin/python3")
                    .arg("-m")
                    .arg("venv")
                    .arg("--clear")
                    .arg(&venv))?;
            }
            run(Command::new(venv.join("bin").join("pip")).args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "kubernetes-validate==1.37.0",
            ]))?;
            ensure!(ready(), "kubernetes_validate does not import after pip install");
            Ok(())
        };
        make().map(|_| python.clone()).map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// deploy/kubernetes/check_manifests.py's summary (it validates and cross-checks the manifests).
#[derive(Clone, Debug, Deserialize)]
struct Manifests {
    /// The resources validated, per Kubernetes version.
    validated: Vec<String>,
    /// The DaemonSet container's capabilities (Kubernetes names: "BPF", ...).
    capabilities: Vec<String>,
    run_as_user: u32,
    run_as_group: u32,
    metrics_port: u16,
    /// The DaemonSet container's arguments.
    args: Vec<String>,
}

impl Manifests {
    fn caps(&self) -> Vec<&str> {
        self.capabilities.iter().map(String::as_str).collect()
    }
}

fn manifests() -> Result<Manifests> {
    static SUMMARY: OnceLock<std::result::Result<Manifests, String>> = OnceLock::new();
    SUMMARY
        .get_or_init(|| {
            let get = || -> Result<Manifests> {
                let python = validator_python()?;
                let out = run(Command::new(python).arg(deploy().join("kubernetes/check_manifests.py")))?;
                serde_json::from_str(out.trim()).context("check_manifests.py output")
            };
            get().map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}
