//! Reading the configuration and kernel memory at offsets that are only known at load time.
//!
//! Two ways to read a kernel struct, one per kind of program:
//! - `Btf` (tp_btf programs): the kernel hands them typed pointers, so a field is one plain load
//!   that the verifier checks against BTF. The offsets come from `CONFIG`, which lives in
//!   `.rodata`: aya freezes that map read-only, so the verifier treats every offset as a known
//!   constant and accepts `pointer + offset`. No helper call per field.
//! - `Probe` (classic tracepoints, kprobes): pointers are plain numbers there, so every field
//!   costs a `bpf_probe_read_kernel`.

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_probe_read_kernel,
        generated::{
            self, bpf_get_current_task, bpf_get_current_task_btf, bpf_skc_to_tcp_sock,
            bpf_skc_to_tcp_timewait_sock,
        },
    },
    programs::TracePointContext,
};
use rstwatch_common::{Config, FieldOffset};

/// Written by the daemon before load (`EbpfLoader::override_global`).
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

/// How a program reads kernel structs (see the module comment). Pointers travel as `u64`.
pub trait Kernel {
    /// `T` at `base + offset`; zero when it cannot be read.
    fn read<T: Copy + Default>(base: u64, offset: u16) -> T;
    /// The `tcp_sock` behind a socket pointer, or 0 when it is not a full TCP socket.
    fn tcp_sock(sk: u64) -> u64;
    /// The time-wait socket behind a socket pointer, or 0.
    fn timewait_sock(sk: u64) -> u64;
    /// The current task, as a pointer `read` can follow.
    fn current_task() -> u64;
    /// The current thread's name, as two words (zero-padded by the kernel).
    fn current_comm() -> [u64; 2];
    /// An address (16 bytes, or the first 4 for IPv4) at `base + offset` into `dst`. A plain
    /// `read::<[u8; 16]>` is sixteen byte loads and stores, with spills.
    fn read_address(base: u64, offset: u16, dst: &mut [u8; 16], len: Address);
}

/// How much of an address to read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Address {
    V4,
    V6,
}

pub struct Btf;
pub struct Probe;

impl Kernel for Btf {
    #[inline(always)]
    fn read<T: Copy + Default>(base: u64, offset: u16) -> T {
        // A faulting BTF load yields zero (the JIT's exception table), like a failed probe read.
        unsafe { core::ptr::read_volatile((base + offset as u64) as *const T) }
    }

    #[inline(always)]
    fn tcp_sock(sk: u64) -> u64 {
        unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) as u64 }
    }

    #[inline(always)]
    fn timewait_sock(sk: u64) -> u64 {
        unsafe { bpf_skc_to_tcp_timewait_sock(sk as *mut c_void) as u64 }
    }

    /// Typed, so its fields (and the leader's) are plain loads too.
    #[inline(always)]
    fn current_task() -> u64 {
        unsafe { bpf_get_current_task_btf() as u64 }
    }

    /// Two loads: the helper copied it byte by byte (`strscpy_pad`), about a tenth of what a
    /// connection's birth cost.
    #[inline(always)]
    fn current_comm() -> [u64; 2] {
        task_comm::<Self>(Self::current_task())
    }

    /// Word loads: the verifier allows any aligned access inside the address's byte array.
    #[inline(always)]
    fn read_address(base: u64, offset: u16, dst: &mut [u8; 16], len: Address) {
        let dst = dst.as_mut_ptr();
        unsafe {
            if len == Address::V6 {
                (dst as *mut u64).write_unaligned(Self::read::<u64>(base, offset));
                (dst.add(8) as *mut u64).write_unaligned(Self::read::<u64>(base, offset + 8));
            } else {
                (dst as *mut u32).write_unaligned(Self::read::<u32>(base, offset));
            }
        }
    }
}

impl Kernel for Probe {
    /// No branch on the helper's result: it zero-fills the destination when the read fails,
    /// and a branch per field multiplies the paths the verifier walks.
    #[inline(always)]
    fn read<T: Copy + Default>(base: u64, offset: u16) -> T {
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        unsafe {
            generated::bpf_probe_read_kernel(
                value.as_mut_ptr() as *mut c_void,
                core::mem::size_of::<T>() as u32,
                (base + offset as u64) as *const c_void,
            );
            value.assume_init()
        }
    }

    /// The caller already knows from the state that this is a full socket.
    #[inline(always)]
    fn tcp_sock(sk: u64) -> u64 {
        sk
    }

    #[inline(always)]
    fn timewait_sock(sk: u64) -> u64 {
        sk
    }

    #[inline(always)]
    fn current_task() -> u64 {
        unsafe { bpf_get_current_task() }
    }

    /// One helper call instead of two reads through `current_task`.
    #[inline(always)]
    fn current_comm() -> [u64; 2] {
        let mut comm = [0u64; 2];
        unsafe { generated::bpf_get_current_comm(comm.as_mut_ptr() as *mut c_void, 16) };
        comm
    }

    /// One helper call, straight into the destination.
    #[inline(always)]
    fn read_address(base: u64, offset: u16, dst: &mut [u8; 16], len: Address) {
        let addr = base + offset as u64;
        if len == Address::V6 {
            probe_into(dst, addr);
        } else {
            probe_into(dst.as_mut_ptr() as *mut [u8; 4], addr);
        }
    }
}

/// `*dst` from kernel memory at `addr`, through the helper; false (and zeros) when unreadable.
/// Straight into the destination: an `Option` on the way makes LLVM zero and copy it byte by byte.
#[inline(always)]
pub fn probe_into<T>(dst: *mut T, addr: u64) -> bool {
    unsafe {
        generated::bpf_probe_read_kernel(dst as *mut c_void, size_of::<T>() as u32, addr as *const c_void)
            == 0
    }
}

/// A task's name, as two words.
#[inline(always)]
pub fn task_comm<K: Kernel>(task: u64) -> [u64; 2] {
    [
        K::read::<u64>(task, conf!(task_comm)),
        K::read::<u64>(task, conf!(task_comm) + 8),
    ]
}

/// A name as the two words `Kernel::current_comm` gives, into a 16-byte array that is 8-byte
/// aligned (every comm field of the wire structs is).
#[inline(always)]
pub fn store_comm(dst: &mut [u8; 16], words: [u64; 2]) {
    let dst = dst.as_mut_ptr() as *mut u64;
    unsafe {
        *dst = words[0];
        *dst.add(1) = words[1];
    }
}

/// A value in kernel memory at `base + offset`, through the helper: for memory that no typed
/// pointer reaches (packet bytes, another task), in any kind of program.
#[inline(always)]
pub fn probe<T>(base: u64, offset: u16) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}
