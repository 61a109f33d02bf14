//! The VM's initramfs: busybox, rstwatch, the scenario runner, `ip` and `ss` with the shared
//! libraries `ldd` lists, the kernel modules the scenarios need, and an `/init` script that runs
//! the scenarios and prints their verdicts on the console.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::Binaries;
use super::kernel::Kernel;
use crate::setup;

/// Modules the scenarios need that Debian builds as modules: `ss -K` (SOCK_DESTROY).
const MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];

/// Userspace programs the runner uses inside the VM (copied with their shared libraries).
const PROGRAMS: [&str; 2] = ["/usr/sbin/ip", "/usr/bin/ss"];

/// `/init` of the initramfs: mount what rstwatch and the scenarios need, run the runner, then
/// check that rstwatch refuses clearly on a kernel without BTF, and power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/netns /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
for m in /modules/*.ko; do insmod "$m" || echo "RSTW note insmod $m failed"; done
echo "RSTW begin $(uname -r)"
RSTWATCH_BIN=/bin/rstwatch RSTWATCH_OWNS_KERNEL=1 /bin/scenario all --report
echo "RSTW runner exit=$?"
# A kernel without BTF (hidden here by an empty mount): one clear error line, non-zero exit.
mount -t tmpfs nobtf /sys/kernel/btf
/bin/rstwatch run --metrics-addr 127.0.0.1:0 >/tmp/nobtf.out 2>&1
code=$?
echo "RSTW refuses no_btf exit=$code $(grep -v '^\[' /tmp/nobtf.out | tail -n 1)"
umount /sys/kernel/btf
echo "RSTW daemon-log-begin"
cat /tmp/rstwatch-tests-*.log
echo "RSTW daemon-log-end"
poweroff -f
"#;

pub(super) fn build_initramfs(
    kernel: &Kernel,
    binaries: &Binaries,
    staging: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(staging);
    for dir in ["bin", "proc", "sys", "dev", "tmp", "run", "modules"] {
        std::fs::create_dir_all(staging.join(dir))?;
    }
    copy(Path::new("/bin/busybox"), &staging.join("bin/busybox"))?;
    let programs = [binaries.rstwatch.as_path(), binaries.scenario.as_path()]
        .into_iter()
        .chain(PROGRAMS.iter().map(Path::new));
    for program in programs {
        let name = program.file_name().context("program without a name")?;
        copy(program, &staging.join("bin").join(name))?;
        for library in shared_libraries(program)? {
            let target = staging.join(library.strip_prefix("/")?);
            std::fs::create_dir_all(target.parent().context("library path")?)?;
            copy(&library, &target)?;
        }
    }
    for module in MODULES {
        let found = find_module(&kernel.modules, module)?;
        let target = staging.join("modules").join(format!("{module}.ko"));
        let name = found.to_string_lossy().into_owned();
        if name.ends_with(".xz") || name.ends_with(".zst") {
            let tool = if name.ends_with(".xz") { "xz" } else { "zstd" };
            let bytes = Command::new(tool).args(["-dc", &name]).output()?;
            if !bytes.status.success() {
                bail!("{tool} -dc {name} failed");
            }
            std::fs::write(&target, bytes.stdout)?;
        } else {
            copy(&found, &target)?;
        }
    }
    let init = staging.join("init");
    std::fs::write(&init, INIT)?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let script = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        staging.display(),
        out.display()
    );
    setup::run("sh", &["-c", &script]).context("packing the initramfs")
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The shared libraries (and the loader) `ldd` says a program needs.
fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = setup::output("ldd", &[&program.to_string_lossy()])?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

fn find_module(modules: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let mut stack = vec![modules.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n == format!("{name}.ko") || n.starts_with(&format!("{name}.ko."))
            }) {
                return Ok(path);
            }
        }
    }
    bail!("module {name} not found under {}", modules.display())
}
