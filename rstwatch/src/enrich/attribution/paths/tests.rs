use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

// From this project's test machine (hybrid: v1 controllers, v2 at /sys/fs/cgroup/unified).
const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

const UNIFIED: &str = "\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
29 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

fn mounts(mountinfo: &str) -> Vec<PathBuf> {
    cgroup2_mounts(mountinfo)
}

#[test]
fn finds_the_cgroup2_mount() {
    assert_eq!(mounts(HYBRID), [PathBuf::from("/sys/fs/cgroup/unified")]);
    assert_eq!(mounts(UNIFIED), [PathBuf::from("/sys/fs/cgroup")]);
    assert!(mounts("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n").is_empty());
    assert!(mounts("").is_empty());
    // A bind mount of a sub-tree comes after mounts of the root.
    let sub = "50 40 0:26 /kubepods.slice /host/cgroup rw - cgroup2 cgroup2 rw\n";
    assert_eq!(mounts(sub), [PathBuf::from("/host/cgroup")]);
    assert_eq!(
        mounts(&format!("{sub}{UNIFIED}")),
        [PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/host/cgroup")]
    );
    assert_eq!(
        mounts("7 1 0:26 / /mnt/my\\040cgroup rw - cgroup2 none rw\n"),
        [PathBuf::from("/mnt/my cgroup")]
    );
}

#[test]
fn this_machine_has_a_cgroup2_mount_of_the_whole_hierarchy() {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mounts(&mountinfo)
        .into_iter()
        .next()
        .expect("no cgroup2 in /proc/self/mountinfo");
    assert!(
        mount.join("cgroup.procs").exists(),
        "{} is not a cgroup2 root",
        mount.display()
    );
    let paths = CgroupPaths::open(Limits::default()).unwrap();
    assert_eq!(cgroup_id(paths.root()).unwrap(), ROOT_CGROUP_ID);
}

/// A directory tree standing in for the hierarchy: the walk only needs directories and inodes.
struct TempTree(PathBuf);

impl TempTree {
    fn new() -> TempTree {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "rstwatch-paths-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let root = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&root).unwrap();
        TempTree(root)
    }

    fn mkdir(&self, relative: &str) -> u64 {
        let dir = self.0.join(relative.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        cgroup_id(&dir).unwrap()
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn walk_only(interval: Duration, max_entries: usize) -> Limits {
    Limits {
        rescan_interval: interval,
        max_entries,
        by_handle: false,
    }
}

#[test]
fn walk_resolves_every_directory_and_skips_files() {
    let tree = TempTree::new();
    let pod = tree.mkdir("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podx.slice");
    let ssh = tree.mkdir("/system.slice/ssh.service");
    let mut paths = CgroupPaths::at(tree.0.clone(), walk_only(Duration::ZERO, 100)).unwrap();
    assert_eq!(paths.resolve(ssh).as_deref(), Some("/system.slice/ssh.service"));
    assert_eq!(
        paths.resolve(pod).as_deref(),
        Some("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podx.slice")
    );
    assert_eq!(paths.resolve(cgroup_id(&tree.0).unwrap()).as_deref(), Some("/"));
    let file_inode = std::fs::metadata(tree.0.join("system.slice/ssh.service/cgroup.procs"))
        .unwrap()
        .ino();
    assert_eq!(paths.resolve(file_inode), None);
    // Hits do not walk again.
    let walks = paths.stats().scans;
    paths.resolve(ssh);
    assert_eq!(paths.stats().scans, walks);
}

#[test]
fn walks_on_a_miss_at_most_once_per_interval() {
    let tree = TempTree::new();
    tree.mkdir("/a");
    let mut paths = CgroupPaths::at(tree.0.clone(), walk_only(Duration::from_millis(300), 100)).unwrap();
    assert_eq!(paths.resolve(u64::MAX), None);
    assert_eq!(paths.stats().scans, 1);
    let late = tree.mkdir("/b");
    // Created after the walk: a burst of misses does not walk again...
    for _ in 0..1000 {
        assert_eq!(paths.resolve(late), None);
    }
    assert_eq!(paths.stats().scans, 1);
    // ...until the interval has passed.
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(paths.resolve(late).as_deref(), Some("/b"));
    assert_eq!(paths.stats().scans, 2);
}

#[test]
fn the_cache_is_bounded() {
    let tree = TempTree::new();
    for i in 0..20 {
        tree.mkdir(&format!("/c{i}"));
    }
    let mut paths = CgroupPaths::at(tree.0.clone(), walk_only(Duration::ZERO, 8)).unwrap();
    paths.resolve(u64::MAX);
    assert_eq!(paths.stats().entries, 8);
}

#[test]
fn relative_paths() {
    let root = Path::new("/sys/fs/cgroup");
    assert_eq!(relative(root, Path::new("/sys/fs/cgroup")), "/");
    assert_eq!(
        relative(root, Path::new("/sys/fs/cgroup/a/b.scope")),
        "/a/b.scope"
    );
    assert_eq!(relative(root, Path::new("/elsewhere")), "/elsewhere");
}
