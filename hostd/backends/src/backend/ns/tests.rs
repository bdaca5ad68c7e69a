use std::cell::RefCell;

use std::ffi::CStr;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use super::child::AT_EXEC;
use super::plan::{flag_names, keep_flags, plan, Mount, PlanInput};
use super::syscalls::{run_plan, Syscall};
use super::*;

/// Records each call as a line instead of making it.
#[derive(Default)]
struct Recorder {
    calls: RefCell<Vec<String>>,
    /// Fail the call whose line starts with this, with EPERM.
    fail_on: Option<&'static str>,
}

impl Recorder {
    fn rec(&self, line: String) -> nix::Result<()> {
        let fail = self.fail_on.is_some_and(|f| line.starts_with(f));
        self.calls.borrow_mut().push(line);
        if fail {
            Err(Errno::EPERM)
        } else {
            Ok(())
        }
    }
}

fn s(c: Option<&CStr>) -> String {
    c.map(|c| c.to_string_lossy().into_owned()).unwrap_or_else(|| "-".into())
}

impl Syscall for Recorder {
    fn mount(&self, m: &Mount) -> nix::Result<()> {
        self.rec(format!(
            "mount {} {} {} {} {}",
            s(m.src.as_deref()),
            s(Some(&m.target)),
            s(m.fstype.as_deref()),
            flag_names(m.flags),
            s(m.data.as_deref())
        ))
    }
    fn umount2(&self, target: &CStr, flags: MntFlags) -> nix::Result<()> {
        let f: Vec<_> = flags.iter_names().map(|(n, _)| n).collect();
        self.rec(format!("umount2 {} {}", s(Some(target)), f.join("|")))
    }
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> nix::Result<()> {
        self.rec(format!("pivot_root {} {}", s(Some(new_root)), s(Some(put_old))))
    }
    fn chdir(&self, path: &CStr) -> nix::Result<()> {
        self.rec(format!("chdir {}", s(Some(path))))
    }
    fn open_path(&self, path: &CStr, fd: RawFd) -> nix::Result<()> {
        self.rec(format!("open_path {} {fd}", s(Some(path))))
    }
    fn create_file(&self, path: &CStr) -> nix::Result<()> {
        self.rec(format!("create {}", s(Some(path))))
    }
    fn sethostname(&self, name: &CStr) -> nix::Result<()> {
        self.rec(format!("sethostname {}", s(Some(name))))
    }
    fn become_root(&self) -> nix::Result<()> {
        self.rec("become_root".into())
    }
}

fn input<'a>(disk: Option<&'a Path>, user_ns: bool) -> PlanInput<'a> {
    PlanInput {
        workdir: Path::new("/w/g0"),
        rootfs: Path::new("/img/rootfs"),
        data_disk: disk,
        hostname: "g0",
        rootfs_keep: MsFlags::MS_RELATIME,
        disk_keep: MsFlags::MS_NOATIME | MsFlags::MS_NOEXEC,
        user_ns,
        writable: false,
    }
}

fn recorded(p: &PlanInput) -> Vec<String> {
    let rec = Recorder::default();
    run_plan(&rec, &plan(p).unwrap()).unwrap();
    rec.calls.into_inner()
}

#[test]
fn plan_with_data_disk_is_exactly_this() {
    let calls = recorded(&input(Some(Path::new("/d/disk.bin")), false));
    let mut want: Vec<String> = [
        "mount - / - MS_REC|MS_PRIVATE -",
        "open_path /w/g0 5",
        "open_path /img/rootfs 6",
        "open_path /d/disk.bin 7",
        "chdir /proc/self/fd/5",
        "mount /proc/self/fd/6 root - MS_BIND -",
        "mount - root - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_REMOUNT|MS_BIND|MS_RELATIME -",
        "mount tmpfs root/dev tmpfs MS_NOSUID|MS_NOEXEC mode=755,size=64k",
    ]
    .map(String::from)
    .to_vec();
    for d in DEVICES {
        want.push(format!("create root/dev/{d}"));
        want.push(format!("mount /dev/{d} root/dev/{d} - MS_BIND -"));
    }
    want.extend(
        [
            "mount - root/dev - MS_RDONLY|MS_NOSUID|MS_NOEXEC|MS_REMOUNT|MS_BIND -",
            "mount tmpfs root/tmp tmpfs MS_NOSUID|MS_NODEV mode=1777",
            "mount tmpfs root/data tmpfs MS_NOSUID|MS_NODEV|MS_NOEXEC mode=755,size=4k",
            "create root/data/disk.img",
            "mount /proc/self/fd/7 root/data/disk.img - MS_BIND -",
            "mount - root/data/disk.img - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC|MS_REMOUNT|MS_NOATIME|MS_BIND -",
            "mount - root/data - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC|MS_REMOUNT|MS_BIND -",
            "sethostname g0",
            "chdir root",
            "pivot_root . .",
            "umount2 . MNT_DETACH",
            "chdir /",
        ]
        .map(String::from),
    );
    assert_eq!(calls, want);
}

#[test]
fn a_system_images_overlay_root_stays_writable() {
    let ro = recorded(&input(None, false));
    let rw = recorded(&PlanInput { writable: true, ..input(None, false) });
    let root_remount = |c: &String| c.starts_with("mount - root - ");
    assert_eq!(ro.iter().filter(|c| root_remount(c)).count(), 1, "{ro:#?}");
    // Only the read-only remount of the root goes; /dev and the rest are as before.
    let without: Vec<&String> = ro.iter().filter(|c| !root_remount(c)).collect();
    assert_eq!(rw.iter().collect::<Vec<_>>(), without);
}

#[test]
fn plan_without_disk_but_with_user_namespace() {
    let calls = recorded(&input(None, true));
    assert!(!calls.iter().any(|c| c.contains("data") || c.contains(" 7")), "{calls:#?}");
    let head: Vec<&str> = calls.iter().take(5).map(String::as_str).collect();
    assert_eq!(
        head,
        [
            "mount - / - MS_REC|MS_PRIVATE -",
            "open_path /w/g0 5",
            "open_path /img/rootfs 6",
            // Before anything is created: what follows must be owned by the guest's root.
            "become_root",
            "chdir /proc/self/fd/5",
        ]
    );
    let tail: Vec<&str> = calls.iter().rev().take(7).rev().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "mount tmpfs root/tmp tmpfs MS_NOSUID|MS_NODEV mode=1777",
            // Before pivot_root: the kernel would refuse it afterwards in a user namespace.
            "mount proc root/proc proc MS_NOSUID|MS_NODEV|MS_NOEXEC -",
            "sethostname g0",
            "chdir root",
            "pivot_root . .",
            "umount2 . MNT_DETACH",
            "chdir /",
        ]
    );
}

#[test]
fn a_failing_step_stops_the_walk_and_is_named() {
    let steps = plan(&input(None, false)).unwrap();
    let rec = Recorder { fail_on: Some("mount tmpfs root/tmp"), ..Default::default() };
    let (i, e) = run_plan(&rec, &steps).unwrap_err();
    assert_eq!(e, Errno::EPERM);
    assert_eq!(rec.calls.borrow().len(), i + 1, "nothing after the failing step runs");
    let mut report = (i as u32).to_le_bytes().to_vec();
    report.extend((Errno::EPERM as i32).to_le_bytes());
    let err = decode_failure(&report, &steps, Path::new("/w/g0"));
    let crate::backend::SpawnError::Step { step, source } = &err else { panic!("{err:?}") };
    assert_eq!(step, "mounting tmpfs on /w/g0/root/tmp");
    assert_eq!(source.kind(), io::ErrorKind::PermissionDenied);
    let bind = steps
        .iter()
        .position(
            |s| matches!(s, Step::Mount(Mount { src: Some(_), flags, .. }) if *flags == MsFlags::MS_BIND),
        )
        .unwrap();
    let mut report = (bind as u32).to_le_bytes().to_vec();
    report.extend((Errno::EACCES as i32).to_le_bytes());
    let err = decode_failure(&report, &steps, Path::new("/w/g0")).to_string();
    assert!(err.starts_with("bind-mounting /img/rootfs on /w/g0/root: "), "{err}");
    let mut report = AT_EXEC.to_le_bytes().to_vec();
    report.extend((Errno::ENOENT as i32).to_le_bytes());
    assert!(decode_failure(&report, &steps, Path::new("/w"))
        .to_string()
        .contains("executing /sbin/guest-agent"));
    assert!(decode_failure(&[1, 2], &steps, Path::new("/w")).to_string().contains("garbled"));
}

#[test]
fn paths_with_nul_are_refused() {
    let mut p = input(None, false);
    p.hostname = "g\0";
    let e = plan(&p).unwrap_err();
    assert_eq!(e.text, "g\0");
    assert!(e.to_string().contains("\"g\\0\" contains a NUL byte"), "{e}");
    let e = cstring(std::ffi::OsStr::new("/a\0b")).unwrap_err();
    assert!(e.to_string().contains("/a\\0b"), "{e}");
}

#[test]
fn keep_flags_always_name_an_atime_mode() {
    let f = keep_flags(Path::new("/")).unwrap();
    assert!(
        f.intersects(MsFlags::MS_NOATIME | MsFlags::MS_RELATIME | MsFlags::MS_STRICTATIME),
        "{f:?}"
    );
}

#[test]
fn rootfs_check_names_the_missing_path() {
    let d = tempfile::tempdir().unwrap();
    let e = check_rootfs(&d.path().join("nope")).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
    let e = check_rootfs(d.path()).unwrap_err().to_string();
    assert!(e.contains("sbin/guest-agent"), "{e}");
    std::fs::create_dir_all(d.path().join("sbin")).unwrap();
    std::fs::write(d.path().join("sbin/guest-agent"), "").unwrap();
    for dir in ["dev", "proc", "tmp"] {
        std::fs::create_dir(d.path().join(dir)).unwrap();
    }
    let e = check_rootfs(d.path()).unwrap_err().to_string();
    assert!(e.contains("/data is missing"), "{e}");
    std::fs::create_dir(d.path().join("data")).unwrap();
    check_rootfs(d.path()).unwrap();
}
