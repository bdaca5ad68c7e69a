//! End to end on the `qemu-microvm` and `qemu-full` backends under TCG (works on any host),
//! plus the accelerator decision (a real KVM boot probe). Needs root (fleet namespace,
//! taps, cgroups), QEMU, the musl agent and the image store's kernel-pv (both profiles boot
//! it; q35 with `nopv`); a missing piece makes a test say it is skipped and why.

mod support {
    pub mod fault;
    pub mod skip;
    pub mod vm;
}

use hostd::backend::qemu::{Profile, Qemu};
use hostd::backend::{Backend, BackendKind, BackendOptions, Exit};
use support::vm::{self, Expect};

fn skip(kind: BackendKind, why: &str) {
    support::skip::skip(Some(kind.name()), why);
}

fn tcg() -> BackendOptions {
    BackendOptions { accel: Some("tcg".into()), ..Default::default() }
}

async fn fleet(kind: BackendKind, n: usize, tag: &str) {
    let Some(images) = vm::images_as_root(kind, &format!("{kind} fleet test needs root")) else {
        return;
    };
    let _heavy = vm::HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let release = vm::kernel_release(&images.kernel_pv.as_ref().unwrap().path);
    assert!(release.is_some(), "the kernel image names its release");
    let backend = vm::backend(kind, &images, &tcg());
    match backend.probe().await {
        Ok(d) => println!("{kind} probe: {d}"),
        Err(e) => return skip(kind, &e.to_string()),
    }
    let disk = kind.guest_disk(std::path::Path::new("/unused"));
    let exp = Expect { kind, disk, kernel_release: release, exit: Exit::Clean };
    vm::fleet_scenario(&backend, &exp, n, dir.path(), tag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_three_guests_under_tcg() {
    fleet(BackendKind::QemuMicrovm, 3, "qm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_two_guests_under_tcg() {
    fleet(BackendKind::QemuFull, 2, "qf").await;
}

/// Without a configured accelerator the backend boots a probe guest under KVM. Where that
/// works it uses KVM; where it does not (no /dev/kvm, or a nested hypervisor on which an
/// unmodified kernel fails with "KVM internal error") it says why and uses TCG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvm_probe_decides_and_says_why() {
    let _heavy = vm::HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let images = match vm::images(BackendKind::QemuMicrovm, dir.path()) {
        Ok(i) => i,
        Err(e) => return skip(BackendKind::QemuMicrovm, &e),
    };
    let q = Qemu::new(Profile::Microvm, &images, &BackendOptions::default());
    let before = vm::scratch_dirs("vb-kvm-probe-");
    let t0 = std::time::Instant::now();
    let d = match q.probe().await {
        Ok(d) => d,
        Err(e) => return skip(BackendKind::QemuMicrovm, &e.to_string()),
    };
    println!("qemu-microvm probe ({:.2} s): {d}", t0.elapsed().as_secs_f64());
    let choice = q.accel().await.unwrap();
    match choice.accel {
        hostd::backend::qemu::Accel::Kvm => {
            assert!(d.contains("KVM (probe guest reached the agent's hello"), "{d}");
            assert!(!d.contains("TCG"), "{d}");
        }
        hostd::backend::qemu::Accel::Tcg { tsc_khz } => {
            let reason = d
                .split("KVM probe failed: ")
                .nth(1)
                .and_then(|r| r.split("; using TCG").next())
                .unwrap_or("");
            assert!(!reason.trim().is_empty(), "the fallback names its reason: {d}");
            assert!(d.contains(&format!("using TCG (guest TSC = host TSC, {tsc_khz} kHz)")), "{d}");
            if !std::path::Path::new("/dev/kvm").exists() {
                assert!(reason.contains("/dev/kvm"), "{d}");
            }
        }
    }
    // Decided once: a second probe does not boot again.
    let t1 = std::time::Instant::now();
    assert_eq!(q.probe().await.unwrap(), d);
    assert!(t1.elapsed().as_secs_f64() < 1.0);
    // No probe guest is left: its scratch directory went with it.
    assert_eq!(vm::scratch_dirs("vb-kvm-probe-"), before);
}

#[tokio::test]
async fn probe_names_what_is_missing() {
    let images = hostd::backend::Images::default();
    let e = Qemu::new(Profile::Full, &images, &tcg()).probe().await.unwrap_err();
    assert!(e.reason.to_string().contains("q35 kernel (kernel-pv vmlinux)"), "{e}");
    let opts = BackendOptions { qemu: "/nonexistent/qemu".into(), ..tcg() };
    let e = Qemu::new(Profile::Microvm, &images, &opts).probe().await.unwrap_err();
    assert_eq!(e.reason.to_string(), "/nonexistent/qemu not found");
    let opts = BackendOptions { accel: Some("whpx".into()), ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    // vm::images fails the test (not skips it) when the images are missing.
    let images = vm::images(BackendKind::QemuMicrovm, dir.path()).expect("images");
    let e = Qemu::new(Profile::Microvm, &images, &opts).probe().await.unwrap_err();
    assert!(e.reason.to_string().contains("unknown accelerator \"whpx\""), "{e}");
}
