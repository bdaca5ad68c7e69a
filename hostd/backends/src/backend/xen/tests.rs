use std::os::fd::AsRawFd;

use tokio::io::AsyncReadExt;

use super::config::sh_quote;
use super::*;
use crate::backend::rootdisk::InitMode;
use crate::backend::test_spec as spec;

fn kernel() -> Kernel {
    Kernel { path: "/k/vmlinux-xen".into(), cmdline: "panic=-1".into() }
}

#[test]
fn pv_config_with_network_and_disk() {
    let c = domain_config(
        DomainType::Pv,
        &kernel(),
        Path::new("/i/initramfs.cpio.gz"),
        &spec(true, true),
        Some(Path::new("/run/virtbench/r1/g1/vif-hotplug")),
        None,
    )
    .unwrap();
    let expect = "\
name = \"vb-r1-g1\"
type = \"pv\"
kernel = \"/k/vmlinux-xen\"
ramdisk = \"/i/initramfs.cpio.gz\"
cmdline = \"console=hvc0 quiet panic=-1 vb.ctl=tty:/dev/hvc0 vb.hostname=g1 vb.net=eth0=10.211.0.3/16\"
memory = 192
maxmem = 192
vcpus = 2
on_poweroff = \"destroy\"
on_reboot = \"destroy\"
on_crash = \"destroy\"
vif = [ \"mac=02:76:62:d3:00:03,script=/run/virtbench/r1/g1/vif-hotplug\" ]
disk = [ \"format=raw,vdev=xvda,access=ro,backendtype=qdisk,direct-io-safe,target=/store/disk,1.img\" ]
";
    assert_eq!(c, expect);
    assert_eq!(config_domain_name(&c).as_deref(), Some("vb-r1-g1"));
}

#[test]
fn pvh_config_without_network_or_disk_but_pinned() {
    let mut s = spec(false, false);
    s.limits.cpuset = Some("0");
    let c = domain_config(DomainType::Pvh, &kernel(), Path::new("/i"), &s, None, None).unwrap();
    assert!(c.contains("type = \"pvh\"\n"), "{c}");
    assert!(c.contains("cpus = \"0\"\n"), "{c}");
    assert!(!c.contains("\nvif =") && !c.contains("\ndisk =") && !c.contains("vb.net="), "{c}");
}

#[test]
fn values_xl_cannot_carry_are_refused_by_name() {
    let s = GuestSpec { data_disk: Some("/a/\"b\".img".into()), ..spec(false, false) };
    let e = domain_config(DomainType::Pv, &kernel(), Path::new("/i"), &s, None, None).unwrap_err();
    assert!(e.to_string().contains("preparing disk") && e.to_string().contains("\\\"b\\\""), "{e}");
    let e = domain_config(
        DomainType::Pv,
        &kernel(),
        Path::new("/i"),
        &spec(true, false),
        Some(Path::new("/w,x/vif")),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("comma"), "{e}");
}

fn system(ext4: PathBuf, init: InitMode, private: bool) -> System {
    System {
        name: "tiny".into(),
        ext4,
        ext4_uuid: "0123abcd-4567-89ab-cdef-0123456789ab".into(),
        tree: "/store/trees/cd".into(),
        init,
        image_init: Some("/sbin/init".into()),
        private,
    }
}

/// A system image's disk comes after the data disk, read-write through qdisk (the overlay's
/// format and path), and the agent is told the root's UUID and who is init.
#[test]
fn config_with_a_root_disk_after_the_data_disk() {
    let sys = system("/store/blobs/sha256/ab".into(), InitMode::Image, false);
    let root = RootDisk {
        system: &sys,
        path: Path::new("/run/virtbench/r1/g1/root.qcow2"),
        format: "qcow2",
    };
    let c = domain_config(
        DomainType::Pv,
        &kernel(),
        Path::new("/i/initramfs.cpio.gz"),
        &spec(false, true),
        None,
        Some(root),
    )
    .unwrap();
    assert!(
        c.contains("cmdline = \"console=hvc0 quiet panic=-1 vb.root=0123abcd-4567-89ab-cdef-0123456789ab vb.init=image vb.ctl=tty:/dev/hvc0 vb.hostname=g1\"\n"),
        "{c}"
    );
    assert!(
        c.contains("disk = [ \"format=raw,vdev=xvda,access=ro,backendtype=qdisk,direct-io-safe,target=/store/disk,1.img\", \"format=qcow2,vdev=xvdb,access=rw,backendtype=qdisk,target=/run/virtbench/r1/g1/root.qcow2\" ]\n"),
        "{c}"
    );
    // Without a data disk the root disk is the only one; a private copy is raw.
    let private = system("/run/virtbench/r1/copies/g1/rootfs.ext4".into(), InitMode::Agent, true);
    let root = RootDisk { system: &private, path: &private.ext4, format: "raw" };
    let c = domain_config(
        DomainType::Pv,
        &kernel(),
        Path::new("/i"),
        &spec(false, false),
        None,
        Some(root),
    )
    .unwrap();
    assert!(
        c.contains("disk = [ \"format=raw,vdev=xvdb,access=rw,backendtype=qdisk,target=/run/virtbench/r1/copies/g1/rootfs.ext4\" ]\n"),
        "{c}"
    );
    assert!(c.contains(" vb.init=agent "), "{c}");
    // A root disk path xl could not carry is refused by name.
    let bad = RootDisk { system: &sys, path: Path::new("/w/\"x\".qcow2"), format: "qcow2" };
    let e = domain_config(
        DomainType::Pv,
        &kernel(),
        Path::new("/i"),
        &spec(false, false),
        None,
        Some(bad),
    )
    .unwrap_err();
    assert!(e.to_string().contains("preparing root disk"), "{e}");
}

#[test]
fn vif_script_moves_the_vif_onto_the_fleet_bridge() {
    let s = spec(true, false);
    let text = vif_script(Path::new("/usr/sbin/ip"), s.net.as_ref().unwrap());
    assert!(text.starts_with("#!/bin/sh\n"));
    assert!(text.contains("'/usr/sbin/ip' link set dev \"$vif\" netns 'vb-r1' &&"), "{text}");
    assert!(
        text.contains("'/usr/sbin/ip' -n 'vb-r1' link set dev \"$vif\" name 'vbl1' &&"),
        "{text}"
    );
    assert!(text.contains("link set dev 'vbl1' master 'vbbr0' up ;;"), "{text}");
    assert_eq!(sh_quote("a'b"), r"'a'\''b'");
}

#[test]
fn parses_xl_output() {
    assert_eq!(created_domid("Parsing config from /w/domain.cfg\nWaiting for domain vb-r1-g0 (domid 12) to die [pid 345]\n"), Some(12));
    assert_eq!(created_domid("libxl: error: …\n"), None);
    let l = parse_xl_list(
        "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
         Domain-0                                     0   512     1     r-----      49.9\n\
         vb-t1-g1                                     1   128     1     -b----      28.5\n",
    )
    .unwrap();
    assert_eq!(
        l[1],
        DomainInfo {
            name: "vb-t1-g1".into(),
            id: 1,
            mem_mib: 128,
            vcpus: 1,
            state: "-b----".into()
        }
    );
    assert!(parse_xl_list("Name ID\nx y z\n").is_err());
    let i = parse_xl_info("host                   : dom0\nvirt_caps              : pv gnttab-v1\nxen_commandline        : a=b c\n");
    assert_eq!(i["virt_caps"], "pv gnttab-v1");
    assert_eq!(i["xen_commandline"], "a=b c");
    let i = parse_xl_info("total_memory           : 2047\nfree_memory            : 1128\n");
    assert_eq!(xen_used_kib(&i), Some(919 * 1024));
    assert_eq!(xen_used_kib(&parse_xl_info("total_memory : 1\n")), None);
}

#[test]
fn dom0_check_says_what_is_missing() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let e = check_dom0(r).unwrap_err();
    assert!(
        e.not_dom0() && e.to_string().starts_with("not dom0 of a Xen host: no Xen hypervisor"),
        "{e}"
    );
    std::fs::create_dir_all(r.join("sys/hypervisor/properties")).unwrap();
    std::fs::write(r.join("sys/hypervisor/type"), "kvm\n").unwrap();
    let e = check_dom0(r).unwrap_err();
    assert!(e.not_dom0() && e.to_string().contains("runs on a kvm hypervisor"), "{e}");
    std::fs::write(r.join("sys/hypervisor/type"), "xen\n").unwrap();
    // A dom0 missing a piece is not "not dom0": the Xen lab does not stand in for it.
    let e = check_dom0(r).unwrap_err();
    assert!(!e.not_dom0() && e.to_string().contains("mount -t xenfs"), "{e}");
    std::fs::create_dir_all(r.join("proc/xen")).unwrap();
    std::fs::write(r.join("proc/xen/capabilities"), "").unwrap();
    let e = check_dom0(r).unwrap_err();
    assert!(e.not_dom0() && e.to_string().contains("is a Xen domU"), "{e}");
    std::fs::write(r.join("proc/xen/capabilities"), "control_d\n").unwrap();
    let e = check_dom0(r).unwrap_err();
    assert!(!e.not_dom0() && e.to_string().contains("xen-privcmd"), "{e}");
    std::fs::create_dir_all(r.join("dev/xen")).unwrap();
    std::fs::write(r.join("dev/xen/privcmd"), "").unwrap();
    std::fs::write(
        r.join("sys/hypervisor/properties/capabilities"),
        "xen-3.0-x86_64 hvm-3.0-x86_64\n",
    )
    .unwrap();
    assert_eq!(check_dom0(r).unwrap(), "xen-3.0-x86_64 hvm-3.0-x86_64");
}

/// A stand-in toolstack: `xl create -F` announces domain 7 and stays until the domain is
/// "gone" (a file), as the real one stays until the domain dies; `xl destroy` makes it
/// gone, or says the domain is invalid if it already is; every destroy is logged.
/// `xenstore-read` names the test's pty as domain 7's console.
fn fake_tools(dir: &Path, create_fails: bool) {
    let create = if create_fails {
        "echo 'libxl: error: libxl_create.c:1921:domcreate_attach_devices: Domain 7:unable to add vif devices' >&2; exit 3"
    } else {
        "name=$(sed -n 's/^name = \"\\(.*\\)\"$/\\1/p' \"$3\")\n  echo \"Parsing config from $3\"\n  echo \"Waiting for domain $name (domid 7) to die [pid $$]\"\n  while [ ! -e \"$d/gone\" ]; do sleep 0.02; done"
    };
    let xl = format!(
        "#!/bin/sh\nd=$(dirname \"$0\")\ncase \"$1\" in\ninfo)\n  printf 'total_memory           : 2047\\nfree_memory            : 1512\\n' ;;\ncreate)\n  {create} ;;\ndestroy)\n  echo \"destroy $2\" >> \"$d/calls\"\n  if [ -e \"$d/gone\" ]; then echo \"$2 is an invalid domain identifier (rc=-6)\" >&2; exit 1; fi\n  touch \"$d/gone\" ;;\nesac\n"
    );
    let xsr = "#!/bin/sh\n[ \"$1\" = /local/domain/7/console/tty ] || exit 1\ncat \"$(dirname \"$0\")/tty\"\n";
    for (name, text) in [("xl", xl.as_str()), ("xenstore-read", xsr)] {
        std::fs::write(dir.join(name), text).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn fake_xen(dir: &Path) -> (Xen, GuestSpec) {
    std::fs::write(dir.join("vmlinux"), "k").unwrap();
    std::fs::write(dir.join("initramfs"), "i").unwrap();
    let x = Xen {
        kernel: Some(Kernel { path: dir.join("vmlinux"), cmdline: "panic=-1".into() }),
        initramfs: Some(dir.join("initramfs")),
        xl: dir.join("xl").display().to_string(),
        xenstore_read: dir.join("xenstore-read").display().to_string(),
        qemu_img: dir.join("qemu-img").display().to_string(),
        root: PathBuf::from("/"),
        system: None,
    };
    let s = GuestSpec { workdir: dir.join("work/g1"), ..spec(false, false) };
    (x, s)
}

/// Fake tools whose xenstore names a pty as the domain's console: its master end is the
/// domain's side.
fn fake_running(dir: &Path) -> (nix::pty::OpenptyResult, Xen, GuestSpec) {
    fake_tools(dir, false);
    let pty = nix::pty::openpty(None, None).unwrap();
    std::fs::write(
        dir.join("tty"),
        nix::unistd::ttyname(&pty.slave).unwrap().as_os_str().as_encoded_bytes(),
    )
    .unwrap();
    let (x, s) = fake_xen(dir);
    (pty, x, s)
}

/// Launch opens the console xenstore names and copies what it reads into the log;
/// stopping a guest that did not power off destroys its domain and removes its files.
#[tokio::test]
async fn launch_then_teardown_of_a_running_domain() {
    let d = tempfile::tempdir().unwrap();
    let (pty, x, s) = fake_running(d.path());
    let mut l = x.launch(&s).await.unwrap();
    let cfg = std::fs::read_to_string(s.workdir.join("domain.cfg")).unwrap();
    assert_eq!(config_domain_name(&cfg).as_deref(), Some("vb-r1-g1"));
    nix::unistd::write(&pty.master, b"guest says hi").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !String::from_utf8_lossy(&got).contains("guest says hi") {
        let n = tokio::time::timeout(Duration::from_secs(5), l.reader.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "console closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let log = std::fs::read_to_string(s.workdir.join("console.log")).unwrap();
    assert!(log.contains("Waiting for domain vb-r1-g1 (domid 7) to die"), "{log}");
    assert!(log.contains("guest says hi"), "{log}");
    tokio::io::AsyncWriteExt::write_all(&mut l.writer, b"to the guest").await.unwrap();
    let mut back = [0u8; 12];
    nix::unistd::read(pty.master.as_raw_fd(), &mut back).unwrap();
    assert_eq!(&back, b"to the guest");

    assert_eq!(x.stop(&mut l.guest, Duration::ZERO).await, Exit::Killed);
    assert_eq!(std::fs::read_to_string(d.path().join("calls")).unwrap(), "destroy vb-r1-g1\n");
    assert!(l.guest.proc.has_exited(), "the monitoring xl ended with its domain");
    assert!(!s.workdir.exists(), "work directory released");
}

/// A guest that powered off (its domain gone, xl exited 0) stops cleanly, with nothing
/// to destroy.
#[tokio::test]
async fn teardown_of_a_powered_off_domain_is_clean() {
    let d = tempfile::tempdir().unwrap();
    let (_pty, x, s) = fake_running(d.path());
    let mut l = x.launch(&s).await.unwrap();
    std::fs::write(d.path().join("gone"), "").unwrap();
    assert_eq!(x.stop(&mut l.guest, Duration::from_secs(10)).await, Exit::Clean);
    assert!(!d.path().join("calls").exists(), "xl exited 0, so the domain is gone: no destroy");
    assert!(!s.workdir.exists());
}

/// A failed `xl create` fails the launch with xl's own error and leaves nothing.
#[tokio::test]
async fn failed_create_reports_xl_and_cleans_up() {
    let d = tempfile::tempdir().unwrap();
    fake_tools(d.path(), true);
    let (x, s) = fake_xen(d.path());
    let e = x.launch(&s).await.err().expect("create fails");
    let e = e.to_string();
    assert!(e.contains("`xl create` exited (exit status: 3) before the domain ran"), "{e}");
    assert!(e.contains("unable to add vif devices"), "{e}");
    assert!(!s.workdir.exists(), "work directory released");
    // When libxl's per-domain QEMU (qdisk disks) wrote why it stopped, the error says it.
    let logs = d.path().join("var/log/xen");
    std::fs::create_dir_all(&logs).unwrap();
    let dm = logs.join(format!("qemu-dm-{}.log", domain_name(&s)));
    std::fs::write(&dm, "xen-qemu-system-i386: could not read keymap file: 'en-us'\n").unwrap();
    let x = Xen { root: d.path().to_path_buf(), ..x };
    let e = x.launch(&s).await.err().expect("create fails").to_string();
    assert!(
        e.contains(&format!("{}:\nxen-qemu-system-i386: could not read keymap", dm.display())),
        "{e}"
    );
}

/// A stand-in `qemu-img`: logs its arguments and makes the overlay (its last argument), or
/// fails as the real one does on a bad backing file.
fn fake_qemu_img(dir: &Path, fails: bool) {
    let body = if fails {
        "echo \"qemu-img: $9: Could not open backing file\" >&2; exit 1"
    } else {
        "for a; do last=$a; done\necho \"$*\" >> \"$(dirname \"$0\")/qemu-img.calls\"\necho qcow2 > \"$last\""
    };
    let path = dir.join("qemu-img");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A guest over a system image gets its own overlay in its (run-named) work directory,
/// backed by the shared image, as its xvdb; stopping it removes the overlay with the rest.
#[tokio::test]
async fn a_system_image_boots_from_an_overlay_of_its_own() {
    let d = tempfile::tempdir().unwrap();
    let (_pty, x, s) = fake_running(d.path());
    fake_qemu_img(d.path(), false);
    let image = d.path().join("rootfs.ext4");
    std::fs::write(&image, "ext4").unwrap();
    let x = Xen { system: Some(system(image.clone(), InitMode::Image, false)), ..x };
    assert_eq!(x.launch_files().images.last(), Some(&image), "a cold start evicts the image too");
    let mut l = x.launch(&s).await.unwrap();
    let overlay = s.workdir.join("root.qcow2");
    assert_eq!(
        std::fs::read_to_string(d.path().join("qemu-img.calls")).unwrap(),
        format!("create -q -f qcow2 -F raw -b {} {}\n", image.display(), overlay.display())
    );
    assert!(overlay.exists());
    let cfg = std::fs::read_to_string(s.workdir.join("domain.cfg")).unwrap();
    assert!(
        cfg.contains(&format!(
            "disk = [ \"format=qcow2,vdev=xvdb,access=rw,backendtype=qdisk,target={}\" ]\n",
            overlay.display()
        )),
        "{cfg}"
    );
    assert!(cfg.contains(" vb.root=0123abcd-4567-89ab-cdef-0123456789ab vb.init=image "), "{cfg}");
    assert_eq!(std::fs::read_to_string(&image).unwrap(), "ext4", "the shared image untouched");
    assert_eq!(x.stop(&mut l.guest, Duration::ZERO).await, Exit::Killed);
    assert!(!overlay.exists() && !s.workdir.exists(), "the overlay goes with the guest");
}

/// A guest with a private copy boots the copy itself (raw, written in place): no overlay.
#[tokio::test]
async fn a_private_copy_is_the_root_disk_itself() {
    let d = tempfile::tempdir().unwrap();
    let (_pty, x, s) = fake_running(d.path());
    fake_qemu_img(d.path(), false);
    let copy = d.path().join("copy.ext4");
    std::fs::write(&copy, "ext4").unwrap();
    let x = Xen { system: Some(system(copy.clone(), InitMode::Agent, true)), ..x };
    let mut l = x.launch(&s).await.unwrap();
    assert!(!d.path().join("qemu-img.calls").exists(), "no overlay over a private copy");
    let cfg = std::fs::read_to_string(s.workdir.join("domain.cfg")).unwrap();
    assert!(
        cfg.contains(&format!(
            "disk = [ \"format=raw,vdev=xvdb,access=rw,backendtype=qdisk,target={}\" ]\n",
            copy.display()
        )),
        "{cfg}"
    );
    x.stop(&mut l.guest, Duration::ZERO).await;
    assert!(copy.exists(), "the copy is the cold-start code's to remove, not the backend's");
}

/// A missing image is named before anything is made or run; a failed overlay fails the
/// launch with qemu-img's words and leaves nothing behind either.
#[tokio::test]
async fn a_bad_system_image_is_named_and_nothing_is_left() {
    let d = tempfile::tempdir().unwrap();
    let (_pty, x, s) = fake_running(d.path());
    fake_qemu_img(d.path(), false);
    let missing = d.path().join("no-such.ext4");
    let x = Xen { system: Some(system(missing.clone(), InitMode::Agent, false)), ..x };
    let e = x.launch(&s).await.err().expect("missing image").to_string();
    assert!(e.contains(&format!("system image tiny ({})", missing.display())), "{e}");
    assert!(e.contains("No such file"), "{e}");
    assert!(!s.workdir.exists(), "nothing created");
    assert!(!d.path().join("qemu-img.calls").exists() && !d.path().join("calls").exists());

    let dir_image = d.path().join("a-dir");
    std::fs::create_dir(&dir_image).unwrap();
    let x = Xen { system: Some(system(dir_image, InitMode::Agent, false)), ..x };
    let e = x.launch(&s).await.err().expect("a directory").to_string();
    assert!(e.contains("neither a regular file nor a block device"), "{e}");
    assert!(!s.workdir.exists(), "nothing created");

    fake_qemu_img(d.path(), true);
    let image = d.path().join("rootfs.ext4");
    std::fs::write(&image, "ext4").unwrap();
    let x = Xen { system: Some(system(image, InitMode::Agent, false)), ..x };
    let e = x.launch(&s).await.err().expect("qemu-img fails").to_string();
    assert!(e.contains("root disk overlay") && e.contains("Could not open backing file"), "{e}");
    assert!(!s.workdir.exists(), "nothing half created");
    assert!(!d.path().join("calls").exists(), "no domain was created, so none destroyed");
}

/// The probe of a backend with a system image looks for dom0's QEMU that serves qdisk.
#[test]
fn the_qdisk_backend_is_found_by_its_arguments() {
    let d = tempfile::tempdir().unwrap();
    let proc = d.path().join("proc");
    std::fs::create_dir_all(proc.join("12")).unwrap();
    std::fs::create_dir_all(proc.join("self")).unwrap();
    std::fs::write(
        proc.join("12/cmdline"),
        b"/usr/bin/qemu-system-i386\0-xen-domid\x001\0-xen-attach\0",
    )
    .unwrap();
    assert!(!qdisk_backend_running(d.path()), "a device model of domain 1 serves no dom0 disks");
    std::fs::create_dir_all(proc.join("34")).unwrap();
    std::fs::write(
        proc.join("34/cmdline"),
        b"/usr/bin/qemu-system-i386\0-xen-domid\x000\0-xen-attach\0-name\0dom0\0-M\0xenpv\0",
    )
    .unwrap();
    assert!(qdisk_backend_running(d.path()));
}

/// M_used on a Xen host counts what Xen handed out, which dom0's meminfo does not see.
#[tokio::test]
async fn memory_dom0_cannot_see_comes_from_xl_info() {
    let d = tempfile::tempdir().unwrap();
    fake_tools(d.path(), false);
    let (x, _) = fake_xen(d.path());
    assert_eq!(x.unseen_used_kib().await.unwrap(), (2047 - 1512) * 1024);
    let broken = Xen { xl: d.path().join("no-xl").display().to_string(), ..x };
    assert!(broken.unseen_used_kib().await.is_err(), "no toolstack: an error, never 0");
}

#[test]
fn domain_types() {
    assert_eq!(DomainType::parse(None).unwrap(), DomainType::Pv);
    assert_eq!(DomainType::parse(Some("")).unwrap(), DomainType::Pv);
    assert_eq!(DomainType::parse(Some("pvh")).unwrap(), DomainType::Pvh);
    assert!(DomainType::parse(Some("hvm")).unwrap_err().to_string().contains("expected pv or pvh"));
}
