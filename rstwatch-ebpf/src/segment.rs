//! The segment a passive reset answers. `skb->data` points at the TCP header on every path that
//! calls tcp_v4/v6_send_reset; the IP header is at `skb->head + skb->network_header`.

use rstwatch_common::{AF_INET, AF_INET6, ResetEvent, fact};

use crate::read::{conf, kernel};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The segment's RST flag: the kernel never answers a reset with a reset.
#[inline(always)]
pub fn is_reset(skb: u64) -> bool {
    let Some(data) = kernel::<u64>(skb, conf!(skb_data)) else { return false };
    kernel::<u8>(data, 13).is_some_and(|flags| flags & TCP_RST != 0)
}

#[inline(always)]
pub fn describe_trigger(ev: &mut ResetEvent, skb: u64) {
    let Some(data) = kernel::<u64>(skb, conf!(skb_data)) else { return };
    let Some(tcp) = kernel::<[u8; 16]>(data, 0) else { return };
    let len = kernel::<u32>(skb, conf!(skb_len)).unwrap_or(0);

    let flags = tcp[13];
    let header_len = ((tcp[12] >> 4) as u32) * 4;
    ev.trigger_flags = flags;
    ev.trigger_payload = len.saturating_sub(header_len);
    ev.key.facts |= fact::TRIGGER;
    if flags & TCP_SYN != 0 {
        ev.key.facts |= fact::TRIGGER_SYN;
    }
    if flags & TCP_ACK != 0 {
        ev.key.facts |= fact::TRIGGER_ACK;
    }
    if flags & TCP_FIN != 0 {
        ev.key.facts |= fact::TRIGGER_FIN;
    }
    if ev.trigger_payload != 0 {
        ev.key.facts |= fact::TRIGGER_PAYLOAD;
    }
    // The segment came from the peer: its source is our remote end.
    ev.remote_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    ev.local_port = u16::from_be_bytes([tcp[2], tcp[3]]);

    let head = kernel::<u64>(skb, conf!(skb_head)).unwrap_or(0);
    let network_header = kernel::<u16>(skb, conf!(skb_network_header)).unwrap_or(0);
    let ip = head + network_header as u64;
    let Some(version) = kernel::<u8>(ip, 0) else { return };
    if version >> 4 == 6 {
        ev.family = AF_INET6;
        ev.remote_addr = kernel::<[u8; 16]>(ip, 8).unwrap_or([0; 16]);
        ev.local_addr = kernel::<[u8; 16]>(ip, 24).unwrap_or([0; 16]);
    } else {
        ev.family = AF_INET;
        let remote = kernel::<[u8; 4]>(ip, 12).unwrap_or([0; 4]);
        let local = kernel::<[u8; 4]>(ip, 16).unwrap_or([0; 4]);
        ev.remote_addr[..4].copy_from_slice(&remote);
        ev.local_addr[..4].copy_from_slice(&local);
    }
}
