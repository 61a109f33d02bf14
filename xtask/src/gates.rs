//! The gates `cargo xtask test` runs before the long suites: formatting, then clippy with
//! `-D warnings` on the userspace crates and, separately, on the eBPF crate. Each prints the
//! tool's own findings, then fails with one line naming the gate and the command to run.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::setup;

const FMT: &[&str] = &["fmt", "--all", "--check"];
const CLIPPY_USERSPACE: &[&str] = &[
    "clippy",
    "--workspace",
    "--exclude",
    "rstwatch-ebpf",
    "--release",
    "--all-targets",
    "--",
    "-D",
    "warnings",
];
/// The eBPF crate checked the way aya-build (rstwatch/build.rs) builds it: nightly, for
/// bpfel-unknown-none, with core built from rust-src. aya-ebpf's own build script supplies the
/// `bpf_target_arch` cfg from the host, so no RUSTFLAGS are needed for a check.
const CLIPPY_EBPF: &[&str] = &[
    "clippy",
    "-p",
    "rstwatch-ebpf",
    "--target",
    "bpfel-unknown-none",
    "-Z",
    "build-std=core",
    "--release",
    "--",
    "-D",
    "warnings",
];

pub fn run(root: &Path) -> anyhow::Result<()> {
    setup::say("gate: formatting (cargo fmt --all --check)");
    gate(
        crate::cargo_command(root, FMT, &[]),
        "formatting",
        "run `cargo fmt --all` to format the tree",
    )?;
    setup::say("gate: clippy on the userspace crates");
    gate(
        crate::cargo_command(root, CLIPPY_USERSPACE, &[]),
        "clippy (userspace)",
        &reproduce(&format!("cargo {}", CLIPPY_USERSPACE.join(" "))),
    )?;
    setup::say("gate: clippy on the eBPF crate (nightly, bpfel-unknown-none)");
    let toolchain = setup::EBPF_TOOLCHAIN;
    gate(
        ebpf_clippy(root),
        "clippy (eBPF)",
        &reproduce(&format!("cargo +{toolchain} {}", CLIPPY_EBPF.join(" "))),
    )
}

fn reproduce(command: &str) -> String {
    format!("reproduce with `{command}` and fix what it reports")
}

/// `rustup run nightly cargo`, as aya-build does: `cargo xtask` runs under the stable cargo,
/// whose `RUSTC` would otherwise leak into the nightly build.
fn ebpf_clippy(root: &Path) -> Command {
    let mut command = Command::new("rustup");
    command
        .current_dir(root)
        .args(["run", setup::EBPF_TOOLCHAIN, "cargo"])
        .args(CLIPPY_EBPF)
        .env("PATH", setup::path_with_cargo_bin())
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    command
}

fn gate(mut command: Command, name: &str, hint: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("gate {name}: starting {command:?}"))?;
    if !status.success() {
        bail!("gate {name} failed ({status}): {hint}");
    }
    Ok(())
}
