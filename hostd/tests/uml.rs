//! End to end on the `uml` backend: the UML kernel with the agent as init. Needs root
//! (fleet namespace, taps, cgroups), the musl agent and a UML kernel ($VIRTBENCH_KERNEL_UML
//! or the scratch build); a missing piece makes the test say it is skipped and why.

mod support {
    pub mod skip;
    pub mod vm;
}

use std::time::Duration;

use hostd::backend::{Backend, BackendKind, Exit};
use support::vm::{self, Expect};

fn skip(why: &str) {
    support::skip::skip(Some("uml"), why);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_guests_on_a_fleet_network() {
    if !vm::is_root() {
        return skip("uml fleet test needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let images = match vm::images(BackendKind::Uml, dir.path()) {
        Ok(i) => i,
        Err(e) => return skip(&e),
    };
    let release = vm::kernel_release(&images.kernel_uml.as_ref().unwrap().path);
    let backend = vm::backend(BackendKind::Uml, &images, &Default::default());
    let before = vm::scratch_dirs("vb-uml-probe-");
    let probe = backend.probe().await.unwrap();
    println!("uml probe: {probe}");
    assert!(probe.contains("agent's hello"), "{probe}");
    assert_eq!(vm::scratch_dirs("vb-uml-probe-"), before, "the probe guest's scratch directory is left");
    let exp = Expect { kind: BackendKind::Uml, disk: "/dev/ubda".into(), kernel_release: release, exit: Exit::Clean };
    vm::fleet_scenario(&backend, &exp, 3, dir.path(), "u").await;
}

/// A guest that is killed (no power-off) still leaves nothing: UML's helper processes
/// outlive the kernel process, and without a cgroup `stop` finds them by process group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_guest_without_cgroup_leaves_no_process() {
    if !vm::is_root() {
        return skip("uml kill test needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let images = match vm::images(BackendKind::Uml, dir.path()) {
        Ok(i) => i,
        Err(e) => return skip(&e),
    };
    let backend = vm::backend(BackendKind::Uml, &images, &Default::default());
    let mut spec = vm::spec(&vm::run_id("uk"), 0, dir.path(), None, None);
    spec.cgroup = None;
    let g = hostd::guest::boot(&backend, spec, Duration::from_secs(60)).await.unwrap();
    let pgid = g.process.pid() as i32;
    let members = || vm::group_members(pgid).len();
    assert!(members() >= 2, "UML runs helper processes");
    // The channel stays open until the kill: closing it would make the agent power off.
    let hostd::guest::RunningGuest { conn, mut process, .. } = g;
    let exit = backend.stop(&mut process, Duration::ZERO).await;
    drop(conn);
    assert_eq!(exit, Exit::Killed);
    assert_eq!(members(), 0, "processes of UML's group are left");
    assert!(!dir.path().join(vm::run_id("uk")).join("g0").exists());
}
