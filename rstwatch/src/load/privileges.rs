//! Who this process is as far as the kernel's permission checks go, and errors from the kernel
//! (EPERM, ENOSYS, an unreadable tracefs) explained with the capability or setting behind them.

use anyhow::anyhow;

/// Capabilities the daemon may need (linux/capability.h).
pub type Capability = (u32, &'static str);
pub const CAP_DAC_READ_SEARCH: Capability = (2, "CAP_DAC_READ_SEARCH");
pub const CAP_PERFMON: Capability = (38, "CAP_PERFMON");
pub const CAP_BPF: Capability = (39, "CAP_BPF");

/// Who this process is, as far as the kernel's permission checks go (`/proc/self/status`).
pub struct Privileges {
    pub uid: u32,
    effective: u64,
    /// A seccomp filter is installed (container runtimes' default profiles).
    seccomp_filter: bool,
}

impl Privileges {
    pub fn current() -> Privileges {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
        };
        Privileges {
            // Real, effective, saved, fs: the effective one is checked.
            uid: field("Uid:")
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(u32::MAX),
            effective: u64::from_str_radix(field("CapEff:"), 16).unwrap_or(0),
            seccomp_filter: field("Seccomp:") == "2",
        }
    }

    pub fn has(&self, (bit, _): Capability) -> bool {
        self.effective & (1 << bit) != 0
    }

    /// The names of the capabilities of `wanted` this process lacks.
    pub fn missing(&self, wanted: &[Capability]) -> Vec<&'static str> {
        wanted
            .iter()
            .filter(|cap| !self.has(**cap))
            .map(|(_, name)| *name)
            .collect()
    }
}

/// Whether some cause in the chain is this errno from the kernel.
fn has_os_error(err: &anyhow::Error, errno: i32) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(errno)
    })
}

/// ENOSYS from bpf(2): a kernel built without BPF, or a seccomp filter that hides the call.
pub fn explain_enosys(err: anyhow::Error) -> anyhow::Error {
    if !has_os_error(&err, libc::ENOSYS) {
        return err;
    }
    let seccomp = if Privileges::current().seccomp_filter {
        "; this process runs under a seccomp filter, which may be what hides it (see deploy/README.md)"
    } else {
        ""
    };
    err.context(format!(
        "this kernel offers no BPF: the bpf() system call is not implemented; rstwatch needs a kernel built \
         with CONFIG_BPF_SYSCALL=y{seccomp}"
    ))
}

/// An EPERM from the kernel says nothing about why; say which capability is missing. Other
/// errors pass through unchanged.
pub fn explain_eperm(err: anyhow::Error, what: &str, needs: &[Capability]) -> anyhow::Error {
    if !has_os_error(&err, libc::EPERM) {
        return err;
    }
    let privileges = Privileges::current();
    let names: Vec<_> = needs.iter().map(|(_, name)| *name).collect();
    let missing = privileges.missing(needs);
    let why = if !missing.is_empty() {
        format!(
            "this process (uid {}) lacks {}",
            privileges.uid,
            missing.join(" and ")
        )
    } else if privileges.seccomp_filter {
        format!(
            "this process has {} but a seccomp filter is installed: the container runtime's profile may \
             allow bpf(2) and perf_event_open(2) only with CAP_SYS_ADMIN (see deploy/README.md)",
            names.join(" and ")
        )
    } else {
        format!(
            "this process has {}, so an LSM (SELinux, AppArmor, BPF LSM) or kernel lockdown refused it",
            names.join(" and ")
        )
    };
    err.context(format!("{what} needs root or {}; {why}", names.join(" and ")))
}

/// tracefs exists but this process may not look into it: say that, and which capability would
/// let it, instead of only the failure of the mount attempted as a fallback.
pub fn explain_tracefs(err: anyhow::Error) -> anyhow::Error {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let tracefs_at = |dir: &str| {
        mountinfo.lines().any(|line| {
            let mut halves = line.split(" - ");
            let mount_point = halves.next().and_then(|head| head.split(' ').nth(4));
            let fstype = halves.next().and_then(|tail| tail.split(' ').next());
            mount_point == Some(dir) && fstype == Some("tracefs")
        })
    };
    let denied = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .find_map(
            |dir| match std::fs::metadata(std::path::Path::new(dir).join("events")) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && tracefs_at(dir) => {
                    Some((dir, e))
                }
                _ => None,
            },
        );
    let Some((dir, denial)) = denied else {
        return err;
    };
    let privileges = Privileges::current();
    let missing = privileges.missing(&[CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH]);
    // The mount tried as a fallback failed with this (its message says "not mounted", which is wrong here).
    let mount_failure = format!("{err}")
        .split_once("(os error ")
        .and_then(|(_, rest)| rest.split(')').next()?.parse().ok())
        .map(|errno| {
            format!(
                "; mounting a tracefs of its own failed too: {}",
                std::io::Error::from_raw_os_error(errno)
            )
        })
        .unwrap_or_default();
    anyhow!(
        "tracefs is mounted at {dir} but uid {} cannot read it ({denial}): run rstwatch as root, or as \
         non-root with CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH (to read tracefs); this process lacks {}{mount_failure}",
        privileges.uid,
        if missing.is_empty() {
            "none of them (is tracefs mounted with a gid= option?)".to_string()
        } else {
            missing.join(", ")
        },
    )
}
