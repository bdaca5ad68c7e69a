//! The groups the runtime creates for a container, as hostd expects and holds them.

use std::io;
use std::path::Path;

use crate::cgroup::{Cgroup, CgroupError};

/// The guest's groups if the runtime creates them at `rel` below hostd's own group in every
/// hierarchy (what runc's cgroupfs driver does with a relative cgroupsPath).
pub(super) fn expected_cgroup(rel: &Path) -> Option<Cgroup> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    crate::cgroup::dirs_of(&own, &mountinfo, |p| Some(p.join(rel)))
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
