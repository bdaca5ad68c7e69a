//! Shared by the fault tests and the container backends' tests (ns, oci): the evil agent,
//! guests of every backend, the checks that a run left nothing behind (processes, cgroups,
//! network namespaces, links, mounts, work directories) and what a guest's processes see.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hostd::backend::{AnyBackend, BackendKind, Exit, GuestNet, GuestSpec, Images};
use hostd::cgroup::Limits;
use hostd::guest::{boot, RunningGuest};
use hostd::microbench::run_once;
use hostd::netlab::{self, FleetNet};
use vb_protocol::bench::{BenchRequest, BenchSpec, Work};
use vb_protocol::msg::{Command, ReplyBody};

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Says why a test does nothing here (only without root: CI runs as root); listed by
/// scripts/test (`skip.rs`).
pub fn skip(why: &str) {
    super::skip::skip(None, why);
}

/// The workspace's image store (scripts/test builds it first).
pub fn store() -> imagegen::Store {
    let cfg = imagegen::Config::for_workspace(&hostd::images::workspace_root()).unwrap();
    imagegen::Store::open(&cfg.store)
        .expect("the image store: run `imagegen build` (scripts/test does)")
}

/// An output of a recipe's current build in the store.
pub fn artifact(recipe: &str, output: &str) -> PathBuf {
    let s = store();
    let m = s
        .current(recipe)
        .unwrap_or_else(|e| panic!("{e}: run `imagegen build` (scripts/test does)"));
    s.output_path(&m, output).unwrap()
}

/// The evil agent (recipe `agent-evil`).
pub fn evil_agent() -> PathBuf {
    artifact("agent-evil", "agent")
}

/// A program that runs the evil agent in `mode` with the arguments it is given: a native
/// guest's "agent".
pub fn evil_wrapper(dir: &Path, mode: &str) -> PathBuf {
    let p = dir.join(format!("evil-{mode}"));
    std::fs::write(
        &p,
        format!("#!/bin/sh\nexec {} --evil {mode} \"$@\"\n", evil_agent().display()),
    )
    .unwrap();
    std::process::Command::new("chmod").arg("755").arg(&p).status().unwrap();
    p
}

/// The real agent, from the store.
pub fn agent() -> PathBuf {
    hostd::images::resolve(None).unwrap().agent
}

/// A root filesystem for container guests (ns, oci) holding `agent` as /sbin/guest-agent:
/// the rootfs recipe's tree (recipes/rootfs.toml), as `dir`/rootfs.
pub fn rootfs_with(dir: &Path, agent: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["sbin", "dev", "proc", "sys", "tmp", "etc", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(agent, root.join("sbin/guest-agent")).unwrap();
    std::fs::write(root.join("etc/hostname"), "virtbench\n").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/sbin/guest-agent\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    root
}

/// The static agent as `scripts/build-agent` leaves it (or `VIRTBENCH_AGENT`): the
/// container tests' agent, which need no image store.
pub fn built_agent() -> PathBuf {
    hostd::images::find_agent(None)
        .expect("the static agent must be built first: run scripts/build-agent")
}

/// A scratch directory on the target's disk, not /tmp: O_DIRECT needs a real filesystem
/// and tmpfs has none of it.
pub fn scratch_on_disk(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Native guests running `agent`.
pub fn native_images(agent: PathBuf) -> Images {
    Images { agent, ..Default::default() }
}

/// A test run's id: short, unique per process and tag ([a-z0-9]).
pub fn run_id(tag: &str) -> String {
    format!("f{tag}{}", std::process::id())
}

pub fn spec(run: &str, index: usize, dir: &Path, net: Option<&FleetNet>) -> GuestSpec {
    spec_linked(run, index, dir, net, "vbl")
}

/// [`spec`] with the guest's links named `link`N: test binaries that may run at the same
/// time keep their link names apart.
pub fn spec_linked(
    run: &str,
    index: usize,
    dir: &Path,
    net: Option<&FleetNet>,
    link: &str,
) -> GuestSpec {
    GuestSpec {
        index,
        name: format!("g{index}"),
        run: run.into(),
        vcpus: 1,
        mem_mib: 128,
        data_disk: None,
        workdir: dir.join(run).join(format!("g{index}")),
        net: net.map(|f| GuestNet {
            fleet: f.clone(),
            addr: FleetNet::guest_addr(index).unwrap(),
            prefix: netlab::PREFIX,
            link: netlab::link_name(link, index),
        }),
        cgroup: Some(hostd::cgroup::detect().expect("a cgroup memory controller")),
        limits: Default::default(),
        images: None,
    }
}

/// A container guest (ns, oci) as their tests boot it: named after the run (its hostname
/// and cgroup), its work directory right under `dir`, with `disk` bound and memory, CPU and
/// process limits.
pub fn container_spec(
    run: &str,
    index: usize,
    dir: &Path,
    disk: Option<&Path>,
    net: Option<&FleetNet>,
    link: &str,
) -> GuestSpec {
    GuestSpec {
        name: format!("{run}-g{index}"),
        data_disk: disk.map(Path::to_path_buf),
        workdir: dir.join(format!("g{index}")),
        limits: Limits {
            memory_bytes: Some(256 << 20),
            cpus: Some(1.0),
            pids: Some(64),
            ..Default::default()
        },
        ..spec_linked(run, index, dir, net, link)
    }
}

/// A native agent beside a container guest of `run`, on the host's own network and in no
/// cgroup: the host side of [`assert_host_loopback_unreachable`].
pub fn host_spec(run: &str, dir: &Path) -> GuestSpec {
    GuestSpec {
        net: None,
        cgroup: None,
        workdir: dir.join("host-agent"),
        name: format!("{run}-host"),
        ..container_spec(run, 9, dir, None, None, "vh")
    }
}

/// Boots `spec` while hostd holds a descriptor without close-on-exec, which the guest must
/// not get ([`assert_only_given_fds`] checks it did not).
pub async fn boot_beside_decoy(
    backend: &AnyBackend,
    spec: GuestSpec,
    hello: Duration,
) -> RunningGuest {
    // SAFETY: open(2) of a NUL-terminated path; the descriptor is closed below.
    let decoy = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
    assert!(decoy >= 0);
    let g = boot(backend, spec, hello).await.unwrap();
    // SAFETY: closes the descriptor opened above, owned by nobody else.
    unsafe { libc::close(decoy) };
    g
}

/// Boots guests `0..n` of `spec` at once, as fleets boot (launches interleave), and returns
/// them with their process ids and work directories (for the checks after the teardown).
pub async fn boot_all(
    backend: &AnyBackend,
    n: usize,
    spec: impl Fn(usize) -> GuestSpec,
    hello: Duration,
) -> (Vec<RunningGuest>, Vec<u32>, Vec<PathBuf>) {
    let boots = (0..n).map(|i| boot(backend, spec(i), hello));
    let guests: Vec<RunningGuest> =
        futures::future::join_all(boots).await.into_iter().map(Result::unwrap).collect();
    let pids = guests.iter().map(|g| g.process.pid()).collect();
    let workdirs = guests.iter().map(|g| g.spec.workdir.clone()).collect();
    (guests, pids, workdirs)
}

/// Powers every guest off and asserts each went.
pub async fn shut_down_all(backend: &AnyBackend, guests: Vec<RunningGuest>) {
    for g in guests {
        let name = g.spec.name.clone();
        let exit = g.shutdown(backend, Duration::from_secs(5)).await;
        assert!(powered_off(&exit), "{name}: {exit:?}");
    }
}

/// One instance of `spec` in `g`: what it did.
pub async fn bench(g: &RunningGuest, spec: BenchSpec, timeout: Duration) -> Work {
    let req = BenchRequest { spec, instances: 1, start_at_ns: None };
    let rep =
        run_once(&g.conn, &req, timeout).await.unwrap_or_else(|e| panic!("{}: {e:#}", g.spec.name));
    rep.instances[0].work.clone()
}

/// `from` streams to a server in `to` over the fleet addresses for `duration_ms`.
pub async fn assert_streams(
    from: &RunningGuest,
    to: &RunningGuest,
    duration_ms: u32,
    timeout: Duration,
) {
    let port = net_serve(to).await;
    let peer = format!("{}:{port}", FleetNet::guest_addr(to.spec.index).unwrap());
    match bench(from, BenchSpec::NetStream { peer, duration_ms, msg_size: 16384 }, timeout).await {
        Work::NetStream { bytes } => assert!(bytes > 0),
        w => panic!("{w:?}"),
    }
}

/// `g` reads its data disk, `disk` on the host, whole (O_DIRECT where the host's
/// filesystem has it).
pub async fn assert_reads_disk(g: &RunningGuest, disk: &Path, timeout: Duration) {
    let spec = BenchSpec::Disk {
        path: "/data/disk.img".into(),
        block_size: 65536,
        max_bytes: None,
        direct: supports_o_direct(disk),
    };
    match bench(g, spec, timeout).await {
        Work::Disk { bytes, .. } => assert_eq!(bytes, std::fs::metadata(disk).unwrap().len()),
        w => panic!("{w:?}"),
    }
}

/// The namespaces a container guest must not share with the host.
pub fn assert_own_namespaces(pid: u32) {
    let me = std::process::id();
    for ns in ["pid", "mnt", "net", "uts", "ipc"] {
        assert_ne!(ns_inode(pid, ns), ns_inode(me, ns), "{ns} namespace shared with the host");
    }
}

/// The processes a guest whose root is `groot` sees in its /proc: itself alone (PID 1).
pub fn assert_sees_itself_alone(groot: &Path) {
    let procs: Vec<String> = std::fs::read_dir(groot.join("proc"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(procs, ["1"]);
}

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

/// Processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<u32> {
    let Ok(d) = std::fs::read_dir("/proc") else { return Vec::new() };
    d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(*p as i32))).map(|g| g.as_raw())
                == Ok(pgid)
        })
        .filter(|p| alive(*p))
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

/// This process's resident memory, KiB.
pub fn rss_kib() -> u64 {
    status_field("VmRSS:")
}

pub fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Descriptors this process has open.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// SIGKILL or SIGSTOP to one process.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

/// What each of `pid`'s descriptors points at, as the host sees it.
pub fn fds_of(pid: u32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            Some((
                e.file_name().to_str()?.parse().ok()?,
                std::fs::read_link(e.path()).ok()?.display().to_string(),
            ))
        })
        .collect();
    v.sort();
    v
}

/// `pid` holds stdin on /dev/null, stdout and stderr on one pipe (the console), the
/// control socket as fd 3 (and copies of it), and nothing else.
pub fn assert_only_given_fds(pid: u32) {
    let fds = fds_of(pid);
    let target = |n: i32| {
        fds.iter()
            .find(|(f, _)| *f == n)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("no fd {n}: {fds:?}"))
    };
    assert_eq!(target(0), "/dev/null", "{fds:?}");
    assert!(target(1).starts_with("pipe:[") && target(1) == target(2), "{fds:?}");
    let socket = target(3);
    assert!(socket.starts_with("socket:["), "{fds:?}");
    for (n, t) in &fds {
        assert!(
            *n < 3 || *t == socket,
            "fd {n} → {t}: the guest holds a descriptor it was not given ({fds:?})"
        );
    }
}

/// Starts a TCP server in guest `g` and returns its port.
pub async fn net_serve(g: &RunningGuest) -> u16 {
    match g.conn.request(Command::NetServe { port: 0 }, Duration::from_secs(10)).await.unwrap() {
        ReplyBody::Listening { port } => port,
        other => panic!("net_serve answered {other:?}"),
    }
}

/// One instance streaming to `peer` for `duration_ms` in `msg_size`-byte messages.
pub fn net_stream(peer: String, duration_ms: u32, msg_size: u32) -> BenchRequest {
    BenchRequest {
        spec: BenchSpec::NetStream { peer, duration_ms, msg_size },
        instances: 1,
        start_at_ns: None,
    }
}

/// A server on the host's loopback (a native agent started from `host`, a spec without a
/// network): reachable from the host, not from `guest`, which has a network namespace of
/// its own.
pub async fn assert_host_loopback_unreachable(guest: &RunningGuest, host: GuestSpec) {
    let native = AnyBackend::new(
        BackendKind::Native,
        &Images { agent: agent(), ..Default::default() },
        &Default::default(),
    );
    let host_agent = boot(&native, host, Duration::from_secs(20)).await.unwrap();
    let port = net_serve(&host_agent).await;
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the host reaches its own server");
    let req = net_stream(format!("127.0.0.1:{port}"), 100, 1024);
    let e = run_once(&guest.conn, &req, Duration::from_secs(60))
        .await
        .expect_err("the guest must not reach the host's loopback");
    assert!(format!("{e:#}").contains("cannot connect"), "{e:#}");
    host_agent.shutdown(&native, Duration::from_secs(5)).await;
}

pub fn ns_inode(pid: u32, ns: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap()
}

/// O_DIRECT works on the disk filesystems we use, not on tmpfs.
pub fn supports_o_direct(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false)
}

/// A guest asked to power off either is still exiting when the teardown starts (Clean) or
/// is already gone (Exited) — the agent answers, then exits at once. Gone means: exit 0,
/// or SIGINT, the status the kernel gives a pid namespace's init that calls
/// reboot(POWER_OFF).
pub fn powered_off(e: &Exit) -> bool {
    match e {
        Exit::Clean => true,
        Exit::Exited(st) => {
            st.contains("SIGINT") || (st.starts_with("Exited(Pid(") && st.ends_with(", 0)"))
        }
        Exit::Killed => false,
    }
}
