//! cgroup v2 id → cgroup path.
//!
//! bpf_get_current_cgroup_id returns the kernfs node id of the task's cgroup v2 directory. On
//! 64-bit kernels (5.5 and later) that id is both the directory's inode number and the payload of
//! its file handle (type FILEID_KERNFS); on this project's test machine all three agree (stat,
//! name_to_handle_at and bpftrace's `cgroup` builtin gave the same number). The high 32 bits count
//! wraps of the 32-bit allocator, so an id is never reused: a cached entry can go dead, never wrong.
//!
//! A miss is resolved by `open_by_handle_at` on the id (one lookup, exact, needs
//! CAP_DAC_READ_SEARCH) and, where the kernel or the privileges refuse that, by walking the
//! hierarchy, at most once per `rescan_interval` so an unknown id cannot turn every event into I/O.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::fs::{DirEntryExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use log::{debug, info, warn};

/// The root cgroup's id (kernfs numbers its root node 1).
const ROOT_CGROUP_ID: u64 = 1;

/// The kernel's FILEID_KERNFS handle type (include/linux/exportfs.h).
const FILEID_KERNFS: libc::c_int = 0xfe;

#[derive(Clone, Debug)]
pub struct Limits {
    /// At most one walk of the hierarchy per this interval.
    pub rescan_interval: Duration,
    /// Cached ids (live and dead cgroups); past it the cache starts over.
    pub max_entries: usize,
    /// Resolve single ids by file handle before walking the tree.
    pub by_handle: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rescan_interval: Duration::from_secs(10),
            max_entries: 16384,
            by_handle: true,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathStats {
    pub entries: usize,
    pub handle_lookups: u64,
    pub scans: u64,
}

pub struct CgroupPaths {
    root: PathBuf,
    /// Open on `root` for open_by_handle_at; `None` once the kernel refused it.
    root_dir: Option<File>,
    cache: HashMap<u64, Arc<str>>,
    /// Ids whose cgroup was removed: exact, since ids are never reused.
    gone: HashSet<u64>,
    last_scan: Option<Instant>,
    limits: Limits,
    stats: PathStats,
}

impl CgroupPaths {
    /// The cgroup2 mount from /proc/self/mountinfo that shows the whole hierarchy.
    ///
    /// In a container with its own cgroup namespace, its `/sys/fs/cgroup` shows only its own
    /// sub-tree (and mountinfo calls that `/` too); the host's, bind-mounted in, shows all. The
    /// real root is the directory whose id is 1.
    pub fn open(limits: Limits) -> anyhow::Result<CgroupPaths> {
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let mounts = cgroup2_mounts(&mountinfo);
        let whole = mounts
            .iter()
            .find(|mount| std::fs::metadata(mount).is_ok_and(|m| m.ino() == ROOT_CGROUP_ID));
        let root = match (whole, mounts.first()) {
            (Some(whole), _) => whole.clone(),
            (None, Some(part)) => {
                warn!(
                    "{} shows only part of the cgroup hierarchy: containers outside it cannot be named (mount the host's /sys/fs/cgroup)",
                    part.display()
                );
                part.clone()
            }
            (None, None) => {
                return Err(anyhow!(
                    "no cgroup2 file system is mounted (try: mount -t cgroup2 none /sys/fs/cgroup/unified)"
                ));
            }
        };
        CgroupPaths::at(root, limits)
    }

    /// A cgroup2 mount (or, for tests of the walk, any directory tree) at `root`.
    pub fn at(root: PathBuf, limits: Limits) -> anyhow::Result<CgroupPaths> {
        let root_dir =
            File::open(&root).with_context(|| format!("opening cgroup2 root {}", root.display()))?;
        let root_dir = limits.by_handle.then_some(root_dir);
        let stats = PathStats::default();
        Ok(CgroupPaths {
            root,
            root_dir,
            cache: HashMap::new(),
            gone: HashSet::new(),
            last_scan: None,
            limits,
            stats,
        })
    }

    #[cfg(test)]
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    #[cfg(test)]
    pub fn stats(&self) -> PathStats {
        PathStats {
            entries: self.cache.len(),
            ..self.stats
        }
    }

    /// The path of cgroup `id` relative to the mount (`/kubepods.slice/...`, `/` for the root).
    pub fn resolve(&mut self, id: u64) -> Option<Arc<str>> {
        if let Some(path) = self.cache.get(&id) {
            return Some(path.clone());
        }
        if self.gone.contains(&id) {
            return None;
        }
        if self.root_dir.is_some() {
            match self.by_handle(id) {
                Ok(path) => return Some(self.remember(id, path)),
                Err(err) if matches!(err.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)) => {
                    if self.gone.len() >= self.limits.max_entries {
                        self.gone.clear();
                    }
                    self.gone.insert(id);
                    return None;
                }
                Err(err) => {
                    info!(
                        "cgroup ids will be resolved by walking {} ({err})",
                        self.root.display()
                    );
                    self.root_dir = None;
                }
            }
        }
        self.rescan_if_due();
        self.cache.get(&id).cloned()
    }

    fn remember(&mut self, id: u64, path: Arc<str>) -> Arc<str> {
        if self.cache.len() >= self.limits.max_entries {
            debug!(
                "cgroup path cache full ({} entries): starting over",
                self.cache.len()
            );
            self.cache.clear();
        }
        self.cache.insert(id, path.clone());
        path
    }

    fn by_handle(&mut self, id: u64) -> io::Result<Arc<str>> {
        let root_dir = self
            .root_dir
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        self.stats.handle_lookups += 1;
        #[repr(C)]
        struct KernfsHandle {
            handle_bytes: libc::c_uint,
            handle_type: libc::c_int,
            id: [u8; 8],
        }
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id: id.to_ne_bytes(),
        };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: `handle` is a file_handle header followed by its 8 payload bytes, as handle_bytes says.
        let fd = unsafe { libc::open_by_handle_at(root_dir.as_raw_fd(), (&raw mut handle).cast(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this descriptor and nothing else owns it.
        let dir = unsafe { File::from_raw_fd(fd) };
        let target = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        let target = target.to_string_lossy();
        // Removed between the open and the readlink.
        let target = target.strip_suffix(" (deleted)").unwrap_or(&target);
        Ok(relative(&self.root, Path::new(target)).into())
    }

    fn rescan_if_due(&mut self) {
        let now = Instant::now();
        if self
            .last_scan
            .is_some_and(|last| now.duration_since(last) < self.limits.rescan_interval)
        {
            return;
        }
        self.last_scan = Some(now);
        self.stats.scans += 1;
        let PathStats {
            scans,
            handle_lookups,
            ..
        } = self.stats;
        debug!(
            "walking {} for an unknown cgroup id (walk {scans}, {handle_lookups} handle lookups)",
            self.root.display()
        );
        match walk(&self.root, self.limits.max_entries) {
            Ok(found) => self.cache = found,
            Err(err) => warn!("cannot list cgroups under {}: {err:#}", self.root.display()),
        }
    }
}

/// Every directory under `root` by inode (== cgroup id on cgroup2), up to `max_entries`.
fn walk(root: &Path, max_entries: usize) -> anyhow::Result<HashMap<u64, Arc<str>>> {
    let root_id = std::fs::metadata(root)
        .with_context(|| format!("stat {}", root.display()))?
        .ino();
    let mut found = HashMap::from([(root_id, Arc::from("/"))]);
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, relative)) = pending.pop() {
        // A cgroup removed during the walk is simply not there any more.
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            if found.len() >= max_entries {
                warn!(
                    "more than {max_entries} cgroups under {}: the rest are not cached",
                    root.display()
                );
                return Ok(found);
            }
            // readdir's d_ino is kernfs_ino(), the same id, without a stat per directory.
            let path = format!("{relative}/{}", entry.file_name().to_string_lossy());
            found.insert(entry.ino(), Arc::from(path.as_str()));
            pending.push((entry.path(), path));
        }
    }
    Ok(found)
}

fn relative(root: &Path, target: &Path) -> String {
    match target.strip_prefix(root) {
        Ok(rest) if rest.as_os_str().is_empty() => "/".to_string(),
        Ok(rest) => format!("/{}", rest.to_string_lossy()),
        // Not under the mount we opened (should not happen): keep what the kernel said.
        Err(_) => target.to_string_lossy().into_owned(),
    }
}

/// The cgroup id of a cgroup v2 directory, as bpf_get_current_cgroup_id would report it.
#[cfg(test)]
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// The mount points of cgroup2 (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones), mounts of the hierarchy's root (as this cgroup namespace sees it) first.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut mounts: Vec<(bool, PathBuf)> = mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let fstype = after.split(' ').next()?;
            (fstype == "cgroup2" && fields.len() >= 5).then(|| (fields[3] != "/", unescape(fields[4])))
        })
        .collect();
    mounts.sort_by_key(|(sub_tree, _)| *sub_tree);
    mounts.into_iter().map(|(_, mount)| mount).collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    use std::os::unix::ffi::OsStringExt as _;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests;
