//! Idempotent installation of the toolchain pieces a fresh machine lacks. Each step checks first
//! and says what it does; nothing is reinstalled when present.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The bpf-linker release we build against Debian's LLVM 22 packages to link the eBPF object.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
];
/// What the integration tests drive: `ip` and `ss` (network namespaces, socket kills), tmux (the
/// trace view in a real terminal), nft (a firewall REJECT), unshare and setpriv (hardening).
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("tmux", "tmux"),
    ("nft", "nftables"),
    ("unshare", "util-linux"),
    ("setpriv", "util-linux"),
];

pub fn say(what: &str) {
    eprintln!("xtask: {what}");
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

pub fn ensure_build_tools() -> anyhow::Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()
}

/// The real applications `tests/tests/apps.rs` drives (nginx, redis, haproxy, a JVM client on
/// Debian's Apache HttpClient, curl): `<file> <package>` lines, shared with the suite.
const APP_PACKAGES: &str = include_str!("../../tests/src/apps/packages.txt");

pub fn ensure_test_tools() -> anyhow::Result<()> {
    for (tool, package) in TEST_PACKAGES {
        if !on_path(tool) {
            apt_install(&[package])?;
        }
    }
    let missing: Vec<&str> = APP_PACKAGES
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(' '))
        .filter(|(file, _)| !std::path::Path::new(file).exists())
        .map(|(_, package)| package)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    Ok(())
}

/// The toolchain aya-build builds the eBPF crate with (rstwatch/build.rs: `Toolchain::Nightly`).
pub const EBPF_TOOLCHAIN: &str = "nightly";

fn ensure_rust_src() -> anyhow::Result<()> {
    ensure_components(
        Some(EBPF_TOOLCHAIN),
        &["rust-src"],
        "build-std for bpfel-unknown-none",
    )
}

/// rustfmt and clippy for the gates: the toolchain running xtask checks the userspace crates,
/// the eBPF toolchain checks the eBPF crate.
pub fn ensure_lint_tools() -> anyhow::Result<()> {
    ensure_components(None, &["rustfmt", "clippy"], "the formatting and lint gates")?;
    ensure_components(Some(EBPF_TOOLCHAIN), &["clippy"], "the eBPF lint gate")
}

/// `toolchain` None is the one in use here (rustup's override for this directory, or the default).
fn ensure_components(toolchain: Option<&str>, components: &[&str], why: &str) -> anyhow::Result<()> {
    let mut list = vec!["component", "list", "--installed"];
    list.extend(toolchain.map(|name| ["--toolchain", name]).into_iter().flatten());
    let installed = output("rustup", &list).context("rustup is needed to install toolchain components")?;
    let missing = missing_components(&installed, components);
    if missing.is_empty() {
        return Ok(());
    }
    let on = toolchain.unwrap_or("the current toolchain");
    say(&format!("installing {} for {on} ({why})", missing.join(", ")));
    let mut add = vec!["component", "add"];
    add.extend(&missing);
    add.extend(toolchain.map(|name| ["--toolchain", name]).into_iter().flatten());
    run("rustup", &add)
}

/// `installed` is `rustup component list --installed`: `clippy-x86_64-unknown-linux-gnu`, or bare
/// (`rust-src`).
fn missing_components<'a>(installed: &str, components: &[&'a str]) -> Vec<&'a str> {
    components
        .iter()
        .copied()
        .filter(|component| {
            !installed.lines().any(|line| {
                line.strip_prefix(component)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
            })
        })
        .collect()
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", path_with_cargo_bin())
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    if current
        .as_deref()
        .is_some_and(|version| version.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    let missing: Vec<&str> = LLVM_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    say(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes, once)"
    ));
    let path = format!("/usr/lib/llvm-22/bin:{}", path_with_cargo_bin().to_string_lossy());
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed ({status}); see its output above");
    }
    Ok(())
}

pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !is_root() {
        bail!("missing Debian packages {packages:?}: run as root, or install them with apt-get");
    }
    say(&format!("installing Debian packages: {}", packages.join(" ")));
    run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run("apt-get", &args)
}

pub fn dpkg_installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_ok_and(|status| status.contains("install ok installed"))
}

pub fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// PATH with ~/.cargo/bin first, where `cargo install` puts bpf-linker.
pub fn path_with_cargo_bin() -> OsString {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let mut paths = vec![home.join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}

pub fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_components_from_rustup_list() {
        let installed = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n\
                         rustfmt-x86_64-unknown-linux-gnu\n";
        assert_eq!(
            super::missing_components(installed, &["rust-src", "rustfmt", "clippy"]),
            ["clippy"]
        );
        assert_eq!(super::missing_components("", &["rust-src"]), ["rust-src"]);
    }
}
