//! The segment a passive reset answers. `skb->data` points at the TCP header on every path that
//! calls tcp_v4/v6_send_reset; the IP header is at `skb->head + skb->network_header`.

use rstwatch_common::{AF_INET, AF_INET6, ResetEvent, fact};

use crate::read::{Kernel, conf, probe, probe_into};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The segment's RST flag: the kernel never answers a reset with a reset.
#[inline(always)]
pub fn is_reset<K: Kernel>(skb: u64) -> bool {
    let data = K::read::<u64>(skb, conf!(skb_data));
    probe::<u8>(data, 13).is_some_and(|flags| flags & TCP_RST != 0)
}

/// The packet bytes are behind plain `unsigned char *` pointers, which BTF does not type: those
/// are read with the helper whatever the program. The IP addresses only go into the event:
/// `addresses` is false when there is no event to fill.
#[inline(always)]
pub fn describe_trigger<K: Kernel>(ev: &mut ResetEvent, skb: u64, addresses: bool) {
    let data = K::read::<u64>(skb, conf!(skb_data));
    // Uninitialised: the helper fills it (with zeros when it fails), and `[0; 2]` would be a
    // call to a byte-loop memset.
    let mut header = core::mem::MaybeUninit::<[u8; 16]>::uninit();
    if !probe_into(header.as_mut_ptr(), data) {
        return;
    }
    let tcp = unsafe { header.assume_init_ref() };
    let len = K::read::<u32>(skb, conf!(skb_len));

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
    if !addresses {
        return;
    }

    let head = K::read::<u64>(skb, conf!(skb_head));
    let network_header = K::read::<u16>(skb, conf!(skb_network_header));
    let ip = head + network_header as u64;
    let mut version = 0u8;
    if !probe_into(&mut version, ip) {
        return;
    }
    if version >> 4 == 6 {
        ev.family = AF_INET6;
        probe_into(&mut ev.remote_addr, ip + 8);
        probe_into(&mut ev.local_addr, ip + 24);
    } else {
        ev.family = AF_INET;
        probe_into(ev.remote_addr.as_mut_ptr() as *mut [u8; 4], ip + 12);
        probe_into(ev.local_addr.as_mut_ptr() as *mut [u8; 4], ip + 16);
    }
}
