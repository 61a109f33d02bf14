//! Reading a whole per-CPU hash map with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+): a few system calls
//! for the count maps instead of two per key (`get_next_key`, then `lookup`), which made a scrape
//! with 16k keys take ~80 ms (issue 12). aya 0.14 has no batch operations; the UAPI `bpf_attr`
//! member is append-only, so the layout below is stable. Kernels without them get the per-key walk.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::sync::atomic::{AtomicBool, Ordering};

use aya::Pod;
use aya::maps::{IterableMap as _, MapData, PerCpuHashMap};

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Keys per system call: 64 kB of buffers for the count maps' keys and two CPUs' values.
const BATCH: usize = 1024;
/// The kernel's ENOTSUPP (not a userspace errno), returned for map types without batch support.
const ENOTSUPP: i32 = 524;

/// Set once the kernel has refused batch lookups, so that later scrapes walk the keys directly.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Calls `each` with every key of `map` and its values summed over CPUs (wrapping: per-CPU
/// slots may individually wrap below zero, their sum is the true count).
pub fn for_each_total<K: Pod>(
    map: &PerCpuHashMap<MapData, K, u64>,
    mut each: impl FnMut(K, u64),
) -> anyhow::Result<()> {
    if !UNSUPPORTED.load(Ordering::Relaxed) {
        match lookup_batches(map.map(), &mut each) {
            Ok(()) => return Ok(()),
            Err(BatchError::Unsupported) => {
                log::debug!("BPF_MAP_LOOKUP_BATCH is not supported here; reading maps key by key");
                UNSUPPORTED.store(true, Ordering::Relaxed);
            }
            // Keys may already have been handed to `each`: walking the map now would count them twice.
            Err(BatchError::Other(err)) => return Err(err),
        }
    }
    for entry in map.iter() {
        let (key, per_cpu) = entry?;
        each(
            key,
            per_cpu.iter().fold(0u64, |sum, value| sum.wrapping_add(*value)),
        );
    }
    Ok(())
}

enum BatchError {
    /// The kernel has no batch operations (before 5.6) or none for this map; nothing was read.
    Unsupported,
    Other(anyhow::Error),
}

fn lookup_batches<K: Pod>(map: &MapData, each: &mut impl FnMut(K, u64)) -> Result<(), BatchError> {
    let cpus =
        aya::util::nr_cpus().map_err(|(what, err)| BatchError::Other(anyhow::anyhow!("{what}: {err}")))?;
    // SAFETY: K is Pod: plain bytes, for which all zeroes is a value.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; BATCH];
    // Per-CPU values come as one 8-byte-aligned slot per possible CPU.
    let mut values = vec![0u64; BATCH * cpus];
    // The position token is a bucket index for hash maps; the kernel wants room for a key.
    let mut token = vec![0u8; size_of::<K>().max(8)];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the buffers hold `count` keys and `count * cpus` values and outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let errno = (ret < 0).then(std::io::Error::last_os_error);
        // ENOENT: the last batch (possibly with keys in it).
        let done = errno.as_ref().and_then(std::io::Error::raw_os_error) == Some(libc::ENOENT);
        if let Some(err) = errno.filter(|_| !done) {
            let code = err.raw_os_error().unwrap_or(0);
            if first && matches!(code, libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP) {
                return Err(BatchError::Unsupported);
            }
            return Err(BatchError::Other(
                anyhow::Error::new(err).context("BPF_MAP_LOOKUP_BATCH"),
            ));
        }
        for (key, per_cpu) in keys
            .iter()
            .zip(values.chunks_exact(cpus))
            .take(attr.count as usize)
        {
            each(
                *key,
                per_cpu.iter().fold(0u64, |sum, value| sum.wrapping_add(*value)),
            );
        }
        if done {
            return Ok(());
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_matches_the_uapi_layout() {
        // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32; elem_flags, flags: u64 }
        assert_eq!(size_of::<BatchAttr>(), 56);
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, elem_flags), 40);
    }
}
