//! The guest's filesystem as a plan of steps: computed in the parent (allocating),
//! walked allocation-free by the child through the [`Syscall`](super::syscalls::Syscall) seam.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::statvfs::FsFlags;

use super::{cstring, NulByteError, DEVICES, DISK_IN_GUEST};

/// Flags of the mount holding `path` that a bind remount of it must keep: in a user
/// namespace the kernel locks them, and dropping one (even the atime mode) fails with EPERM.
pub(super) fn keep_flags(path: &Path) -> io::Result<MsFlags> {
    let f = nix::sys::statvfs::statvfs(path)?.flags();
    let mut m = MsFlags::empty();
    for (st, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(st) {
            m |= ms;
        }
    }
    if !m.intersects(MsFlags::MS_NOATIME | MsFlags::MS_RELATIME) {
        m |= MsFlags::MS_STRICTATIME;
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// The plan: the guest's filesystem steps, computed in the parent, walked by the child.

/// What the plan depends on, gathered before the clone.
pub(super) struct PlanInput<'a> {
    /// The guest's work directory (canonical); holds the `root` mount point.
    pub(super) workdir: &'a Path,
    /// The shared image tree (canonical).
    pub(super) rootfs: &'a Path,
    pub(super) data_disk: Option<&'a Path>,
    pub(super) hostname: &'a str,
    /// See [`keep_flags`].
    pub(super) rootfs_keep: MsFlags,
    pub(super) disk_keep: MsFlags,
    pub(super) user_ns: bool,
    /// The root is the guest's own overlay (a system image): left writable.
    pub(super) writable: bool,
}

/// Descriptors the plan opens (O_PATH, in the guest's mount namespace) for the host paths
/// it binds: above the agent's fds, below those the parent passes ([`FD_FLOOR`]).
pub(super) const WORKDIR_FD: RawFd = 5;
pub(super) const ROOTFS_FD: RawFd = 6;
pub(super) const DISK_FD: RawFd = 7;

/// mount(2)'s arguments, prepared.
#[derive(Debug)]
pub(super) struct Mount {
    pub src: Option<CString>,
    pub target: CString,
    pub fstype: Option<CString>,
    pub flags: MsFlags,
    pub data: Option<CString>,
}

/// One step of the child's set-up. Holds only prepared C strings: walking it allocates
/// nothing. Relative paths are relative to the guest's work directory.
#[derive(Debug)]
pub(super) enum Step {
    Mount(Mount),
    Umount {
        target: CString,
        flags: MntFlags,
    },
    PivotRoot {
        new_root: CString,
        put_old: CString,
    },
    Chdir(CString),
    /// open(path, O_PATH) as descriptor `fd`.
    OpenPath {
        path: CString,
        fd: RawFd,
    },
    /// An empty regular file to bind a file onto.
    CreateFile(CString),
    SetHostname(CString),
    /// Become the user namespace's root (uid/gid 0 inside, no supplementary groups).
    BecomeRoot,
}

impl Step {
    /// For error reports (parent side only): relative paths are shown under `workdir`, and
    /// /proc/self/fd/N as the path the plan opened as N (`opened`).
    pub(super) fn describe(&self, workdir: &Path, opened: &[(RawFd, &CString)]) -> String {
        let s = |c: &CString| {
            let p = Path::new(OsStr::from_bytes(c.as_bytes()));
            let fd = p
                .strip_prefix("/proc/self/fd")
                .ok()
                .and_then(|n| n.to_str()?.parse::<RawFd>().ok());
            if let Some((_, path)) = fd.and_then(|fd| opened.iter().find(|(n, _)| *n == fd)) {
                path.to_string_lossy().into_owned()
            } else if p.is_absolute() || p == Path::new(".") {
                p.display().to_string()
            } else {
                workdir.join(p).display().to_string()
            }
        };
        match self {
            Step::Mount(Mount { src, target, fstype, flags, .. }) => {
                if flags.contains(MsFlags::MS_REMOUNT) {
                    format!("remounting {} ({})", s(target), flag_names(*flags))
                } else if flags.contains(MsFlags::MS_BIND) {
                    format!(
                        "bind-mounting {} on {}",
                        src.as_ref().map(s).unwrap_or_default(),
                        s(target)
                    )
                } else if let Some(t) = fstype {
                    format!("mounting {} on {}", t.to_string_lossy(), s(target))
                } else {
                    format!("changing propagation of {} ({})", s(target), flag_names(*flags))
                }
            }
            Step::Umount { target, .. } => format!("detaching the old root ({})", s(target)),
            Step::PivotRoot { .. } => "pivot_root into the guest's root".into(),
            Step::Chdir(p) => format!("chdir {}", s(p)),
            Step::OpenPath { path, .. } => format!("opening {}", s(path)),
            Step::CreateFile(p) => format!("creating {}", s(p)),
            Step::SetHostname(h) => format!("sethostname {}", h.to_string_lossy()),
            Step::BecomeRoot => "switching to uid/gid 0 of the user namespace".into(),
        }
    }
}

pub(super) fn flag_names(f: MsFlags) -> String {
    f.iter_names().map(|(n, _)| n).collect::<Vec<_>>().join("|")
}

/// The guest's filesystem, in order:
/// - `/` rprivate first, so nothing propagates to or from the host;
/// - the host paths to bind are opened (O_PATH) while still host root, in the guest's mount
///   namespace (the kernel binds only from mounts of the caller's namespace); later steps
///   reach them through /proc/self/fd, so a user-namespace root that may not traverse the
///   host's directories still can;
/// - with a user namespace, uid/gid 0 inside it, so that what follows is owned by it;
/// - the image bound on `<workdir>/root` and remounted read-only, nosuid, nodev;
/// - a tmpfs /dev holding binds of a few harmless host device nodes, then read-only (the
///   agent mounts devtmpfs only when /dev/null is missing, so host devices never show);
/// - a tmpfs /tmp;
/// - the data disk bound read-only at /data/disk.img, on a small tmpfs over /data (the
///   shared image must not gain a mount-point file);
/// - with a user namespace, /proc (see [`IdMap`]);
/// - the hostname; pivot_root into the new root and detach the old one.
pub(super) fn plan(p: &PlanInput) -> Result<Vec<Step>, NulByteError> {
    let c = |s: &str| cstring(s);
    let fd_path = |fd: RawFd| cstring(format!("/proc/self/fd/{fd}"));
    let mount = |src: Option<CString>,
                 target: &str,
                 fstype: Option<&str>,
                 flags: MsFlags,
                 data: Option<&str>|
     -> Result<Step, NulByteError> {
        Ok(Step::Mount(Mount {
            src,
            target: c(target)?,
            fstype: fstype.map(c).transpose()?,
            flags,
            data: data.map(c).transpose()?,
        }))
    };
    let ro_bind = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut v = vec![
        mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?,
        Step::OpenPath { path: cstring(p.workdir)?, fd: WORKDIR_FD },
        Step::OpenPath { path: cstring(p.rootfs)?, fd: ROOTFS_FD },
    ];
    if let Some(disk) = p.data_disk {
        v.push(Step::OpenPath { path: cstring(disk)?, fd: DISK_FD });
    }
    if p.user_ns {
        v.push(Step::BecomeRoot);
    }
    v.extend([
        Step::Chdir(fd_path(WORKDIR_FD)?),
        mount(Some(fd_path(ROOTFS_FD)?), "root", None, MsFlags::MS_BIND, None)?,
    ]);
    if !p.writable {
        v.push(mount(
            None,
            "root",
            None,
            ro_bind | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | p.rootfs_keep,
            None,
        )?);
    }
    v.push(mount(
        Some(c("tmpfs")?),
        "root/dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )?);
    for d in DEVICES {
        let target = format!("root/dev/{d}");
        v.push(Step::CreateFile(c(&target)?));
        v.push(mount(Some(cstring(format!("/dev/{d}"))?), &target, None, MsFlags::MS_BIND, None)?);
    }
    v.push(mount(None, "root/dev", None, ro_bind | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, None)?);
    v.push(mount(
        Some(c("tmpfs")?),
        "root/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?);
    if p.data_disk.is_some() {
        let img = format!("root{DISK_IN_GUEST}");
        v.push(mount(
            Some(c("tmpfs")?),
            "root/data",
            Some("tmpfs"),
            nosuid_nodev_noexec,
            Some("mode=755,size=4k"),
        )?);
        v.push(Step::CreateFile(c(&img)?));
        v.push(mount(Some(fd_path(DISK_FD)?), &img, None, MsFlags::MS_BIND, None)?);
        v.push(mount(None, &img, None, ro_bind | nosuid_nodev_noexec | p.disk_keep, None)?);
        v.push(mount(None, "root/data", None, ro_bind | nosuid_nodev_noexec, None)?);
    }
    if p.user_ns {
        v.push(mount(Some(c("proc")?), "root/proc", Some("proc"), nosuid_nodev_noexec, None)?);
    }
    v.push(Step::SetHostname(c(p.hostname)?));
    // pivot_root(".", ".") stacks the old root on the new one, so the read-only image needs
    // no put_old directory; detaching "." then drops the old root and everything under it.
    v.extend([
        Step::Chdir(c("root")?),
        Step::PivotRoot { new_root: c(".")?, put_old: c(".")? },
        Step::Umount { target: c(".")?, flags: MntFlags::MNT_DETACH },
        Step::Chdir(c("/")?),
    ]);
    Ok(v)
}
