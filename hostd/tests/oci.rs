//! End to end on the `oci` backend: runc (and crun where installed) over a bundle equal to
//! imagegen's (`recipes/oci-bundle.toml`, its config.json built by imagegen's own code)
//! around a rootfs holding the real static agent. Needs root (runtimes, network namespaces, cgroups) and the musl
//! agent (`scripts/build-agent`); without root every test says it is skipped.

mod support {
    pub mod fault;
    pub mod skip;
}

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostd::backend::{AnyBackend, Backend, BackendKind, BackendOptions, GuestSpec, Images};
use hostd::cgroup::{self};
use hostd::microbench::write_data_file;
use hostd::netlab::FleetNet;
use support::fault::{
    assert_host_loopback_unreachable, assert_left_nothing, assert_only_given_fds,
    assert_own_namespaces, assert_reads_disk, assert_sees_itself_alone, assert_streams, bench,
    boot_all, boot_beside_decoy, built_agent, cgroup_dirs_of, container_spec, host_spec, leftovers,
    mountinfo, netns_of, powered_off, rootfs_with, scratch_on_disk, shut_down_all, Litter, BENCH,
    DISK_MB,
};
use vb_protocol::bench::{BenchSpec, Work};
use vb_protocol::msg::Role;

const HELLO: Duration = Duration::from_secs(20);

fn root_or_skip(test: &str) -> bool {
    support::skip::unless_root(
        Some("oci"),
        &format!("{test} needs root (OCI runtimes, network namespaces, cgroups)"),
    )
}

/// imagegen's oci-bundle: config.json as `imagegen::oci::runtime_spec` builds it from
/// recipes/oci-bundle.toml, with `args` as the process, and rootfs/ (recipes/rootfs.toml).
fn make_bundle(dir: &Path, args: &[&str]) -> PathBuf {
    let bundle = dir.join("bundle");
    rootfs_with(&bundle, &built_agent());
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/oci-bundle.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let recipe = imagegen::recipe::parse("oci-bundle", file.clone(), text).unwrap();
    let imagegen::recipe::Spec::OciBundle(mut b) = recipe.spec else {
        panic!("{} is not an oci-bundle recipe", file.display())
    };
    b.args = args.iter().map(|a| a.to_string()).collect();
    let spec = imagegen::oci::runtime_spec(&b).unwrap();
    std::fs::write(bundle.join("config.json"), imagegen::oci::config_json(&spec).unwrap()).unwrap();
    bundle
}

fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path());
        }
    }
    out
}

/// Containers the runtime still knows under its default root with an id of this run.
fn runtime_containers(runtime: &str, run: &str) -> Vec<String> {
    let out = std::process::Command::new(runtime).args(["list", "-q"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(run))
        .map(str::to_string)
        .collect()
}

struct Before {
    mounts: HashSet<String>,
    rootfs: BTreeSet<PathBuf>,
}

/// Asserts the run left nothing behind ([`support::fault::leftovers`]), nor a container the
/// runtime knows, nor a change to the shared rootfs.
fn assert_clean(
    run: &str,
    dir: &Path,
    bundle: &Path,
    before: &Before,
    pids: &[u32],
    workdirs: &[PathBuf],
) {
    assert_left_nothing(run, || {
        let mut left = leftovers(run, dir, &before.mounts, pids, workdirs);
        left.extend(
            runtime_containers("runc", run)
                .into_iter()
                .map(|c| format!("runc container {c} in the default root")),
        );
        let now = tree(&bundle.join("rootfs"));
        for p in now.symmetric_difference(&before.rootfs) {
            left.push(format!("shared rootfs changed: {}", p.display()));
        }
        left
    });
}

/// An oci guest's spec (links named vo…).
fn spec(run: &str, i: usize, dir: &Path, disk: Option<&Path>, net: Option<&FleetNet>) -> GuestSpec {
    container_spec(run, i, dir, disk, net, "vo")
}

fn backend(runtime: &str, bundle: &Path) -> AnyBackend {
    let images =
        Images { agent: built_agent(), bundle: Some(bundle.to_path_buf()), ..Default::default() };
    AnyBackend::new(
        BackendKind::Oci,
        &images,
        &BackendOptions { oci_runtime: runtime.into(), ..Default::default() },
    )
}

fn installed(runtime: &str) -> bool {
    std::process::Command::new(runtime).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Boots `n` guests with `runtime` on a fleet network, benchmarks them, tears them down and
/// checks nothing is left.
async fn fleet_scenario(runtime: &str, run: &str, n: usize) {
    let _litter = Litter(run.to_string());
    let dir = scratch_on_disk("oci-");
    let bundle = make_bundle(dir.path(), &["/sbin/guest-agent", "--ctl", "fd:3"]);
    let disk = dir.path().join("disk.bin");
    write_data_file(&disk, DISK_MB).unwrap();
    let before = Before { mounts: mountinfo(), rootfs: tree(&bundle.join("rootfs")) };
    let net = FleetNet::create(run).unwrap();
    let backend = backend(runtime, &bundle);
    eprintln!("oci probe: {}", backend.probe().await.unwrap());

    // Concurrently, as fleets boot.
    let (guests, pids, workdirs) =
        boot_all(&backend, n, |i| spec(run, i, dir.path(), Some(&disk), Some(&net)), HELLO).await;
    let mut subreaper: libc::c_int = -1;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer, which outlives the call.
    let rc =
        unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut subreaper as *mut libc::c_int) };
    assert_eq!(rc, 0);
    assert_eq!(subreaper, 0, "hostd is a subreaper only while a runtime starts a container");
    for g in &guests {
        assert_eq!(
            g.hello.role,
            Role::Init,
            "{}: the agent is PID 1 of its pid namespace",
            g.spec.name
        );
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", g.process.pid())).unwrap();
        let ppid = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().to_string();
        assert_eq!(
            ppid,
            std::process::id().to_string(),
            "the agent was adopted by hostd, which reaps it"
        );
        assert_eq!(g.hello.pid, 1);
        assert_eq!(g.hello.hostname, g.spec.name);
        let pid = g.process.pid();
        let ino = |p: String| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        assert_eq!(
            ino(format!("/proc/{pid}/ns/net")),
            ino(format!("/run/netns/vbn-{run}-{}", g.spec.index)),
            "the container joined the network namespace hostd made"
        );
        let cg = g.process.cgroup.as_ref().expect("the runtime's cgroup");
        assert!(cg.dirs[0].ends_with(format!("virtbench/{run}/{}", g.spec.name)), "{:?}", cg.dirs);
        assert!(cg.pids().contains(&pid), "agent in the cgroup the runtime made");
        assert!(cg.memory_bytes().unwrap() > 0);
        if cg.mode == cgroup::Mode::V1 {
            let limit = std::fs::read_to_string(cg.dirs[0].join("memory.limit_in_bytes")).unwrap();
            assert_eq!(limit.trim(), (256u64 << 20).to_string(), "memory limit from spec.limits");
        }
    }
    for g in &guests {
        assert!(matches!(
            bench(g, BenchSpec::Cpu { rounds: 200_000 }, BENCH).await,
            Work::Cpu { rounds: 200_000, .. }
        ));
    }
    if n > 1 {
        assert_streams(&guests[0], &guests[1], 200, BENCH).await;
    }
    assert_reads_disk(guests.last().unwrap(), &disk, BENCH).await;
    shut_down_all(&backend, guests).await;
    net.destroy().unwrap();
    assert_clean(run, dir.path(), &bundle, &before, &pids, &workdirs);
}

/// Three runc guests on a fleet network: hello, CPU, a TCP stream between two of them over
/// the fleet addresses, the disk benchmark on the bound data disk; then nothing is left.
#[tokio::test]
async fn runc_fleet_of_three_boots_benchmarks_and_leaves_nothing() {
    if !root_or_skip("the runc fleet test") {
        return;
    }
    assert!(installed("runc"), "runc is the default OCI runtime and must be installed here");
    fleet_scenario("runc", &format!("ocr{}", std::process::id()), 3).await;
}

/// crun refuses hybrid cgroup hosts: its probe must say so (with crun's own words). Where
/// its probe passes, a guest really boots with it.
#[tokio::test]
async fn crun_probe_is_truthful() {
    if !root_or_skip("the crun test") {
        return;
    }
    if !installed("crun") {
        support::skip::skip(
            Some("oci"),
            "crun is not installed (scripts/install-deps installs it)",
        );
        return;
    }
    let dir = scratch_on_disk("oci-");
    let bundle = make_bundle(dir.path(), &["/sbin/guest-agent", "--ctl", "fd:3"]);
    match backend("crun", &bundle).probe().await {
        Err(u) => {
            eprintln!("crun probe: {u}");
            assert!(u.reason.to_string().contains("crun"), "{u}");
            assert!(
                u.reason.to_string().contains("cgroup"),
                "the reason must be the runtime's own: {u}"
            );
            assert_eq!(
                cgroup::detect(),
                Ok(cgroup::Mode::V1),
                "crun refused a host that is not hybrid: {u}"
            );
        }
        Ok(desc) => {
            eprintln!("crun probe passed ({desc}): booting with it");
            drop(dir);
            fleet_scenario("crun", &format!("occ{}", std::process::id()), 2).await;
        }
    }
}

/// The probe names what is missing; a container that cannot start is reported with the
/// runtime's words and leaves nothing behind.
#[tokio::test]
async fn failures_are_explained_and_cleaned_up() {
    if !root_or_skip("the oci failure test") {
        return;
    }
    let dir = scratch_on_disk("oci-");
    let e = backend("no-such-runtime", &dir.path().join("nothing")).probe().await.unwrap_err();
    assert!(e.reason.to_string().contains("\"no-such-runtime\" not found"), "{e}");
    let e = backend("runc", &dir.path().join("nothing")).probe().await.unwrap_err();
    assert!(e.reason.to_string().contains("nothing/config.json is missing"), "{e}");

    // A template whose process does not exist: runc's own start fails.
    let run = format!("ocf{}", std::process::id());
    let _litter = Litter(run.clone());
    let bundle = make_bundle(dir.path(), &["/sbin/nope"]);
    let e = backend("runc", &bundle).probe().await.unwrap_err();
    assert!(e.reason.to_string().contains("test container failed"), "{e}");
    let before = Before { mounts: mountinfo(), rootfs: tree(&bundle.join("rootfs")) };
    let net = FleetNet::create(&run).unwrap();
    let s = spec(&run, 0, dir.path(), None, Some(&net));
    let workdir = s.workdir.clone();
    let err = match backend("runc", &bundle).launch(&s).await {
        Ok(_) => panic!("a container without its program started"),
        Err(e) => e.to_string(),
    };
    eprintln!("launch error: {err}");
    assert!(err.contains("run ") && err.contains("/sbin/nope"), "{err}");
    net.destroy().unwrap();
    assert_clean(&run, dir.path(), &bundle, &before, &[], &[workdir]);
}

/// The container's agent sees only its own processes and its own (read-only) rootfs, holds
/// only the descriptors it was given, and cannot reach the host's network namespace.
#[tokio::test]
async fn runc_container_is_isolated_from_the_host() {
    if !root_or_skip("the runc isolation test") {
        return;
    }
    let run = format!("oci{}", std::process::id());
    let _litter = Litter(run.clone());
    let dir = scratch_on_disk("oci-");
    let bundle = make_bundle(dir.path(), &["/sbin/guest-agent", "--ctl", "fd:3"]);
    let before = Before { mounts: mountinfo(), rootfs: tree(&bundle.join("rootfs")) };
    let net = FleetNet::create(&run).unwrap();
    let backend = backend("runc", &bundle);
    let g = boot_beside_decoy(&backend, spec(&run, 0, dir.path(), None, Some(&net)), HELLO).await;
    let pid = g.process.pid();
    assert_eq!(g.hello.pid, 1);
    assert_own_namespaces(pid);
    // Its own processes: the agent alone.
    let groot = PathBuf::from(format!("/proc/{pid}/root"));
    assert_sees_itself_alone(&groot);
    // Its own root: the bundle's rootfs (the very same agent file), read-only, nothing of
    // the host's beyond it.
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).unwrap();
    assert_eq!(ino(&groot.join("sbin/guest-agent")), ino(&bundle.join("rootfs/sbin/guest-agent")));
    assert!(
        !groot.join(dir.path().strip_prefix("/").unwrap()).exists(),
        "the host's directories are visible in the container"
    );
    let e = std::fs::write(groot.join("written-by-host"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "the image must be read-only in the container");
    assert_only_given_fds(pid);
    assert_host_loopback_unreachable(&g, host_spec(&run, dir.path())).await;

    let workdir = g.spec.workdir.clone();
    let exit = g.shutdown(&backend, Duration::from_secs(5)).await;
    assert!(powered_off(&exit), "{exit:?}");
    net.destroy().unwrap();
    assert_clean(&run, dir.path(), &bundle, &before, &[pid], &[workdir]);
}

/// `hostd boot`'s floor for oci: a bare foreground `runc run` of the same bundle,
/// interleaved with fleet-style boots in the same run; the ratio comes with its interval
/// and the runtime knows no container of the run afterwards.
#[tokio::test]
async fn the_runc_floor_is_measured_beside_the_guests() {
    if !root_or_skip("the oci floor test") {
        return;
    }
    let dir = scratch_on_disk("oci-");
    let bundle = make_bundle(dir.path(), &["/sbin/guest-agent", "--ctl", "fd:3"]);
    let images = Images { agent: built_agent(), bundle: Some(bundle), ..Default::default() };
    let run = hostd::runstate::RunState::create_in(dir.path(), "floor-test", None).unwrap();
    let _litter = Litter(run.run.clone());
    let opts = BackendOptions::default();
    let f = hostd::floor::measure(BackendKind::Oci, &images, &opts, &run, 3, &[4], HELLO)
        .await
        .unwrap()
        .expect("oci has a floor");
    println!("{}", hostd::floor::line(&f));
    assert!(f.floor.contains("runc run"), "{}", f.floor);
    assert_eq!((f.floor_s.samples.len(), f.hostd_s.samples.len()), (3, 3));
    let [lo, hi] = f.ratio_ci95.expect("three pairs give an interval");
    assert!(lo <= f.ratio && f.ratio <= hi, "{lo} {} {hi}", f.ratio);
    let run_id = run.run.clone();
    drop(run);
    assert!(runtime_containers(&opts.oci_runtime, &run_id).is_empty());
    for r in hostd::cgroup::run_roots(&run_id) {
        let _ = std::fs::remove_dir(r);
    }
    assert!(cgroup_dirs_of(&run_id).is_empty(), "{:?}", cgroup_dirs_of(&run_id));
    assert!(netns_of(&run_id).is_empty(), "{:?}", netns_of(&run_id));
}

/// A fleet's start dropped while its launches wait on their runtimes: by the time the drop
/// returns, every launch has released what it made (the guests' network namespaces and work
/// directories), so the caller's cleanup (`hostd boot` interrupted) does not race the
/// releases — which launches run as tasks would, unless their drop waits for them; the run
/// then leaves nothing, its runtimes killed and reaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_fleet_start_has_released_its_launches_when_the_drop_returns() {
    use std::os::unix::fs::PermissionsExt;
    if !root_or_skip("the dropped fleet start test") {
        return;
    }
    const N: usize = 4;
    let dir = scratch_on_disk("oci-");
    let bundle = make_bundle(dir.path(), &["/sbin/guest-agent", "--ctl", "fd:3"]);
    // A runtime whose `run` never returns (it records its pid) and whose `delete` succeeds.
    let started = dir.path().join("started");
    let runtime = dir.path().join("stuck-runtime");
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" run \"*) echo $$ >> {}; exec sleep 60;; esac\nexit 0\n",
        started.display()
    );
    std::fs::write(&runtime, script).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = Before { mounts: mountinfo(), rootfs: tree(&bundle.join("rootfs")) };
    let run = hostd::runstate::RunState::create_in(dir.path(), "drop-test", None).unwrap();
    let _litter = Litter(run.run.clone());
    let backend = backend(runtime.to_str().unwrap(), &bundle);
    let cfg = hostd::fleet::FleetConfig { n: N, ..Default::default() };
    let pids = |f: &Path| -> Vec<u32> {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        text.lines().map(|l| l.trim().parse().unwrap()).collect()
    };
    let all_waiting = async {
        while pids(&started).len() < N {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        r = hostd::fleet::start(&backend, &run, &cfg, |_| {}) => {
            panic!("a fleet whose runtime never returns started: {:?}", r.map(|f| f.guests.len()))
        }
        () = all_waiting => {}
        () = tokio::time::sleep(Duration::from_secs(60)) => panic!("the launches never reached their runtime"),
    }
    // Checked once, at once: nothing may still be on its way out.
    let workdirs: Vec<PathBuf> = (0..N).map(|i| run.scratch.join(format!("g{i}"))).collect();
    let guest_ns: Vec<String> =
        netns_of(&run.run).into_iter().filter(|n| n.starts_with("vbn-")).collect();
    assert!(guest_ns.is_empty(), "guest namespaces left after the drop: {guest_ns:?}");
    let dirs: Vec<&PathBuf> = workdirs.iter().filter(|w| w.exists()).collect();
    assert!(dirs.is_empty(), "work directories left after the drop: {dirs:?}");
    // The runtimes were killed by the drop and are reaped on a task: checked with the rest.
    let runtimes = pids(&started);
    let id = run.run.clone();
    // As `hostd boot` interrupted: the run's cleanup finds only the fleet's own namespace.
    let cleaned = run.finish();
    assert_eq!(cleaned.netns_removed, vec![FleetNet::name_of(&id)], "{cleaned:?}");
    drop(run);
    assert_clean(&id, dir.path(), &bundle, &before, &runtimes, &workdirs);
}
