//! Shared by the fault tests and the container backends' tests (ns, oci): the evil agent,
//! guests of every backend, the checks that a run left nothing behind (processes, cgroups,
//! network namespaces, links, mounts, work directories) and what a guest's processes see.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::time::Duration;

use hostd::backend::{AnyBackend, BackendKind, Exit, GuestNet, GuestSpec, Images};
use hostd::cgroup::Limits;
use hostd::guest::{boot, RunningGuest};
use hostd::microbench::run_once;
use hostd::netlab::{self, FleetNet};
use vb_protocol::bench::{BenchRequest, BenchSpec, Work};
use vb_protocol::msg::{Command, ReplyBody};

/// How long the container tests (ns, oci) give one benchmark request.
pub const BENCH: Duration = Duration::from_secs(60);
/// Size of the container tests' data disk, MiB.
pub const DISK_MB: u64 = 4;

mod gone;
#[allow(unused_imports)] // as above: some binaries check no leftovers
pub use gone::*;

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
