//! Hand-made TCP segments sent through a raw IPv4 socket, for resets only an unexpected segment
//! provokes; loopback only.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// One's-complement sum of 16-bit big-endian words (RFC 1071), not yet inverted.
fn csum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for w in &mut chunks {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A bare 20-byte IPv4 TCP header (no options) with a correct checksum over the pseudo-header.
pub fn tcp_segment_v4(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, ack: u32, flags: u8) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&src.port().to_be_bytes());
    h[2..4].copy_from_slice(&dst.port().to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[12] = 5 << 4; // data offset: 5 words
    h[13] = flags;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes()); // window
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&(h.len() as u16).to_be_bytes());
    let sum = csum_fold(csum_add(csum_add(0, &pseudo), &h));
    h[16..18].copy_from_slice(&sum.to_be_bytes());
    h
}

pub const TCP_FLAG_SYN: u8 = 0x02;

/// Send one hand-made TCP segment from `src` to `dst` through a raw IPv4 socket (the kernel adds
/// the IP header; the source address must be one the kernel would pick for `dst`, i.e. 127.0.0.1
/// on loopback). Only for loopback inside a scenario's namespace.
pub fn send_raw_tcp_v4(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, flags: u8) -> Result<()> {
    ensure_loopback(*src.ip())?;
    ensure_loopback(*dst.ip())?;
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP)).context("raw socket")?;
    let seg = tcp_segment_v4(src, dst, seq, 0, flags);
    let n = raw
        .send_to(&seg, &SockAddr::from(SocketAddrV4::new(*dst.ip(), 0)))
        .context("raw sendto")?;
    if n != seg.len() {
        bail!("raw sendto: {n} of {} bytes", seg.len());
    }
    Ok(())
}

fn ensure_loopback(ip: Ipv4Addr) -> Result<()> {
    if !ip.is_loopback() {
        bail!("{ip} is not a loopback address");
    }
    Ok(())
}
