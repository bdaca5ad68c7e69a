use oci_spec::runtime::LinuxNamespaceType;

use super::*;
use crate::cgroup::Mode;

/// imagegen's template (recipes/oci-bundle.toml), as it writes it.
const TEMPLATE: &str = r#"{
  "hostname": "virtbench",
  "linux": {
"maskedPaths": ["/proc/acpi", "/proc/kcore", "/sys/firmware"],
"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
"readonlyPaths": ["/proc/bus", "/proc/sys"]
  },
  "mounts": [
{"destination": "/proc", "options": ["nosuid", "noexec", "nodev"], "source": "proc", "type": "proc"},
{"destination": "/dev", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"], "source": "tmpfs", "type": "tmpfs"},
{"destination": "/sys", "options": ["nosuid", "noexec", "nodev", "ro"], "source": "sysfs", "type": "sysfs"},
{"destination": "/tmp", "options": ["nosuid", "nodev", "mode=1777"], "source": "tmpfs", "type": "tmpfs"}
  ],
  "ociVersion": "1.0.2",
  "process": {
"args": ["/sbin/guest-agent", "--ctl", "fd:3"],
"capabilities": {
  "ambient": [],
  "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"],
  "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"],
  "inheritable": [],
  "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"]
},
"cwd": "/",
"env": ["PATH=/sbin:/bin"],
"noNewPrivileges": true,
"rlimits": [],
"terminal": false,
"user": {"gid": 0, "uid": 0}
  },
  "root": {"path": "rootfs", "readonly": true}
}"#;

fn template() -> Spec {
    serde_json::from_str(TEMPLATE).unwrap()
}

fn guest<'a>(disk: Option<&'a Path>) -> GuestConfig<'a> {
    GuestConfig {
        rootfs: Path::new("/images/bundle/rootfs"),
        hostname: "g1",
        agent_args: vec!["--net".into(), "eth0=10.211.0.3/16".into()],
        netns: Some("/run/netns/vbn-r-1".into()),
        cgroups_path: "virtbench/r/g1".into(),
        limits: Limits {
            memory_bytes: Some(128 << 20),
            cpus: Some(0.5),
            pids: Some(32),
            cpuset: Some("0"),
        },
        data_disk: disk,
    }
}

#[test]
fn over_a_system_image_the_root_is_writable_and_the_agent_the_added_copy() {
    let s = over_system(derive_config(&template(), &guest(None)).unwrap()).unwrap();
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(false));
    let args = s.process().as_ref().unwrap().args().clone().unwrap();
    assert_eq!(args.first().map(String::as_str), Some(crate::backend::rootdisk::AGENT_IN_IMAGE));
    assert_eq!(args.last().map(String::as_str), Some("--system-root"));
    // The per-guest arguments stay in between.
    assert!(args.windows(2).any(|w| w[0] == "--net"), "{args:?}");
}

#[test]
fn per_guest_fields_are_set() {
    let s = derive_config(&template(), &guest(Some(Path::new("/d/disk.bin")))).unwrap();
    let root = s.root().as_ref().unwrap();
    assert_eq!(root.path(), Path::new("/images/bundle/rootfs"));
    assert_eq!(root.readonly(), Some(true));
    assert_eq!(s.hostname().as_deref(), Some("g1"));
    let args = s.process().as_ref().unwrap().args().clone().unwrap();
    assert_eq!(args, ["/sbin/guest-agent", "--ctl", "fd:3", "--net", "eth0=10.211.0.3/16"]);
    let linux = s.linux().as_ref().unwrap();
    let net: Vec<_> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|n| n.typ() == LinuxNamespaceType::Network)
        .collect();
    assert_eq!(net.len(), 1);
    assert_eq!(net[0].path().as_deref(), Some(Path::new("/run/netns/vbn-r-1")));
    assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("virtbench/r/g1")));
    let r = linux.resources().as_ref().unwrap();
    assert_eq!(r.memory().unwrap().limit(), Some(128 << 20));
    let cpu = r.cpu().as_ref().unwrap();
    assert_eq!(
        (cpu.quota(), cpu.period(), cpu.cpus().as_deref()),
        (Some(50_000), Some(100_000), Some("0"))
    );
    assert_eq!(r.pids().unwrap().limit(), 32);
    let m = s.mounts().as_ref().unwrap();
    let data = &m[m.len() - 2];
    assert_eq!(
        (data.destination().as_path(), data.typ().as_deref()),
        (Path::new("/data"), Some("tmpfs"))
    );
    let disk = &m[m.len() - 1];
    assert_eq!(disk.destination(), Path::new("/data/disk.img"));
    assert_eq!(disk.source().as_deref(), Some(Path::new("/d/disk.bin")));
    let opts = disk.options().clone().unwrap();
    assert!(opts.contains(&"bind".to_string()) && opts.contains(&"ro".to_string()), "{opts:?}");
    // What the runtime reads back is what we meant.
    let back: Spec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

#[test]
fn everything_else_is_preserved() {
    let t = template();
    let mut s = derive_config(&t, &guest(Some(Path::new("/d/disk.bin")))).unwrap();
    // Undo exactly the per-guest edits: what remains must be the template.
    s.set_root(t.root().clone());
    s.set_hostname(t.hostname().clone());
    let p = s.process_mut().as_mut().unwrap();
    p.set_args(t.process().as_ref().unwrap().args().clone());
    let l = s.linux_mut().as_mut().unwrap();
    l.set_cgroups_path(None);
    l.set_resources(None);
    for n in l.namespaces_mut().as_mut().unwrap() {
        n.set_path(None);
    }
    let m = s.mounts_mut().as_mut().unwrap();
    m.truncate(m.len() - 2);
    assert_eq!(s, t);
}

#[test]
fn optional_fields_stay_unset_when_unused() {
    let mut g = guest(None);
    g.netns = None;
    g.agent_args.clear();
    g.limits = Limits::default();
    let s = derive_config(&template(), &g).unwrap();
    let linux = s.linux().as_ref().unwrap();
    assert!(linux.resources().is_none(), "no limits, no resources section");
    assert!(linux.namespaces().as_ref().unwrap().iter().all(|n| n.path().is_none()));
    assert_eq!(s.mounts().as_ref().unwrap().len(), template().mounts().as_ref().unwrap().len());
    assert_eq!(s.process().as_ref().unwrap().args(), template().process().as_ref().unwrap().args());
    // A template without a network namespace gains one when the guest has a network.
    let mut t = template();
    t.linux_mut()
        .as_mut()
        .unwrap()
        .namespaces_mut()
        .as_mut()
        .unwrap()
        .retain(|n| n.typ() != LinuxNamespaceType::Network);
    let s = derive_config(&t, &guest(None)).unwrap();
    let ns = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert_eq!(
        ns.last().map(|n| (n.typ(), n.path().clone())),
        Some((LinuxNamespaceType::Network, Some("/run/netns/vbn-r-1".into())))
    );
    // A template without a process is refused with a reason.
    let mut t = template();
    t.set_process(None);
    assert!(derive_config(&t, &guest(None)).unwrap_err().to_string().contains("process"));
}

const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn container_groups_on_a_hybrid_host() {
    let pc = "\
9:name=systemd:/virtbench/r/g1
8:pids:/virtbench/r/g1
4:memory:/process_api/abc/virtbench/r/g1
2:cpu,cpuacct:/virtbench/r/g1
7:blkio:/virtbench/r/g1
0::/virtbench/r/g1
";
    let suffix = Path::new("virtbench/r/g1");
    let cg =
        crate::cgroup::dirs_of(pc, MOUNTINFO, |p| p.ends_with(suffix).then(|| p.to_path_buf()))
            .unwrap();
    assert_eq!(cg.mode, Mode::V1);
    let dirs: Vec<&str> = cg.dirs.iter().map(|d| d.to_str().unwrap()).collect();
    // blkio is not mounted in this mountinfo: skipped, not guessed.
    assert_eq!(
        dirs,
        [
            "/sys/fs/cgroup/memory/process_api/abc/virtbench/r/g1",
            "/sys/fs/cgroup/systemd/virtbench/r/g1",
            "/sys/fs/cgroup/pids/virtbench/r/g1",
            "/sys/fs/cgroup/cpu,cpuacct/virtbench/r/g1",
            "/sys/fs/cgroup/unified/virtbench/r/g1",
        ]
    );
    // Expected from hostd's own groups.
    let own = "4:memory:/process_api/abc\n8:pids:/\n0::/\n";
    let cg = crate::cgroup::dirs_of(own, MOUNTINFO, |p| Some(p.join("virtbench/r/g1"))).unwrap();
    assert_eq!(cg.dirs[0], Path::new("/sys/fs/cgroup/memory/process_api/abc/virtbench/r/g1"));
    assert_eq!(cg.dirs.len(), 3);
    // A group elsewhere is not the guest's.
    assert!(crate::cgroup::dirs_of("4:memory:/other\n", MOUNTINFO, |p| p
        .ends_with(suffix)
        .then(|| p.to_path_buf()))
    .is_none());
}

#[test]
fn container_group_on_a_v2_host() {
    let mi = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    let cg =
        crate::cgroup::dirs_of("0::/user.slice/virtbench/r/g1\n", mi, |p| Some(p.to_path_buf()))
            .unwrap();
    assert_eq!(cg.mode, Mode::V2);
    assert_eq!(cg.dirs, [PathBuf::from("/sys/fs/cgroup/user.slice/virtbench/r/g1")]);
}

#[test]
fn parent_pid_parsing_survives_odd_names() {
    // Our own parent, as a sanity check of the field position.
    assert_eq!(parent_of(std::process::id()), Some(nix::unistd::getppid().as_raw() as u32));
}

/// Making the groups names the directory that could not be made, by step: one below a file
/// (Create), a relative path whose ancestors run out (NoParent).
#[test]
fn group_creation_failures_name_the_directory() {
    use crate::cgroup::CgroupError;
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("plain");
    std::fs::write(&file, "").unwrap();
    let e = super::cgroups::create_groups(&file.join("g1")).unwrap_err();
    assert!(matches!(&e, CgroupError::Create { dir, .. } if *dir == file.join("g1")), "{e:?}");
    assert!(e.to_string().contains("plain/g1"), "{e}");
    let rel = PathBuf::from(format!("vb-none-{}/g1", std::process::id()));
    let e = super::cgroups::create_groups(&rel).unwrap_err();
    assert!(matches!(e, CgroupError::NoParent { .. }), "{e:?}");
}
