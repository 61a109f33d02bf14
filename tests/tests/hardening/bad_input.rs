//! Bad input: every mistake is one `rstwatch: error: ...` line, a non-zero exit, no panic.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rstwatch_tests::process::{ensure_tracefs, free_port, require_root, rstwatch_bin, setpriv, temp_dir};

use crate::{Outcome, assert_says, one_error, rstwatch, run_bounded};

#[test]
fn unknown_flags_and_commands_are_one_line() {
    for (args, says) in [
        (&["run", "--bogus"][..], &["unexpected argument '--bogus'"][..]),
        (
            &["run", "--metrcs-addr", "1"],
            &["'--metrcs-addr'", "a similar argument exists: '--metrics-addr'"],
        ),
        (&["run", "--max-ports"], &["a value is required for '--max-ports"]),
        (&["frob"], &["unrecognized subcommand 'frob'"]),
        (
            &["run", "--program-type", "kprobe"],
            &["invalid value 'kprobe'", "auto, tracepoint"],
        ),
        (&["run", "--idle-threshold", "0s"], &["must be more than 0"]),
        (&["run", "--idle-threshold", "soon"], &["try 30s, 2m, 1h"]),
    ] {
        let what = args.join(" ");
        let line = one_error(&what, &rstwatch(args), 2);
        assert_says(&what, &line, says);
    }
}

#[test]
fn malformed_metrics_addr() {
    for addr in [
        "nope",
        "localhost:9977",
        "127.0.0.1",
        ":9977",
        "[::1]9977",
        "",
        "1.2.3.4.5:1",
    ] {
        let line = one_error(
            &format!("--metrics-addr {addr:?}"),
            &rstwatch(&["run", "--metrics-addr", addr]),
            2,
        );
        assert_says(
            addr,
            &line,
            &["--metrics-addr", "expected IP:PORT, e.g. 127.0.0.1:9977"],
        );
    }
    let line = one_error(
        "port 99999",
        &rstwatch(&["run", "--metrics-addr", "127.0.0.1:99999"]),
        2,
    );
    assert_says(
        "port 99999",
        &line,
        &["port \"99999\" is not a number from 0 to 65535"],
    );
}

#[test]
fn metrics_addr_in_use() {
    require_root();
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = one_error("taken address", &rstwatch(&["run", "--metrics-addr", &addr]), 1);
    assert_says(
        "taken address",
        &line,
        &[
            &addr,
            "another process already listens there",
            "Address already in use",
        ],
    );
}

#[test]
fn privileged_or_foreign_metrics_addr() {
    require_root();
    // Port 80 as uid 65534: refused before any BPF work.
    let outcome = run_bounded(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--",
            ])
            .arg(rstwatch_bin())
            .args(["run", "--metrics-addr", "127.0.0.1:80"]),
        Duration::from_secs(30),
    );
    let line = one_error("port 80 as uid 65534", &outcome, 1);
    assert_says(
        "port 80",
        &line,
        &["127.0.0.1:80", "CAP_NET_BIND_SERVICE", "Permission denied"],
    );
    // 192.0.2.1 (TEST-NET-1) is nobody's address.
    let line = one_error(
        "foreign address",
        &rstwatch(&["run", "--metrics-addr", "192.0.2.1:9977"]),
        1,
    );
    assert_says(
        "foreign address",
        &line,
        &["192.0.2.1:9977", "not an address of this host"],
    );
}

#[test]
fn label_caps_out_of_range() {
    for (flag, range) in [
        ("--max-ports", "from 1 to 65535"),
        ("--max-comms", "from 1 to 10000"),
        ("--events-rate-limit", "from 1 to 1000000"),
    ] {
        for value in ["0", "-5", "99999999999999999999", "12abc", "1e3"] {
            let what = format!("{flag} {value}");
            let line = one_error(&what, &rstwatch(&["run", flag, value]), 2);
            assert_says(
                &what,
                &line,
                &[flag, &format!("{value} is not a whole number {range}")],
            );
        }
    }
    let line = one_error(
        "--max-ports 65536",
        &rstwatch(&["run", "--max-ports", "65536"]),
        2,
    );
    assert_says("--max-ports 65536", &line, &["from 1 to 65535"]);
    let line = one_error(
        "--max-comms 10001",
        &rstwatch(&["run", "--max-comms", "10001"]),
        2,
    );
    assert_says("--max-comms 10001", &line, &["from 1 to 10000"]);
    let line = one_error(
        "--max-events-per-second -1",
        &rstwatch(&["run", "--max-events-per-second", "-1"]),
        2,
    );
    assert_says(
        "--max-events-per-second",
        &line,
        &["-1 is not a whole number from 0 to 4294967295"],
    );
}

#[test]
fn ring_buffer_size_must_be_a_power_of_two() {
    for value in ["3000", "0", "2", "2097152", "4k", "-4"] {
        let what = format!("--ring-buffer-kib {value}");
        let line = one_error(&what, &rstwatch(&["run", "--ring-buffer-kib", value]), 2);
        assert_says(
            &what,
            &line,
            &["--ring-buffer-kib", "is not a power of two between 4 and 1048576"],
        );
    }
}

#[test]
fn unwritable_events_path() {
    require_root();
    let dir = temp_dir("events-dir").unwrap();
    let dir_arg = dir.to_string_lossy().into_owned();
    for (path, why) in [
        ("/proc/x/y", "No such file or directory"),
        (dir_arg.as_str(), "Is a directory"),
        (
            "/nonexistent-rstwatch-dir/events.jsonl",
            "No such file or directory",
        ),
    ] {
        let port = free_port().unwrap().to_string();
        let outcome = rstwatch(&[
            "run",
            "--events",
            path,
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ]);
        let line = one_error(path, &outcome, 1);
        assert_says(
            path,
            &line,
            &[&format!("cannot open --events file {path} for appending"), why],
        );
    }
    // A directory only root may write to, as uid 65534.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let path = dir.join("events.jsonl").to_string_lossy().into_owned();
    let outcome = run_bounded(
        setpriv(&rstwatch_bin(), 65534, 65534, &[]).args([
            "run",
            "--events",
            &path,
            "--metrics-addr",
            &format!("127.0.0.1:{}", free_port().unwrap()),
        ]),
        Duration::from_secs(30),
    );
    let line = one_error("root-only directory as uid 65534", &outcome, 1);
    assert_says(
        "uid 65534",
        &line,
        &[
            &format!("cannot open --events file {path} for appending"),
            "Permission denied",
        ],
    );
    let _ = std::fs::remove_dir_all(dir);
}

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
