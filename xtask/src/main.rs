//! Developer commands: `cargo xtask run` (set up, build, run the daemon) and `cargo xtask test`
//! (set up, build, run every test). Set-up is idempotent: it installs only what is missing.

mod bench;
mod gates;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "rstwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and the lint gates need (nightly rust-src, LLVM 22, bpf-linker,
    /// rustfmt and clippy), if missing.
    Setup,
    /// Set up, build the release binary and run `rstwatch run` with the given arguments.
    Run {
        /// Arguments for `rstwatch run`, after `--` (e.g. `-- --metrics-addr 0.0.0.0:9977`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then the gates (rustfmt, clippy on the userspace and the eBPF crates), then every
    /// test: unit tests, then the root integration tests against real resets and the real binary.
    Test {
        /// Extra arguments for the test harness (after `--`), e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Only the gates `test` starts with: rustfmt, clippy on the userspace and the eBPF crates.
    Lint,
    /// Benchmark on a reset storm and on ordinary connections: rate and CPU per operation bare,
    /// with rstwatch and with bpftrace, daemon CPU/RSS, BPF ns per reset and per connection, exact
    /// counts (see README "Performance").
    Bench(bench::Options),
    /// The reset scenarios on Debian's 6.1 and 6.12 kernels under qemu and on the host kernel:
    /// which probes attached, and per scenario the cause rstwatch reported vs the expected one.
    VmTest(vm::Options),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = workspace_root();
    match cli.command {
        Task::Setup => {
            setup::ensure_build_tools()?;
            setup::ensure_lint_tools()
        }
        Task::Run { args } => {
            setup::ensure_build_tools()?;
            let binary = build_release(&root)?;
            setup::say(&format!("running {} run {}", binary.display(), args.join(" ")));
            exec(Command::new(binary).arg("run").args(args))
        }
        Task::Test { args } => {
            setup::ensure_build_tools()?;
            setup::ensure_test_tools()?;
            setup::ensure_lint_tools()?;
            gates::run(&root)?;
            let binary = build_release(&root)?;
            setup::say("unit tests");
            cargo(
                &root,
                &[
                    "test",
                    "--release",
                    "--workspace",
                    "--exclude",
                    "rstwatch-tests",
                    "--exclude",
                    "rstwatch-ebpf",
                ],
                &args,
            )?;
            setup::say("root integration tests (real sockets, real resets, real /metrics)");
            if !setup::is_root() {
                bail!("the integration tests load eBPF programs and create network namespaces: run as root");
            }
            let mut command = cargo_command(
                &root,
                &["test", "--release", "--no-fail-fast", "-p", "rstwatch-tests"],
                &args,
            );
            command.env("RSTWATCH_BIN", &binary);
            check(&mut command)?;
            // The daemon prefers BTF tracepoints; the classic ones (tracefs offsets) are what
            // older kernels get, so the reset scenarios run on them too.
            setup::say("reset scenarios again, on classic tracepoints (--program-type tracepoint)");
            let classic = [
                "test",
                "--release",
                "--no-fail-fast",
                "-p",
                "rstwatch-tests",
                "--test",
                "resets",
                "--test",
                "attribution",
            ];
            let mut command = cargo_command(&root, &classic, &args);
            command
                .env("RSTWATCH_BIN", &binary)
                .env("RSTWATCH_DAEMON_ARGS", "--program-type tracepoint");
            check(&mut command)?;
            // Older kernels: the same scenarios on Debian's 6.1 and 6.12 under qemu.
            let kernels = std::env::var("RSTWATCH_VM_KERNELS").unwrap_or_else(|_| "6.1,6.12".into());
            if kernels == "none" {
                setup::say("RSTWATCH_VM_KERNELS=none: skipping the other kernels (cargo xtask vm-test)");
                return Ok(());
            }
            setup::say(&format!("reset scenarios on other kernels under qemu: {kernels}"));
            vm::run(&root, vm::Options::for_kernels(&kernels))
        }
        Task::Lint => {
            setup::ensure_build_tools()?;
            setup::ensure_lint_tools()?;
            gates::run(&root)
        }
        Task::Bench(options) => bench::run(&root, options),
        Task::VmTest(options) => vm::run(&root, options),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn build_release(root: &Path) -> anyhow::Result<PathBuf> {
    let binary = release_dir(root).join("rstwatch");
    setup::say(&format!(
        "building {} (the eBPF object is built and embedded by aya-build)",
        binary.display()
    ));
    cargo(root, &["build", "--release", "-p", "rstwatch"], &[])?;
    Ok(binary)
}

/// Where cargo puts release binaries: `$CARGO_TARGET_DIR/release` when set (relative to the
/// workspace, as cargo reads it), else `target/release`.
pub fn release_dir(root: &Path) -> PathBuf {
    target_dir(root).join("release")
}

pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

fn cargo_command(root: &Path, args: &[&str], extra: &[String]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root).args(args);
    if !extra.is_empty() {
        command.arg("--").args(extra);
    }
    command.env("PATH", setup::path_with_cargo_bin());
    command
}

pub fn cargo(root: &Path, args: &[&str], extra: &[String]) -> anyhow::Result<()> {
    check(&mut cargo_command(root, args, extra))
}

fn check(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Replace this process, so signals (Ctrl-C, SIGTERM) reach the daemon directly.
fn exec(command: &mut Command) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let err = command.exec();
    Err(err).with_context(|| format!("starting {command:?}"))
}
