//! The groups the runtime creates for a container, as hostd expects and holds them.

use std::io;
use std::path::Path;

use crate::cgroup::{Cgroup, CgroupError};

/// The guest's groups if the runtime creates them at `rel` below hostd's own group in every
/// hierarchy (what runc's cgroupfs driver does with a relative cgroupsPath).
pub(super) fn expected_cgroup(rel: &Path) -> Option<Cgroup> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    crate::cgroup::dirs_of(&own, cgroup_mounts()?, |p| Some(p.join(rel)))
}

/// The cgroup mounts of hostd's mount namespace: the lines of /proc/self/mountinfo that
/// [`crate::cgroup::dirs_of`] reads, read once. Every fleet guest adds a network namespace
/// mount, so reading the whole table twice per launch cost time growing with the fleet
/// (the kernel formats every line each time); the hierarchies themselves are mounted before
/// hostd starts and stay. None if the table cannot be read.
pub(super) fn cgroup_mounts() -> Option<&'static str> {
    static MOUNTS: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    MOUNTS
        .get_or_init(|| {
            let all = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            Some(cgroup_lines(&all))
        })
        .as_deref()
}

/// The lines of a mountinfo text whose file system is cgroup or cgroup2.
fn cgroup_lines(mountinfo: &str) -> String {
    mountinfo
        .lines()
        .filter(|l| {
            l.split_once(" - ")
                .and_then(|(_, post)| post.split(' ').next())
                .is_some_and(|fs| fs == "cgroup" || fs == "cgroup2")
        })
        .flat_map(|l| [l, "\n"])
        .collect()
}

/// Creates the run's group (`virtbench/<run>`) in every hierarchy before the runtime runs.
/// Another run's teardown removes the shared `virtbench` directory once it looks empty; if
/// that happened between the runtime's mkdir of `virtbench` and of `virtbench/<run>`, the
/// start would fail. A `virtbench` holding our run's directory cannot be removed.
pub(super) fn hold_run_groups(cg: &Cgroup) -> Result<(), CgroupError> {
    for leaf in &cg.dirs {
        let Some(run_dir) = leaf.parent() else { continue };
        let mut attempt = 0;
        loop {
            match create_groups(run_dir) {
                Err(e) if e.is_not_found() && attempt < 3 => attempt += 1,
                r => break r?,
            }
        }
    }
    Ok(())
}

/// mkdir -p for cgroup directories: a new v1 cpuset group starts with no CPUs and no memory
/// nodes, so it gets its parent's (as Cgroup::create does).
pub(super) fn create_groups(dir: &Path) -> Result<(), CgroupError> {
    if dir.is_dir() {
        return Ok(());
    }
    // A relative path's last ancestor is "", which cannot be made either.
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| CgroupError::NoParent { dir: dir.to_path_buf() })?;
    create_groups(parent)?;
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        r => r.map_err(|source| CgroupError::Create { dir: dir.to_path_buf(), source })?,
    }
    for f in ["cpuset.cpus", "cpuset.mems"] {
        if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
            let file = dir.join(f);
            std::fs::write(&file, v.trim())
                .map_err(|source| CgroupError::Write { file, source })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cgroup_mounts_are_kept_and_they_map_groups_as_the_whole_table_does() {
        let info = "\
25 1 0:22 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
26 1 0:23 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
40 1 0:4 net:[4026532000] /run/netns/vbn-r-0 rw - nsfs nsfs rw
41 1 8:1 / / rw - ext4 /dev/vda rw
";
        let kept = cgroup_lines(info);
        assert_eq!(kept.lines().count(), 2, "{kept}");
        assert!(!kept.contains("nsfs") && !kept.contains("ext4"), "{kept}");
        let own = "4:memory:/a\n0::/b\n";
        let rel = Path::new("virtbench/r/g0");
        let whole = crate::cgroup::dirs_of(own, info, |p| Some(p.join(rel))).expect("groups");
        let cut = crate::cgroup::dirs_of(own, &kept, |p| Some(p.join(rel))).expect("groups");
        assert_eq!(whole.dirs, cut.dirs);
        assert_eq!(whole.dirs[0], Path::new("/sys/fs/cgroup/memory/a/virtbench/r/g0"));
    }
}
