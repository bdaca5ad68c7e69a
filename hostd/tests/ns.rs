//! End to end on the `ns` backend: guests as namespaces over a rootfs tree holding the real
//! static agent. Needs root (namespaces, mounts, cgroups, veths) and the musl agent
//! (`scripts/build-agent`); without root every test says it is skipped.

mod support {
    pub mod fault;
    pub mod skip;
}

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostd::backend::ns::{IdMap, Ns};
use hostd::backend::{AnyBackend, Backend, BackendKind, GuestSpec, Images};
use hostd::datadisk::DataDisks;
use hostd::guest::boot;
use hostd::microbench::{run_once, write_data_file};
use hostd::netlab::FleetNet;
use hostd::suite::Test;
use support::fault::{
    assert_host_loopback_unreachable, assert_left_nothing, assert_only_given_fds,
    assert_own_namespaces, assert_reads_disk, assert_sees_itself_alone, assert_streams, bench,
    boot_all, boot_beside_decoy, built_agent, container_spec, host_spec, leftovers, mountinfo,
    ns_inode, powered_off, rootfs_with, scratch_on_disk, shut_down_all, Litter, BENCH, DISK_MB,
};
use vb_protocol::bench::{BenchRequest, BenchSpec, Resource, Work};
use vb_protocol::msg::Role;

const HELLO: Duration = Duration::from_secs(10);

fn root_or_skip(test: &str) -> bool {
    support::skip::unless_root(
        Some("ns"),
        &format!("{test} needs root (namespaces, mounts, cgroups, veths)"),
    )
}

fn make_rootfs(dir: &Path) -> PathBuf {
    rootfs_with(dir, &built_agent())
}

/// Asserts the run left nothing behind ([`support::fault::leftovers`]).
fn assert_clean(
    run: &str,
    dir: &Path,
    mounts_before: &HashSet<String>,
    pids: &[u32],
    workdirs: &[PathBuf],
) {
    assert_left_nothing(run, || leftovers(run, dir, mounts_before, pids, workdirs));
}

/// One test's guests: a run id (every resource is named after it, and removed by `Litter`
/// if the test fails), a scratch directory holding the agent's rootfs, and the mount
/// table from before any guest, for the leftover check.
struct Setup {
    run: String,
    _litter: Litter,
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    mounts_before: HashSet<String>,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let run = format!("{tag}{}", std::process::id());
        let dir = scratch_on_disk("ns-");
        let rootfs = make_rootfs(dir.path());
        Setup { _litter: Litter(run.clone()), run, dir, rootfs, mounts_before: mountinfo() }
    }

    fn images(&self) -> Images {
        Images { agent: built_agent(), rootfs: Some(self.rootfs.clone()), ..Default::default() }
    }

    /// A data disk of `mb` MiB in the scratch directory.
    fn disk(&self, mb: u64) -> PathBuf {
        let disk = self.dir.path().join("disk.bin");
        write_data_file(&disk, mb).unwrap();
        disk
    }

    fn spec(&self, index: usize, disk: Option<&Path>, net: Option<&FleetNet>) -> GuestSpec {
        container_spec(&self.run, index, self.dir.path(), disk, net, "vh")
    }

    fn assert_clean(&self, pids: &[u32], workdirs: &[PathBuf]) {
        assert_clean(&self.run, self.dir.path(), &self.mounts_before, pids, workdirs);
    }
}

/// Three guests on a fleet network: hello, CPU, a TCP stream between two of them over the
/// fleet addresses, the disk benchmark on the bound data disk; then nothing is left.
#[tokio::test]
async fn fleet_of_three_boots_benchmarks_and_leaves_nothing() {
    if !root_or_skip("the ns fleet test") {
        return;
    }
    let t = Setup::new("nsf");
    let disk = t.disk(DISK_MB);
    let net = FleetNet::create(&t.run).unwrap();
    let backend = AnyBackend::new(BackendKind::Ns, &t.images(), &Default::default());
    let desc = backend.probe().await.unwrap();
    eprintln!("ns probe: {desc}");

    // Each guest its own copy of the data (the suite's per-guest data sets).
    let copies =
        DataDisks::new(&disk, DISK_MB << 20, &t.dir.path().join("copies"), &t.run).unwrap();
    let own: Vec<PathBuf> = (0..3).map(|i| copies.copy_for(i).unwrap()).collect();

    // Concurrently, as fleets boot: launches interleave between clone and exec.
    let (guests, pids, workdirs) =
        boot_all(&backend, 3, |i| t.spec(i, Some(&own[i]), Some(&net)), HELLO).await;
    for g in &guests {
        assert_eq!(g.hello.role, Role::Init, "{}", g.spec.name);
        assert_eq!(g.hello.pid, 1);
        assert_eq!(g.hello.hostname, g.spec.name);
        assert_eq!(g.hello.transport, "fd:3");
        let cg = g.process.cgroup.as_ref().expect("a cgroup");
        assert!(cg.pids().contains(&g.process.pid()), "agent in its cgroup");
        assert!(cg.memory_bytes().unwrap() > 0, "memory charged to the guest's cgroup");
    }

    for g in &guests {
        match bench(g, BenchSpec::Cpu { rounds: 200_000 }, BENCH).await {
            Work::Cpu { rounds, .. } => assert_eq!(rounds, 200_000),
            w => panic!("{w:?}"),
        }
    }
    assert_streams(&guests[0], &guests[1], 200, BENCH).await;
    // As the suite reads: the copy evicted and checked, an O_DIRECT read through the bind
    // mount, a sample that records the policy and the residency before the read.
    for g in &guests {
        let preps = hostd::suite::before_reads(BackendKind::Ns, Resource::Disk, &[g]).unwrap();
        let req = BenchRequest {
            spec: BenchSpec::Disk {
                path: "/data/disk.img".into(),
                block_size: 65536,
                max_bytes: None,
                direct: true,
            },
            instances: 1,
            start_at_ns: None,
        };
        let rep = run_once(&g.conn, &req, Duration::from_secs(30)).await.unwrap();
        assert!(
            matches!(rep.instances[0].work, Work::Disk { bytes, direct: true, .. } if bytes == DISK_MB << 20),
            "{rep:?}"
        );
        let mut samples = hostd::suite::samples_of(
            BackendKind::Ns,
            Test::Overhead,
            Resource::Disk,
            "",
            3,
            0,
            g.spec.index,
            &hostd::suite::sync::Timed { report: rep.clone(), sync: None },
            None,
        );
        hostd::suite::mark_reads(&mut samples, preps.as_deref());
        assert_eq!(samples[0].cache_policy, "o_direct(bind mount)", "{samples:?}");
        assert_eq!(samples[0].resident_before, Some(0.0), "{samples:?}");
        // O_DIRECT through the bind mount leaves nothing in the host page cache.
        assert_eq!(
            hostd::pagecache::residency(g.spec.data_disk.as_ref().unwrap()).unwrap().resident_bytes,
            0,
            "{}",
            g.spec.name
        );
    }

    shut_down_all(&backend, guests).await;
    net.destroy().unwrap();
    copies.remove().unwrap();
    t.assert_clean(&pids, &workdirs);
}

/// The guest sees its own processes, devices and filesystems only, and cannot reach the
/// host's network namespace.
#[tokio::test]
async fn guest_is_isolated_from_the_host() {
    if !root_or_skip("the ns isolation test") {
        return;
    }
    let t = Setup::new("nsi");
    let net = FleetNet::create(&t.run).unwrap();
    let backend = AnyBackend::new(BackendKind::Ns, &t.images(), &Default::default());
    let g = boot_beside_decoy(&backend, t.spec(0, None, Some(&net)), HELLO).await;
    let pid = g.process.pid();
    // Only the descriptors it was given: stdin /dev/null, stdout and stderr the console
    // pipe, and the control socket.
    assert_only_given_fds(pid);

    assert_eq!(g.hello.pid, 1);
    assert_own_namespaces(pid);
    assert_ne!(g.hello.hostname, nix::unistd::gethostname().unwrap().to_string_lossy());
    // The agent mounted /proc itself, for its own pid namespace: it lists only itself.
    let groot = PathBuf::from(format!("/proc/{pid}/root"));
    assert_sees_itself_alone(&groot);
    let mut devs: Vec<String> = std::fs::read_dir(groot.join("dev"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    devs.sort();
    assert_eq!(devs, ["full", "null", "random", "tty", "urandom", "zero"]);
    let e = std::fs::write(groot.join("written-by-host"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "the image must be read-only in the guest");
    // The old root is gone: every mount the guest has is one of its own.
    let gmounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let points: HashSet<&str> = gmounts.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    let allowed: HashSet<&str> = [
        "/",
        "/dev",
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/tmp",
        "/proc",
        "/sys",
    ]
    .into();
    assert!(
        points.is_subset(&allowed),
        "unexpected mounts in the guest: {:?}",
        points.difference(&allowed)
    );

    assert_host_loopback_unreachable(&g, host_spec(&t.run, t.dir.path())).await;

    let workdir = g.spec.workdir.clone();
    let exit = g.shutdown(&backend, Duration::from_secs(5)).await;
    assert!(powered_off(&exit), "{exit:?}");
    net.destroy().unwrap();
    t.assert_clean(&[pid], &[workdir]);
}

/// With a user namespace the guest's root is an unprivileged host user, and it still boots,
/// networks and reads its disk.
#[tokio::test]
async fn user_namespace_guest_runs_unprivileged() {
    if !root_or_skip("the ns user-namespace test") {
        return;
    }
    let t = Setup::new("nsu");
    let disk = t.disk(DISK_MB);
    let net = FleetNet::create(&t.run).unwrap();
    let mut ns = Ns::new(&t.images(), &Default::default());
    let map = IdMap { host_uid: 200_000, host_gid: 200_000, count: 65536 };
    ns.user_ns = Some(map);
    let backend = AnyBackend::Ns(ns);
    assert!(backend.probe().await.unwrap().contains(",user"));
    let mut guests = Vec::new();
    for i in 0..2 {
        guests.push(boot(&backend, t.spec(i, Some(&disk), Some(&net)), HELLO).await.unwrap());
    }
    let pids: Vec<u32> = guests.iter().map(|g| g.process.pid()).collect();
    let workdirs: Vec<PathBuf> = guests.iter().map(|g| g.spec.workdir.clone()).collect();
    for g in &guests {
        assert_eq!(g.hello.role, Role::Init);
        assert_eq!(g.hello.hostname, g.spec.name);
        let pid = g.process.pid();
        let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
        assert_eq!(uid_map.split_whitespace().collect::<Vec<_>>(), ["0", "200000", "65536"]);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(uid.split_whitespace().nth(1), Some("200000"), "{uid}");
        assert_ne!(ns_inode(pid, "user"), ns_inode(std::process::id(), "user"));
    }
    assert_streams(&guests[0], &guests[1], 100, BENCH).await;
    assert_reads_disk(&guests[0], &disk, BENCH).await;
    shut_down_all(&backend, guests).await;
    net.destroy().unwrap();
    t.assert_clean(&pids, &workdirs);
}

/// A set-up step that fails in the child is named in the launch error, and the failed
/// launch leaves nothing behind.
#[tokio::test]
async fn failing_setup_step_is_named_and_cleaned_up() {
    if !root_or_skip("the ns failure test") {
        return;
    }
    let t = Setup::new("nse");
    // An image without /data cannot take the data disk (its root is read-only).
    std::fs::remove_dir(t.rootfs.join("data")).unwrap();
    let disk = t.disk(1);
    let backend = AnyBackend::new(BackendKind::Ns, &t.images(), &Default::default());
    let probe = backend.probe().await.unwrap_err();
    assert!(probe.reason.to_string().contains("/data is missing"), "{probe}");
    let s = t.spec(0, Some(&disk), None);
    let workdir = s.workdir.clone();
    let e = match backend.launch(&s).await {
        Ok(_) => panic!("launch without a /data mount point succeeded"),
        Err(e) => e.to_string(),
    };
    eprintln!("launch error: {e}");
    assert!(e.contains("mounting tmpfs on ") && e.contains("/g0/root/data: "), "{e}");
    assert!(e.contains("No such file or directory"), "{e}");
    t.assert_clean(&[], &[workdir]);
}

/// `hostd boot`'s floor for ns: `unshare` of the same namespaces + chroot + exec of the
/// agent, interleaved with fleet-style boots in the same run; the ratio comes with its
/// interval and nothing of either side is left.
#[tokio::test]
async fn the_unshare_floor_is_measured_beside_the_guests() {
    if !root_or_skip("the ns floor test") {
        return;
    }
    let dir = scratch_on_disk("ns-");
    let rootfs = make_rootfs(dir.path());
    let images = Images { agent: built_agent(), rootfs: Some(rootfs), ..Default::default() };
    let run = hostd::runstate::RunState::create_in(dir.path(), "floor-test", None).unwrap();
    let _litter = Litter(run.run.clone());
    let mounts_before = mountinfo();
    let f =
        hostd::floor::measure(BackendKind::Ns, &images, &Default::default(), &run, 3, &[4], HELLO)
            .await
            .unwrap()
            .expect("ns has a floor");
    println!("{}", hostd::floor::line(&f));
    assert!(f.floor.contains("unshare"), "{}", f.floor);
    assert_eq!((f.floor_s.samples.len(), f.hostd_s.samples.len()), (3, 3));
    assert!((f.ratio - f.hostd_s.mean / f.floor_s.mean).abs() < 1e-9);
    let [lo, hi] = f.ratio_ci95.expect("three pairs give an interval");
    assert!(lo <= f.ratio && f.ratio <= hi, "{lo} {} {hi}", f.ratio);
    let run_id = run.run.clone();
    drop(run);
    assert_clean(&run_id, dir.path(), &mounts_before, &[], &[]);
}
