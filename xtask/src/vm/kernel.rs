//! The VM kernels: Debian 12's kernel packages, found with `apt-cache search`, downloaded with
//! `apt-get download` and unpacked once into target/vm-test, so later runs boot without the network.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::setup::{self, say};

/// Debian 12 kernel packages, newest first by version: the VM kernels.
pub(super) const KERNELS: &[(&str, &str)] = &[
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$"),
];

pub(super) struct Kernel {
    pub(super) package: String,
    pub(super) vmlinuz: PathBuf,
    pub(super) modules: PathBuf,
}

/// The newest package matching `pattern`, downloaded and unpacked once into target/vm-test.
pub(super) fn fetch_kernel(pattern: &str, work: &Path) -> anyhow::Result<Kernel> {
    let mut packages = apt_search(pattern)?;
    if packages.is_empty() {
        setup::run("apt-get", &["update", "-qq"])?;
        packages = apt_search(pattern)?;
    }
    packages.sort_by_key(|a| version_key(a));
    let Some(package) = packages.pop() else {
        bail!("no Debian package matches {pattern} (apt sources without bookworm?)");
    };
    let dir = work.join("kernels").join(&package);
    let unpacked = dir.join("root");
    if !unpacked.join("boot").exists() {
        std::fs::create_dir_all(&dir)?;
        say(&format!("downloading {package}"));
        let status = Command::new("apt-get")
            .args(["download", "-qq", &package])
            .current_dir(&dir)
            .status()
            .context("starting apt-get download")?;
        if !status.success() {
            bail!("apt-get download {package} failed: {status}");
        }
        let deb = std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))?;
        let partial = dir.join("root.partial");
        let _ = std::fs::remove_dir_all(&partial);
        setup::run(
            "dpkg",
            &["-x", &deb.to_string_lossy(), &partial.to_string_lossy()],
        )?;
        std::fs::rename(&partial, &unpacked)?;
        std::fs::remove_file(&deb)?;
    }
    let vmlinuz = std::fs::read_dir(unpacked.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", unpacked.display()))?;
    Ok(Kernel {
        package,
        vmlinuz,
        modules: unpacked.join("lib/modules"),
    })
}

fn apt_search(pattern: &str) -> anyhow::Result<Vec<String>> {
    let text = setup::output("apt-cache", &["search", "--names-only", pattern])?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// Numbers in a package name, for "newest": linux-image-6.12.117+deb12 > linux-image-6.12.99+deb12.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_package_by_numbers() {
        let mut names = [
            "linux-image-6.12.99+deb12-amd64",
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.100+deb12-amd64",
        ];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names.last(), Some(&"linux-image-6.12.117+deb12-amd64"));
    }
}
