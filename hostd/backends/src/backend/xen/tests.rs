use std::os::fd::AsRawFd;

use tokio::io::AsyncReadExt;

use super::config::sh_quote;
use super::*;
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
    let c = domain_config(DomainType::Pvh, &kernel(), Path::new("/i"), &s, None).unwrap();
    assert!(c.contains("type = \"pvh\"\n"), "{c}");
    assert!(c.contains("cpus = \"0\"\n"), "{c}");
    assert!(!c.contains("\nvif =") && !c.contains("\ndisk =") && !c.contains("vb.net="), "{c}");
}

#[test]
fn values_xl_cannot_carry_are_refused_by_name() {
    let s = GuestSpec { data_disk: Some("/a/\"b\".img".into()), ..spec(false, false) };
    let e = domain_config(DomainType::Pv, &kernel(), Path::new("/i"), &s, None).unwrap_err();
    assert!(e.to_string().contains("preparing disk") && e.to_string().contains("\\\"b\\\""), "{e}");
    let e = domain_config(
        DomainType::Pv,
        &kernel(),
        Path::new("/i"),
        &spec(true, false),
        Some(Path::new("/w,x/vif")),
    )
    .unwrap_err();
    assert!(e.to_string().contains("comma"), "{e}");
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
}

/// A system image is refused with the reason, before any tool runs or anything is created.
#[tokio::test]
async fn a_system_image_is_refused_naming_why() {
    let d = tempfile::tempdir().unwrap();
    let (x, s) = fake_xen(d.path());
    let system = crate::backend::rootdisk::System {
        name: "tiny".into(),
        ext4: d.path().join("rootfs.ext4"),
        ext4_uuid: "0123abcd-4567-89ab-cdef-0123456789ab".into(),
        tree: d.path().join("tree"),
        init: crate::backend::rootdisk::InitMode::Agent,
        image_init: None,
        private: false,
    };
    let x = Xen { system: Some(system), ..x };
    let e = x.launch(&s).await.err().expect("refused").to_string();
    assert!(
        e.contains("system image tiny on xen") && e.contains("does not attach a system image"),
        "{e}"
    );
    assert!(!s.workdir.exists(), "nothing created");
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
