use which::which;

/// Rebuild when bpf-linker changes: building this crate depends on that binary, which cargo cannot
/// express as a dependency (see aya-template).
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found on PATH ({err}); run `cargo xtask setup`"),
    }
}
