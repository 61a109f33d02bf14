//! rstwatch's kernel side: tracepoint programs that turn every TCP reset into an exact in-kernel
//! count (keyed by the facts the classifier needs) and an event with the details, remember who
//! owns each connection, and notice what the firewall injected and what the applications got.
//!
//! Nothing here knows one kernel's layout: every tracepoint field and struct member offset comes
//! from `CONFIG`, which the daemon fills from tracefs and BTF before loading.
#![no_std]
#![no_main]
// aya-ebpf's map methods take `impl Borrow<K>`: a key or value passed by value is a copy on a
// 512-byte stack the reset programs already fill. References are the point here.
#![allow(clippy::needless_borrows_for_generic_args)]

mod clock;
mod conn;
mod count;
mod errors;
mod maps;
mod read;
mod reset;
mod segment;
mod socket;
mod words;

use aya_ebpf::{
    macros::{btf_tracepoint, kprobe, tracepoint},
    programs::{BtfTracePointContext, ProbeContext, TracePointContext},
};

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn rstwatch_send_reset(ctx: TracePointContext) -> u32 {
    let _ = reset::on_send_reset(&ctx);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn rstwatch_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = reset::on_receive_reset(&ctx);
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn rstwatch_set_state(ctx: TracePointContext) -> u32 {
    let _ = conn::on_set_state(&ctx);
    0
}

#[tracepoint(category = "sock", name = "inet_sk_error_report")]
pub fn rstwatch_error_report(ctx: TracePointContext) -> u32 {
    let _ = errors::on_error_report(&ctx);
    0
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn rstwatch_kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = errors::on_kfree_skb(&ctx);
    0
}

// The same hooks as BTF tracepoints (tp_btf): the daemon prefers these where the kernel allows
// them, because the kernel then skips formatting a trace record for every event.

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn rstwatch_send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = reset::on_send_reset_btf(&ctx);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn rstwatch_receive_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = reset::on_receive_reset_btf(&ctx);
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn rstwatch_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = conn::on_set_state_btf(&ctx);
    0
}

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn rstwatch_error_report_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = errors::on_error_report_btf(&ctx);
    0
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn rstwatch_kfree_skb_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = errors::on_kfree_skb_btf(&ctx);
    0
}

// Before 6.10 tcp_send_reset fires only for full sockets: resets sent for a segment that met no
// socket, or a time-wait one, are only seen entering tcp_v4/v6_send_reset. The daemon attaches
// these only on such kernels (and where kprobes exist), so nothing is counted twice.

#[kprobe(function = "tcp_v4_send_reset")]
pub fn rstwatch_v4_send_reset_kprobe(ctx: ProbeContext) -> u32 {
    let _ = reset::on_send_reset_kprobe(&ctx);
    0
}

#[kprobe(function = "tcp_v6_send_reset")]
pub fn rstwatch_v6_send_reset_kprobe(ctx: ProbeContext) -> u32 {
    let _ = reset::on_send_reset_kprobe(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
