//! The Slurm lab of the multi-host tests (tests/multihost.rs; scripts/slurm-lab,
//! docs/multihost.md): a lab of 3 emulated hosts stood up and always taken down, hostd run
//! on its login node, and what the tests read back (workers, coordinators, results, guests'
//! answers and limits).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-lab")
}

pub fn lab(args: &[&str]) -> Output {
    Command::new(lab_script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running slurm-lab {args:?}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A lab that is always taken down, whatever the test does.
pub struct Lab(pub String, bool);

impl Lab {
    pub fn up(tag: &str) -> Lab {
        let name = format!("mh{tag}{}", std::process::id() % 1_000_000);
        let o = lab(&["up", "3", "--name", &name]);
        assert!(o.status.success(), "slurm-lab up: {}", text(&o));
        Lab(name, false)
    }

    /// Takes the lab down and checks it had to kill nothing of ours: no guest, worker or
    /// step process was left in a host's namespaces.
    pub fn down_finding_nothing(mut self) {
        self.1 = true;
        let o = lab(&["down", &self.0]);
        let t = text(&o);
        assert!(o.status.success(), "slurm-lab down: {t}");
        assert!(t.contains(" 0 other processes killed"), "processes were left on the hosts: {t}");
    }

    /// Shell command `cmd` in host `i`'s namespaces: its stdout.
    pub fn host(&self, i: u32, cmd: &str) -> String {
        let o = lab(&["host", &self.0, &i.to_string(), "sh", "-c", cmd]);
        assert!(o.status.success(), "host {i}: {cmd}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `hostd boot --engine slurm --hosts 3 --backend ns -n N ARGS…` on the lab's login node.
    pub fn boot(&self, n: usize, results: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(lab_script());
        c.args(["exec", &self.0, "env"])
            .arg(format!("VIRTBENCH_IMAGES={}", images().display()))
            .arg(env!("CARGO_BIN_EXE_hostd"))
            .args(["boot", "--engine", "slurm", "--hosts", "3", "--backend", "ns"])
            .args(["--modes", "hot", "-n", &n.to_string(), "--results"])
            .arg(results)
            .args(extra);
        c
    }

    /// `hostd down NAME` succeeds, leaving no Slurm job and nothing of the workers' runs
    /// `runs` on any host.
    pub fn down_fleet(&self, name: &str, runs: &[String]) {
        let o = on_login(self, &["down", name]);
        assert!(o.status.success(), "hostd down: {}", text(&o));
        let o = lab_exec(self, &["squeue", "-h"]);
        assert!(String::from_utf8_lossy(&o.stdout).trim().is_empty(), "jobs left: {}", text(&o));
        self.assert_clean_of(runs);
    }

    /// Nothing of hostd's on any host: no network namespace, no run state, no worker, and
    /// no cgroup of the workers' runs `runs` (the hosts share the machine's cgroup tree).
    pub fn assert_clean_of(&self, runs: &[String]) {
        for run in runs {
            let o = Command::new("find")
                .args(["/sys/fs/cgroup", "-maxdepth", "12", "-type", "d", "-name", run])
                .output()
                .unwrap();
            let left = String::from_utf8_lossy(&o.stdout);
            assert!(left.trim().is_empty(), "cgroups of worker run {run} left: {left}");
        }
        self.assert_clean();
    }

    /// Nothing of hostd's on any host: no network namespace, no run state, no VXLAN device in
    /// the host's namespace, no worker.
    pub fn assert_clean(&self) {
        for i in 1..=3 {
            let left = self.host(
                i,
                "ip netns list; ls -A /run/virtbench 2>/dev/null; ip -o link show type vxlan",
            );
            assert!(left.trim().is_empty(), "host n{i} keeps: {left}");
        }
        let workers = workers(None);
        assert!(workers.is_empty(), "hostd workers still running: {workers:?}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.1 {
            return;
        }
        let o = lab(&["down", &self.0]);
        if !o.status.success() {
            eprintln!("slurm-lab down {}: {}", self.0, text(&o));
        }
    }
}

pub fn images() -> PathBuf {
    std::env::var_os("VIRTBENCH_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../images"))
}

/// PIDs of this build's `hostd worker` processes, on node `node` only if given.
pub fn workers(node: Option<&str>) -> Vec<u32> {
    let exe = env!("CARGO_BIN_EXE_hostd");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.first() != Some(&exe.as_bytes()) || args.get(1) != Some(&&b"worker"[..]) {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let on = |n: &str| {
            env.split(|&b| b == 0).any(|v| v == format!("SLURMD_NODENAME={n}").as_bytes())
        };
        if node.is_none_or(on) {
            out.push(pid);
        }
    }
    out
}

/// The workers' run ids a run recorded.
pub fn runs(m: &serde_json::Value) -> Vec<String> {
    let runs: Vec<String> = m["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["booted"]["run"].as_str().map(str::to_string))
        .collect();
    assert!(!runs.is_empty(), "no run ids in {m}");
    runs
}

pub fn gate() -> bool {
    if !super::skip::unless_root(None, "the Slurm lab needs root (namespaces, mounts, daemons)") {
        return false;
    }
    if Command::new("slurmd").arg("-V").output().is_err() {
        super::skip::skip(None, "no slurmd: scripts/install-deps installs Slurm");
        return false;
    }
    true
}

/// The lab `tag` stood up, with the lock held that keeps labs one at a time (the tests find
/// workers and coordinators by command line and node name, n1, n2, …, which every lab's
/// hosts share); None when this machine cannot run the lab (said why by the gate).
pub fn serial_lab(tag: &str) -> Option<(std::sync::MutexGuard<'static, ()>, Lab)> {
    let s = super::cli::serial();
    if !gate() {
        return None;
    }
    Some((s, Lab::up(tag)))
}

/// The one results directory a run made under `parent`, read.
pub fn results_of(parent: &Path) -> (PathBuf, serde_json::Value) {
    let dirs: Vec<PathBuf> =
        std::fs::read_dir(parent).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(dirs.len(), 1, "results directories: {dirs:?}");
    let d = dirs[0].clone();
    for e in walk(&d) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with('.') && !name.ends_with(".tmp"),
            "half-written file {}",
            e.display()
        );
    }
    let m = std::fs::read(d.join("multihost.json")).expect("multihost.json");
    (d, serde_json::from_slice(&m).unwrap())
}

pub fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Starts a held run of `n` guests (`boot` with `args`) and returns once the coordinator says
/// the fleet is up: the child, its stderr so far and the rest of its stderr.
// The caller waits for the child; the one early return here waits too.
#[allow(clippy::zombie_processes)]
pub fn held(
    lab: &Lab,
    results: &Path,
    n: usize,
    args: &[&str],
) -> (std::process::Child, String, BufReader<std::process::ChildStderr>) {
    let mut child =
        lab.boot(n, results, args).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut log = String::new();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            let st = child.wait();
            panic!("the coordinator ended ({st:?}) before holding its fleet:\n{log}");
        }
        log.push_str(&line);
        if line.contains("holding the fleet") {
            return (child, log, err);
        }
    }
}

/// The coordinators running: this build's hostd running `boot` (inside the allocation).
pub fn coordinators() -> Vec<u32> {
    let exe = env!("CARGO_BIN_EXE_hostd");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            (args.first() == Some(&exe.as_bytes()) && args.get(1) == Some(&&b"boot"[..]))
                .then_some(pid)
        })
        .collect()
}

/// `hostd ARGS…` on the lab's login node, with the images. The login node is this machine's
/// own namespaces: the hostd started there reaps every dead run of the machine (`hostd
/// reap`, and every start), so it holds the cross-binary reap lock as other binaries' hostd
/// starts do ([`super::cli::reap_lock`]): scripts/test runs these tests beside the campaign
/// test, which kills a hostd and checks its next one reaps the orphan.
pub fn on_login(lab: &Lab, args: &[&str]) -> Output {
    let _reaping = super::cli::reap_lock();
    Command::new(lab_script())
        .args(["exec", &lab.0, "env"])
        .arg(format!("VIRTBENCH_IMAGES={}", images().display()))
        .arg(env!("CARGO_BIN_EXE_hostd"))
        .args(args)
        .output()
        .unwrap()
}

/// Whether /bin/busybox is static (a guest whose root holds only the agent can run a copy);
/// if not, the test is skipped, saying it needed one `to` do what.
pub fn static_busybox_or_skip(to: &str) -> bool {
    let is_static = Command::new("file")
        .args(["-L", "/bin/busybox"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"));
    if !is_static {
        super::skip::skip(None, &format!("no static /bin/busybox {to}"));
    }
    is_static
}

/// A fleet file for `hostd up`, in a fresh directory under /var/tmp (the lab's hosts share it;
/// /tmp is each host's own), removed with it.
pub struct FleetFile {
    _dir: tempfile::TempDir,
    /// The fleet's name: its tag and this process's id.
    pub name: String,
    pub path: String,
}

impl FleetFile {
    /// Its directory, for the test's other files.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// A fleet file named `tag` + this process's id, `body` after its `name` line.
pub fn fleet_file(tag: &str, body: &str) -> FleetFile {
    let dir = tempfile::Builder::new().prefix("multihost-fleet-").tempdir_in("/var/tmp").unwrap();
    let name = format!("{tag}{}", std::process::id() % 1_000_000);
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, format!("name = \"{name}\"\n{body}")).unwrap();
    FleetFile { path: path.to_str().unwrap().into(), _dir: dir, name }
}

/// `hostd up FILE --engine slurm --hosts 3 EXTRA…` on the lab's login node.
pub fn up_across(lab: &Lab, f: &FleetFile, extra: &[&str]) -> Output {
    let mut args = vec!["up", f.path.as_str(), "--engine", "slurm", "--hosts", "3"];
    args.extend_from_slice(extra);
    on_login(lab, &args)
}

/// `hostd status NAME --json`: the fleet's hosts.
pub fn hosts_of(lab: &Lab, name: &str) -> Vec<serde_json::Value> {
    let o = on_login(lab, &["status", name, "--json"]);
    assert!(o.status.success(), "hostd status: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v[0]["hosts"]["hosts"].as_array().unwrap_or_else(|| panic!("no hosts in {v}")).clone()
}

pub fn states(h: &serde_json::Value) -> Vec<String> {
    h["guests"].as_array().unwrap().iter().map(|g| g["state"].as_str().unwrap().into()).collect()
}

pub fn lab_exec(l: &Lab, args: &[&str]) -> Output {
    let mut a = vec!["exec", l.0.as_str()];
    a.extend_from_slice(args);
    lab(&a)
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .unwrap_or_else(|e| panic!("{sig} to {pid}: {e}"));
}

/// The machine's CLOCK_BOOTTIME, s (`/proc/uptime`): a guest on lab host nI reads I × 1000
/// s more (its host's time namespace), which tells which host answered.
pub fn uptime(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"))
}

/// Each `== gN: …` line of `hostd exec`'s or `cp`'s stdout, by guest, and the stdout that
/// followed it.
pub fn by_guest(out: &str) -> std::collections::BTreeMap<String, (String, String)> {
    let mut m = std::collections::BTreeMap::new();
    let mut cur: Option<String> = None;
    for l in out.lines() {
        if let Some((g, rest)) = l.strip_prefix("== ").and_then(|x| x.split_once(": ")) {
            m.insert(g.to_string(), (rest.to_string(), String::new()));
            cur = Some(g.to_string());
        } else if let Some(g) = &cur {
            let e: &mut (String, String) = m.get_mut(g).unwrap();
            e.1.push_str(l);
            e.1.push('\n');
        }
    }
    m
}

/// The pids and memory limits of worker run `run`'s guests' cgroups (v1 or v2), read.
pub fn guest_limits(run: &str) -> (Vec<String>, Vec<String>) {
    let o = Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "14", "-path", &format!("*/virtbench/{run}/*/*")])
        .args(["(", "-name", "pids.max", "-o", "-name", "memory.limit_in_bytes"])
        .args(["-o", "-name", "memory.max", ")"])
        .output()
        .unwrap();
    let (mut pids, mut mem) = (Vec::new(), Vec::new());
    for f in String::from_utf8_lossy(&o.stdout).lines().map(PathBuf::from) {
        // Only a guest's own group: virtbench/<run>/<guest>/FILE.
        if f.parent().and_then(Path::parent).and_then(Path::file_name) != Some(run.as_ref()) {
            continue;
        }
        let v = std::fs::read_to_string(&f).unwrap().trim().to_string();
        if f.ends_with("pids.max") {
            pids.push(v)
        } else {
            mem.push(v)
        }
    }
    (pids, mem)
}

/// `multihost.json`'s memory figures of a boot of `guests` guests on each host: every host
/// has one from its guests' cgroups, non-zero, and the total is their sum; the report's
/// provenance says each host's and the total.
pub fn assert_memory(dir: &Path, m: &serde_json::Value, guests: u64) {
    let mem = &m["memory"];
    let hosts = mem["hosts"].as_array().unwrap_or_else(|| panic!("no memory figures: {m}"));
    assert_eq!(hosts.len(), m["hosts"].as_array().unwrap().len(), "{mem}");
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    let mut sum = 0;
    for h in hosts {
        let cgroups = h["guests_cgroup_used_kib"].as_u64().unwrap();
        let slice = h["slice_kib"].as_u64().unwrap();
        assert!(h["guests"] == guests && cgroups > 0 && slice >= cgroups, "{h}");
        sum += slice;
        let host = h["host"].as_str().unwrap();
        let note = format!("memory: slice {:.1} MiB ({guests} guests", slice as f64 / 1024.0);
        assert!(html.contains(&format!("host {host}: ")) && html.contains(&note), "{host}: {note}");
    }
    assert_eq!(mem["slice_kib"].as_u64(), Some(sum), "{mem}");
    assert_eq!(mem["guests"].as_u64(), Some(guests * hosts.len() as u64), "{mem}");
    assert!(mem["missing"].as_array().unwrap().is_empty(), "{mem}");
    let total =
        format!("memory across hosts: {:.1} MiB for {} guests", sum as f64 / 1024.0, mem["guests"]);
    assert!(html.contains(&total), "the report does not say {total:?}");
}
