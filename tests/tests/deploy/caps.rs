//! `capability_set_is_minimal`: the DaemonSet's capabilities, each one needed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use rstwatch_tests::http;
use rstwatch_tests::process::{
    Proc, ensure_tracefs, free_port, require_root, rstwatch_bin, setpriv, temp_dir,
};

use crate::manifests;

/// Without any one of the manifest's capabilities the daemon must fail, with the error
/// deploy/README.md records; as root (uid 0) CAP_BPF + CAP_PERFMON suffice.
#[test]
fn capability_set_is_minimal() {
    require_root();
    let m = manifests().unwrap();
    let caps = m.caps();
    let (uid, gid) = (m.run_as_user, m.run_as_group);
    ensure_tracefs().unwrap();
    let bin = rstwatch_bin();
    let dir = temp_dir("caps").unwrap();
    // What fails first without each capability, on kernel 6.18 (deploy/README.md).
    let expect = |cap: &str| match cap {
        "BPF" => "failed to create map",
        "PERFMON" => "BPF_PROG_LOAD",
        "DAC_READ_SEARCH" => "tracefs",
        other => panic!("no recorded failure for {other}"),
    };
    let mut failures = Vec::new();
    let try_run = |label: &str, uid: u32, set: Vec<&str>| -> Result<Option<String>> {
        let port = free_port()?;
        let mut cmd = setpriv(&bin, uid, gid, &set);
        cmd.args(["run", "--metrics-addr", &format!("127.0.0.1:{port}")]);
        let log = dir.join(format!("{label}.log"));
        let mut p = Proc::spawn(label, &mut cmd, None, log)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = p.exited() {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                let err = text
                    .lines()
                    .find(|l| l.starts_with("rstwatch: error"))
                    .unwrap_or("")
                    .to_string();
                return Ok(Some(format!("{st}: {err}")));
            }
            if let Ok(body) = http::get_ok(addr, "/metrics")
                && body.contains("rstwatch_probe_attached{probe=\"tcp_send_reset\"} 1")
            {
                let st = p.stop(Duration::from_secs(5))?;
                ensure!(st.success(), "{label}: SIGTERM → {st}");
                return Ok(None);
            }
            ensure!(
                Instant::now() < deadline,
                "{label}: neither ready nor exited after 15 s\n{}",
                p.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for drop in &caps {
        let set: Vec<&str> = caps.iter().copied().filter(|c| c != drop).collect();
        let label = format!("uid{uid}-without-{drop}");
        match try_run(&label, uid, set) {
            Ok(Some(err)) => {
                eprintln!("{label}: {err}");
                if !(err.contains(expect(drop)) && err.contains("Operation not permitted")) {
                    failures.push(format!(
                        "{label}: failed, but not as recorded ({:?}): {err}",
                        expect(drop)
                    ));
                }
            }
            Ok(None) => failures.push(format!("{label}: started without {drop}: the set is not minimal")),
            Err(e) => failures.push(format!("{label}: {e:#}")),
        }
    }
    match try_run("uid0-bpf-perfmon", 0, vec!["BPF", "PERFMON"]) {
        Ok(None) => eprintln!("uid0 with BPF+PERFMON: ready"),
        Ok(Some(err)) => failures.push(format!("root with BPF+PERFMON failed: {err}")),
        Err(e) => failures.push(format!("root with BPF+PERFMON: {e:#}")),
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
