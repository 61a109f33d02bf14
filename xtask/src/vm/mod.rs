//! `cargo xtask vm-test`: the reset scenarios of the root integration tests, run by the same
//! runner (`scenario all --report`) against the same rstwatch binary, on Debian's 6.1 and 6.12
//! kernels booted under qemu, and on the host kernel without a VM.
//!
//! Each VM boots the kernel from Debian's package (`apt-get download`) with a busybox initramfs
//! holding rstwatch, the runner, `ip` and `ss` (with the libraries `ldd` lists) and the two
//! modules `ss -K` needs. The runner prints `RSTW ...` lines on the console: which probes attached,
//! which causes the daemon declares unobservable there, and each scenario's verdict. A scenario
//! that rstwatch counts differently than expected is a regression (exit 1) unless the daemon
//! itself declared that cause unobservable on that kernel (`blind`).

mod initramfs;
mod kernel;
mod qemu;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use self::kernel::{KERNELS, fetch_kernel};
use self::report::Report;
use crate::setup::{self, say};

#[derive(clap::Args)]
pub struct Options {
    /// Kernels, comma-separated: `host` (the running kernel, no VM), `6.1`, `6.12`.
    #[arg(long = "kernel", value_delimiter = ',', default_values = ["host", "6.1", "6.12"])]
    kernels: Vec<String>,
    /// Give up on one VM after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

impl Options {
    pub fn for_kernels(list: &str) -> Options {
        Options {
            kernels: list.split(',').map(|k| k.trim().to_string()).collect(),
            timeout: 900,
        }
    }
}

const VM_PACKAGES: [(&str, &str); 4] = [
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("ip", "iproute2"),
];

pub fn run(root: &Path, options: Options) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!("vm-test loads eBPF programs and creates network namespaces: run as root");
    }
    let binaries = build(root)?;
    let work = crate::target_dir(root).join("vm-test");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let mut results = Vec::new();
    for name in &options.kernels {
        let started = Instant::now();
        let result = match name.as_str() {
            "host" => run_on_host(&binaries, &work),
            vm => {
                let Some((_, pattern)) = KERNELS.iter().find(|(k, _)| *k == vm) else {
                    bail!("unknown kernel {vm:?}: choose from host, 6.1, 6.12");
                };
                ensure_vm_tools()?;
                run_in_vm(
                    vm,
                    pattern,
                    &binaries,
                    &work,
                    Duration::from_secs(options.timeout),
                )
            }
        };
        let report = result.unwrap_or_else(|err| Report::broken(name, format!("{err:#}")));
        print!("{}", report.render(started.elapsed()));
        results.push(report);
    }

    report::print_summary(&results);
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "regressions on: {} (console logs in {})",
            failed.join(", "),
            work.display()
        );
    }
    Ok(())
}

struct Binaries {
    rstwatch: PathBuf,
    scenario: PathBuf,
}

fn build(root: &Path) -> anyhow::Result<Binaries> {
    setup::ensure_build_tools()?;
    say("building rstwatch and the scenario runner (release)");
    crate::cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "rstwatch",
            "-p",
            "rstwatch-tests",
            "--bin",
            "rstwatch",
            "--bin",
            "scenario",
        ],
        &[],
    )?;
    Ok(Binaries {
        rstwatch: crate::release_dir(root).join("rstwatch"),
        scenario: crate::release_dir(root).join("scenario"),
    })
}

fn ensure_vm_tools() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = VM_PACKAGES
        .iter()
        .filter(|(tool, _)| !setup::on_path(tool))
        .map(|(_, package)| *package)
        .collect();
    // The initramfs needs the statically linked busybox, not the dynamic one.
    if !setup::dpkg_installed("busybox-static") {
        missing.push("busybox-static");
    }
    if !missing.is_empty() {
        setup::apt_install(&missing)?;
    }
    Ok(())
}

fn run_on_host(binaries: &Binaries, work: &Path) -> anyhow::Result<Report> {
    say("host kernel: scenario all --report (no VM)");
    let output = Command::new(&binaries.scenario)
        .args(["all", "--report"])
        .env("RSTWATCH_BIN", &binaries.rstwatch)
        .stderr(Stdio::inherit())
        .output()
        .context("running the scenario runner")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let log = work.join("host.log");
    std::fs::write(&log, &text).with_context(|| format!("writing {}", log.display()))?;
    let mut report = Report::parse("host", &text, log);
    // No VM here, so no hidden-BTF check: the hardening tests cover it on the host.
    report.vm = false;
    Ok(report)
}

fn run_in_vm(
    name: &str,
    pattern: &str,
    binaries: &Binaries,
    work: &Path,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let kernel = fetch_kernel(pattern, work)?;
    say(&format!("{name}: {} under qemu (TCG)", kernel.package));
    let initrd = work.join(format!("initramfs-{name}.cpio.gz"));
    initramfs::build_initramfs(
        &kernel,
        binaries,
        &work.join(format!("initramfs-{name}")),
        &initrd,
    )?;
    let log = work.join(format!("{name}.log"));
    let mut text = boot_and_read(&kernel.vmlinuz, &initrd, &log, timeout)?;
    if !text.contains("RSTW begin") && text.contains("Kernel panic") {
        // Nothing of ours ran: the guest died while booting (seen once under TCG: an int3 in
        // sched_clock_cpu at 2 s, during the kernel's own code patching). Boot once more; a second
        // early death is reported as it is.
        let first = work.join(format!("{name}.boot1.log"));
        std::fs::rename(&log, &first).with_context(|| format!("keeping {}", first.display()))?;
        say(&format!(
            "{name}: the guest kernel panicked before its init started (console log {}); booting once more",
            first.display()
        ));
        text = boot_and_read(&kernel.vmlinuz, &initrd, &log, timeout)?;
    }
    Ok(Report::parse(name, &text, log))
}

fn boot_and_read(vmlinuz: &Path, initrd: &Path, log: &Path, timeout: Duration) -> anyhow::Result<String> {
    qemu::boot(vmlinuz, initrd, log, timeout)?;
    Ok(String::from_utf8_lossy(&std::fs::read(log)?).into_owned())
}
