use super::*;
use crate::netlab::FleetNet;
use std::net::Ipv4Addr;

use crate::backend::test_spec as spec;

/// kernel-pv: its recipe's command line names no console (each profile adds it).
fn pv_kernel(path: &str) -> Kernel {
    Kernel { path: path.into(), cmdline: "panic=-1".into() }
}

#[test]
fn microvm_tcg_command_line() {
    let a = qemu_args(
        Profile::Microvm,
        Accel::Tcg { tsc_khz: 2_596_150 },
        &pv_kernel("/k/vmlinux"),
        Path::new("/i/initramfs.cpio.gz"),
        &spec(true, true),
    );
    let expect = [
        "-name", "g1", "-M", "microvm,acpi=off", "-accel", "tcg,thread=multi", "-cpu", "max", "-m", "192M", "-smp", "2",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", "/k/vmlinux", "-initrd", "/i/initramfs.cpio.gz",
        "-append", "console=ttyS0 reboot=t panic=-1 tsc_early_khz=2596150 tsc=reliable no_timer_check net.ifnames=0 vb.poweroff=reboot vb.ctl=vport:vb.ctl vb.hostname=g1 vb.net=eth0=10.211.0.3/16",
        "-chardev", "file,id=con,path=/proc/self/fd/1,append=on", "-serial", "chardev:con",
        "-chardev", "socket,id=ctl,fd=3", "-device", "virtio-serial-device", "-device", "virtserialport,chardev=ctl,name=vb.ctl",
        "-drive", "id=d0,file=/store/disk,,1.img,format=raw,if=none,readonly=on,cache.direct=on,aio=threads", "-device", "virtio-blk-device,drive=d0",
        "-netdev", "tap,id=n0,ifname=vbl1,script=no,downscript=no", "-device", "virtio-net-device,netdev=n0,mac=02:76:62:d3:00:03",
    ];
    assert_eq!(a, expect);
}

/// q35 boots the same vmlinux as microvm, with `nopv`: no paravirtual interface, so no
/// kvmclock under KVM either.
#[test]
fn full_kvm_command_line() {
    let a = qemu_args(
        Profile::Full,
        Accel::Kvm,
        &pv_kernel("/k/vmlinux"),
        Path::new("/i/initramfs.cpio.gz"),
        &spec(true, true),
    );
    let expect = [
        "-name", "g1", "-M", "q35", "-accel", "kvm", "-cpu", "host", "-m", "192M", "-smp", "2",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", "/k/vmlinux", "-initrd", "/i/initramfs.cpio.gz",
        "-append", "console=ttyS0 reboot=t nopv panic=-1 no_timer_check net.ifnames=0 vb.ctl=tty:/dev/ttyS1 vb.hostname=g1 vb.net=eth0=10.211.0.3/16",
        "-chardev", "file,id=con,path=/proc/self/fd/1,append=on", "-serial", "chardev:con",
        "-chardev", "socket,id=ctl,fd=3", "-serial", "chardev:ctl",
        "-drive", "id=d0,file=/store/disk,,1.img,format=raw,if=none,snapshot=on,cache.direct=on,aio=threads", "-device", "ide-hd,drive=d0,bus=ide.0",
        "-netdev", "tap,id=n0,ifname=vbl1,script=no,downscript=no", "-device", "e1000,netdev=n0,mac=02:76:62:d3:00:03",
    ];
    assert_eq!(a, expect);
}

#[test]
fn guest_without_disk_or_network_gets_neither() {
    let a = qemu_args(
        Profile::Full,
        Accel::Tcg { tsc_khz: 1 },
        &pv_kernel("/k"),
        Path::new("/i"),
        &spec(false, false),
    );
    assert!(!a.iter().any(|x| x == "-drive" || x == "-netdev" || x.contains("vb.net=")), "{a:?}");
}

/// Under TCG the q35 guest gets the host's TSC rate, `nopv` and its console, and (having
/// ACPI) powers off itself, unlike a microvm guest.
#[test]
fn full_tcg_command_line() {
    let w = qemu_cmdline(
        Profile::Full,
        Accel::Tcg { tsc_khz: 2_596_150 },
        "panic=-1",
        &spec(false, false),
    );
    assert_eq!(
        w.join(" "),
        "console=ttyS0 reboot=t nopv panic=-1 tsc_early_khz=2596150 tsc=reliable no_timer_check net.ifnames=0 vb.ctl=tty:/dev/ttyS1 vb.hostname=g1"
    );
    let m =
        qemu_cmdline(Profile::Microvm, Accel::Tcg { tsc_khz: 1 }, "panic=-1", &spec(false, false));
    assert!(!m.iter().any(|x| x == "nopv"), "{m:?}");
}

#[test]
fn cmdline_drops_and_adds_words() {
    let s = spec(false, false);
    let w = kernel_cmdline(
        "a=1 tsc=reliable  b tsc_early_khz=5 quiet",
        &["tsc_early_khz", "tsc", "quiet"],
        &["x=y".into()],
        "tty:/dev/hvc0",
        &s,
    );
    assert_eq!(w, ["a=1", "b", "x=y", "vb.ctl=tty:/dev/hvc0", "vb.hostname=g1"]);
}

/// Every VM backend's command line (uml, QEMU, Firecracker, Xen all use `kernel_cmdline`)
/// gives the agent the fleet network's MTU when it is below Ethernet's 1500.
#[test]
fn cmdline_carries_the_fleet_mtu_below_1500() {
    let words = |mtu: Option<u32>| {
        let mut s = spec(true, false);
        s.net.as_mut().unwrap().fleet.mtu = mtu;
        kernel_cmdline("", &[], &[], "fd:3", &s)
    };
    let w = words(Some(1450));
    assert_eq!(w[w.len() - 2..], ["vb.net=eth0=10.211.0.3/16", "vb.mtu=1450"]);
    for m in [None, Some(1500), Some(9000)] {
        assert!(!words(m).iter().any(|w| w.starts_with("vb.mtu")), "{m:?}");
    }
}

#[test]
fn macs_are_unique_per_address_and_locally_administered() {
    assert_eq!(guest_mac(Ipv4Addr::new(10, 211, 1, 46)), "02:76:62:d3:01:2e");
    assert_ne!(
        guest_mac(FleetNet::guest_addr(0).unwrap()),
        guest_mac(FleetNet::guest_addr(1).unwrap())
    );
}

#[test]
fn log_helpers() {
    let text =
        "[    0.1] error in kernel text\nKVM internal error. Suberror: 1\nemulation failure\nok\n";
    assert_eq!(errors_in(text).unwrap(), "KVM internal error. Suberror: 1; emulation failure");
    assert_eq!(errors_in("[    0.1] error\nall fine\n"), None);
}

#[tokio::test]
async fn tsc_rate_is_plausible_and_cached() {
    let a = host_tsc_khz().await;
    assert!((100_000..20_000_000).contains(&a), "{a}");
    assert_eq!(host_tsc_khz().await, a);
}

#[tokio::test]
async fn configured_accelerators_skip_the_probe() {
    let images = Images::default();
    let q = |accel: &str| {
        Qemu::new(
            Profile::Microvm,
            &images,
            &BackendOptions { accel: Some(accel.into()), ..Default::default() },
        )
    };
    assert_eq!(q("kvm").accel().await.unwrap().accel, Accel::Kvm);
    assert!(matches!(q("tcg").accel().await.unwrap().accel, Accel::Tcg { .. }));
    assert!(q("hax").accel().await.unwrap_err().to_string().contains("hax"));
}
