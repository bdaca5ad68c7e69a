//! The `xen` backend: what its probe says on a host that is not dom0, and the whole backend
//! end to end in the Xen lab (Debian's Xen 4.17 and dom0 kernel under QEMU TCG, hostd in
//! dom0): three PV domUs started through the backend, every agent's ready message, the
//! CPU benchmark in each, teardown, startup and memory recorded like every backend's, and
//! the results marked as measured inside an emulated host. Needs root and the images
//! `imagegen build` makes (scripts/test builds them first).

mod support {
    pub mod skip;
}

use std::time::{Duration, Instant};

use hostd::backend::xen::{check_dom0, Xen};
use hostd::backend::{Backend, BackendKind, BackendOptions};
use hostd::samples::Record;
use hostd::xenlab::{self, LabArgs, EMULATED_NOTE};
use vb_protocol::bench::Resource;

/// The probe says why this host cannot run Xen guests; on a real dom0 it describes Xen.
#[tokio::test]
async fn probe_says_why_xen_is_unavailable() {
    let images = hostd::images::resolve(None).expect("images: run `imagegen build`");
    let backend = Xen::new(&images, &BackendOptions::default());
    let probe = backend.probe().await;
    match check_dom0(std::path::Path::new("/")) {
        Err(why) => {
            let e = probe.expect_err("not dom0, yet the probe passed");
            assert_eq!(e.backend, "xen");
            assert!(e.reason.not_dom0(), "{e}");
            assert_eq!(e.reason.to_string(), why.to_string());
            println!("xen probe here: {}", e.reason);
        }
        Ok(_) => match probe {
            Ok(d) => assert!(d.starts_with("Xen "), "{d}"),
            // dom0 without a running toolstack or xenconsoled: the reason names which of the
            // probe's steps failed, and the step's own check agrees.
            Err(e) => {
                let known = [
                    "the toolstack does not answer",
                    "xenconsoled is not running",
                    "PVH domains need HVM support",
                    "is not on PATH",
                    "kernel",
                    "initramfs",
                    "VIRTBENCH_XEN_TYPE",
                ];
                assert!(
                    known.iter().any(|k| e.reason.to_string().contains(k)),
                    "a reason naming no probe step: {e}"
                );
                if e.reason.to_string().starts_with("xenconsoled") {
                    let running = std::fs::read_dir("/proc").unwrap().flatten().any(|d| {
                        std::fs::read_to_string(d.path().join("comm"))
                            .is_ok_and(|c| c.trim() == "xenconsoled")
                    });
                    assert!(!running, "the probe says xenconsoled is not running, but it is: {e}");
                }
            }
        },
    }
    // A campaign may name it like any backend (unavailable hosts record why and go on).
    let c: hostd::campaign::Campaign = toml::from_str("backends = [\"xen\"]\n").unwrap();
    c.check().unwrap();
    assert!(c.plans().iter().any(|p| p.kind == BackendKind::Xen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_boots_three_pv_domus_under_tcg() {
    if !support::skip::unless_root(
        Some("xen"),
        "the Xen lab needs root (run state under /run/virtbench)",
    ) {
        return;
    }
    let results = tempfile::tempdir().unwrap();
    let args = LabArgs {
        guests: 3,
        mem_mib: 128,
        vcpus: 1,
        cpu_rounds: 2_000_000,
        host_mib: None,
        timeout: 600,
        qemu: "qemu-system-x86_64".into(),
        // Probed: KVM where a guest boots under it, TCG here.
        accel: None,
        results: results.path().to_path_buf(),
        system: None,
        init: Default::default(),
        in_dom0: None,
    };
    let t0 = Instant::now();
    let mut say = |l: String| println!("{l}");
    let o = xenlab::run(&args, &mut say).await.unwrap_or_else(|e| panic!("{e:#}"));
    let r = &o.report;
    println!(
        "lab: Xen + dom0 up in {:.1} s (dom0 uptime {:.1} s); T_startup(3) {:.2} s; CPU benchmark {:.2} s; teardown {:.1} s; total {:.1} s",
        o.lab_boot_s,
        r.timings.dom0_uptime_at_ready_s,
        r.boot.t_startup().unwrap_or(f64::NAN),
        r.timings.bench_s,
        r.timings.teardown_s,
        t0.elapsed().as_secs_f64()
    );
    assert!(r.probe.starts_with("Xen 4.17"), "{}", r.probe);
    assert!(r.probe.contains("pv domUs"), "{}", r.probe);

    // Every agent said ready; startup recorded as for every backend, with the guest clocks.
    let b = &r.boot;
    assert_eq!((b.backend, b.n), (BackendKind::Xen, 3));
    assert!(b.failures.is_empty(), "{:?}", b.failures);
    let mut idx: Vec<usize> = b.startups.iter().map(|s| s.index).collect();
    idx.sort();
    assert_eq!(idx, [0, 1, 2]);
    for s in &b.startups {
        assert!(s.ready_s > 0.0 && s.own_s <= s.ready_s + 1e-6, "{s:?}");
        assert!(s.guest_boot_s.is_some_and(|g| g > 0.0), "a domU has a clock of its own: {s:?}");
    }
    let m = b.memory.as_ref().expect("memory sample");
    assert_eq!(m.ready, 3);
    assert_eq!(m.guests.len(), 3);
    assert!(
        m.guests.iter().all(|g| g.processes >= 1 && g.pss_kib > 0),
        "the xl monitor is each guest's dom0 process: {:?}",
        m.guests
    );
    // Xen's accounting: each domain has the memory it was given, and the fleet took it.
    let x = &r.xen_memory;
    for i in 0..3 {
        let d = x
            .domains
            .iter()
            .find(|d| d.name.ends_with(&format!("-g{i}")))
            .unwrap_or_else(|| panic!("g{i} in {:?}", x.domains));
        assert_eq!(d.mem_mib, 128, "{d:?}");
    }
    assert!(x.used_by_fleet_mib >= 3 * 128, "{x:?}");
    // M_used counts the machine, so the domUs' RAM is in it (dom0's meminfo alone misses it).
    assert!(m.m_used_kib >= 3 * 128 * 1024, "{m:?}");

    // The CPU benchmark ran in each guest.
    assert!(r.bench_error.is_none(), "{:?}", r.bench_error);
    let mut guests: Vec<usize> = r.bench.iter().map(|s| s.guest).collect();
    guests.sort();
    assert_eq!(guests, [0, 1, 2]);
    assert!(
        r.bench.iter().all(|s| s.resource == Resource::Cpu && s.elapsed_s > 0.0 && s.n == 3),
        "{:?}",
        r.bench
    );

    // Torn down: every guest powered off cleanly, no domain is left.
    assert_eq!((b.teardown_clean, b.teardown_killed), (3, 0));
    assert!(r.leftover_domains.is_empty(), "{:?}", r.leftover_domains);

    // The results directory is a `hostd boot` one, marked as emulated.
    let prov: hostd::provenance::Provenance =
        serde_json::from_slice(&std::fs::read(o.dir.join("provenance.json")).unwrap()).unwrap();
    assert_eq!(prov.notes[0], EMULATED_NOTE);
    assert!(
        prov.artifacts.contains_key("xen-hypervisor")
            && prov.artifacts.contains_key("kernel-dom0")
            && prov.artifacts.contains_key("xen-lab-dom0")
    );
    let (records, bad) = hostd::results::read_records::<Record>(&o.dir).unwrap();
    assert_eq!(bad, 0);
    let count = |f: fn(&Record) -> bool| records.iter().filter(|r| f(r)).count();
    assert_eq!(count(|r| matches!(r, Record::Startup(_))), 3);
    assert_eq!(count(|r| matches!(r, Record::Memory(_))), 1);
    assert_eq!(count(|r| matches!(r, Record::Bench(_))), 3);
    assert!(records.iter().any(|r| matches!(r, Record::BackendProbe { backend: BackendKind::Xen, description, emulated: true } if description.starts_with("Xen"))));
    for f in [
        "boot.json",
        "boot.csv",
        "report.json",
        "report.md",
        "lab.json",
        "lab-console.log",
        "figures/startup.svg",
        "index.html",
    ] {
        assert!(o.dir.join(f).is_file(), "{f} missing");
    }
    // dom0's qdisk QEMU (what serves system images' overlays) came up: its binary and
    // library closure are in the dom0 image (the init says so on the lab's console).
    let console = std::fs::read_to_string(o.dir.join("lab-console.log")).unwrap();
    assert!(
        console.contains("xen-lab-init: qdisk QEMU running"),
        "dom0's qdisk QEMU did not start; the lab's console:\n{console}"
    );
    // and qemu-img (each system-image guest's overlay) runs there.
    assert!(
        console.contains("xen-lab-init: qemu-img version 7.2"),
        "qemu-img does not run in dom0; the lab's console:\n{console}"
    );
    // The report shows xen as a measured backend, with the note.
    let html = std::fs::read_to_string(o.dir.join("index.html")).unwrap();
    assert!(
        html.contains("<td>xen (emulated host)</td>")
            && html.contains("Xen 4.17")
            && html.contains(EMULATED_NOTE),
        "the report marks the lab's figures"
    );
    let table = hostd::bootrun::table(&o.summary);
    assert!(table.contains(EMULATED_NOTE) && table.contains("xen "), "{table}");
    // Nothing of the lab is left on the host: its run state went with it.
    assert!(hostd::runstate::orphans_in(std::path::Path::new(hostd::runstate::RUN_ROOT))
        .iter()
        .all(|s| s.purpose != "xen-lab"));
    assert!(o.total_s < Duration::from_secs(600).as_secs_f64());
}

/// The domU's console (hvc0) is both the kernel's console and the agent's control channel;
/// with magic SysRq the hvc driver swallows every 0x0f byte and the one after it, so frames
/// containing 0x0f were lost (a clock ping's checksum had one). The kernel must not have it.
#[test]
fn xen_domu_kernel_has_no_sysrq_to_eat_frame_bytes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/kernels/pv.config");
    let config = std::fs::read_to_string(path).unwrap();
    assert!(config.lines().any(|l| l.trim() == "# CONFIG_MAGIC_SYSRQ is not set"), "{path}");
    assert!(!config.lines().any(|l| l.trim() == "CONFIG_MAGIC_SYSRQ=y"), "{path}");
    assert!(hostd::backend::xen::CTL_TTY.starts_with("/dev/hvc"));
}
