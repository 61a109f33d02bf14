//! Static checks of deploy/: the Kubernetes manifests against their schemas, promtool on the
//! alert rules, their unit tests and the scrape configurations.

use std::process::Command;

use rstwatch_tests::process::{require_root, run, temp_dir};

use crate::{deploy, ensure_prometheus, manifests};

#[test]
fn kubernetes_manifests_validate() {
    require_root();
    let m = manifests().unwrap_or_else(|e| panic!("deploy/kubernetes/check_manifests.py: {e:#}"));
    let validated = &m.validated;
    eprintln!("validated against the Kubernetes schemas: {validated:?}");
    assert_eq!(validated.len(), 12, "6 resources x 2 Kubernetes versions");
    assert_eq!(m.caps(), ["BPF", "DAC_READ_SEARCH", "PERFMON"]);
}

#[test]
fn alert_rules_and_configs_pass_promtool() {
    require_root();
    ensure_prometheus().unwrap();
    let dir = deploy().join("prometheus");
    let out = run(Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir))
    .unwrap();
    eprintln!("{out}");
    let out = run(Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir))
    .unwrap();
    assert!(out.contains("SUCCESS"), "{out}");
    eprintln!("{out}");
    // The Kubernetes scrape configuration. Debian's Prometheus is built without Kubernetes service
    // discovery ("field kubernetes_sd_configs not found"): there, check the rest of the file with the
    // discovery block replaced by a static target.
    let k8s = dir.join("scrape-kubernetes.yml");
    match run(Command::new("promtool").arg("check").arg("config").arg(&k8s)) {
        Ok(out) => eprintln!("{out}"),
        Err(e) if format!("{e:#}").contains("field kubernetes_sd_configs not found") => {
            let text = std::fs::read_to_string(&k8s).unwrap();
            let mut replaced = String::new();
            let mut skipping = false;
            for line in text.lines() {
                if line.trim_start().starts_with("kubernetes_sd_configs:") {
                    skipping = true;
                    replaced.push_str("    static_configs:\n      - targets: ['127.0.0.1:9977']\n");
                    continue;
                }
                if skipping && (line.starts_with("      ") || line.trim().is_empty()) {
                    continue;
                }
                skipping = false;
                replaced.push_str(line);
                replaced.push('\n');
            }
            let tmp = temp_dir("promtool").unwrap();
            std::fs::write(tmp.join("scrape-kubernetes.yml"), replaced).unwrap();
            std::fs::copy(dir.join("alerts.yml"), tmp.join("alerts.yml")).unwrap();
            let out = run(Command::new("promtool")
                .args(["check", "config", "scrape-kubernetes.yml"])
                .current_dir(&tmp))
            .unwrap();
            eprintln!(
                "this promtool has no Kubernetes discovery; checked scrape-kubernetes.yml with a static target:\n{out}"
            );
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => panic!("{e:#}"),
    }
}
