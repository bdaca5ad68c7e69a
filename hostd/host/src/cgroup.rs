//! Per-guest control groups, on cgroup v2 or v1 (these machines are hybrid: v1 controllers
//! plus an empty v2 tree). Every guest's host processes go into one group, which gives the
//! paper's per-VM memory figure, resource limits, and a reliable way to kill everything.
//!
//! Groups are created below hostd's own group of each hierarchy (from /proc/self/cgroup), so
//! hostd works wherever it is itself confined.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const ROOT: &str = "/sys/fs/cgroup";
/// v1 controllers a guest group is created in.
const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Which cgroup hierarchy this host has (the memory figures depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The unified hierarchy with the memory controller available.
    V2,
    /// Separate per-controller hierarchies.
    V1,
}

/// Why no cgroup hierarchy is usable here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum DetectError {
    /// Neither a v2 tree with the memory controller nor a v1 memory hierarchy hostd is in.
    #[error("no usable cgroup memory controller under {}", root.display())]
    NoMemoryController { root: PathBuf },
}

/// Why a guest's group could not be made, joined or removed, named after the step that
/// failed; each names the directory or file.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum CgroupError {
    /// A run or guest name that cannot be a directory name here.
    #[error("bad cgroup name {name:?}: 1 to 64 ASCII letters, digits, '-' or '_'")]
    BadName { name: String },
    #[error("creating cgroup {}: {source}", dir.display())]
    Create { dir: PathBuf, source: io::Error },
    /// A directory to create has no parent to create first (an empty or root path).
    #[error("cgroup {} has no parent directory", dir.display())]
    NoParent { dir: PathBuf },
    /// Writing a limit, a cpuset copied from the parent, or the kill switch.
    #[error("writing {}: {source}", file.display())]
    Write { file: PathBuf, source: io::Error },
    /// Reading the parent's cpuset to copy into a new v1 cpuset group.
    #[error("reading {}: {source}", file.display())]
    Read { file: PathBuf, source: io::Error },
    #[error("moving process {pid} into {}: {source}", dir.display())]
    Join { pid: u32, dir: PathBuf, source: io::Error },
    #[error("processes remain in {} after {after:?} of SIGKILL", dir.display())]
    ProcessesRemain { dir: PathBuf, after: Duration },
    #[error("listing cgroup {}: {source}", dir.display())]
    List { dir: PathBuf, source: io::Error },
    #[error("removing cgroup {}: {source}", dir.display())]
    Remove { dir: PathBuf, source: io::Error },
}

impl CgroupError {
    /// A directory on the way was missing (another run removing the shared `virtbench`
    /// parent between our mkdirs): worth trying again.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CgroupError::Create { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// `fs::write`, the error naming the file.
fn write(file: PathBuf, text: impl AsRef<[u8]>) -> Result<(), CgroupError> {
    fs::write(&file, text).map_err(|source| CgroupError::Write { file, source })
}

/// Which hierarchy to use here, or why none works.
pub fn detect() -> Result<Mode, DetectError> {
    detect_in(Path::new(ROOT), &fs::read_to_string("/proc/self/cgroup").unwrap_or_default())
}

fn detect_in(root: &Path, self_cgroup: &str) -> Result<Mode, DetectError> {
    // Pure v2: /sys/fs/cgroup itself is the unified tree.
    if let Ok(c) = fs::read_to_string(root.join("cgroup.controllers")) {
        if c.split_whitespace().any(|x| x == "memory") {
            return Ok(Mode::V2);
        }
    }
    if root.join("memory").join("cgroup.procs").exists()
        && self_cgroup.lines().any(|l| l.split(':').nth(1) == Some("memory"))
    {
        return Ok(Mode::V1);
    }
    Err(DetectError::NoMemoryController { root: root.to_path_buf() })
}

/// hostd's own group in `controller`'s v1 hierarchy, or in the v2 tree (controller "").
fn own_path(self_cgroup: &str, controller: &str) -> PathBuf {
    for l in self_cgroup.lines() {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) =
            (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        if hit {
            return PathBuf::from(path.trim_start_matches('/'));
        }
    }
    PathBuf::new()
}

/// One guest's group. Serializable so a later hostd can find and remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// Which hierarchy the group lives in.
    pub mode: Mode,
    /// One directory (v2) or one per controller (v1), memory first.
    pub dirs: Vec<PathBuf>,
}

/// Limits applied at creation. None: unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// The memory limit, bytes (memory.max, or memory.limit_in_bytes on v1).
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in CPUs (e.g. 1.0 = one full CPU).
    pub cpus: Option<f64>,
    /// The most processes the group may hold.
    pub pids: Option<u64>,
    /// CPUs the group may run on (cpuset syntax, e.g. "0").
    pub cpuset: Option<&'static str>,
}

impl Cgroup {
    /// Creates `virtbench/<run>/<guest>` below hostd's own groups.
    pub fn create(mode: Mode, run: &str, guest: &str, limits: Limits) -> Result<Self, CgroupError> {
        check_name(run)?;
        check_name(guest)?;
        let self_cg = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let rel = |ctrl: &str| own_path(&self_cg, ctrl).join("virtbench").join(run).join(guest);
        let mut dirs: Vec<PathBuf> = match mode {
            Mode::V2 => vec![Path::new(ROOT).join(rel(""))],
            Mode::V1 => {
                V1_CONTROLLERS.iter().map(|c| Path::new(ROOT).join(c).join(rel(c))).collect()
            }
        };
        if mode == Mode::V1 && limits.cpuset.is_some() {
            dirs.push(Path::new(ROOT).join("cpuset").join(rel("cpuset")));
        }
        let cg = Cgroup { mode, dirs };
        for d in &cg.dirs {
            // Another run removing its now-empty `virtbench/` parent can race our mkdir:
            // try again on NotFound.
            let mut tries = 0;
            loop {
                let r = if d.starts_with(Path::new(ROOT).join("cpuset")) {
                    create_cpuset_v1(d)
                } else {
                    fs::create_dir_all(d)
                        .map_err(|source| CgroupError::Create { dir: d.clone(), source })
                };
                match r {
                    Err(e) if e.is_not_found() && tries < 5 => tries += 1,
                    r => break r?,
                }
            }
        }
        if mode == Mode::V2 {
            // Enable the controllers on every ancestor up to ours.
            enable_v2_controllers(&cg.dirs[0]);
        }
        cg.apply(limits)?;
        Ok(cg)
    }

    fn apply(&self, l: Limits) -> Result<(), CgroupError> {
        match self.mode {
            Mode::V2 => {
                let d = &self.dirs[0];
                if let Some(m) = l.memory_bytes {
                    write(d.join("memory.max"), m.to_string())?;
                }
                if let Some(c) = l.cpus {
                    write(d.join("cpu.max"), format!("{} 100000", (c * 100_000.0) as u64))?;
                }
                if let Some(p) = l.pids {
                    write(d.join("pids.max"), p.to_string())?;
                }
                if let Some(c) = l.cpuset {
                    write(d.join("cpuset.cpus"), c)?;
                }
            }
            Mode::V1 => {
                if let Some(m) = l.memory_bytes {
                    write(self.dirs[0].join("memory.limit_in_bytes"), m.to_string())?;
                }
                if let Some(c) = l.cpus {
                    write(self.dirs[1].join("cpu.cfs_period_us"), "100000")?;
                    write(
                        self.dirs[1].join("cpu.cfs_quota_us"),
                        ((c * 100_000.0) as u64).to_string(),
                    )?;
                }
                if let Some(p) = l.pids {
                    write(self.dirs[2].join("pids.max"), p.to_string())?;
                }
                if let (Some(c), Some(d)) = (l.cpuset, self.dirs.get(3)) {
                    write(d.join("cpuset.cpus"), c)?;
                }
            }
        }
        Ok(())
    }

    /// Moves a process (and its future children) into the group.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            fs::write(d.join("cgroup.procs"), pid.to_string())
                .map_err(|source| CgroupError::Join { pid, dir: d.clone(), source })?;
        }
        Ok(())
    }

    /// The processes in the group (its first hierarchy's `cgroup.procs`); empty if unreadable.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.dirs[0].join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Memory charged to the group, bytes (page cache and shmem included, as the kernel counts it).
    pub fn memory_bytes(&self) -> Option<u64> {
        let f = match self.mode {
            Mode::V2 => "memory.current",
            Mode::V1 => "memory.usage_in_bytes",
        };
        fs::read_to_string(self.dirs[0].join(f)).ok()?.trim().parse().ok()
    }

    /// What the group holds the way the host's used memory counts it (see
    /// `memory::used_kib`): the charge less reclaimable file cache and slab, keeping shmem.
    /// The cross-check of M_used sums this over guests: a cold start's image reads are
    /// charged to the guest as page cache, which the host's figure rightly leaves out.
    pub fn used_memory_bytes(&self) -> Option<u64> {
        let total = self.memory_bytes()?;
        let stat = fs::read_to_string(self.dirs[0].join("memory.stat")).ok()?;
        let field = |k: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
        };
        let reclaimable = match self.mode {
            // v2's `file` includes shmem (tmpfs, memfd guest RAM), which is not reclaimable.
            Mode::V2 => {
                field("file")?.saturating_sub(field("shmem").unwrap_or(0))
                    + field("slab_reclaimable").unwrap_or(0)
            }
            Mode::V1 => field("total_cache")?.saturating_sub(field("total_shmem").unwrap_or(0)),
        };
        Some(total.saturating_sub(reclaimable))
    }

    /// Processes the kernel's OOM killer ended in the group (its memory limit was reached).
    pub fn oom_kills(&self) -> u64 {
        let file = match self.mode {
            Mode::V2 => "memory.events",
            Mode::V1 => "memory.oom_control",
        };
        let text = fs::read_to_string(self.dirs[0].join(file)).unwrap_or_default();
        text.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("oom_kill")).then(|| w.next()?.parse().ok()).flatten()
            })
            .unwrap_or(0)
    }

    /// SIGKILLs every process in the group until it is empty (or `deadline` passes).
    pub fn kill_all(&self, deadline: Duration) -> Result<(), CgroupError> {
        if self.mode == Mode::V2 && self.dirs[0].join("cgroup.kill").exists() {
            write(self.dirs[0].join("cgroup.kill"), "1")?;
        }
        let start = Instant::now();
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if start.elapsed() > deadline {
                return Err(CgroupError::ProcessesRemain {
                    dir: self.dirs[0].clone(),
                    after: deadline,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills what is left and removes the group's directories. The run's directory and the
    /// shared `virtbench` one are left to the run's cleanup (RunState): removing them here
    /// would race with other guests being created beside this one.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all(Duration::from_secs(5))?;
        for d in &self.dirs {
            rmdir_retry(d)?;
        }
        Ok(())
    }
}

/// The `virtbench/<run>` directory of every hierarchy hostd belongs to: where any backend
/// (ours or an OCI runtime creating groups in all hierarchies) puts the run's guests.
pub fn run_roots(run: &str) -> Vec<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    dirs_of(&own, &mountinfo, |p| Some(p.join("virtbench").join(run)))
        .map(|c| c.dirs)
        .unwrap_or_default()
}

/// A process's groups as directories, one per hierarchy listed in `proc_cgroup` (a
/// /proc/<pid>/cgroup text), mapped through `pick` (None: skip that hierarchy); memory
/// first. Each hierarchy is found among the cgroup mounts of `mountinfo`. The mode is V1
/// when a v1 memory hierarchy holds the process, else V2.
pub fn dirs_of(
    proc_cgroup: &str,
    mountinfo: &str,
    pick: impl Fn(&Path) -> Option<PathBuf>,
) -> Option<Cgroup> {
    struct M<'a> {
        v2: bool,
        opts: Vec<&'a str>,
        root: &'a str,
        point: &'a str,
    }
    let mounts: Vec<M> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let (fstype, _src, opts) = (post.next()?, post.next()?, post.next()?);
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(M { v2, opts: opts.split(',').collect(), root: pre.get(3)?, point: pre.get(4)? })
        })
        .collect();
    let mut dirs = Vec::new();
    let mut memory = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let v2 = ctrls.is_empty();
        let Some(m) = mounts
            .iter()
            .find(|m| m.v2 == v2 && (v2 || ctrls.split(',').all(|c| m.opts.contains(&c))))
        else {
            continue;
        };
        let Some(path) = pick(Path::new(path)) else { continue };
        // A mount of a sub-tree (inside a cgroup namespace) shows paths relative to its root.
        let Ok(inner) = path.strip_prefix(m.root) else { continue };
        let dir = Path::new(m.point).join(inner);
        if !v2 && ctrls.split(',').any(|c| c == "memory") {
            memory = Some(dir);
        } else if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    let mode = if memory.is_some() { Mode::V1 } else { Mode::V2 };
    if let Some(m) = memory {
        dirs.insert(0, m);
    } else if let Some(i) =
        dirs.iter().position(|d| mounts.iter().any(|m| m.v2 && d.starts_with(m.point)))
    {
        // v2: the unified group is the one that counts.
        let d = dirs.remove(i);
        dirs.insert(0, d);
    }
    (!dirs.is_empty()).then_some(Cgroup { mode, dirs })
}

/// Kills every process in the tree below `root` and removes its directories, deepest first.
/// Returns (processes signalled, directories removed). A missing root is not an error.
pub fn remove_tree(root: &Path, deadline: Duration) -> Result<(usize, usize), CgroupError> {
    if !root.exists() {
        return Ok((0, 0));
    }
    let mut dirs = Vec::new();
    collect_dirs(root, &mut dirs)?;
    // Deepest first, so children go before parents.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    let mut killed = std::collections::BTreeSet::new();
    let start = Instant::now();
    for d in &dirs {
        loop {
            let pids: Vec<u32> = fs::read_to_string(d.join("cgroup.procs"))
                .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
                .unwrap_or_default();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                killed.insert(p);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if start.elapsed() > deadline {
                return Err(CgroupError::ProcessesRemain { dir: d.clone(), after: deadline });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for d in &dirs {
        rmdir_retry(d)?;
    }
    // The shared `virtbench` parent goes once no other run uses it.
    if let Some(p) = root.parent() {
        let _ = fs::remove_dir(p);
    }
    Ok((killed.len(), dirs.len()))
}

fn collect_dirs(d: &Path, out: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    out.push(d.to_path_buf());
    let list = |source| CgroupError::List { dir: d.to_path_buf(), source };
    for e in fs::read_dir(d).map_err(list)? {
        let e = e.map_err(list)?;
        if e.file_type().map_err(list)?.is_dir() {
            collect_dirs(&e.path(), out)?;
        }
    }
    Ok(())
}

/// rmdir of a cgroup fails with EBUSY for a moment after its last process died.
fn rmdir_retry(d: &Path) -> Result<(), CgroupError> {
    let start = Instant::now();
    loop {
        match fs::remove_dir(d) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) if start.elapsed() > Duration::from_secs(2) => {
                return Err(CgroupError::Remove { dir: d.to_path_buf(), source })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// v1 cpuset groups start with no CPUs and no memory nodes: each new level copies its
/// parent's before anything can join.
fn create_cpuset_v1(leaf: &Path) -> Result<(), CgroupError> {
    let base = Path::new(ROOT).join("cpuset");
    let mut chain: Vec<&Path> =
        leaf.ancestors().take_while(|p| p.starts_with(&base) && *p != base).collect();
    chain.reverse();
    for dir in chain {
        if !dir.exists() {
            fs::create_dir(dir)
                .map_err(|source| CgroupError::Create { dir: dir.to_path_buf(), source })?;
            let parent = dir.parent().expect("below the root");
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let from = parent.join(f);
                let v = fs::read_to_string(&from)
                    .map_err(|source| CgroupError::Read { file: from, source })?;
                write(dir.join(f), v.trim())?;
            }
        }
    }
    Ok(())
}

fn enable_v2_controllers(leaf: &Path) {
    let mut chain: Vec<&Path> =
        leaf.ancestors().skip(1).take_while(|p| p.starts_with(ROOT)).collect();
    chain.reverse();
    for dir in chain {
        // Best effort: a controller another manager delegates differently is left alone.
        let _ = fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
        let _ = fs::write(dir.join("cgroup.subtree_control"), "+cpuset");
    }
}

fn check_name(n: &str) -> Result<(), CgroupError> {
    if n.is_empty()
        || n.len() > 64
        || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CgroupError::BadName { name: n.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
