//! Guests that hang, panic or are killed (issue 6, faults 1, 2 and 4): every phase has a
//! deadline after which the guest is killed and recorded as timed out, its slot freed; a
//! kernel panic is recorded with the end of the console; a VMM or container killed with
//! SIGKILL mid-benchmark is noticed at once, recorded as crashed, and everything it held is
//! released right away (cgroup, namespace, tap or veth, runtime state, UML umid directory).
//! Needs root and the images (`imagegen build`; scripts/test builds them).

mod support {
    pub mod fault;
    pub mod skip;
}

use std::time::{Duration, Instant};

use hostd::backend::{AnyBackend, BackendKind, BackendOptions, Images};
use hostd::fleet::{self, FailureKind, Fleet, FleetConfig};
use hostd::guest::{boot, BootError};
use hostd::microbench::run_once;
use hostd::netlab::FleetNet;
use hostd::results::{read_records, ResultsDir};
use hostd::runstate::RunState;
use hostd::samples::Record;
use nix::sys::signal::Signal;
use support::fault::*;
use vb_protocol::bench::{BenchRequest, BenchSpec};
use vb_protocol::msg::{Command, FaultKind, ReplyBody};

/// One VM test at a time: TCG guests of two tests at once only make both slow.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn tcg() -> BackendOptions {
    BackendOptions { accel: Some("tcg".into()), ..Default::default() }
}

fn images() -> Images {
    hostd::images::resolve(None).unwrap()
}

/// A fleet of `n` guests of `kind` on a fleet network, with its run state under `dir`.
async fn fleet_of(
    kind: BackendKind,
    n: usize,
    dir: &std::path::Path,
) -> (AnyBackend, RunState, Fleet) {
    let backend = AnyBackend::new(kind, &images(), &tcg());
    let run = RunState::create_in(dir, "fault-test", None).unwrap();
    let cfg = FleetConfig { n, boot_timeout: Duration::from_secs(120), ..Default::default() };
    let fleet = fleet::start(&backend, &run, &cfg, |_| {}).await.unwrap();
    assert_eq!(fleet.guests.len(), n, "{kind}: {:?}", fleet.failures);
    (backend, run, fleet)
}

/// What guest `i` of a fleet holds on the host, to check it is all released.
fn held_by(fleet: &Fleet, i: usize) -> Gone {
    let g = &fleet.guests[i];
    let mut gone = Gone {
        paths: vec![g.spec.workdir.clone()],
        cgroups: g.process.cgroup.as_ref().map(|c| c.dirs.clone()).unwrap_or_default(),
        pids: g.process.pids(),
        // Its work directory's and its own network namespace's (the fleet's stays).
        mounts_mentioning: vec![
            g.spec.workdir.display().to_string(),
            format!("vbn-{}-{}", g.spec.run, g.spec.index),
        ],
        ..Default::default()
    };
    if let Some(n) = &g.spec.net {
        gone.links.push((n.fleet.netns.clone(), n.link.clone()));
    }
    if fleet.backend == BackendKind::Oci {
        gone.netns.push(hostd::backend::oci::netns_name(&g.spec));
    }
    if fleet.backend == BackendKind::Uml {
        // The umid directory (pid file, mconsole socket) and every helper of the group.
        gone.paths.push(g.spec.workdir.join(&g.spec.name));
        gone.pids.extend(group_members(g.process.pid() as i32));
    }
    gone
}

/// Fault 1, boot phase: an agent that never says hello. Three guests through one launch
/// slot: each is killed at its deadline and its slot goes to the next, so the whole fleet
/// takes three deadlines plus kills, not forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_misses_its_boot_deadline_and_frees_its_slot() {
    if !is_root() {
        return skip("fault tests need root");
    }
    let dir = tempfile::tempdir().unwrap();
    let run = RunState::create_in(dir.path(), "fault-test", None).unwrap();
    let _litter = Litter(run.run.clone());
    let backend = AnyBackend::new(
        BackendKind::Native,
        &native_images(evil_wrapper(dir.path(), "silent")),
        &Default::default(),
    );
    let deadline = Duration::from_secs(1);
    let cfg = FleetConfig {
        n: 3,
        parallelism: 1,
        network: false,
        boot_timeout: deadline,
        ..Default::default()
    };
    let t0 = Instant::now();
    let fleet = fleet::start(&backend, &run, &cfg, |_| {}).await.unwrap();
    let took = t0.elapsed();
    println!("3 silent guests through 1 slot, 1 s deadline each: {:.2} s", took.as_secs_f64());
    assert!(fleet.guests.is_empty());
    assert_eq!(fleet.failures.len(), 3);
    for f in &fleet.failures {
        assert_eq!(f.kind, FailureKind::Timeout, "{f}");
        assert!(f.error.contains("no ready message within 1s"), "{f}");
    }
    assert!(took >= 3 * deadline && took < 3 * deadline + Duration::from_secs(3), "{took:?}");
    assert!(guest_cgroups_of(&run.run).is_empty(), "{:?}", guest_cgroups_of(&run.run));
    assert_no_zombies("silent guests");
    fleet.teardown(&backend, Duration::ZERO).await;
    let scratch = run.scratch.clone();
    run.finish();
    assert!(!scratch.exists());
}

/// The oci backend over a fake runtime (in `dir`) whose `run` never returns (`delete`
/// works), and the file it writes its pid to once `run` has started.
fn stuck_runtime(dir: &std::path::Path) -> (AnyBackend, std::path::PathBuf) {
    let pidfile = dir.join("runtime.pid");
    let fake = dir.join("stuck-runtime");
    std::fs::write(&fake, format!("#!/bin/sh\n# `run` never returns; `delete` works.\ncase \"$3\" in run) echo $$ > {}; exec sleep 120;; esac\nexit 0\n", pidfile.display())).unwrap();
    std::process::Command::new("chmod").arg("755").arg(&fake).status().unwrap();
    let opts = BackendOptions { oci_runtime: fake.display().to_string(), ..Default::default() };
    (AnyBackend::new(BackendKind::Oci, &images(), &opts), pidfile)
}

/// Fault 1, launch phase: a runtime whose `run` never returns. The launch is abandoned at
/// the boot deadline and what it had made is released: the runtime process, the guest's
/// network namespace and veth, its cgroups, its work directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_that_hangs_is_abandoned_at_the_deadline_and_cleaned_up() {
    if !is_root() {
        return skip("fault tests need root");
    }
    let dir = tempfile::tempdir().unwrap();
    let (backend, pidfile) = stuck_runtime(dir.path());
    let run = run_id("hl");
    let _litter = Litter(run.clone());
    let net = FleetNet::create(&run).unwrap();
    let s = spec(&run, 0, dir.path(), Some(&net));
    let workdir = s.workdir.clone();
    let t0 = Instant::now();
    let e =
        boot(&backend, s, Duration::from_secs(1)).await.err().expect("the launch cannot succeed");
    let took = t0.elapsed();
    println!("stuck runtime abandoned after {:.2} s: {e}", took.as_secs_f64());
    assert!(matches!(e, BootError::LaunchTimeout { .. }), "{e}");
    assert_eq!(e.failure(0).kind, FailureKind::Timeout);
    assert!(took < Duration::from_secs(4), "{took:?}");
    let runtime_pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    Gone {
        pids: vec![runtime_pid],
        paths: vec![workdir],
        netns: vec![format!("vbn-{run}-0")],
        links: vec![(net.netns.clone(), "vbl0".into())],
        ..Default::default()
    }
    .assert("abandoned oci launch");
    assert!(guest_cgroups_of(&run).is_empty(), "{:?}", guest_cgroups_of(&run));
    net.destroy().unwrap();
}

/// Fault 1, command phase: a guest stopped with SIGSTOP after its hello. The command misses
/// its deadline, the guest is marked hung, and taking it out kills it (stopped or not)
/// and releases it, within the deadline plus a grace of seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_guest_misses_its_command_deadline_and_is_killed() {
    if !is_root() {
        return skip("fault tests need root");
    }
    let _heavy = HEAVY.lock().await;
    for kind in [BackendKind::Native, BackendKind::Uml] {
        let dir = tempfile::tempdir().unwrap();
        let images = if kind == BackendKind::Native { native_images(agent()) } else { images() };
        let backend = AnyBackend::new(kind, &images, &Default::default());
        let run = run_id(if kind == BackendKind::Native { "hcn" } else { "hcu" });
        let _litter = Litter(run.clone());
        let mut g =
            boot(&backend, spec(&run, 0, dir.path(), None), Duration::from_secs(60)).await.unwrap();
        let pid = g.process.pid();
        let mut gone = Gone {
            paths: vec![g.spec.workdir.clone()],
            pids: group_members(pid as i32),
            ..Default::default()
        };
        gone.cgroups = g.process.cgroup.as_ref().unwrap().dirs.clone();
        // The whole guest: a UML kernel and its helpers share the process group.
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        let t0 = Instant::now();
        let deadline = Duration::from_millis(500);
        let e = g.conn.request(Command::Ping, deadline).await.unwrap_err();
        assert!(e.to_string().contains("got no reply within 500ms"), "{kind}: {e}");
        let (fk, error) = g.trouble().expect("a guest that missed a deadline is in trouble");
        assert_eq!(fk, FailureKind::Timeout);
        let f = g.fail(&backend, fk, error).await;
        let took = t0.elapsed();
        println!(
            "{kind}: stopped guest timed out and was killed and released in {:.2} s",
            took.as_secs_f64()
        );
        assert_eq!(f.kind, FailureKind::Timeout, "{f}");
        assert!(took < deadline + Duration::from_secs(3), "{kind}: {took:?}");
        gone.assert(&format!("{kind} hung guest"));
        assert_no_zombies(kind.name());
    }
}

/// A UML guest taken out while an oci launch holds hostd as a child subreaper (as in a
/// mixed fleet): the kernel's helper processes, orphaned into hostd rather than the host's
/// init, are reaped by the teardown, not left as zombies (seen in CI, where the oci fault
/// tests ran beside the UML ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uml_helpers_orphaned_into_hostd_during_an_oci_launch_are_reaped() {
    if !is_root() {
        return skip("fault tests need root");
    }
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let uml = AnyBackend::new(BackendKind::Uml, &images(), &Default::default());
    let run = run_id("ou");
    let _litter = Litter(run.clone());
    let g = boot(&uml, spec(&run, 0, dir.path(), None), Duration::from_secs(60)).await.unwrap();
    let members = group_members(g.process.pid() as i32);
    assert!(members.len() > 1, "a UML guest with no helper processes: {members:?}");
    // hostd is a subreaper from the runtime's start until the launch is abandoned.
    let (oci, pidfile) = stuck_runtime(dir.path());
    let orun = run_id("oo");
    let _olitter = Litter(orun.clone());
    let s = spec(&orun, 0, dir.path(), None);
    let launch = tokio::spawn(async move { boot(&oci, s, Duration::from_secs(15)).await.err() });
    let t0 = Instant::now();
    while !pidfile.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the fake runtime never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let f = g.fail(&uml, FailureKind::Crashed, "taken out by the test".into()).await;
    // Otherwise the guest went outside the window, and the test shows nothing.
    assert!(!launch.is_finished(), "{f}: the oci launch ended before the guest was taken out");
    assert_no_zombies("uml guest taken out during an oci launch");
    Gone { pids: members, ..Default::default() }.assert("uml guest and its helpers");
    let e = launch.await.unwrap().expect("the stuck launch cannot succeed");
    assert!(matches!(e, BootError::LaunchTimeout { .. }), "{e}");
    assert_no_zombies("after the abandoned oci launch");
}

/// Fault 2: a guest kernel panic (the agent, PID 1, exits on command). The guest is taken
/// out as panicked with the end of its console kept in the failure record, which the
/// results keep and the report shows; its resources go at once; its neighbour runs on.
async fn panic_is_recorded(kind: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, run, mut fleet) = fleet_of(kind, 2, dir.path()).await;
    let _litter = Litter(run.run.clone());
    let gone = held_by(&fleet, 0);
    let t0 = Instant::now();
    let r = fleet.guests[0]
        .conn
        .request(Command::Fault { kind: FaultKind::Panic }, Duration::from_secs(30))
        .await;
    assert!(r.is_err(), "{kind}: a panicking guest answered {r:?}");
    let lost = fleet.prune(&backend).await;
    println!("{kind}: panic noticed and guest released in {:.2} s", t0.elapsed().as_secs_f64());
    assert_eq!(lost.len(), 1, "{kind}: {lost:?}");
    let f = &lost[0];
    assert_eq!(f.kind, FailureKind::Panic, "{kind}: {f}");
    let tail = f.console_tail.as_deref().unwrap_or_default();
    assert!(tail.contains("Kernel panic - not syncing: Attempted to kill init"), "{kind}: {tail}");
    gone.assert(&format!("{kind} panicked guest"));
    assert!(matches!(
        fleet.guests[0].conn.request(Command::Ping, Duration::from_secs(10)).await,
        Ok(ReplyBody::Pong { .. })
    ));
    // Into the results and the report.
    let mut rd = ResultsDir::create(dir.path(), "results").unwrap();
    rd.append(&Record::GuestLost { backend: kind, step: "test".into(), failure: f.clone() })
        .unwrap();
    let (recs, bad) = read_records::<Record>(&rd.path).unwrap();
    assert_eq!((recs.len(), bad), (1, 0));
    let rep = hostd::report::build(&rd.path).unwrap();
    assert!(rep.lost[0].2.console_tail.as_deref().unwrap().contains("Kernel panic"));
    fleet.teardown(&backend, Duration::from_secs(10)).await;
    run.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uml_kernel_panic_is_recorded_with_its_console_tail() {
    if !is_root() {
        return skip("fault tests need root");
    }
    let _heavy = HEAVY.lock().await;
    panic_is_recorded(BackendKind::Uml).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_kernel_panic_is_recorded_with_its_console_tail() {
    if !is_root() {
        return skip("fault tests need root");
    }
    let _heavy = HEAVY.lock().await;
    panic_is_recorded(BackendKind::QemuMicrovm).await;
}

/// Fault 4: the guest's main host process (VMM, UML kernel, container init) is SIGKILLed
/// while a benchmark runs in it. The benchmark fails within moments, not at its deadline;
/// the guest is recorded as crashed and everything it held is released right away.
async fn sigkill_mid_benchmark(kind: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, run, mut fleet) = fleet_of(kind, 2, dir.path()).await;
    let _litter = Litter(run.run.clone());
    let gone = held_by(&fleet, 0);
    let pid = fleet.guests[0].process.pid();
    // Minutes of work: only the kill can end it before its deadline.
    let req = BenchRequest {
        spec: BenchSpec::Cpu { rounds: 50_000_000_000 },
        instances: 1,
        start_at_ns: None,
    };
    let bench = run_once(&fleet.guests[0].conn, &req, Duration::from_secs(120));
    let kill = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal(pid, Signal::SIGKILL);
        Instant::now()
    };
    let (r, killed_at) = tokio::join!(bench, kill);
    let noticed = killed_at.elapsed();
    let e = format!("{:#}", r.unwrap_err());
    println!(
        "{kind}: SIGKILL of pid {pid} noticed after {:.0} ms: {e}",
        noticed.as_secs_f64() * 1e3
    );
    assert!(e.contains("exited") || e.contains("closed"), "{kind}: {e}");
    assert!(noticed < Duration::from_secs(1), "{kind}: {noticed:?}");
    let t0 = Instant::now();
    let lost = fleet.prune(&backend).await;
    assert_eq!(lost.len(), 1, "{kind}: {lost:?}");
    assert_eq!(lost[0].kind, FailureKind::Crashed, "{kind}: {}", lost[0]);
    gone.assert(&format!("{kind} killed guest"));
    println!("{kind}: released in {:.0} ms", t0.elapsed().as_secs_f64() * 1e3);
    assert!(matches!(
        fleet.guests[0].conn.request(Command::Ping, Duration::from_secs(10)).await,
        Ok(ReplyBody::Pong { .. })
    ));
    let t = fleet.teardown(&backend, Duration::from_secs(10)).await;
    assert!(t.failed.is_empty() && t.errors.is_empty(), "{kind}: {t:?}");
    run.finish();
    assert_no_zombies(kind.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ns_and_oci_containers_are_noticed_and_released() {
    if !is_root() {
        return skip("fault tests need root");
    }
    sigkill_mid_benchmark(BackendKind::Ns).await;
    sigkill_mid_benchmark(BackendKind::Oci).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_uml_and_qemu_vmms_are_noticed_and_released() {
    if !is_root() {
        return skip("fault tests need root");
    }
    let _heavy = HEAVY.lock().await;
    sigkill_mid_benchmark(BackendKind::Uml).await;
    sigkill_mid_benchmark(BackendKind::QemuMicrovm).await;
}
