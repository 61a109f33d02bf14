//! The one HTTP client of the tests: GET over loopback (the daemon's `/metrics` and `/healthz`,
//! Prometheus's API). A std-only HTTP/1.1 client with `Connection: close` is all these servers
//! need, and it keeps the crate free of a TLS-capable client it would never use.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Status and body of an answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// GET `path` (Content-Length, chunked, or read-to-EOF bodies), whatever the status.
pub fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect {addr}"))?;
    // Prometheus evaluates a query before it answers: give it longer than the daemon needs.
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json, text/plain\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("read response")?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok(Response {
        status,
        body: String::from_utf8(body).context("body is not UTF-8")?,
    })
}

/// GET `path`; the body if the status is 200, an error naming the status otherwise.
pub fn get_ok(addr: SocketAddr, path: &str) -> Result<String> {
    let r = get(addr, path)?;
    if r.status != 200 {
        bail!("GET {path}: HTTP {}", r.status);
    }
    Ok(r.body)
}

/// Percent-encoding of a query parameter (RFC 3986 unreserved characters kept).
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk header")?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunks_and_encodes() {
        assert_eq!(
            super::dechunk(b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert_eq!(super::urlencode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
    }
}
