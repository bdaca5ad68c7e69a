//! The groups the runtime creates for a container, as hostd expects and holds them.

use std::io;
use std::path::Path;

use crate::cgroup::Cgroup;

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
pub(super) fn hold_run_groups(cg: &Cgroup) -> io::Result<()> {
    for leaf in &cg.dirs {
        let Some(run_dir) = leaf.parent() else { continue };
        let mut attempt = 0;
        loop {
            match create_groups(run_dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 3 => attempt += 1,
                r => break r?,
            }
        }
    }
    Ok(())
}

/// mkdir -p for cgroup directories: a new v1 cpuset group starts with no CPUs and no memory
/// nodes, so it gets its parent's (as Cgroup::create does).
pub(super) fn create_groups(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent =
        dir.parent().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no parent"))?;
    create_groups(parent)?;
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        r => r?,
    }
    for f in ["cpuset.cpus", "cpuset.mems"] {
        if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
            std::fs::write(dir.join(f), v.trim())?;
        }
    }
    Ok(())
}
