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

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

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

/// Debian 12 kernel packages, newest first by version: the VM kernels.
const KERNELS: &[(&str, &str)] = &[
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$"),
];

/// Modules the scenarios need that Debian builds as modules: `ss -K` (SOCK_DESTROY).
const MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];

/// Userspace programs the runner uses inside the VM (copied with their shared libraries).
const PROGRAMS: [&str; 2] = ["/usr/sbin/ip", "/usr/bin/ss"];

const VM_PACKAGES: [(&str, &str); 4] = [
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("ip", "iproute2"),
];

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

    println!("\nvm-test summary");
    for r in &results {
        println!(
            "  {:<8} {:<28} ok {:>2}  blind {:>2}  FAIL {:>2}{}",
            r.name,
            r.release,
            r.count("ok"),
            r.count("blind"),
            r.count("FAIL"),
            r.problem
                .as_deref()
                .map(|p| format!("  ({p})"))
                .unwrap_or_default()
        );
    }
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
    build_initramfs(
        &kernel,
        binaries,
        &work.join(format!("initramfs-{name}")),
        &initrd,
    )?;
    let log = work.join(format!("{name}.log"));
    boot(&kernel.vmlinuz, &initrd, &log, timeout)?;
    let text = String::from_utf8_lossy(&std::fs::read(&log)?).into_owned();
    Ok(Report::parse(name, &text, log))
}

struct Kernel {
    package: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

/// The newest package matching `pattern`, downloaded and unpacked once into target/vm-test.
fn fetch_kernel(pattern: &str, work: &Path) -> anyhow::Result<Kernel> {
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

fn build_initramfs(kernel: &Kernel, binaries: &Binaries, staging: &Path, out: &Path) -> anyhow::Result<()> {
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

/// Boot under TCG (KVM stalls during boot on this kind of machine), console to `log`.
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path, timeout: Duration) -> anyhow::Result<()> {
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

/// What one kernel showed.
struct Report {
    name: String,
    release: String,
    log: PathBuf,
    probes: Vec<(String, bool)>,
    blind: Vec<String>,
    /// (scenario, verdict, expected, got)
    scenarios: Vec<(String, String, String, String)>,
    /// `RSTW refuses ...` lines: (what, exit code, message).
    refusals: Vec<(String, i32, String)>,
    finished: bool,
    vm: bool,
    problem: Option<String>,
}

impl Report {
    fn broken(name: &str, problem: String) -> Report {
        Report {
            name: name.to_string(),
            release: "?".into(),
            log: PathBuf::new(),
            probes: vec![],
            blind: vec![],
            scenarios: vec![],
            refusals: vec![],
            finished: false,
            vm: false,
            problem: Some(problem),
        }
    }

    fn parse(name: &str, console: &str, log: PathBuf) -> Report {
        let mut report = Report::broken(name, String::new());
        report.problem = None;
        report.log = log;
        report.vm = true;
        for line in console.lines() {
            let Some(at) = line.find("RSTW ") else { continue };
            let line = line[at + 5..].trim_end_matches('\r');
            let mut words = line.splitn(2, ' ');
            let (tag, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            match tag {
                "kernel" => report.release = rest.to_string(),
                "probe" => {
                    let (probe, value) = rest.split_once(' ').unwrap_or((rest, "0"));
                    report.probes.push((probe.to_string(), value == "1"));
                }
                "blind" => report.blind.push(rest.to_string()),
                "scenario" => {
                    let mut parts = rest.splitn(3, ' ');
                    let scenario = parts.next().unwrap_or("").to_string();
                    let verdict = parts.next().unwrap_or("FAIL").to_string();
                    let tail = parts.next().unwrap_or("");
                    let (expected, got) = match tail.split_once(" got=") {
                        Some((e, g)) => (e.trim_start_matches("expected=").to_string(), g.to_string()),
                        None => (String::new(), tail.to_string()),
                    };
                    report.scenarios.push((scenario, verdict, expected, got));
                }
                "refuses" => {
                    let mut parts = rest.splitn(3, ' ');
                    let what = parts.next().unwrap_or("").to_string();
                    let code = parts
                        .next()
                        .and_then(|c| c.strip_prefix("exit="))
                        .and_then(|c| c.parse().ok());
                    report
                        .refusals
                        .push((what, code.unwrap_or(-1), parts.next().unwrap_or("").to_string()));
                }
                "done" => report.finished = true,
                _ => {}
            }
        }
        if !report.finished {
            report.problem = Some("the runner did not finish (see the console log)".into());
        }
        report
    }

    fn count(&self, verdict: &str) -> usize {
        self.scenarios.iter().filter(|(_, v, _, _)| v == verdict).count()
    }

    /// The kernel refused clearly: non-zero exit and a message that names BTF.
    fn refusal_ok(&self, what: &str, code: i32, message: &str) -> bool {
        code != 0 && (what != "no_btf" || message.contains("BTF"))
    }

    fn passed(&self) -> bool {
        self.problem.is_none()
            && self.finished
            && !self.scenarios.is_empty()
            && self.count("FAIL") == 0
            && (!self.vm || !self.refusals.is_empty())
            && self.refusals.iter().all(|(w, c, m)| self.refusal_ok(w, *c, m))
    }

    fn render(&self, took: Duration) -> String {
        let mut out = format!(
            "\n== {} ({}), {:.0} s ==\n",
            self.name,
            self.release,
            took.as_secs_f64()
        );
        if let Some(problem) = &self.problem {
            let _ = writeln!(out, "  problem: {problem}");
        }
        let attached: Vec<_> = self
            .probes
            .iter()
            .filter(|(_, on)| *on)
            .map(|(p, _)| p.as_str())
            .collect();
        let missing: Vec<_> = self
            .probes
            .iter()
            .filter(|(_, on)| !*on)
            .map(|(p, _)| p.as_str())
            .collect();
        let _ = writeln!(out, "  probes attached: {}", attached.join(" "));
        if !missing.is_empty() {
            let _ = writeln!(out, "  not attached:    {}", missing.join(" "));
        }
        let _ = writeln!(
            out,
            "  declared blind:  {}",
            if self.blind.is_empty() {
                "nothing".to_string()
            } else {
                self.blind.join(" ")
            }
        );
        for (scenario, verdict, expected, got) in &self.scenarios {
            let seen = if expected == got || verdict == "ok" {
                got.clone()
            } else {
                format!("expected {expected}, got {got}")
            };
            let _ = writeln!(out, "  {verdict:<5} {scenario:<22} {seen}");
        }
        for (what, code, message) in &self.refusals {
            let verdict = if self.refusal_ok(what, *code, message) {
                "ok"
            } else {
                "FAIL"
            };
            let _ = writeln!(out, "  {verdict:<5} refuses {what}: exit {code}: {message}");
        }
        let _ = writeln!(out, "  console log: {}", self.log.display());
        out
    }
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

    #[test]
    fn console_lines_make_a_report() {
        let console = "noise\r\nRSTW kernel 6.1.0-56-amd64\r\n[ 1.0] RSTW probe tcp_send_reset 1\r\nRSTW probe tcp_v4_send_reset 0\nRSTW blind sent/no_listener\nRSTW scenario refused_v4 blind expected=sent/no_listener/none+1 got=received/connection_refused/syn_sent+1\nRSTW scenario linger0 ok expected=a got=a\nRSTW refuses no_btf exit=1 rstwatch: error: no BTF\nRSTW done failed=0\n";
        let r = Report::parse("6.1", console, PathBuf::from("x.log"));
        assert_eq!(r.release, "6.1.0-56-amd64");
        assert_eq!(
            r.probes,
            vec![
                ("tcp_send_reset".to_string(), true),
                ("tcp_v4_send_reset".to_string(), false)
            ]
        );
        assert_eq!((r.count("ok"), r.count("blind"), r.count("FAIL")), (1, 1, 0));
        assert!(r.passed());
        let failed = console.replace("linger0 ok", "linger0 FAIL");
        assert!(!Report::parse("6.1", &failed, PathBuf::new()).passed());
        let unfinished = console.replace("RSTW done failed=0\n", "");
        assert!(!Report::parse("6.1", &unfinished, PathBuf::new()).passed());
        let accepted = console.replace("exit=1", "exit=0");
        assert!(!Report::parse("6.1", &accepted, PathBuf::new()).passed());
    }
}
