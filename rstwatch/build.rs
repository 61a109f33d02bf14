use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Builds the eBPF object with nightly and bpf-linker (aya-build), so that
/// `cargo build -p rstwatch` yields one binary with the programs embedded.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "rstwatch-ebpf")
        .ok_or_else(|| anyhow!("rstwatch-ebpf package not found"))?;
    let cargo_metadata::Package {
        name, manifest_path, ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::Nightly)
}
