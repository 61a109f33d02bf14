//! tracefs: where it is, and what the `format` files of its events say.
//!
//! Classic tracepoint programs get the raw trace record, whose layout changes between kernel
//! versions (see docs/kernel.md, "Hooks"), so every offset is read from the running kernel.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};

const TRACEFS: &str = "/sys/kernel/tracing";
/// Older systems only expose tracefs through debugfs.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Returns the tracefs mount point, mounting tracefs first if no mount has `events/`
/// (a fresh machine boots without it).
pub fn ensure_mounted() -> Result<PathBuf> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let c = |s: &str| CString::new(s).expect("no NUL in a constant");
    let (source, target, fstype) = (c("tracefs"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings that outlive the call; no mount data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it on {TRACEFS} failed: {err}; run rstwatch as \
             root (CAP_SYS_ADMIN) or mount it first: mount -t tracefs tracefs {TRACEFS}"
        );
    }
    log::info!("tracefs was not mounted: mounted it on {TRACEFS}");
    if !Path::new(TRACEFS).join("events").is_dir() {
        bail!("mounted tracefs on {TRACEFS} but it has no events/ directory");
    }
    Ok(PathBuf::from(TRACEFS))
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// C type as the kernel prints it, without the array suffix (`const void *`, `__u8`).
    pub c_type: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
    /// `N` of `name[N]`; None for scalars, and for sizes the kernel printed unexpanded.
    pub array_len: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFormat {
    pub name: String,
    pub id: u32,
    /// Every field, the `common_*` header included, in file order.
    pub fields: Vec<Field>,
    /// The text after `print fmt: `.
    pub print_fmt: String,
}

impl EventFormat {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Reads and parses `<tracefs>/events/<group>/<event>/format`.
pub fn read_format(tracefs: &Path, group: &str, event: &str) -> Result<EventFormat> {
    let path = tracefs.join("events").join(group).join(event).join("format");
    if !path.exists() {
        bail!(
            "tracepoint {group}:{event} not found in {}: this kernel lacks it (too old, or built \
             without the tracepoint)",
            path.display()
        );
    }
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_format(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn parse_format(text: &str) -> Result<EventFormat> {
    let (mut name, mut id, mut print_fmt) = (None, None, String::new());
    let mut fields = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("name:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("ID:") {
            id = Some(
                v.trim()
                    .parse()
                    .with_context(|| format!("line {}: bad ID {v:?}", n + 1))?,
            );
        } else if let Some(v) = line.strip_prefix("field:") {
            fields.push(parse_field(v).with_context(|| format!("line {}: {line:?}", n + 1))?);
        } else if let Some(v) = line.strip_prefix("print fmt:") {
            print_fmt = v.trim().to_string();
        }
    }
    let name = name.ok_or_else(|| anyhow!("no `name:` line"))?;
    let id = id.ok_or_else(|| anyhow!("no `ID:` line"))?;
    if fields.is_empty() {
        bail!("event {name} has no fields");
    }
    Ok(EventFormat {
        name,
        id,
        fields,
        print_fmt,
    })
}

/// Parses `const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;` (after `field:`).
fn parse_field(text: &str) -> Result<Field> {
    let mut parts = text.split(';').map(str::trim);
    let decl = parts.next().unwrap_or_default();
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in parts.filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| anyhow!("no `key:value` in {part:?}"))?;
        let number = || {
            value
                .trim()
                .parse::<u32>()
                .with_context(|| format!("bad {key} {value:?}"))
        };
        match key.trim() {
            "offset" => offset = Some(number()?),
            "size" => size = Some(number()?),
            "signed" => signed = number()? != 0,
            _ => {} // newer kernels may add keys; they do not change the layout
        }
    }
    let (c_type, name, array_len) = split_declaration(decl)?;
    Ok(Field {
        c_type,
        name,
        offset: offset.ok_or_else(|| anyhow!("no offset"))?,
        size: size.ok_or_else(|| anyhow!("no size"))?,
        signed,
        array_len,
    })
}

/// `__u8 saddr[28]` → (`__u8`, `saddr`, Some(28)); `const void * skaddr` → (`const void *`, ...).
fn split_declaration(decl: &str) -> Result<(String, String, Option<u32>)> {
    let (head, array_len) = match decl.strip_suffix(']').and_then(|d| d.rsplit_once('[')) {
        // Some kernels print the length unexpanded (`[sizeof(struct sockaddr_in6)]`).
        Some((head, len)) => (head, len.trim().parse().ok()),
        None => (decl, None),
    };
    let head = head.trim_end();
    // Past the last character that cannot be in a C identifier, whatever its width in UTF-8.
    let start = head
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let (c_type, name) = (head[..start].trim(), &head[start..]);
    if name.is_empty() || c_type.is_empty() {
        bail!("cannot split {decl:?} into a type and a name");
    }
    Ok((c_type.to_string(), name.to_string(), array_len))
}

/// The `{ value, "NAME" }` table of `__print_symbolic(REC-><field>, ...)` in a print fmt.
/// Entries whose value the kernel left symbolic (`{ TCP_ESTABLISHED, "..." }`) are skipped;
/// a malformed table yields what was read before the damage.
pub fn symbolic_values(print_fmt: &str, field: &str) -> Vec<(i64, String)> {
    const CALL: &str = "__print_symbolic(";
    let want = format!("REC->{field}");
    let mut out = Vec::new();
    let mut rest = print_fmt;
    while let Some(pos) = rest.find(CALL) {
        rest = &rest[pos + CALL.len()..];
        let Some((arg, table)) = rest.split_once(',') else {
            break;
        };
        if arg.trim().trim_matches(|c| c == '(' || c == ')') == want {
            parse_table(table, &mut out);
        }
    }
    out
}

fn parse_table(mut s: &str, out: &mut Vec<(i64, String)>) {
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        let Some(entry) = s.strip_prefix('{') else {
            return;
        }; // `)` ends the table
        let Some((value, after)) = entry.split_once(',') else {
            return;
        };
        let Some((name, after)) = string_literal(after.trim_start()) else {
            return;
        };
        let Some(after) = after.trim_start().strip_prefix('}') else {
            return;
        };
        if let Some(v) = parse_int(value.trim()) {
            out.push((v, name));
        }
        s = after;
    }
}

/// A C string literal at the start of `s`, and the text after it.
fn string_literal(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &body[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

fn parse_int(s: &str) -> Option<i64> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d.trim_start()),
        None => (false, s),
    };
    let v = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    Some(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_618: &str = include_str!("fixtures/6.18/tcp_send_reset.format");
    const SEND_61: &str = include_str!("fixtures/6.1/tcp_send_reset.format");

    #[test]
    fn parses_the_6_18_send_reset() {
        let f = parse_format(SEND_618).unwrap();
        assert_eq!(f.name, "tcp_send_reset");
        assert_eq!(f.id, 2280);
        assert_eq!(f.fields.len(), 10);
        let skb = f.field("skbaddr").unwrap();
        assert_eq!(
            (skb.c_type.as_str(), skb.offset, skb.size, skb.signed),
            ("const void *", 8, 8, false)
        );
        let reason = f.field("reason").unwrap();
        assert_eq!(
            (reason.c_type.as_str(), reason.offset, reason.size),
            ("enum sk_rst_reason", 28, 4)
        );
        let saddr = f.field("saddr").unwrap();
        assert_eq!(
            (saddr.c_type.as_str(), saddr.offset, saddr.array_len),
            ("__u8", 32, Some(28))
        );
        assert!(f.field("state").unwrap().signed);
        assert_eq!(f.field("common_pid").unwrap().offset, 4);
        assert!(f.print_fmt.starts_with("\"skbaddr=%p"));
    }

    #[test]
    fn parses_the_6_1_send_reset() {
        let f = parse_format(SEND_61).unwrap();
        assert!(f.field("reason").is_none());
        assert_eq!(f.field("state").unwrap().offset, 24);
        assert_eq!(f.field("family").unwrap().offset, 32);
        assert_eq!(f.field("daddr_v6").unwrap().array_len, Some(16));
    }

    #[test]
    fn reads_the_reason_table_of_6_18() {
        let f = parse_format(SEND_618).unwrap();
        let table = symbolic_values(&f.print_fmt, "reason");
        assert_eq!(table.len(), 26);
        assert_eq!(table[0], (0, "NOT_SPECIFIED".to_string()));
        assert_eq!(table[1], (1, "NO_SOCKET".to_string()));
        assert!(table.contains(&(14, "TCP_STATE".to_string())));
        assert_eq!(table[25], (25, "MAX".to_string()));
        // The state table names its values with macros the kernel did not expand.
        assert!(symbolic_values(&f.print_fmt, "state").is_empty());
        assert!(symbolic_values(&f.print_fmt, "nonexistent").is_empty());
    }

    #[test]
    fn symbolic_values_tolerate_odd_text() {
        let fmt = r#""%s", __print_symbolic(REC->x, { 0x10, "A\"B" }, { -2, "NEG" }, { 3, "C"#;
        assert_eq!(
            symbolic_values(fmt, "x"),
            vec![(16, "A\"B".into()), (-2, "NEG".into())]
        );
        assert!(symbolic_values("__print_symbolic(", "x").is_empty());
    }

    #[test]
    fn splits_declarations() {
        let s = |d| split_declaration(d).unwrap();
        assert_eq!(s("int state"), ("int".into(), "state".into(), None));
        assert_eq!(s("__u8 saddr[sizeof(struct sockaddr_in6)]").2, None);
        assert_eq!(
            s("__data_loc char[] name"),
            ("__data_loc char[]".into(), "name".into(), None)
        );
        assert!(split_declaration("state").is_err());
    }

    #[test]
    fn malformed_files_are_errors() {
        for text in [
            "",
            "name: x\nformat:\n",
            "name: x\nID: 1\nformat:\n",
            "name: x\nID: one\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n",
            "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:eight;\tsize:4;\tsigned:1;\n",
            "name: x\nID: 1\nformat:\n\tfield:int a;\tsize:4;\tsigned:1;\n",
            "name: x\nID: 1\nformat:\n\tfield:a;\toffset:8;\tsize:4;\tsigned:1;\n",
            "name: x\nID: 1\nformat:\n\tfield:int a;\toffset 8;\n",
        ] {
            assert!(parse_format(text).is_err(), "accepted {text:?}");
        }
        // A file cut anywhere (a racing read, a damaged fixture) must never panic.
        for end in (0..SEND_618.len()).filter(|&i| SEND_618.is_char_boundary(i)) {
            if let Ok(f) = parse_format(&SEND_618[..end]) {
                symbolic_values(&f.print_fmt, "reason");
            }
        }
    }
}
