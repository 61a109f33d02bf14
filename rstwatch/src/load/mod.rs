//! Stage 1, load: what the running kernel offers (`kernel`: tracefs formats, BTF, clock), the eBPF
//! programs loaded and attached (`attach`, from the probe table in `rstwatch_common::probes`), the
//! permissions that takes (`privileges`), and the kernel's maps and program statistics read back
//! (`map_batch`, `prog_stats`).

pub mod attach;
pub mod kernel;
pub mod map_batch;
pub mod privileges;
pub mod prog_stats;
