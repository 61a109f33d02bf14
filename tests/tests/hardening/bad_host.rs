//! A host that cannot run rstwatch: missing capabilities, no BTF, no bpf(), no tracefs, a missing
//! tracepoint. Each is one `rstwatch: error: ...` line naming what is missing, a non-zero exit, no
//! panic.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rstwatch_tests::process::{ensure_tracefs, free_port, require_root, rstwatch_bin, setpriv, temp_dir};

use crate::{Outcome, assert_says, one_error, run_bounded};

#[test]
fn missing_capabilities_are_named() {
    require_root();
    ensure_tracefs().unwrap();
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let run = |mut cmd: Command| {
        run_bounded(
            cmd.args(["run", "--metrics-addr", &addr(free_port().unwrap())]),
            Duration::from_secs(30),
        )
    };

    // Not root, no capabilities: tracefs (mode 0700) is the first wall; the line lists all three.
    let line = one_error(
        "uid 65534, no capabilities",
        &run(setpriv(&rstwatch_bin(), 65534, 65534, &[])),
        1,
    );
    assert_says(
        "uid 65534",
        &line,
        &[
            "tracefs",
            "uid 65534 cannot read it",
            "CAP_DAC_READ_SEARCH",
            "lacks CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH",
        ],
    );
    // Root without capabilities: the maps cannot be created.
    let line = one_error(
        "uid 0, no capabilities",
        &run(setpriv(&rstwatch_bin(), 0, 0, &[])),
        1,
    );
    assert_says(
        "uid 0, none",
        &line,
        &[
            "loading eBPF programs needs root or CAP_BPF and CAP_PERFMON",
            "(uid 0) lacks CAP_BPF and CAP_PERFMON",
            "Operation not permitted",
        ],
    );
    // Root with CAP_BPF only: maps load, tracing programs do not.
    let line = one_error(
        "uid 0, CAP_BPF only",
        &run(setpriv(&rstwatch_bin(), 0, 0, &["bpf"])),
        1,
    );
    assert_says(
        "uid 0, CAP_BPF",
        &line,
        &[
            "needs root or CAP_BPF and CAP_PERFMON",
            "(uid 0) lacks CAP_PERFMON",
        ],
    );
    assert!(!line.contains("lacks CAP_BPF"), "CAP_BPF was there: {line}");
}

/// `unshare --mount` (private propagation: nothing leaks to the host; the namespace and its mounts
/// vanish with the process), then `script` with `$1..` = `args`, which ends by exec'ing rstwatch.
fn in_private_mount_ns(script: &str, args: &[&str]) -> Outcome {
    run_bounded(
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-euc",
                script,
                "sh",
            ])
            .args(args),
        Duration::from_secs(30),
    )
}

#[test]
fn btf_missing_names_btf_and_the_kernel_option() {
    require_root();
    let dir = temp_dir("btf").unwrap();
    let empty = dir.join("vmlinux");
    std::fs::write(&empty, b"").unwrap();
    let bin = rstwatch_bin();
    let outcome = in_private_mount_ns(
        r#"mount --bind "$1" /sys/kernel/btf/vmlinux; exec "$2" run --metrics-addr "$3""#,
        &[
            &empty.to_string_lossy(),
            &bin.to_string_lossy(),
            &format!("127.0.0.1:{}", free_port().unwrap()),
        ],
    );
    let line = one_error("empty /sys/kernel/btf/vmlinux", &outcome, 1);
    assert_says(
        "BTF",
        &line,
        &["BTF", "CONFIG_DEBUG_INFO_BTF=y", "/sys/kernel/btf/vmlinux"],
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A kernel without BPF, as the daemon sees it: bpf(2) fails with ENOSYS (here a seccomp filter
/// makes it so for the daemon alone).
#[test]
fn kernel_without_bpf_is_named() {
    require_root();
    let mut cmd = Command::new(rstwatch_bin());
    cmd.args([
        "run",
        "--metrics-addr",
        &format!("127.0.0.1:{}", free_port().unwrap()),
    ]);
    // SAFETY: only prctl(2) between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, deny_bpf_syscall);
    }
    let outcome = run_bounded(&mut cmd, Duration::from_secs(30));
    let line = one_error("bpf() not implemented", &outcome, 1);
    assert_says("no BPF", &line, &["no BPF", "CONFIG_BPF_SYSCALL=y", "seccomp"]);
}

/// Install a seccomp filter that fails bpf(2) with ENOSYS and allows everything else (x86_64
/// syscall numbers; the tests run on the machine that built them).
fn deny_bpf_syscall() -> std::io::Result<()> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS: seccomp_data.nr at offset 0
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let filter = [
        libc::sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_bpf as u32,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: plain prctl(2) calls with a filter that outlives them.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const _,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn tracefs_missing_and_unmountable() {
    require_root();
    let bin = rstwatch_bin();
    // Empty tmpfs over both places tracefs can be, and no CAP_SYS_ADMIN to mount a real one.
    let outcome = in_private_mount_ns(
        r#"mount -t tmpfs none /sys/kernel/tracing; mount -t tmpfs none /sys/kernel/debug
           exec setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin -- "$1" run --metrics-addr "$2""#,
        &[
            &bin.to_string_lossy(),
            &format!("127.0.0.1:{}", free_port().unwrap()),
        ],
    );
    let line = one_error("no tracefs, no CAP_SYS_ADMIN", &outcome, 1);
    assert_says(
        "tracefs",
        &line,
        &[
            "tracefs is not mounted",
            "CAP_SYS_ADMIN",
            "mount -t tracefs tracefs /sys/kernel/tracing",
            "Operation not permitted",
        ],
    );
}

/// The daemon reads tracefs at a fixed place, so the test puts a fake one there (bind mount in a
/// private mount namespace): the real format files, minus `tcp:tcp_send_reset`.
#[test]
fn missing_tracepoint_is_named() {
    require_root();
    ensure_tracefs().unwrap();
    let real = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .find(|dir| Path::new(dir).join("events").is_dir())
        .expect("tracefs mounted");
    let fake = temp_dir("tracefs").unwrap();
    for event in [
        "tcp/tcp_receive_reset",
        "sock/inet_sock_set_state",
        "sock/inet_sk_error_report",
        "skb/kfree_skb",
    ] {
        let from = Path::new(real).join("events").join(event);
        let to = fake.join("events").join(event);
        std::fs::create_dir_all(&to).unwrap();
        for file in ["format", "id"] {
            if let Ok(text) = std::fs::read(from.join(file)) {
                std::fs::write(to.join(file), text).unwrap();
            }
        }
    }
    std::fs::create_dir_all(fake.join("events/tcp")).unwrap();
    let bin = rstwatch_bin();
    let outcome = in_private_mount_ns(
        r#"mount --bind "$1" /sys/kernel/tracing; exec "$2" run --metrics-addr "$3""#,
        &[
            &fake.to_string_lossy(),
            &bin.to_string_lossy(),
            &format!("127.0.0.1:{}", free_port().unwrap()),
        ],
    );
    let line = one_error("no tcp:tcp_send_reset", &outcome, 1);
    assert_says(
        "tracepoint",
        &line,
        &["tracepoint tcp:tcp_send_reset not found", "this kernel lacks it"],
    );
    let _ = std::fs::remove_dir_all(fake);
}
