//! Reading the configuration and kernel memory at offsets that are only known at load time.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TracePointContext};
use rstwatch_common::{Config, FieldOffset};

/// Written by the daemon before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config::UNSET;

/// Read one `CONFIG` field. Volatile, so the compiler cannot fold in the `UNSET` placeholder.
macro_rules! conf {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::read::CONFIG.$field) }
    };
}
pub(crate) use conf;

/// A field of the tracepoint record, at an offset taken from tracefs.
#[inline(always)]
pub fn tp_field<T>(ctx: &TracePointContext, offset: FieldOffset) -> Option<T> {
    if offset < 0 {
        return None;
    }
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// A value in kernel memory at `base + offset` (offsets from BTF).
#[inline(always)]
pub fn kernel<T>(base: u64, offset: u16) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}
