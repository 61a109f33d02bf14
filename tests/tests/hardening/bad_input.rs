//! Bad input: every mistake is one `rstwatch: error: ...` line, a non-zero exit, no panic.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

use rstwatch_tests::process::{free_port, require_root, rstwatch_bin, setpriv, temp_dir};

use crate::{assert_says, one_error, rstwatch, run_bounded};

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
