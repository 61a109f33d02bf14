//! What the kernel reports about each of our programs: how often it skipped one (a tracing
//! program does not run when another BPF tracing program is already running on that CPU: an
//! interrupt arriving during one of ours, or another tool's kprobe; a skipped reset program is a
//! reset nobody counted, so it is exported instead of ignored), and, while
//! `kernel.bpf_stats_enabled=1`, how often it ran and for how long: rstwatch's own cost.
//! aya 0.14 does not expose these fields; the UAPI struct is append-only, so its prefix is stable.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::Context as _;
use aya::programs::ProgramFd;

/// `struct bpf_prog_info` up to `recursion_misses` (include/uapi/linux/bpf.h, since 5.12).
#[repr(C)]
#[derive(Default)]
struct ProgInfoPrefix {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
}

/// The `info` member of `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// A program's totals since it was loaded (runs and run time stay 0 without bpf_stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub recursion_misses: u64,
}

pub fn read(fd: &ProgramFd) -> anyhow::Result<ProgStats> {
    let mut info = ProgInfoPrefix::default();
    let attr = InfoByFdAttr {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: size_of::<ProgInfoPrefix>() as u32,
        info: &mut info as *mut ProgInfoPrefix as u64,
    };
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoByFdAttr,
            size_of::<InfoByFdAttr>() as u32,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET_INFO_BY_FD");
    }
    Ok(ProgStats {
        run_cnt: info.run_cnt,
        run_time_ns: info.run_time_ns,
        recursion_misses: info.recursion_misses,
    })
}
