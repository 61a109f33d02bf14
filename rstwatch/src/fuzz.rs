//! Property tests ("fuzzing" with proptest) of everything that reads input rstwatch does not
//! control: tracefs `format` files (the kernel's text), cgroup paths (named by container runtimes
//! and kubelet, and by anyone who may create a cgroup), ring-buffer records (bytes from the eBPF
//! side, which a daemon/object mismatch or a kernel bug could garble), and the decoding of those
//! records into events, labels, JSON and human lines. Property: never panic, and what is accepted is
//! well formed. Each target runs a bounded number of cases in every `cargo test` (about a second in
//! all, release build; `RSTWATCH_FUZZ_CASES=N` for more), with a new random seed each run; a failure
//! prints the minimal input, which then belongs in a regression test below.

use proptest::prelude::*;
use rstwatch_common::{EVENT_RESET, EVENT_SOCKET_ERROR, ResetEvent, SocketErrorEvent};

use crate::{
    attribution::cgroup,
    causes::CAUSES,
    counts::Classifier,
    events::{self, Decoder, FalseReceiveFilter, Linker, Observation, Record},
    kernel::{self, tracefs},
    output::{self, RateLimiter, WallClock},
    pairing::{self, Pairer},
};

const FIXTURES: [&str; 7] = [
    include_str!("kernel/fixtures/6.18/tcp_send_reset.format"),
    include_str!("kernel/fixtures/6.18/tcp_receive_reset.format"),
    include_str!("kernel/fixtures/6.18/inet_sock_set_state.format"),
    include_str!("kernel/fixtures/6.18/inet_sk_error_report.format"),
    include_str!("kernel/fixtures/6.18/kfree_skb.format"),
    include_str!("kernel/fixtures/6.1/tcp_send_reset.format"),
    include_str!("kernel/fixtures/6.1/tcp_receive_reset.format"),
];

/// `cases` per target, or `$RSTWATCH_FUZZ_CASES` for a longer run
/// (`RSTWATCH_FUZZ_CASES=200000 cargo test --release -p rstwatch fuzz`).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("RSTWATCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    // No regression files written into the source tree: a failure prints its minimal input.
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// tracefs format files

/// Pieces of format-file syntax, so random text reaches the field and print-fmt parsers instead
/// of failing at the first line.
fn format_token() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "name:",
        "ID:",
        "format:",
        "\tfield:",
        "print fmt:",
        "\n",
        "\t",
        ";",
        ":",
        " ",
        "[",
        "]",
        "[]",
        "offset:",
        "size:",
        "signed:",
        "int ",
        "unsigned short ",
        "const void * ",
        "__u8 ",
        "char ",
        "__data_loc char[] ",
        "enum sk_rst_reason ",
        "saddr[28]",
        "name[sizeof(struct sockaddr_in6)]",
        "skaddr",
        "reason",
        "state",
        "protocol",
        "\"",
        "\\",
        "{",
        "}",
        ",",
        "(",
        ")",
        "REC->reason",
        "__print_symbolic(",
        "{ 1, \"NO_SOCKET\" }",
        "0x",
        "-",
        "4294967296",
        "18446744073709551616",
        "-1",
        "0",
        "8",
        "é",
        "\u{0}",
    ])
    .prop_map(str::to_string);
    prop_oneof![4 => fixed, 1 => "[0-9]{1,25}", 1 => any::<String>()]
}

fn format_like() -> impl Strategy<Value = String> {
    prop::collection::vec(format_token(), 0..80).prop_map(|tokens| tokens.concat())
}

/// One edit of a real format file.
#[derive(Clone, Debug)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    DuplicateLine { line: usize },
    SwapNumber { nth: usize, with: String },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), format_token()).prop_map(|(at, text)| Edit::Insert { at, text }),
        any::<usize>().prop_map(|line| Edit::DuplicateLine { line }),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "",
                "-1",
                "65536",
                "4294967295",
                "4294967296",
                "99999999999999999999",
                "x"
            ])
        )
            .prop_map(|(nth, with)| Edit::SwapNumber {
                nth,
                with: with.to_string()
            }),
    ]
}

fn char_boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(mut text: String, edit: &Edit) -> String {
    match edit {
        Edit::Delete { at, len } => {
            let start = char_boundary(&text, *at);
            let end = char_boundary(&text, (start + len).min(text.len()));
            text.replace_range(start..end.max(start), "");
        }
        Edit::Insert { at, text: inserted } => {
            let at = char_boundary(&text, *at);
            text.insert_str(at, inserted);
        }
        Edit::DuplicateLine { line } => {
            let lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let copy = lines[line % lines.len()];
                text = format!("{text}\n{copy}\n");
            }
        }
        Edit::SwapNumber { nth, with } => {
            let numbers: Vec<(usize, usize)> = number_spans(&text);
            if !numbers.is_empty() {
                let (start, end) = numbers[nth % numbers.len()];
                text.replace_range(start..end, with);
            }
        }
    }
    text
}

fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

/// Everything start-up does with a parsed format, none of which may panic.
fn check_format(text: &str) {
    let Ok(format) = tracefs::parse_format(text) else {
        return;
    };
    assert!(!format.fields.is_empty(), "accepted a format without fields");
    for field in &format.fields {
        assert!(
            !field.name.is_empty() && !field.c_type.is_empty(),
            "empty name or type in {field:?}"
        );
        assert!(
            field.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "odd field name {:?}",
            field.name
        );
    }
    for name in ["reason", "state", "x", ""] {
        for (_, symbol) in tracefs::symbolic_values(&format.print_fmt, name) {
            let _ = symbol.len();
        }
    }
    let _ = kernel::tracepoint_offsets(&format, &format, &format);
    let mut config = rstwatch_common::Config::UNSET;
    let _ = kernel::error_report_offsets(&format, &mut config);
    let _ = kernel::kfree_skb_offsets(&format, i64::MAX, &mut config);
}

/// Found by `tracefs_format_parser_takes_format_like_text`: a declaration ending in a multi-byte
/// character was split inside it (a panic on slicing).
#[test]
fn declarations_with_non_ascii_characters() {
    assert!(tracefs::parse_format("name: x\nID: 1\n\tfield:ೠ").is_err());
    let format =
        tracefs::parse_format("name: x\nID: 1\n\tfield:intೠ x;\toffset:8;\tsize:4;\tsigned:1;\n").unwrap();
    assert_eq!(
        (format.fields[0].c_type.as_str(), format.fields[0].name.as_str()),
        ("intೠ", "x")
    );
    assert!(
        tracefs::parse_format("name: x\nID: 1\n\tfield:int é;\toffset:8;\tsize:4;\tsigned:1;\n").is_err()
    );
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn tracefs_format_parser_takes_any_text(text in any::<String>()) {
        check_format(&text);
    }

    #[test]
    fn tracefs_format_parser_takes_format_like_text(text in format_like()) {
        check_format(&text);
    }

    #[test]
    fn tracefs_format_parser_takes_damaged_real_files(
        fixture in 0..FIXTURES.len(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let text = edits.iter().fold(FIXTURES[fixture].to_string(), apply);
        check_format(&text);
    }

    #[test]
    fn symbolic_tables_take_any_text(print_fmt in format_like(), field in "[a-z_]{0,8}") {
        let _ = tracefs::symbolic_values(&print_fmt, &field);
    }
}

// ---------------------------------------------------------------------------------------------
// ring-buffer records and their decoding

/// `size` arbitrary bytes starting with `kind`.
fn record_bytes(kind: u32, size: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), size).prop_map(move |mut bytes| {
        bytes[..4].copy_from_slice(&kind.to_ne_bytes());
        bytes
    })
}

fn decoder(hz: u32) -> Decoder {
    let reasons = tracefs::symbolic_values(
        &tracefs::parse_format(FIXTURES[0])
            .expect("fixture parses")
            .print_fmt,
        "reason",
    );
    let reason_names = reasons
        .into_iter()
        .map(|(value, name)| (value as u16, name))
        .collect();
    Decoder {
        classifier: Classifier { reason_names },
        hz,
        attribution: None,
    }
}

fn hz() -> impl Strategy<Value = u32> {
    prop_oneof![prop::sample::select(vec![100u32, 250, 300, 1000]), any::<u32>()]
}

/// What the daemon and `trace` do with a decoded record: none of it may panic, and the JSON line
/// must be one JSON object with the documented labels.
fn check_observation(observation: &Observation, clock: &WallClock, limiter: &mut RateLimiter) {
    let json = output::json_line(observation, clock);
    assert!(!json.contains('\n'), "a JSON event spans lines: {json}");
    let value: serde_json::Value = serde_json::from_str(&json).expect("json_line is JSON");
    let human = output::human_line(observation, clock);
    assert!(!human.is_empty());
    match observation {
        Observation::Reset(reset) => {
            assert_eq!(value["event"], "reset");
            assert!(CAUSES.iter().any(|info| info.label == reset.cause.label()));
            assert!(!reset.state.is_empty());
            let _ = format!("{reset}");
            limiter.allow(reset.cause, reset.monotonic_ns);
        }
        Observation::SocketError(error) => {
            assert_eq!(value["event"], "socket_error");
            let _ = events::errno_name(error.errno);
        }
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn records_of_any_bytes_decode_or_are_refused(
        kind in prop_oneof![Just(EVENT_RESET), Just(EVENT_SOCKET_ERROR), any::<u32>()],
        mut bytes in prop::collection::vec(any::<u8>(), 0..(size_of::<ResetEvent>() + 64)),
    ) {
        if bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&kind.to_ne_bytes());
        }
        match events::from_bytes(&bytes) {
            Some(Record::Reset(_)) => prop_assert!(kind == EVENT_RESET && bytes.len() >= size_of::<ResetEvent>()),
            Some(Record::SocketError(_)) => {
                prop_assert!(kind == EVENT_SOCKET_ERROR && bytes.len() >= size_of::<SocketErrorEvent>())
            }
            None => prop_assert!(
                bytes.len() < 4
                    || (kind != EVENT_RESET && kind != EVENT_SOCKET_ERROR)
                    || (kind == EVENT_RESET && bytes.len() < size_of::<ResetEvent>())
                    || (kind == EVENT_SOCKET_ERROR && bytes.len() < size_of::<SocketErrorEvent>())
            ),
        }
    }

    #[test]
    fn any_reset_event_decodes_to_a_well_formed_event(
        bytes in record_bytes(EVENT_RESET, size_of::<ResetEvent>()),
        hz in hz(),
    ) {
        let Some(Record::Reset(ev)) = events::from_bytes(&bytes) else {
            panic!("a full-size reset record was refused");
        };
        let port_at = std::mem::offset_of!(ResetEvent, key) + std::mem::offset_of!(rstwatch_common::CountKey, port);
        prop_assert_eq!(ev.key.port, u16::from_ne_bytes([bytes[port_at], bytes[port_at + 1]]));
        let decoder = decoder(hz);
        let reset = decoder.decode(&ev);
        prop_assert_eq!(reset.service_port, ev.key.port);
        let mut limiter = RateLimiter::new(3);
        check_observation(&Observation::Reset(Box::new(reset)), &WallClock::now(), &mut limiter);
    }

    #[test]
    fn any_socket_error_event_decodes(
        bytes in record_bytes(EVENT_SOCKET_ERROR, size_of::<SocketErrorEvent>()),
        reset in record_bytes(EVENT_RESET, size_of::<ResetEvent>()),
    ) {
        let (Some(Record::SocketError(error)), Some(Record::Reset(reset))) =
            (events::from_bytes(&bytes), events::from_bytes(&reset))
        else {
            panic!("full-size records were refused");
        };
        let decoder = decoder(250);
        let mut linker = Linker::new();
        linker.remember(&decoder.decode(&reset));
        let error = decoder.decode_error(&error, &linker);
        check_observation(&Observation::SocketError(error), &WallClock::now(), &mut RateLimiter::new(1));
    }

    /// The reader's whole path for a burst of arbitrary records: filter, decode, link, pair, write.
    #[test]
    fn a_stream_of_arbitrary_records_goes_through_the_reader_path(
        records in prop::collection::vec(
            prop_oneof![
                record_bytes(EVENT_RESET, size_of::<ResetEvent>()),
                record_bytes(EVENT_SOCKET_ERROR, size_of::<SocketErrorEvent>()),
                prop::collection::vec(any::<u8>(), 0..64),
            ],
            0..24,
        ),
        now_ns in any::<u64>(),
    ) {
        let decoder = decoder(1000);
        let clock = WallClock::now();
        let (mut filter, mut linker, mut limiter) = (FalseReceiveFilter::new(), Linker::new(), RateLimiter::new(2));
        let mut ready = Vec::new();
        for bytes in &records {
            if let Some(record) = events::from_bytes(bytes) {
                filter.push(record, &mut ready);
            }
        }
        filter.release_older_than(now_ns, &mut ready);
        let mut pairer = Pairer::new();
        let decoded = ready.len();
        // Any read time that has a HOLD_NS after it.
        let read_ns = now_ns / 2;
        for record in ready.drain(..) {
            pairer.push(decoder.observation(record, &mut linker), read_ns);
        }
        let mut out = Vec::new();
        pairer.release(read_ns, &mut out);
        pairer.release(read_ns + pairing::HOLD_NS, &mut out);
        prop_assert_eq!(out.len(), decoded, "pairing neither drops nor duplicates");
        for observation in &out {
            check_observation(observation, &clock, &mut limiter);
        }
    }
}

#[test]
fn extreme_timestamps_format() {
    // The far ends of what a garbled record can say: the JSON and human lines still render.
    let decoder = decoder(250);
    for ts_ns in [0, 1, u64::MAX / 2, u64::MAX] {
        let mut ev: ResetEvent = unsafe { std::mem::zeroed() };
        ev.kind = EVENT_RESET;
        ev.ts_ns = ts_ns;
        ev.birth_ns = u64::MAX - ts_ns;
        ev.flags = u32::MAX;
        ev.key.facts = u16::MAX;
        ev.now_jiffies = u32::MAX;
        ev.lsndtime = 1;
        let reset = decoder.decode(&ev);
        check_observation(
            &Observation::Reset(Box::new(reset)),
            &WallClock::now(),
            &mut RateLimiter::new(1),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// cgroup paths

fn hex(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(b"0123456789abcdefABCDEFxg".to_vec()), len)
        .prop_map(|bytes| String::from_utf8(bytes).expect("ASCII"))
}

/// A pod UID as kubelet writes it (dashes or underscores, any case), or something close to one.
fn uid() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            hex(8..9),
            hex(4..5),
            hex(4..5),
            hex(4..5),
            hex(12..13),
            prop::sample::select(vec!["-", "_"])
        )
            .prop_map(|(a, b, c, d, e, sep)| [a, b, c, d, e].join(sep)),
        hex(30..35),
        "[0-9a-f_-]{0,40}",
    ]
}

fn container_id() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[0-9a-f]{64}", 1 => hex(60..68)]
}

/// One path segment: the shapes runtimes and kubelet create, and noise.
fn segment() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "kubepods",
        "kubepods.slice",
        "kubepods-burstable.slice",
        "kubepods-besteffort.slice",
        "burstable",
        "besteffort",
        "docker",
        "system.slice",
        "kubelet.slice",
        "kubelet-kubepods.slice",
        "container",
        ".",
        "..",
        "",
        "pod",
        ".slice",
        ".scope",
        "-",
        "crio-conmon-",
        "kubepods-",
        "é",
        ":",
        "0::",
    ])
    .prop_map(str::to_string);
    let prefix = prop::sample::select(vec![
        "cri-containerd-",
        "nerdctl-",
        "crio-",
        "docker-",
        "libpod-",
        "libpod-conmon-",
        "",
    ]);
    let suffix = prop::sample::select(vec![".scope", "", ".slice"]);
    let qos = prop::sample::select(vec![
        "kubepods-",
        "kubepods-burstable-",
        "kubepods-besteffort-",
        "kubelet-kubepods-",
        "x-",
        "",
    ]);
    prop_oneof![
        3 => fixed,
        3 => (prefix, container_id(), suffix).prop_map(|(p, id, s)| format!("{p}{id}{s}")),
        3 => (qos, uid(), prop::sample::select(vec![".slice", ""])).prop_map(|(q, uid, s)| format!("{q}pod{uid}{s}")),
        1 => any::<String>(),
    ]
}

fn cgroup_path() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec![
        "",
        "0::",
        "12:memory:",
        "1:name=systemd:",
        "x:y:",
        "::",
        "12:",
    ]);
    (prefix, prop::collection::vec(segment(), 0..12), any::<bool>()).prop_map(
        |(prefix, segments, leading)| {
            format!("{prefix}{}{}", if leading { "/" } else { "" }, segments.join("/"))
        },
    )
}

fn check_container(container: &cgroup::Container) {
    let id = &container.container_id;
    assert!(
        id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "container id {id:?}"
    );
    if let Some(uid) = &container.pod_uid {
        let groups: Vec<usize> = uid.split('-').map(str::len).collect();
        let hex = uid
            .bytes()
            .all(|b| b == b'-' || matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        assert!(
            hex && (groups == [8, 4, 4, 4, 12] || groups == [32]),
            "pod uid {uid:?}"
        );
    }
    let _ = container.to_string();
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn cgroup_paths_parse_to_well_formed_containers_or_nothing(path in cgroup_path()) {
        if let Some(container) = cgroup::parse(&path) {
            check_container(&container);
        }
        // A v2 line of /proc/<pid>/cgroup says the same as its path.
        if path.starts_with('/') {
            prop_assert_eq!(cgroup::parse(&format!("0::{path}")), cgroup::parse(&path));
        }
    }

    #[test]
    fn cgroup_parser_takes_any_text(text in any::<String>()) {
        if let Some(container) = cgroup::parse(&text) {
            check_container(&container);
        }
        if let Some(container) = cgroup::parse_proc_cgroup(&text) {
            check_container(&container);
        }
    }

    #[test]
    fn proc_cgroup_files_of_random_lines(lines in prop::collection::vec(cgroup_path(), 0..6)) {
        let text = lines.join("\n");
        let whole = cgroup::parse_proc_cgroup(&text);
        if let Some(container) = &whole {
            check_container(container);
        }
        // What the whole file yields comes from one of its lines.
        prop_assert!(whole.is_none() || lines.iter().any(|line| cgroup::parse(line.trim()) == whole));
    }
}
