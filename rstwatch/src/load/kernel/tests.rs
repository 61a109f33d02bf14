use super::tracefs::parse_format;
use super::*;

fn fixture(kernel: &str, event: &str) -> EventFormat {
    let text = match (kernel, event) {
        ("6.18", "tcp_send_reset") => include_str!("fixtures/6.18/tcp_send_reset.format"),
        ("6.18", "tcp_receive_reset") => include_str!("fixtures/6.18/tcp_receive_reset.format"),
        ("6.18", "inet_sock_set_state") => {
            include_str!("fixtures/6.18/inet_sock_set_state.format")
        }
        ("6.18", "inet_sk_error_report") => {
            include_str!("fixtures/6.18/inet_sk_error_report.format")
        }
        ("6.18", "kfree_skb") => include_str!("fixtures/6.18/kfree_skb.format"),
        ("6.1", "tcp_send_reset") => include_str!("fixtures/6.1/tcp_send_reset.format"),
        ("6.1", "tcp_receive_reset") => include_str!("fixtures/6.1/tcp_receive_reset.format"),
        _ => panic!("no fixture {kernel}/{event}"),
    };
    parse_format(text).unwrap()
}

#[test]
fn offsets_of_6_18() {
    let c = tracepoint_offsets(
        &fixture("6.18", "tcp_send_reset"),
        &fixture("6.18", "tcp_receive_reset"),
        &fixture("6.18", "inet_sock_set_state"),
    )
    .unwrap();
    assert_eq!(
        (c.send_skbaddr, c.send_skaddr, c.send_state, c.send_reason),
        (8, 16, 24, 28)
    );
    assert_eq!((c.recv_skaddr, c.recv_cookie), (8, 64));
    assert_eq!(
        (c.set_state_skaddr, c.set_state_oldstate, c.set_state_newstate),
        (8, 16, 20)
    );
    assert_eq!((c.set_state_protocol, c.set_state_protocol_size), (30, 2));
}

#[test]
fn offsets_of_6_1() {
    // Debian 12's 6.1 has no reason; its inet_sock_set_state matches 6.18's.
    let c = tracepoint_offsets(
        &fixture("6.1", "tcp_send_reset"),
        &fixture("6.1", "tcp_receive_reset"),
        &fixture("6.18", "inet_sock_set_state"),
    )
    .unwrap();
    assert_eq!(
        (c.send_skbaddr, c.send_skaddr, c.send_state, c.send_reason),
        (8, 16, 24, ABSENT)
    );
    assert_eq!((c.recv_skaddr, c.recv_cookie), (8, 64));
}

#[test]
fn old_and_wrong_layouts() {
    let set_state = fixture("6.18", "inet_sock_set_state");
    let recv = fixture("6.18", "tcp_receive_reset");
    let mut old = set_state.clone();
    old.fields.iter_mut().find(|f| f.name == "protocol").unwrap().size = 1;
    let mut send = fixture("6.1", "tcp_send_reset");
    send.fields.retain(|f| f.name != "state");
    let c = tracepoint_offsets(&send, &recv, &old).unwrap();
    assert_eq!((c.send_state, c.set_state_protocol_size), (ABSENT, 1));

    let err = |s: &EventFormat, r: &EventFormat, t: &EventFormat| {
        format!("{:#}", tracepoint_offsets(s, r, t).unwrap_err())
    };
    assert!(err(&recv, &recv, &set_state).contains("expected the format of tcp_send_reset"));
    send.fields.retain(|f| f.name != "skaddr");
    assert!(err(&send, &recv, &set_state).contains("no field skaddr"));
    let mut send = fixture("6.18", "tcp_send_reset");
    send.fields.iter_mut().find(|f| f.name == "reason").unwrap().size = 2;
    assert!(err(&send, &recv, &set_state).contains("reason"));
}

#[test]
fn idle_threshold_in_jiffies() {
    assert_eq!(idle_jiffies(Duration::from_secs(5), 250).unwrap(), 1250);
    assert_eq!(idle_jiffies(Duration::from_millis(10), 300).unwrap(), 3);
    assert_eq!(idle_jiffies(Duration::from_nanos(1), 100).unwrap(), 1);
    assert_eq!(idle_jiffies(Duration::ZERO, 1000).unwrap(), 1);
    assert!(idle_jiffies(Duration::from_secs(u64::MAX / 2), 1000).is_err());
}

#[test]
fn reason_names_from_the_print_fmt() {
    let send = fixture("6.18", "tcp_send_reset");
    let names = reason_table(tracefs::symbolic_values(&send.print_fmt, "reason")).unwrap();
    let layout = KernelLayout {
        config: Config {
            hz: 250,
            ..Config::UNSET
        },
        reason_names: names,
        release: String::new(),
        send_reset_has_reason: true,
        send_reset_has_state: true,
        btf_tracepoints: BTreeMap::new(),
    };
    assert_eq!(layout.reason_value("NO_SOCKET"), Some(1));
    assert_eq!(layout.reason_value("SK_RST_REASON_TCP_STATE"), Some(14));
    assert_eq!(layout.reason_value("NOPE"), None);
    assert!(reason_table(vec![(70000, "BIG".into())]).is_err());
    assert!(reason_table(vec![(-1, "NEG".into())]).is_err());
}

/// What every kernel's BTF must give; `btf_offsets` fails on any field it cannot place.
fn btf_fills_every_field(btf: &KernelBtf) -> Config {
    let mut c = Config::UNSET;
    btf_offsets(btf, &mut c).unwrap();
    // __sk_common is at offset 0 of struct sock, so these agree with sock_common's.
    assert_eq!(
        c.sk_v6_daddr as u32,
        btf.member("sock_common", "skc_v6_daddr").unwrap().offset
    );
    assert_eq!(c.sk_rcv_saddr, c.sk_daddr + 4);
    assert!(c.inet_sport > c.sk_socket, "inet_sport lies past struct sock");
    assert!(c.sk_socket > c.sk_state && c.tcp_bytes_received > c.sk_socket);
    assert!(c.skb_head != c.skb_data && c.skb_network_header != 0);
    c
}

#[test]
fn the_btf_fixture_fills_every_field() {
    let c = btf_fills_every_field(&btf::fixture());
    // 6.18 (vmlinux.min.btf): sk_flags is found at its second path, in sock_common.
    assert_eq!(
        (c.sk_state, c.sk_num, c.sk_flags, c.icsk_lrcvtime),
        (18, 14, 96, 1264)
    );
}

#[test]
fn the_running_kernels_btf_fills_every_field() {
    let Some(btf) = btf::live_for_tests() else {
        return;
    };
    btf_fills_every_field(&btf);
}

/// The tracefs `events/` tree of 6.18 (the format fixtures), in a directory of its own.
fn tracefs_snapshot() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rstwatch-test-tracefs-{}", std::process::id()));
    for (group, event) in [
        ("tcp", "tcp_send_reset"),
        ("tcp", "tcp_receive_reset"),
        ("sock", "inet_sock_set_state"),
        ("sock", "inet_sk_error_report"),
        ("skb", "kfree_skb"),
    ] {
        let event_dir = dir.join("events").join(group).join(event);
        std::fs::create_dir_all(&event_dir).unwrap();
        let text = std::fs::read(format!(
            "{}/src/load/kernel/fixtures/6.18/{event}.format",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        std::fs::write(event_dir.join("format"), text).unwrap();
    }
    dir
}

#[test]
fn resolves_6_18_from_its_tracefs_and_btf() {
    let tracefs = tracefs_snapshot();
    let resolved = resolve_from(
        &tracefs,
        &btf::fixture(),
        "6.18.0-test".into(),
        250,
        (32768, 60999),
        Duration::from_secs(5),
    );
    std::fs::remove_dir_all(&tracefs).unwrap();
    let layout = resolved.unwrap();
    let c = layout.config;
    assert_eq!((c.send_skaddr, c.send_reason, c.sk_state), (16, 28, 18));
    assert_eq!((c.sock_linger_bit, c.idle_threshold_jiffies), (4, 1250));
    assert_eq!((c.ephemeral_port_low, c.ephemeral_port_high), (32768, 60999));
    assert_eq!((c.kfree_reason, c.error_sport), (36, 12));
    assert!(layout.send_reset_has_reason && layout.send_reset_has_state);
    assert_eq!(
        layout.btf_tracepoints.len(),
        rstwatch_common::probes::tracepoints().count()
    );
    assert_eq!((c.btf_send_reason_arg, c.btf_kfree_reason_arg), (2, 2));
    assert_eq!(layout.reason_value("NO_SOCKET"), Some(1));
}

#[test]
fn resolves_the_running_kernel() {
    // Never mount from a unit test: only run where tracefs and BTF are already there.
    let mounted = std::path::Path::new("/sys/kernel/tracing/events/tcp/tcp_send_reset").exists();
    if !mounted {
        crate::skip::skipped("tracefs is not mounted at /sys/kernel/tracing");
        return;
    }
    if btf::live_for_tests().is_none() {
        return;
    }
    let layout = resolve(Duration::from_secs(5)).unwrap();
    assert!(layout.config.send_skaddr != ABSENT && layout.config.idle_threshold_jiffies > 0);
    assert_eq!(layout.config.idle_threshold_jiffies, 5 * layout.config.hz);
    if layout.send_reset_has_reason {
        assert_eq!(layout.reason_value("NO_SOCKET"), Some(1));
    }
}

#[test]
fn optional_tracepoints_of_6_18() {
    let mut c = Config::UNSET;
    error_report_offsets(&fixture("6.18", "inet_sk_error_report"), &mut c).unwrap();
    assert_eq!(
        (c.error_error, c.error_sport, c.error_protocol, c.error_daddr_v6),
        (8, 12, 18, 44)
    );
    kfree_skb_offsets(&fixture("6.18", "kfree_skb"), 12, &mut c).unwrap();
    assert_eq!(
        (c.kfree_skbaddr, c.kfree_reason, c.drop_reason_netfilter),
        (8, 36, 12)
    );
    // A kernel without drop reasons (before 5.17) leaves the config as it was.
    let mut old = fixture("6.18", "kfree_skb");
    old.fields.retain(|f| f.name != "reason");
    let mut untouched = Config::UNSET;
    assert!(kfree_skb_offsets(&old, 12, &mut untouched).is_err());
    assert_eq!(untouched.kfree_skbaddr, ABSENT);
}
