//! Cardinality flood: 20,000 ports and 300 process names stay within the label caps.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rstwatch_tests::daemon::OwnDaemon;
use rstwatch_tests::metrics::Snapshot;
use rstwatch_tests::process::{require_root, skipped};
use rstwatch_tests::{NetNs, http};

use crate::serial;

/// 20,000 distinct ports for refused connects, below the ephemeral range (no self-connects) and
/// clear of the scenario tests' port bands (21000–21999).
fn flood_ports() -> impl Iterator<Item = u16> {
    (1100..21000).chain(22000..22100)
}
const COMM_FLOOD_PORT: u16 = 22100;
const COMM_PROCESSES: usize = 300;

/// The flood reaches every rstwatch on the host (the programs see all namespaces) and fills their
/// count maps: wait (bounded) until no other automated run (a test binary or xtask under a
/// `target/` directory) has a daemon running. Daemons started by hand are not waited for.
fn wait_for_other_test_daemons() {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let others: Vec<String> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "rstwatch"))
            })
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid: u32 = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
                let parent = std::fs::read_link(format!("/proc/{ppid}/exe")).ok()?;
                parent
                    .to_string_lossy()
                    .contains("/target/")
                    .then(|| format!("{pid} (parent {})", parent.display()))
            })
            .collect();
        if others.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("flood: other test daemons still running after 180 s, flooding anyway: {others:?}");
            return;
        }
        eprintln!("flood: waiting for other test daemons to finish: {others:?}");
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn refused(port: u16) -> bool {
    matches!(
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(2)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// `tries` connects to a closed `port` from a child process named `name` (fork, then PR_SET_NAME
/// on the child's only thread, its thread-group leader); how many were refused.
fn refused_by_process(name: &str, port: u16, tries: u8) -> usize {
    let name = std::ffi::CString::new(name).unwrap();
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the child makes only async-signal-safe system calls (prctl, socket, connect, close,
    // _exit) before it exits; the parent reaps it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
            let mut refused = 0;
            for _ in 0..tries {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let rc = libc::connect(
                    fd,
                    (&addr as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                );
                if rc != 0 && *libc::__errno_location() == libc::ECONNREFUSED {
                    refused += 1;
                }
                libc::close(fd);
            }
            libc::_exit(refused);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        libc::WEXITSTATUS(status) as usize
    }
}

fn label_values(snapshot: &Snapshot, metric: &str, label: &str) -> BTreeSet<String> {
    snapshot
        .samples
        .keys()
        .filter(|(name, _)| name == metric)
        .filter_map(|(_, labels)| labels.iter().find(|(k, _)| k == label).map(|(_, v)| v.clone()))
        .collect()
}

fn series(snapshot: &Snapshot, metric: &str) -> usize {
    snapshot.samples.keys().filter(|(name, _)| name == metric).count()
}

#[test]
fn cardinality_flood_stays_within_the_caps() {
    require_root();
    let _serial = serial();
    let (max_ports, max_comms) = (200usize, 100usize);
    wait_for_other_test_daemons();
    let daemon = OwnDaemon::start(&[
        "--max-ports",
        &max_ports.to_string(),
        "--max-comms",
        &max_comms.to_string(),
    ])
    .unwrap();
    let before = daemon.scrape().unwrap();
    let ns = NetNs::new().unwrap();

    let started = Instant::now();
    let refused_processes = ns
        .run(|| {
            // Processes with distinct names (the `comm` label is the owner's process name), first,
            // while the count map still has room for keys with an owner.
            (0..COMM_PROCESSES)
                .map(|i| refused_by_process(&format!("rstflood{i:03}"), COMM_FLOOD_PORT, 2))
                .sum::<usize>()
        })
        .unwrap();
    // Whether the count map still had room for the named processes' keys (a reset storm elsewhere on
    // the host can fill it first; their resets are then counted without owner, as they should be).
    let between = daemon.scrape().unwrap();
    let room_for_comms = between.get("rstwatch_map_entries", &[("map", "counts")])
        < between.get("rstwatch_map_capacity", &[("map", "counts")]);
    let refused_ports = ns
        .run(|| flood_ports().filter(|&port| refused(port)).count())
        .unwrap();
    let flood_time = started.elapsed();
    let out_rsts = ns.tcp_mib("OutRsts").unwrap();
    assert_eq!(refused_ports, 20_000, "every flood port refused");
    assert_eq!(
        refused_processes,
        2 * COMM_PROCESSES,
        "every named process refused twice"
    );
    assert_eq!(
        out_rsts,
        20_000 + 2 * COMM_PROCESSES as u64,
        "the namespace sent one RST per connect"
    );

    let scrape_started = Instant::now();
    let after = daemon.scrape().unwrap();
    let scrape_time = scrape_started.elapsed();
    let delta = |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);

    // Every reset was counted (host traffic may add more, never less).
    let resets = 20_000.0 + 2.0 * COMM_PROCESSES as f64;
    let sent = delta(
        "rstwatch_resets_total",
        &[("direction", "sent"), ("cause", "no_listener")],
    );
    let received = delta(
        "rstwatch_resets_total",
        &[("direction", "received"), ("cause", "connection_refused")],
    );
    assert!(
        sent >= resets && received >= resets,
        "counted sent {sent}, received {received}, want ≥ {resets} each"
    );
    let refusals = delta("rstwatch_socket_errors_total", &[("errno", "ECONNREFUSED")]);
    assert!(
        refusals >= resets,
        "counted {refusals} ECONNREFUSED, want ≥ {resets}"
    );

    // The labels stay within the caps.
    let ports: BTreeSet<String> = label_values(&after, "rstwatch_resets_total", "port");
    let own_ports = ports.iter().filter(|p| *p != "other").count();
    let comms: BTreeSet<String> = label_values(&after, "rstwatch_resets_total", "comm");
    let own_comms = comms
        .iter()
        .filter(|c| !["other", "none", "unknown"].contains(&c.as_str()))
        .count();
    assert!(
        own_ports <= max_ports,
        "{own_ports} port labels > --max-ports {max_ports}"
    );
    assert!(
        own_comms <= max_comms,
        "{own_comms} comm labels > --max-comms {max_comms}"
    );
    let errors_metric = "rstwatch_socket_errors_total";
    let error_ports = label_values(&after, errors_metric, "port")
        .into_iter()
        .filter(|p| p != "other")
        .count();
    let error_comms = label_values(&after, errors_metric, "comm")
        .into_iter()
        .filter(|c| !["other", "none", "unknown"].contains(&c.as_str()))
        .count();
    assert!(
        error_ports <= max_ports && error_comms <= max_comms,
        "{errors_metric}: {error_ports} ports, {error_comms} comms"
    );
    let total_series = series(&after, "rstwatch_resets_total");
    let error_series = series(&after, "rstwatch_socket_errors_total");
    // Resets of the flood that did not get a port label of their own were counted under "other",
    // by the label cap (label_overflow) or because the count map was full (count_map_full).
    let port_overflow = delta("rstwatch_label_overflow_total", &[("label", "port")]);
    let comm_overflow = delta("rstwatch_label_overflow_total", &[("label", "comm")]);
    let map_full = delta("rstwatch_events_lost_total", &[("stage", "count_map_full")]);
    let unrecorded = delta("rstwatch_events_lost_total", &[("stage", "count_unrecorded")]);
    let labelled_at_most = 2.0 * max_ports as f64;
    assert!(
        port_overflow + map_full >= 2.0 * 20_000.0 - labelled_at_most,
        "port overflow {port_overflow} + count_map_full {map_full} < {}",
        2.0 * 20_000.0 - labelled_at_most
    );
    assert!(port_overflow > 0.0, "no port overflow counted");
    // The comm flood's received resets: at most max_comms process names got a label of their own.
    if room_for_comms {
        assert!(
            comm_overflow >= 2.0 * (COMM_PROCESSES - max_comms) as f64,
            "comm overflow {comm_overflow}"
        );
    } else {
        skipped(
            "flood: the comm-overflow check: the count map was already full before the named processes ran (other resets on the host)",
        );
    }
    assert_eq!(unrecorded, 0.0, "resets not counted by cause");

    // The count maps' fill and every bounded map's capacity are exported.
    let gauge = |name: &str, map: &str| {
        after
            .get(name, &[("map", map)])
            .unwrap_or_else(|| panic!("no {name}{{map={map:?}}}"))
    };
    for map in [
        "counts",
        "counts_other",
        "errors",
        "errors_other",
        "conn",
        "closed_flows",
        "listeners",
        "rejected",
    ] {
        assert!(gauge("rstwatch_map_capacity", map) > 0.0, "capacity of {map}");
    }
    let (counts, counts_capacity) = (
        gauge("rstwatch_map_entries", "counts"),
        gauge("rstwatch_map_capacity", "counts"),
    );
    let (errors, errors_capacity) = (
        gauge("rstwatch_map_entries", "errors"),
        gauge("rstwatch_map_capacity", "errors"),
    );
    assert!(counts <= counts_capacity && errors <= errors_capacity);
    // 40,600 distinct count keys were offered; the kernel applies --max-ports itself, so the
    // flood's ports beyond the cap never reach the count map: it holds a few hundred keys (the
    // labelled ports, the process flood, the host's own), and every scrape reads only those.
    assert!(
        counts < 0.25 * counts_capacity,
        "counts map after the flood: {counts} of {counts_capacity}"
    );
    let other = gauge("rstwatch_map_entries", "counts_other");
    assert!(
        other < 100.0,
        "count_map_full +{map_full}, counts_other {other} keys"
    );
    assert_eq!(http::get_ok(daemon.addr, "/healthz").unwrap(), "ok\n");

    eprintln!(
        "flood: {} refused connects in {:.2} s ({} ports, {COMM_PROCESSES} process names × 2); scrape {:.0} ms\n  \
         rstwatch_resets_total: {total_series} series ({} before), {own_ports} port labels (cap {max_ports}), {own_comms} comm labels (cap {max_comms}); \
         rstwatch_socket_errors_total: {error_series} series\n  \
         label_overflow port +{port_overflow}, comm +{comm_overflow}; count_map_full +{map_full}\n  \
         map entries/capacity: counts {counts}/{counts_capacity}, counts_other {other}/{}, errors {errors}/{errors_capacity}, errors_other {}/{}; capacities: conn {}, closed_flows {}, listeners {}, rejected {}",
        refused_ports + refused_processes,
        flood_time.as_secs_f64(),
        refused_ports,
        scrape_time.as_secs_f64() * 1000.0,
        series(&before, "rstwatch_resets_total"),
        gauge("rstwatch_map_capacity", "counts_other"),
        gauge("rstwatch_map_entries", "errors_other"),
        gauge("rstwatch_map_capacity", "errors_other"),
        gauge("rstwatch_map_capacity", "conn"),
        gauge("rstwatch_map_capacity", "closed_flows"),
        gauge("rstwatch_map_capacity", "listeners"),
        gauge("rstwatch_map_capacity", "rejected"),
    );
    // A flood of 20,000 ports and 300 names leaves a few hundred series, not tens of thousands.
    assert!(
        total_series <= 5 * (max_ports + max_comms),
        "{total_series} series"
    );
    let _ = std::io::stderr().flush();
}
