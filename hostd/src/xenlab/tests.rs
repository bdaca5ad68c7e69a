use std::path::Path;

use vb_protocol::frame::FrameDecoder;

use super::ferry::{frame, next_msg};
use super::*;
use crate::backend::Images;

#[test]
fn lab_qemu_command_line() {
    let m = LabMachine {
        xen: Path::new("/s/xen"),
        xen_cmdline: xen_cmdline(),
        dom0_kernel: Path::new("/s/vmlinuz"),
        dom0_cmdline: "console=hvc0 quiet",
        dom0_initramfs: Path::new("/s/dom0,1.cpio.gz"),
        host_mib: 2048,
        accel: LabAccel::Tcg,
        system_disk: None,
    };
    let a = qemu_args(&m, Path::new("/run/virtbench/r1/lab-console.log"), 3);
    let expect = [
        "-name", "xen-lab", "-M", "pc", "-accel", "tcg,thread=multi", "-cpu", "Haswell-noTSX", "-smp", "2",
        "-m", "2048M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", "/s/xen",
        "-append", "console=com1 com1=115200,8n1 console_timestamps=boot bootscrub=off xpti=false pv-l1tf=false dom0_mem=512M,max:512M dom0_max_vcpus=2 loglvl=warning guest_loglvl=warning",
        "-initrd", "/s/vmlinuz console=hvc0 quiet,/s/dom0,,1.cpio.gz",
        "-chardev", "file,id=con,path=/run/virtbench/r1/lab-console.log,append=on", "-serial", "chardev:con",
        "-chardev", "socket,id=ctl,fd=3", "-serial", "chardev:ctl",
    ];
    assert_eq!(a, expect);
    // Under KVM the emulated host has the host's CPU model; nothing else changes.
    let k = qemu_args(
        &LabMachine { accel: LabAccel::Kvm, ..m.clone() },
        Path::new("/run/virtbench/r1/lab-console.log"),
        3,
    );
    assert_eq!(&k[4..8], ["-accel", "kvm", "-cpu", "host"]);
    assert_eq!((&k[..4], &k[8..]), (&a[..4], &a[8..]));
    // A system image: its ext4 as a read-only virtio disk dom0 finds by serial, after
    // everything else.
    let s = qemu_args(
        &LabMachine { system_disk: Some(Path::new("/s/blobs/ab,c")), ..m },
        Path::new("/run/virtbench/r1/lab-console.log"),
        3,
    );
    assert_eq!(&s[..a.len()], &a[..]);
    assert_eq!(
        &s[a.len()..],
        [
            "-drive",
            "file=/s/blobs/ab,,c,if=none,readonly=on,format=raw,id=sys",
            "-device",
            "virtio-blk-pci,drive=sys,serial=vbsys"
        ]
    );
}

/// An asked-for accelerator is used as given; anything else is refused by name; with
/// nothing to probe KVM with, TCG, saying why.
#[tokio::test]
async fn accelerator_choice() {
    let none = Images::default();
    assert_eq!(choose_accel(Some("kvm"), "qemu", &none).await.unwrap().0, LabAccel::Kvm);
    assert_eq!(choose_accel(Some("tcg"), "qemu", &none).await.unwrap().0, LabAccel::Tcg);
    assert!(choose_accel(Some("hvf"), "qemu", &none)
        .await
        .unwrap_err()
        .to_string()
        .contains("--accel \"hvf\": expected kvm or tcg"));
    let (a, why) = choose_accel(None, "qemu", &none).await.unwrap();
    assert_eq!(a, LabAccel::Tcg);
    assert!(why.contains("no kernel-pv or initramfs"), "{why}");
}

#[tokio::test]
async fn messages_survive_framing_and_noise() {
    let job = LabJob {
        guests: 3,
        mem_mib: 128,
        vcpus: 1,
        cpu_rounds: 7,
        domu_cmdline: "panic=-1".into(),
        boot_timeout_s: 9,
        settle_s: 1,
        system: Some(LabSystem {
            name: "debian-bookworm".into(),
            ext4_sha256: "ab".repeat(32),
            ext4_bytes: 1 << 30,
            ext4_uuid: "0123abcd-4567-89ab-cdef-0123456789ab".into(),
            init: crate::backend::rootdisk::InitMode::Image,
            image_init: Some("/lib/systemd/systemd".into()),
        }),
    };
    let mut bytes = b"(XEN) noise\r\n[    1.0] dom0 kernel line\n".to_vec();
    bytes.extend(
        frame(&LabMsg::Ready {
            dom0_uptime_s: 4.5,
            kernel: "6.1".into(),
            hostd_version: "0".into(),
        })
        .unwrap(),
    );
    bytes.extend(b"more noise");
    bytes.extend(frame(&LabMsg::Job(job.clone())).unwrap());
    let mut r = &bytes[..];
    let (mut dec, mut q) = (FrameDecoder::default(), Vec::new());
    assert!(
        matches!(next_msg(&mut r, &mut dec, &mut q).await.unwrap(), Some(LabMsg::Ready { dom0_uptime_s, .. }) if dom0_uptime_s == 4.5)
    );
    match next_msg(&mut r, &mut dec, &mut q).await.unwrap() {
        Some(LabMsg::Job(j)) => assert_eq!(j, job),
        other => panic!("{other:?}"),
    }
    assert!(next_msg(&mut r, &mut dec, &mut q).await.unwrap().is_none());
}

/// The emulated host gets room for its fleet; a --host-mib too small for it, or no
/// guests, is refused before anything boots.
#[tokio::test]
async fn lab_memory_fits_the_fleet() {
    assert_eq!(host_mib_for(3, 128), 2048);
    assert_eq!(host_mib_for(10, 128), 768 + 10 * 144 + 256);
    let a = LabArgs {
        guests: 3,
        mem_mib: 512,
        vcpus: 1,
        cpu_rounds: 1,
        host_mib: Some(1024),
        timeout: 1,
        qemu: "/nonexistent/qemu".into(),
        accel: None,
        results: "/nonexistent".into(),
        system: None,
        init: Default::default(),
        in_dom0: None,
    };
    let e = run(&a, &mut |_| {}).await.err().unwrap().to_string();
    assert!(
        e.contains("--host-mib 1024 is too small for 3 domUs of 512 MiB") && e.contains("2352"),
        "{e}"
    );
    let e = run(&LabArgs { guests: 0, ..a }, &mut |_| {}).await.err().unwrap().to_string();
    assert!(e.contains("--guests needs at least 1"), "{e}");
}

/// The dom0 image holds what the dom0 side expects, where it expects it.
#[test]
fn the_dom0_recipe_matches_the_paths() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../recipes/xen-lab-dom0.toml"
    ))
    .unwrap();
    for p in [DOM0_DOMU_KERNEL, DOM0_DOMU_INITRAMFS, "/usr/sbin/hostd"] {
        assert!(text.contains(&format!("dst = \"{p}\"")), "{p} missing from xen-lab-dom0.toml");
    }
    assert!(text.contains(&format!("agent_path = \"{DOM0_AGENT}\"")));
    // What the init starts (dom0's qdisk QEMU) and the xen backend runs for system images.
    for p in ["/usr/libexec/xen-qemu-system-i386", "/usr/bin/qemu-img"] {
        assert!(text.contains(&format!("\"{p}\"")), "{p} missing from xen-lab-dom0.toml");
    }
    let init = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../recipes/files/xen-lab-init"
    ))
    .unwrap();
    assert!(
        init.contains(&format!("hostd xen-lab --in-dom0 {DOM0_CTL}")),
        "the dom0 init starts the dom0 side on {DOM0_CTL}"
    );
    assert!(
        init.contains("xen-qemu-system-i386 -xen-domid 0 -xen-attach"),
        "the dom0 init starts the qdisk QEMU"
    );
    // The system disk's drivers are in the image and loaded (dom0 finds the disk by serial).
    for m in ["virtio", "virtio_ring", "virtio_pci", "virtio_blk"] {
        assert!(text.contains(&format!("/{m}.ko\"")), "{m}.ko missing from xen-lab-dom0.toml");
    }
    assert!(init.contains("virtio_pci virtio_blk"), "the dom0 init loads virtio-blk");
}

/// The lab's own CPU workload is stated against the campaigns' default wherever the lab
/// prints its CPU figure, and its help names the default it departs from.
#[test]
fn lab_cpu_workload_is_stated_against_the_default() {
    assert_eq!(
        cpu_note(5_000_000),
        "rounds=5000000 per guest, not the rounds=200000000 campaigns and `hostd bench` run by default"
    );
    let d = crate::defaults::CPU_ROUNDS;
    assert!(cpu_note(d).ends_with("per guest, the default of campaigns and `hostd bench`"));
    let mut cmd = <LabArgs as clap::Args>::augment_args(clap::Command::new("xen-lab"));
    let help = cmd.render_long_help().to_string();
    assert!(help.contains(&format!("than the {d} of campaigns")), "{help}");
}
