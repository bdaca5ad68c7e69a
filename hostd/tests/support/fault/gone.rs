//! What a run must leave behind on the host once torn down: nothing. The checks (cgroups,
//! network namespaces, links, mounts, processes, zombie children, work directories) and the
//! clean-up of a test run's own litter.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a container run could leave behind on the host, empty when its teardown was
/// complete: cgroup directories, network namespaces, mounts under `dir` or of the run, the
/// guests' processes, zombie children, work directories.
pub fn leftovers(
    run: &str,
    dir: &Path,
    mounts_before: &HashSet<String>,
    pids: &[u32],
    workdirs: &[PathBuf],
) -> Vec<String> {
    let mut left = Vec::new();
    left.extend(cgroup_dirs_of(run).into_iter().map(|d| format!("cgroup dir {}", d.display())));
    left.extend(netns_of(run).into_iter().map(|n| format!("netns {n}")));
    let dir_s = dir.display().to_string();
    for m in mountinfo().difference(mounts_before) {
        if m.contains(&dir_s) || m.contains(run) {
            left.push(format!("mount {m}"));
        }
    }
    for &p in pids {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), None).is_ok() {
            left.push(format!("process {p}"));
        }
    }
    left.extend(zombie_children().into_iter().map(|z| format!("zombie child {z}")));
    for w in workdirs {
        if w.exists() {
            left.push(format!("workdir {}", w.display()));
        }
    }
    left
}

/// Asserts `run` left nothing behind by `leftovers`. Retried briefly: the kernel tears a
/// network namespace down asynchronously, and a zombie may belong to a test running
/// alongside that is about to reap it.
pub fn assert_left_nothing(run: &str, mut leftovers: impl FnMut() -> Vec<String>) {
    // The run's own group directory is the run's to remove (RunState does it): rmdir, which
    // fails, and so leaves it to be reported, if any guest group is still inside.
    for r in hostd::cgroup::run_roots(run) {
        let _ = std::fs::remove_dir(r);
    }
    let mut left = Vec::new();
    for _ in 0..30 {
        left = leftovers();
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("left behind: {left:#?}");
}

/// Directories named `run` under a `virtbench` cgroup directory, in every hierarchy.
pub fn cgroup_dirs_of(run: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, run: &str, depth: u32, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "virtbench") && p.join(run).exists() {
                out.push(p.join(run));
            } else if depth > 0 {
                walk(&p, run, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), run, 4, &mut out);
    out
}

/// Every group below the run's cgroup directories (the run's own directory excluded).
pub fn guest_cgroups_of(run: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in cgroup_dirs_of(run) {
        if let Ok(rd) = std::fs::read_dir(&d) {
            out.extend(
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Network namespaces whose name mentions `run`.
pub fn netns_of(run: &str) -> Vec<String> {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(run))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Links in the fleet namespace `netns` whose name starts with `prefix`.
pub fn links_in(netns: &str, prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

pub fn mountinfo() -> HashSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().map(str::to_string).collect()
}

/// Running (a zombie not ours to reap counts as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !matches!(
                s.rsplit(')').next().and_then(|r| r.split_whitespace().next()),
                Some("Z") | Some("X")
            )
        })
        .unwrap_or(false)
}

/// Zombie children of this process (a guest nobody reaped).
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut z = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let rest: Vec<&str> =
            stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        if rest.first() == Some(&"Z") && rest.get(1) == Some(&me.as_str()) {
            z.push(pid);
        }
    }
    z
}

/// No zombie children, allowing a moment: a test running alongside in this process may be
/// about to reap one of its own.
pub fn assert_no_zombies(what: &str) {
    let start = Instant::now();
    while !zombie_children().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{what}: zombie children {:?}",
            zombie_children()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose process group is `pgid`, zombies too (one not reaped is a leak; `Gone`
/// counts only live ones, the zombie checks the others).
pub fn group_members(pgid: i32) -> Vec<u32> {
    let Ok(d) = std::fs::read_dir("/proc") else { return Vec::new() };
    d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(*p as i32))).map(|g| g.as_raw())
                == Ok(pgid)
        })
        .collect()
}

/// What must be gone after a guest is released.
#[derive(Default)]
pub struct Gone {
    pub pids: Vec<u32>,
    pub paths: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
    /// (fleet netns, link name)
    pub links: Vec<(String, String)>,
    pub netns: Vec<String>,
    /// Mount lines mentioning any of these strings.
    pub mounts_mentioning: Vec<String>,
}

impl Gone {
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for &p in &self.pids {
            if alive(p) {
                left.push(format!("process {p}"));
            }
        }
        for p in &self.paths {
            if p.exists() {
                left.push(format!("path {}", p.display()));
            }
        }
        for c in &self.cgroups {
            if c.exists() {
                left.push(format!("cgroup {}", c.display()));
            }
        }
        for (ns, l) in &self.links {
            if Path::new("/run/netns").join(ns).exists() && links_in(ns, l).iter().any(|x| x == l) {
                left.push(format!("link {l} in {ns}"));
            }
        }
        let all_ns = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
        let all_ns = String::from_utf8_lossy(&all_ns.stdout);
        for n in &self.netns {
            if all_ns.lines().any(|l| l.split_whitespace().next() == Some(n)) {
                left.push(format!("netns {n}"));
            }
        }
        for m in mountinfo() {
            if self.mounts_mentioning.iter().any(|s| m.contains(s.as_str())) {
                left.push(format!("mount {m}"));
            }
        }
        left
    }

    /// Asserts everything is gone, allowing a moment for asynchronous teardown (the kernel
    /// removes a namespace's links after the namespace).
    pub fn assert(&self, what: &str) {
        let start = Instant::now();
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            if start.elapsed() > Duration::from_secs(3) {
                panic!("{what}: left behind: {left:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Removes what a failed test run left (processes and groups of its cgroups, its network
/// namespaces), so one failure does not litter the host.
pub struct Litter(pub String);

impl Drop for Litter {
    fn drop(&mut self) {
        for root in hostd::cgroup::run_roots(&self.0) {
            let _ = hostd::cgroup::remove_tree(&root, Duration::from_secs(5));
        }
        for n in netns_of(&self.0) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &n]).status();
        }
    }
}
