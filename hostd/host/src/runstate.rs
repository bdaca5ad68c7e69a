//! A run's footprint on the host, written to disk before any guest starts, so that after a
//! crash (or SIGKILL) of hostd the next hostd can find every resource the run created and
//! release it. Everything a run creates is named after its id: cgroups under
//! `virtbench/<run>/` of each hierarchy, network namespaces `vb-<run>` and `vbn-<run>-*`,
//! Xen domains `vb-<run>-*` (on a Xen dom0), scratch files under `/run/virtbench/<run>/`
//! (sockets, logs, runtime state, umid dirs, root disk overlays).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroup;

/// Where runs keep their scratch directories and state files (tmpfs: gone after reboot,
/// like the guests themselves).
pub const RUN_ROOT: &str = "/run/virtbench";
/// Where runs keep files that must sit on a disk-backed file system (per-guest image copies,
/// whose pages a cold start evicts: tmpfs pages cannot leave memory): `DISK_ROOT/<run>/`.
pub const DISK_ROOT: &str = "/var/tmp/virtbench";

/// A run's state on disk (written before its first guest): its id, hostd's pid and where
/// its scratch and results are, so a later hostd can reap what a crashed run left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The run's id, which names everything it creates.
    pub run: String,
    /// The pid of the hostd that made the run.
    pub hostd_pid: u32,
    /// The pid's start time (clock ticks since boot): tells a live hostd from a reused pid.
    pub hostd_start: u64,
    /// What made the run (`run`, `boot`, `up`, …).
    pub purpose: String,
    /// When the run was made (RFC 3339, seconds).
    pub created: String,
    /// The run's scratch directory (`/run/virtbench/<run>/`), holding this state file.
    pub scratch: PathBuf,
    /// `virtbench/<run>` directories in each cgroup hierarchy this run may populate.
    pub cgroup_roots: Vec<PathBuf>,
    /// Where results go, if this run records any.
    pub results: Option<PathBuf>,
}

/// What a cleanup found and released.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Cleaned {
    /// The run that was cleaned up.
    pub run: String,
    /// Guest processes killed.
    pub processes_killed: usize,
    /// Cgroup directories removed.
    pub cgroups_removed: usize,
    /// Network namespaces removed.
    pub netns_removed: Vec<String>,
    /// Xen domains destroyed (a domain outlives its killed `xl create -F`).
    pub domains_destroyed: Vec<String>,
    /// Whether the scratch directory was removed.
    pub scratch_removed: bool,
    /// What could not be released, in words.
    pub errors: Vec<String>,
}

impl std::fmt::Display for Cleaned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {}: killed {} processes, removed {} cgroups, {} network namespaces{}{}{}",
            self.run,
            self.processes_killed,
            self.cgroups_removed,
            self.netns_removed.len(),
            if self.domains_destroyed.is_empty() {
                String::new()
            } else {
                format!(", destroyed Xen domains {}", self.domains_destroyed.join(", "))
            },
            if self.scratch_removed { ", scratch directory" } else { "" },
            if self.errors.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", self.errors.join("; "))
            }
        )
    }
}

/// A short id usable in cgroup, netns and link names: `r` + 7 hex digits.
pub fn new_run_id() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let x = (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32);
    // Mix so consecutive calls differ in the low digits too.
    let x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 36;
    format!("r{:07x}", x & 0x0fff_ffff)
}

/// Start time of a live process (None if gone or a zombie: a killed hostd whose parent has
/// not reaped it yet is dead for our purposes).
fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z") | Some("X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl RunState {
    /// Creates the scratch directory and writes the state file, durably, before anything
    /// else of the run exists.
    pub fn create(purpose: &str, results: Option<PathBuf>) -> io::Result<Self> {
        Self::create_in(Path::new(RUN_ROOT), purpose, results)
    }

    /// [`RunState::create`] under `root` instead of /run/virtbench (tests).
    pub fn create_in(root: &Path, purpose: &str, results: Option<PathBuf>) -> io::Result<Self> {
        let run = new_run_id();
        let scratch = root.join(&run);
        fs::create_dir_all(&scratch)?;
        let pid = std::process::id();
        let st = RunState {
            hostd_pid: pid,
            hostd_start: proc_start_ticks(pid).unwrap_or(0),
            purpose: purpose.into(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            cgroup_roots: cgroup::run_roots(&run),
            run,
            scratch,
            results,
        };
        write_atomic(
            &st.scratch.join("state.json"),
            &serde_json::to_vec_pretty(&crate::results::Versioned::new(&st))
                .map_err(io::Error::other)?,
        )?;
        Ok(st)
    }

    /// The run's directory on a disk-backed file system (created by whoever uses it,
    /// removed with the run).
    pub fn disk_dir(&self) -> PathBuf {
        Path::new(DISK_ROOT).join(&self.run)
    }

    /// Whether the hostd that made this run is still running.
    pub fn owner_alive(&self) -> bool {
        proc_start_ticks(self.hostd_pid).is_some_and(|t| t == self.hostd_start)
    }

    /// Releases everything the run may have created. Safe to call more than once.
    pub fn cleanup(&self) -> Cleaned {
        let mut c = Cleaned { run: self.run.clone(), ..Default::default() };
        // Processes first: every guest process lives in the run's cgroups.
        for root in &self.cgroup_roots {
            match cgroup::remove_tree(root, Duration::from_secs(10)) {
                Ok((killed, removed)) => {
                    c.processes_killed = c.processes_killed.max(killed);
                    c.cgroups_removed += removed;
                }
                Err(e) => c.errors.push(e.to_string()),
            }
        }
        // A guest's domain, once its xl is killed above, runs on with its root disk overlay
        // open: destroyed before the scratch directory holding the overlay goes.
        if is_xen_dom0(Path::new("/")) {
            let (destroyed, errors) = destroy_xen_domains("xl", &self.run);
            c.domains_destroyed = destroyed;
            c.errors.extend(errors);
        }
        match list_netns() {
            Ok(names) => {
                for n in names.into_iter().filter(|n| owns_netns(&self.run, n)) {
                    match crate::netlab::ip(&["netns", "del", &n]) {
                        Ok(()) => c.netns_removed.push(n),
                        Err(e) => c.errors.push(e.to_string()),
                    }
                }
            }
            Err(e) => c.errors.push(format!("listing {}: {e}", crate::rtnl::NETNS_DIR)),
        }
        let disk = self.disk_dir();
        if disk.exists() {
            if let Err(e) = fs::remove_dir_all(&disk) {
                c.errors.push(format!("removing {}: {e}", disk.display()));
            }
        }
        // Something could not be released (a cgroup whose processes were still dying): the
        // state file stays, so the next hostd's reaping retries instead of forgetting the run
        // (4494 empty cgroups of a killed 5000-guest worker were left that way).
        if !c.errors.is_empty() && self.scratch.exists() {
            c.errors.push(format!(
                "kept {} so that the next hostd retries",
                self.scratch.join("state.json").display()
            ));
        } else if self.scratch.exists() {
            match fs::remove_dir_all(&self.scratch) {
                Ok(()) => c.scratch_removed = true,
                Err(e) => c.errors.push(format!("removing {}: {e}", self.scratch.display())),
            }
        }
        c
    }

    /// Normal end of a run: the state file goes last.
    pub fn finish(&self) -> Cleaned {
        self.cleanup()
    }
}

/// Network namespaces belonging to `run`: the fleet's and per-guest ones.
pub fn owns_netns(run: &str, name: &str) -> bool {
    name == format!("vb-{run}") || name.starts_with(&format!("vbn-{run}-"))
}

/// Whether this system is a Xen dom0 (per /proc under `root`), where domains may be left.
fn is_xen_dom0(root: &Path) -> bool {
    fs::read_to_string(root.join("proc/xen/capabilities"))
        .is_ok_and(|c| c.split(',').any(|w| w.trim() == "control_d"))
}

/// Destroys the Xen domains of `run` (the xen backend names them `vb-<run>-<guest>`) with
/// `xl` (a name on PATH or a path). Returns the domains destroyed and what failed, in words.
pub fn destroy_xen_domains(xl: &str, run: &str) -> (Vec<String>, Vec<String>) {
    let out = match std::process::Command::new(xl)
        .arg("list")
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => {
            return (
                Vec::new(),
                vec![format!("{xl} list: {}", String::from_utf8_lossy(&o.stderr).trim())],
            )
        }
        // No toolstack: no domain can have been made through it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (Vec::new(), Vec::new()),
        Err(e) => return (Vec::new(), vec![format!("running {xl} list: {e}")]),
    };
    let prefix = format!("vb-{run}-");
    let (mut destroyed, mut errors) = (Vec::new(), Vec::new());
    // `xl list`: a header line, then one line per domain, its name first.
    for name in String::from_utf8_lossy(&out)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
    {
        match std::process::Command::new(xl)
            .args(["destroy", name])
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => destroyed.push(name.to_string()),
            Ok(o) => errors.push(format!(
                "{xl} destroy {name}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => errors.push(format!("running {xl} destroy {name}: {e}")),
        }
    }
    (destroyed, errors)
}

/// The named network namespaces: the files under /run/netns, where `ip netns` and
/// [`crate::rtnl`] bind them (read directly: no `ip netns list` process).
fn list_netns() -> io::Result<Vec<String>> {
    let rd = match fs::read_dir(crate::rtnl::NETNS_DIR) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
}

/// Runs whose hostd is gone: their state files under `root`.
pub fn orphans_in(root: &Path) -> Vec<RunState> {
    let Ok(rd) = fs::read_dir(root) else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| fs::read(e.path().join("state.json")).ok())
        .filter_map(|b| serde_json::from_slice::<RunState>(&b).ok())
        .filter(|s| !s.owner_alive())
        .collect()
}

/// Finds and releases every orphaned run; returns what was cleaned. Also drops fleet name
/// links (`fleets/<name>`) whose run is gone.
pub fn reap_orphans() -> Vec<Cleaned> {
    let cleaned = orphans_in(Path::new(RUN_ROOT)).iter().map(RunState::cleanup).collect();
    // Disk directories whose run has no state file left (hostd died between removing one
    // and the other): nothing can be using them.
    if let Ok(rd) = fs::read_dir(DISK_ROOT) {
        for e in rd.flatten() {
            if !Path::new(RUN_ROOT).join(e.file_name()).join("state.json").exists() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(rd) = fs::read_dir(Path::new(RUN_ROOT).join("fleets")) {
        for e in rd.flatten() {
            if !e.path().join("state.json").exists() {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    cleaned
}

/// Writes `data` to `path` so that readers see the old or the new content, never a mix:
/// temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        std::process::id()
    ));
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        // A full disk must not also leave half a temp file behind.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_short_and_distinct() {
        let a = new_run_id();
        std::thread::sleep(Duration::from_millis(1));
        let b = new_run_id();
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    /// Only the run's own domains are destroyed; a toolstack that fails is reported.
    #[test]
    fn a_runs_xen_domains_are_destroyed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let xl = d.path().join("xl");
        fs::write(
            &xl,
            "#!/bin/sh\ncase \"$1\" in\nlist) printf 'Name  ID   Mem VCPUs\\tState\\tTime(s)\\nDomain-0  0  512  1  r-----  9.9\\nvb-r1234567-g0  3  128  1  -b----  1.0\\nvb-r12345678-g0  4  128  1  -b----  1.0\\nvb-r1234567-g1  5  128  1  -b----  1.0\\n' ;;\ndestroy) echo \"$2\" >> \"$(dirname \"$0\")/destroyed\"; [ \"$2\" != vb-r1234567-g1 ] || { echo 'g1 is stuck' >&2; exit 1; } ;;\nesac\n",
        )
        .unwrap();
        fs::set_permissions(&xl, fs::Permissions::from_mode(0o755)).unwrap();
        let (destroyed, errors) = destroy_xen_domains(xl.to_str().unwrap(), "r1234567");
        assert_eq!(destroyed, ["vb-r1234567-g0"]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].ends_with("destroy vb-r1234567-g1: g1 is stuck"), "{errors:?}");
        assert_eq!(
            fs::read_to_string(d.path().join("destroyed")).unwrap(),
            "vb-r1234567-g0\nvb-r1234567-g1\n",
            "another run's domain is left alone"
        );
        // No toolstack at all: nothing to destroy, nothing to retry.
        let (destroyed, errors) = destroy_xen_domains("/no/such/xl", "r1234567");
        assert!(destroyed.is_empty() && errors.is_empty(), "{errors:?}");
        fs::write(&xl, "#!/bin/sh\necho 'xenstored is down' >&2; exit 1\n").unwrap();
        let (_, errors) = destroy_xen_domains(xl.to_str().unwrap(), "r1234567");
        assert!(errors[0].ends_with("list: xenstored is down"), "{errors:?}");
        assert!(!is_xen_dom0(d.path()));
        fs::create_dir_all(d.path().join("proc/xen")).unwrap();
        fs::write(d.path().join("proc/xen/capabilities"), "control_d\n").unwrap();
        assert!(is_xen_dom0(d.path()));
    }

    #[test]
    fn netns_ownership() {
        assert!(owns_netns("r1234567", "vb-r1234567"));
        assert!(owns_netns("r1234567", "vbn-r1234567-3"));
        assert!(!owns_netns("r1234567", "vb-r12345678"));
        assert!(!owns_netns("r1234567", "vbn-r12345670-3"));
    }

    #[test]
    fn state_file_roundtrip_and_orphan_detection() {
        let root = tempfile::tempdir().unwrap();
        let mut st = RunState::create_in(root.path(), "test", None).unwrap();
        assert!(st.owner_alive());
        assert!(orphans_in(root.path()).is_empty());
        // Pretend the owner died: a pid start time that cannot match.
        st.hostd_start += 1;
        write_atomic(&st.scratch.join("state.json"), &serde_json::to_vec(&st).unwrap()).unwrap();
        let o = orphans_in(root.path());
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].run, st.run);
        // A cgroup tree that cannot be released: the state stays for the next reaping.
        let not_a_tree = root.path().join("not-a-cgroup-tree");
        std::fs::write(&not_a_tree, b"").unwrap();
        st.cgroup_roots = vec![not_a_tree];
        let c = st.cleanup();
        assert!(
            !c.scratch_removed && c.errors.iter().any(|e| e.contains("next hostd retries")),
            "{c}"
        );
        assert_eq!(orphans_in(root.path()).len(), 1, "the run is still known");
        st.cgroup_roots.clear();
        let c = st.cleanup();
        assert!(c.scratch_removed, "{c}");
        assert!(orphans_in(root.path()).is_empty());
    }
}
