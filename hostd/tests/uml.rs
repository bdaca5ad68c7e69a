//! End to end on the `uml` backend: the UML kernel with the agent as init. Needs root
//! (fleet namespace, taps, cgroups), the musl agent and a UML kernel ($VIRTBENCH_KERNEL_UML
//! or the scratch build); a missing piece makes the test say it is skipped and why.

mod support {
    pub mod fault;
    pub mod skip;
    pub mod vm;
}

use std::time::Duration;

use hostd::backend::{Backend, BackendKind, Exit};
use hostd::startup::{boot_and_measure, BootPlan, StartMode};
use support::vm::{self, Expect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_guests_on_a_fleet_network() {
    let Some(images) = vm::images_as_root(BackendKind::Uml, "uml fleet test needs root") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let release = vm::kernel_release(&images.kernel_uml.as_ref().unwrap().path);
    let backend = vm::backend(BackendKind::Uml, &images, &Default::default());
    let before = vm::scratch_dirs("vb-uml-probe-");
    let probe = backend.probe().await.unwrap();
    println!("uml probe: {probe}");
    assert!(probe.contains("agent's hello"), "{probe}");
    assert_eq!(
        vm::scratch_dirs("vb-uml-probe-"),
        before,
        "the probe guest's scratch directory is left"
    );
    let exp = Expect {
        kind: BackendKind::Uml,
        disk: "/dev/ubda".into(),
        kernel_release: release,
        exit: Exit::Clean,
    };
    vm::fleet_scenario(&backend, &exp, 3, dir.path(), "u").await;
}

/// A guest that is killed (no power-off) still leaves nothing: UML's helper processes
/// outlive the kernel process, and without a cgroup `stop` finds them by process group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_guest_without_cgroup_leaves_no_process() {
    let Some(images) = vm::images_as_root(BackendKind::Uml, "uml kill test needs root") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let backend = vm::backend(BackendKind::Uml, &images, &Default::default());
    let mut spec = vm::spec(&vm::run_id("uk"), 0, dir.path(), None, None);
    spec.cgroup = None;
    let g = hostd::guest::boot(&backend, spec, Duration::from_secs(60)).await.unwrap();
    let pgid = g.process.pid() as i32;
    let members = || support::fault::group_members(pgid).len();
    assert!(members() >= 2, "UML runs helper processes");
    // The channel stays open until the kill: closing it would make the agent power off.
    let hostd::guest::RunningGuest { conn, mut process, .. } = g;
    let exit = backend.stop(&mut process, Duration::ZERO).await;
    drop(conn);
    assert_eq!(exit, Exit::Killed);
    assert_eq!(members(), 0, "processes of UML's group are left");
    assert!(!dir.path().join(vm::run_id("uk")).join("g0").exists());
}

/// A cold fleet of guests booting their own image copies: every file the launches read
/// (each guest's kernel and initramfs copy; UML's libraries but those hostd maps itself)
/// is out of the page cache before the start, and the samples say so; the hot fleet after
/// it finds them resident and is not labelled cold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_with_image_copies_is_verified_cold() {
    let Some(images) = vm::images_as_root(
        BackendKind::Uml,
        "uml cold-start test needs root (drop_caches, cgroups)",
    ) else {
        return;
    };
    let backend = vm::backend(BackendKind::Uml, &images, &Default::default());
    let run = hostd::runstate::RunState::create("uml cold-start test", None).unwrap();
    let cfg = hostd::fleet::FleetConfig {
        n: 2,
        network: false,
        boot_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let mut boots = Vec::new();
    for mode in [StartMode::Cold, StartMode::Hot] {
        let plan =
            BootPlan { mode, settle: Duration::ZERO, copy_images: Some(&images), reach: false };
        let b = boot_and_measure(&backend, &run, &cfg, &plan, |_| {}).await;
        boots.push(b);
    }
    let disk = run.disk_dir();
    run.finish();
    let (cold, hot) = (boots.remove(0).unwrap(), boots.remove(0).unwrap());
    assert_eq!(
        (cold.startups.len(), hot.startups.len()),
        (2, 2),
        "{:?} {:?}",
        cold.failures,
        hot.failures
    );
    for s in &cold.startups {
        let r = s.residency.as_ref().unwrap();
        // Two kernel copies and two initramfs copies at least.
        assert!(r.files >= 4 && r.bytes > 0, "{r:?}");
        assert_eq!((r.resident_bytes, s.label()), (0, "cold"), "{r:?}");
        assert!(s.image_copies);
    }
    for s in &hot.startups {
        let r = s.residency.as_ref().unwrap();
        assert!(
            r.fraction() >= hostd::coldstart::HOT_MIN,
            "the hot fleet's images are resident: {r:?}"
        );
        assert_eq!(s.label(), "hot");
    }
    assert_eq!((cold.label(), hot.label()), ("cold", "hot"));
    assert!(!disk.exists(), "image copies left in {}", disk.display());
}
