use super::*;

// Each check holds on any kernel rstwatch supports; the fixture tests add 6.18's exact values.

fn nested_and_anonymous_members(btf: &KernelBtf) {
    // `__sk_common` is the first member of struct sock.
    let state = btf.member("sock", "__sk_common.skc_state").unwrap();
    assert_eq!(state, btf.member("sock_common", "skc_state").unwrap());
    assert_eq!(state.size, 1);
    // skc_num sits in an anonymous struct inside an anonymous union.
    let dport = btf.member("sock_common", "skc_dport").unwrap();
    let num = btf.member("sock_common", "skc_num").unwrap();
    assert_eq!((num.offset, num.size), (dport.offset + 2, 2));
    assert_eq!(btf.member("sock_common", "skc_v6_daddr").unwrap().size, 16);
    let lrcvtime = btf.member("tcp_sock", "inet_conn.icsk_ack.lrcvtime").unwrap();
    assert_eq!(lrcvtime.size, 4);
    assert!(lrcvtime.offset > btf.member("tcp_sock", "inet_conn").unwrap().offset);
}

fn mapped_copy_reads_the_same(btf: &KernelBtf, path: &str) {
    // What kernels before 6.16 get: their /sys/kernel/btf/vmlinux cannot be mapped.
    let copy = KernelBtf {
        btf: KernelBtf::map_copy(Path::new(path)).unwrap(),
        by_name: RefCell::default(),
    };
    for (strukt, path) in [
        ("sock", "__sk_common.skc_state"),
        ("tcp_sock", "inet_conn.icsk_ack.lrcvtime"),
    ] {
        assert_eq!(
            copy.member(strukt, path).unwrap(),
            btf.member(strukt, path).unwrap()
        );
    }
    assert_eq!(
        copy.tracepoint("tcp_receive_reset").unwrap(),
        btf.tracepoint("tcp_receive_reset").unwrap()
    );
}

fn reports_what_is_missing(btf: &KernelBtf) {
    let err = |s, p| format!("{:#}", btf.member(s, p).unwrap_err());
    assert!(err("no_such_struct_here", "x").contains("no struct no_such_struct_here"));
    assert!(err("sock", "sk_no_such_member").contains("sk_no_such_member"));
    assert!(err("sock", "sk_lingertime.x").contains("not a struct"));
    assert!(err("inet_timewait_sock", "tw_transparent").contains("bitfield"));
    assert!(btf.enum_values("no_such_enum_here").is_err());
    assert!(btf.enum_value("sock_flags", "SOCK_NO_SUCH_FLAG").is_err());
}

fn tracepoint_arguments(btf: &KernelBtf) {
    let args = |event| btf.tracepoint(event).unwrap().args;
    assert_eq!(args("tcp_receive_reset"), ["struct sock *"]);
    assert_eq!(args("inet_sock_set_state"), ["struct sock *", "int", "int"]);
    assert_eq!(
        &args("tcp_send_reset")[..2],
        ["struct sock *", "struct sk_buff *"]
    );
    assert!(btf.tracepoint("no_such_event").is_err());
}

/// `full` is aya's own parse of the same BTF.
fn tracepoints_btf_has_the_same_ids(btf: &KernelBtf, full: &aya::Btf) {
    let events = ["tcp_send_reset", "tcp_receive_reset", "inet_sock_set_state"];
    let ids: Vec<_> = events
        .iter()
        .map(|event| (*event, btf.tracepoint(event).unwrap().id))
        .collect();
    let small = tracepoints_btf(ids.iter().copied()).unwrap();
    for (event, id) in ids {
        let name = format!("btf_trace_{event}");
        let kind = aya_obj::btf::BtfKind::Typedef;
        assert_eq!(small.id_by_type_name_kind(&name, kind).unwrap(), id, "{name}");
        assert_eq!(
            full.id_by_type_name_kind(&name, kind).unwrap(),
            id,
            "{name} in aya's parse"
        );
    }
    assert!(tracepoints_btf([]).is_ok());
}

fn enums(btf: &KernelBtf) {
    // The order of enum sock_flags has not changed since 2.6.
    assert_eq!(btf.enum_value("sock_flags", "SOCK_LINGER").unwrap(), 4);
    // sk_rst_reason exists from 6.10 on.
    if let Ok(reasons) = btf.enum_values("sk_rst_reason") {
        assert!(reasons.contains(&(1, "SK_RST_REASON_NO_SOCKET".to_string())));
    }
}

#[test]
fn the_fixture_resolves_members_tracepoints_and_enums() {
    let btf = fixture();
    nested_and_anonymous_members(&btf);
    mapped_copy_reads_the_same(&btf, FIXTURE);
    reports_what_is_missing(&btf);
    tracepoint_arguments(&btf);
    let full = aya::Btf::parse_file(FIXTURE, aya::Endianness::default()).unwrap();
    tracepoints_btf_has_the_same_ids(&btf, &full);
    enums(&btf);
    // 6.18's layout, as `bpftool btf dump` prints it.
    let member = |s, p| btf.member(s, p).unwrap();
    assert_eq!(
        member("sock", "__sk_common.skc_state"),
        MemberInfo { offset: 18, size: 1 }
    );
    assert_eq!(
        member("sock_common", "skc_num"),
        MemberInfo { offset: 14, size: 2 }
    );
    assert_eq!(
        member("sock_common", "skc_v6_daddr"),
        MemberInfo { offset: 56, size: 16 }
    );
    assert_eq!(
        member("tcp_sock", "inet_conn.icsk_ack.lrcvtime"),
        MemberInfo {
            offset: 1264,
            size: 4
        }
    );
    assert_eq!(
        member("sock", "__sk_common.skc_flags"),
        MemberInfo { offset: 96, size: 8 }
    );
    assert!(
        btf.member("sock", "sk_flags").is_err(),
        "6.18 moved sk_flags into sock_common"
    );
    let send = btf.tracepoint("tcp_send_reset").unwrap();
    assert_eq!(
        send.args,
        ["struct sock *", "struct sk_buff *", "enum sk_rst_reason"]
    );
    assert_eq!(btf.enum_values("sk_rst_reason").unwrap().len(), 26);
}

#[test]
fn the_running_kernels_btf() {
    let Some(btf) = live_for_tests() else { return };
    nested_and_anonymous_members(&btf);
    mapped_copy_reads_the_same(&btf, VMLINUX);
    reports_what_is_missing(&btf);
    tracepoint_arguments(&btf);
    tracepoints_btf_has_the_same_ids(&btf, &aya::Btf::from_sys_fs().unwrap());
    enums(&btf);
}
