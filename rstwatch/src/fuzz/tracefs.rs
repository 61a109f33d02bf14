//! tracefs format files.

use proptest::prelude::*;

use super::{FIXTURES, config};
use crate::load::kernel::{self, tracefs};

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
