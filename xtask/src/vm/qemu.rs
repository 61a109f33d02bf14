//! Booting a VM: qemu with the kernel and initramfs, the console written to a log file, bounded
//! by a timeout.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Boot under TCG (KVM stalls during boot on this kind of machine), console to `log`.
pub(super) fn boot(vmlinuz: &Path, initrd: &Path, log: &Path, timeout: Duration) -> anyhow::Result<()> {
    let console = std::fs::File::create(log)?;
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 oops=panic"])
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("qemu exited with {status}; console log in {}", log.display());
            }
            return Ok(());
        }
        if started.elapsed() > timeout {
            // Our own child, by PID.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the VM did not finish within {timeout:?}; console log in {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
