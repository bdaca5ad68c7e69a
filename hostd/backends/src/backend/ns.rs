//! `ns`: the modern Vserver. A guest is the agent as PID 1 of fresh pid, mount, uts, ipc and
//! net namespaces (plus, optionally, a user namespace) over the shared read-only image
//! rootfs, in its own cgroup, on the host's one kernel. Teardown is the common
//! [`stop_and_release`](super::stop_and_release): the resources are the work directory,
//! the host end of the veth and the cgroup; there are no host mounts to undo.
//!
//! Launch:
//! 1. hostd prepares everything the child will need — the mount plan ([`plan`]) with all its
//!    C strings, argv, envp, descriptors — and the guest's cgroup;
//! 2. clone(2) with the namespace flags: the child is PID 1 of its pid namespace and blocks
//!    on a sync pipe;
//! 3. hostd writes the uid/gid maps (user namespace), puts the child in the cgroup (so every
//!    page the guest ever allocates is charged there), moves a veth peer into its network
//!    namespace as `eth0`, then writes one byte to the sync pipe;
//! 4. the child walks the plan (its own mounts, pivot_root), wires fds 0–3 and execs
//!    `/sbin/guest-agent --ctl fd:3 …`. A failing step is written to an O_CLOEXEC error pipe
//!    as (step, errno); a successful exec closes that pipe, which is how hostd knows.
//!
//! clone rather than fork + unshare: unshare(CLONE_NEWPID) only moves the caller's future
//! children, so the agent would be a grandchild of hostd that nobody here could reap; a
//! clone with every flag makes it PID 1 of the new namespaces and hostd's direct child.
//!
//! hostd is a multi-threaded tokio process: between clone and exec the child may only make
//! async-signal-safe calls. No allocation and no locks (another thread may have held the
//! allocator's lock at the instant of the clone, and no thread is left in the child to
//! release it), nothing from libc that believes it is multi-threaded (glibc's setuid family
//! signals every thread it knows of; the child uses the raw system calls). The child only
//! reads what was prepared before the clone.
//!
//! All mounts happen inside the guest's mount namespace, after `/` was made rprivate there,
//! so nothing ever appears in (or propagates to) the host's; they vanish with the guest.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::FsFlags;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use super::native::{split_socket, AGENT_FD};
use super::rootdisk::{System, AGENT_IN_IMAGE};
use super::{
    make_cgroup, prepare, Backend, BackendKind, BackendOptions, GuestSpec, Halves, Held, Images,
    LaunchError, LaunchFiles, Launched, Proc, Resource, Unavailable,
};
use crate::cgroup;
use crate::console::{ConsoleLog, CONSOLE_CAP};
use crate::netlab::NetMode;

/// Where the agent is in the image.
pub const AGENT_PATH: &str = "/sbin/guest-agent";
/// Host device nodes bind-mounted into the guest's private /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Where the data disk appears in the guest.
const DISK_IN_GUEST: &str = "/data/disk.img";
/// Mount points the image must provide (its root is read-only: they cannot be created).
const NEEDED_DIRS: [&str; 4] = ["dev", "proc", "tmp", "data"];
/// The child's stack: it runs a short, non-recursive walk over the plan.
const CHILD_STACK: usize = 256 << 10;
/// From the go-ahead to the exec (or its failure report).
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// Descriptors the child uses are moved at or above this, clear of 0–3 which it fills.
const FD_FLOOR: RawFd = 10;

/// A user namespace for every guest: guest uids 0..count are host uids host_uid.., gids
/// likewise. Off by default. With it, the guest's root is an unprivileged host user, so the
/// data disk must be readable by `host_uid` (world-readable will do). /proc is then mounted
/// by the child before pivot_root (the kernel refuses a fresh procfs in a user namespace
/// whose mount namespace shows none) and /sys stays empty (the agent notes its failed
/// mount).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub host_uid: u32,
    pub host_gid: u32,
    pub count: u32,
}

pub struct Ns {
    rootfs: Option<PathBuf>,
    /// A system image to use as the guests' root instead (each over its own overlayfs),
    /// with the agent binary added to it.
    system: Option<(System, PathBuf)>,
    /// Also give each guest a user namespace (see [`IdMap`]). None: guests' root is the
    /// host's root, as in Vserver.
    pub user_ns: Option<IdMap>,
}

impl Ns {
    pub fn new(images: &Images, _opts: &BackendOptions) -> Self {
        Self { rootfs: images.rootfs.clone(), system: system_of(images), user_ns: None }
    }

    pub fn with_images(&self, images: &Images) -> Self {
        Self { rootfs: images.rootfs.clone(), system: system_of(images), user_ns: self.user_ns }
    }

    fn clone_flags(&self) -> CloneFlags {
        self.clone_flags_for(NetMode::Private)
    }

    /// A guest on a shared stack ([`NetMode::Shared`], the Vserver-like mode) gets no
    /// network namespace: its child joins the fleet's instead.
    fn clone_flags_for(&self, mode: NetMode) -> CloneFlags {
        let mut f = CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC;
        if mode == NetMode::Private {
            f |= CloneFlags::CLONE_NEWNET;
        }
        if self.user_ns.is_some() {
            f |= CloneFlags::CLONE_NEWUSER;
        }
        f
    }
}

/// The system image and the agent to add to it.
fn system_of(images: &Images) -> Option<(System, PathBuf)> {
    images.system.clone().map(|s| (s, images.agent.clone()))
}

impl Backend for Ns {
    fn kind(&self) -> BackendKind {
        BackendKind::Ns
    }

    /// The rootfs tree (the agent is in it); hostd itself does the namespaces.
    fn launch_files(&self) -> LaunchFiles {
        LaunchFiles {
            images: match &self.system {
                Some((sys, agent)) => vec![sys.tree.clone(), agent.clone()],
                None => self.rootfs.iter().cloned().collect(),
            },
            programs: Vec::new(),
            data: Vec::new(),
        }
    }

    async fn probe(&self) -> Result<String, Unavailable> {
        let unavailable = |reason: String| Unavailable { backend: "ns", reason: reason.into() };
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Err(unavailable(format!("needs root to create namespaces, mounts, cgroups and veths (running as uid {euid})")));
        }
        let rootfs = self
            .rootfs
            .as_ref()
            .ok_or_else(|| unavailable("no rootfs image (build the `rootfs` recipe)".into()))?;
        check_rootfs(rootfs).map_err(unavailable)?;
        let mode = cgroup::detect().map_err(|e| unavailable(format!("cgroups: {e}")))?;
        // Really create the namespaces once: a kernel built without one fails here, not at
        // the first launch.
        let flags = self.clone_flags();
        trial_clone(flags).map_err(|e| unavailable(format!("clone({flags:?}): {e}")))?;
        match std::process::Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            _ => {
                return Err(unavailable(
                    "iproute2's `ip` is needed for the guests' veths and is not runnable".into(),
                ))
            }
        }
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let user = if self.user_ns.is_some() { ",user" } else { "" };
        Ok(format!(
            "namespaces pid,mnt,uts,ipc,net{user} over {}, cgroup {mode:?}, kernel {kernel}",
            rootfs.display()
        ))
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        let mut held = Held::default();
        match self.start(spec, &mut held).await {
            Ok((halves, proc, console)) => Ok(held.launched(spec, halves, proc, console)),
            Err(e) => {
                held.release(&spec.name);
                Err(e)
            }
        }
    }
}

fn cstring(p: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Moves `fd` to a number ≥ [`FD_FLOOR`] (close-on-exec), so the child's dup2 onto 0–3 can
/// never overwrite another descriptor it still needs.
fn above_floor(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one or -1.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FD_FLOOR) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: n is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

impl Ns {
    /// Everything up to the agent's exec. Whatever it creates is recorded in `held`; a
    /// child that fails is killed and reaped here.
    async fn start(
        &self,
        spec: &GuestSpec,
        held: &mut Held,
    ) -> Result<(Halves, Proc, ConsoleLog), LaunchError> {
        std::fs::create_dir_all(&spec.workdir).map_err(|e| prepare(spec.workdir.display(), e))?;
        held.resources.push(Resource::Dir { path: spec.workdir.clone() });
        let workdir =
            std::fs::canonicalize(&spec.workdir).map_err(|e| prepare(spec.workdir.display(), e))?;
        let rootfs = match &self.system {
            // The guest's own overlay over the image's tree: writable, never the image.
            Some((sys, agent)) => {
                sys.container_root(&workdir, agent, &NEEDED_DIRS, &mut held.resources)?
            }
            None => {
                let rootfs = self.rootfs.as_ref().ok_or_else(|| {
                    prepare(
                        "the rootfs image",
                        io::Error::new(io::ErrorKind::NotFound, "none given"),
                    )
                })?;
                std::fs::canonicalize(rootfs)
                    .map_err(|e| prepare(format!("rootfs {}", rootfs.display()), e))?
            }
        };
        // A guest root in a user namespace is "other" to this directory and must still reach
        // the mount point in it.
        std::fs::set_permissions(&workdir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| prepare(workdir.display(), e))?;
        // The guest's root mount point: an empty directory on the host, the image inside
        // the guest's mount namespace only.
        let root = workdir.join("root");
        std::fs::create_dir_all(&root).map_err(|e| prepare(root.display(), e))?;
        let log = spec.workdir.join("console.log");
        let (console, log_wr) = ConsoleLog::start(&log, CONSOLE_CAP)
            .map_err(|e| prepare(log.display(), io::Error::other(e)))?;
        let null = File::open("/dev/null").map_err(|e| prepare("/dev/null", e))?;
        let (host, guest) =
            socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
                .map_err(|e| prepare("control socketpair", e.into()))?;
        let (sync_rd, sync_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| prepare("sync pipe", e.into()))?;
        let (err_rd, err_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| prepare("error pipe", e.into()))?;
        let high = |fd: OwnedFd| above_floor(fd).map_err(|e| prepare("child descriptors", e));
        let (sync_rd, err_wr, null, log_fd, guest) =
            (high(sync_rd)?, high(err_wr)?, high(null.into())?, high(log_wr)?, high(guest)?);

        let disk = match &spec.data_disk {
            Some(d) => Some(
                std::fs::canonicalize(d)
                    .map_err(|e| prepare(format!("data disk {}", d.display()), e))?,
            ),
            None => None,
        };
        let input = PlanInput {
            workdir: &workdir,
            rootfs: &rootfs,
            data_disk: disk.as_deref(),
            hostname: &spec.name,
            rootfs_keep: keep_flags(&rootfs)
                .map_err(|e| prepare(format!("statvfs {}", rootfs.display()), e))?,
            writable: self.system.is_some(),
            disk_keep: match &disk {
                Some(d) => {
                    keep_flags(d).map_err(|e| prepare(format!("statvfs {}", d.display()), e))?
                }
                None => MsFlags::empty(),
            },
            user_ns: self.user_ns.is_some(),
        };
        let steps = plan(&input).map_err(|e| prepare("mount plan", e))?;

        let agent_path = if self.system.is_some() { AGENT_IN_IMAGE } else { AGENT_PATH };
        let mut args = vec![
            agent_path.to_string(),
            "--ctl".into(),
            format!("fd:{AGENT_FD}"),
            "--hostname".into(),
            spec.name.clone(),
        ];
        if self.system.is_some() {
            args.push("--system-root".into());
        }
        let mode = spec.net.as_ref().map(|n| n.fleet.mode).unwrap_or_default();
        // The fleet's namespace, for a guest that shares its stack: joined by the child.
        let shared_netns = match &spec.net {
            Some(n) if n.fleet.mode == NetMode::Shared => {
                if self.user_ns.is_some() {
                    return Err(prepare(
                        "the shared network mode",
                        io::Error::new(
                            io::ErrorKind::Unsupported,
                            "cannot be combined with a user namespace (joining the fleet's network namespace needs the host's privileges)",
                        ),
                    ));
                }
                Some(high(n.fleet.open()?)?)
            }
            Some(n) => {
                args.extend(["--net".to_string(), n.agent_arg()]);
                None
            }
            None => None,
        };
        let argv_c = args
            .iter()
            .map(cstring)
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| prepare("agent arguments", e))?;
        let envp_c = [CString::from(c"PATH=/sbin:/bin")];
        let path = cstring(agent_path).map_err(|e| prepare("agent path", e))?;

        held.cgroup = make_cgroup(spec)?;

        let spawn_err = |source: io::Error| LaunchError::Spawn {
            program: format!("{AGENT_PATH} in new namespaces"),
            source,
        };
        // The pointer arrays live in this block only: no raw pointer is held across an
        // await, so the launch future stays Send.
        let pid = {
            let argv: Vec<*const libc::c_char> =
                argv_c.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
            let envp: Vec<*const libc::c_char> =
                envp_c.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
            let child = Child {
                plan: &steps,
                parent_ends: [sync_wr.as_raw_fd(), err_rd.as_raw_fd()],
                sync_rd: sync_rd.as_raw_fd(),
                err_wr: err_wr.as_raw_fd(),
                stdin: null.as_raw_fd(),
                log: log_fd.as_raw_fd(),
                ctl: guest.as_raw_fd(),
                netns: shared_netns.as_ref().map_or(-1, |f| f.as_raw_fd()),
                path: &path,
                argv: &argv,
                envp: &envp,
            };
            clone_child(&child, self.clone_flags_for(mode))
        }
        .map_err(|e| spawn_err(io::Error::new(io::Error::from(e).kind(), format!("clone: {e}"))))?;
        // The child has its copies; the parent's would hide the exec's EOF on the error pipe.
        drop((sync_rd, err_wr, null, log_fd, guest, shared_netns));
        let mut proc = match Proc::from_pid(pid.as_raw() as u32, true) {
            Ok(p) => p,
            Err(e) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(spawn_err(e));
            }
        };
        let started =
            self.release_child(spec, pid, held, sync_wr, err_rd, (&steps, &workdir)).await;
        match started.and_then(|()| split_socket(host).map_err(|e| prepare("control socket", e))) {
            Ok(halves) => Ok((halves, proc, console)),
            Err(e) => {
                proc.kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), proc.wait()).await;
                Err(e)
            }
        }
    }

    /// Parent side between clone and exec: ids, cgroup, network, go-ahead, exec outcome.
    async fn release_child(
        &self,
        spec: &GuestSpec,
        pid: Pid,
        held: &mut Held,
        sync_wr: OwnedFd,
        err_rd: OwnedFd,
        (steps, workdir): (&[Step], &Path),
    ) -> Result<(), LaunchError> {
        if let Some(m) = self.user_ns {
            for (file, base) in [("uid_map", m.host_uid), ("gid_map", m.host_gid)] {
                let p = format!("/proc/{pid}/{file}");
                std::fs::write(&p, format!("0 {base} {}\n", m.count)).map_err(|e| prepare(p, e))?;
            }
        }
        if let Some(cg) = &held.cgroup {
            cg.add(pid.as_raw() as u32).map_err(LaunchError::Cgroup)?;
        }
        if let Some(n) = spec.net.as_ref().filter(|n| n.fleet.mode == NetMode::Private) {
            // A half-made pair goes with the guest's network namespace when the child is
            // killed; a made one also disappears with it later, which releasing tolerates.
            n.fleet.add_veth(&n.link, pid.as_raw() as u32)?;
            held.resources
                .push(Resource::Link { netns: n.fleet.netns.clone(), name: n.link.clone() });
        }
        nix::unistd::write(&sync_wr, &[1]).map_err(|e| prepare("sync pipe", e.into()))?;
        drop(sync_wr);
        let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(err_rd)
            .map_err(|e| prepare("error pipe", e))?;
        let mut report = Vec::new();
        let program = format!("{AGENT_PATH} in new namespaces");
        match tokio::time::timeout(EXEC_TIMEOUT, rx.read_to_end(&mut report)).await {
            Err(_) => Err(LaunchError::Spawn {
                program,
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the guest did not exec within {EXEC_TIMEOUT:?}"),
                ),
            }),
            Ok(Err(source)) => Err(LaunchError::Spawn { program, source }),
            Ok(Ok(_)) if report.is_empty() => Ok(()),
            Ok(Ok(_)) => {
                Err(LaunchError::Spawn { program, source: decode_failure(&report, steps, workdir) })
            }
        }
    }
}

fn check_rootfs(rootfs: &Path) -> Result<(), String> {
    if !rootfs.is_dir() {
        return Err(format!("rootfs image {} is missing or not a directory", rootfs.display()));
    }
    let agent = rootfs.join(AGENT_PATH.trim_start_matches('/'));
    if !agent.is_file() {
        return Err(format!("rootfs image lacks the agent: {} is missing", agent.display()));
    }
    for d in NEEDED_DIRS {
        let p = rootfs.join(d);
        if !p.is_dir() {
            return Err(format!(
                "rootfs image lacks a mount point the guest needs: {} is missing",
                p.display()
            ));
        }
    }
    Ok(())
}

/// Flags of the mount holding `path` that a bind remount of it must keep: in a user
/// namespace the kernel locks them, and dropping one (even the atime mode) fails with EPERM.
fn keep_flags(path: &Path) -> io::Result<MsFlags> {
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
struct PlanInput<'a> {
    /// The guest's work directory (canonical); holds the `root` mount point.
    workdir: &'a Path,
    /// The shared image tree (canonical).
    rootfs: &'a Path,
    data_disk: Option<&'a Path>,
    hostname: &'a str,
    /// See [`keep_flags`].
    rootfs_keep: MsFlags,
    disk_keep: MsFlags,
    user_ns: bool,
    /// The root is the guest's own overlay (a system image): left writable.
    writable: bool,
}

/// Descriptors the plan opens (O_PATH, in the guest's mount namespace) for the host paths
/// it binds: above the agent's fds, below those the parent passes ([`FD_FLOOR`]).
const WORKDIR_FD: RawFd = 5;
const ROOTFS_FD: RawFd = 6;
const DISK_FD: RawFd = 7;

/// One step of the child's set-up. Holds only prepared C strings: walking it allocates
/// nothing. Relative paths are relative to the guest's work directory.
#[derive(Debug)]
enum Step {
    Mount {
        src: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: MsFlags,
        data: Option<CString>,
    },
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
    fn describe(&self, workdir: &Path, opened: &[(RawFd, &CString)]) -> String {
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
            Step::Mount { src, target, fstype, flags, .. } => {
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

fn flag_names(f: MsFlags) -> String {
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
fn plan(p: &PlanInput) -> io::Result<Vec<Step>> {
    let c = |s: &str| cstring(s);
    let fd_path = |fd: RawFd| cstring(format!("/proc/self/fd/{fd}"));
    let mount = |src: Option<CString>,
                 target: &str,
                 fstype: Option<&str>,
                 flags: MsFlags,
                 data: Option<&str>|
     -> io::Result<Step> {
        Ok(Step::Mount {
            src,
            target: c(target)?,
            fstype: fstype.map(c).transpose()?,
            flags,
            data: data.map(c).transpose()?,
        })
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
    v.extend([mount(
        Some(c("tmpfs")?),
        "root/dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )?]);
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

/// The system calls the plan is made of: real ones in the child, recorded ones in tests.
trait Syscall {
    fn mount(
        &self,
        src: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: MsFlags,
        data: Option<&CStr>,
    ) -> nix::Result<()>;
    fn umount2(&self, target: &CStr, flags: MntFlags) -> nix::Result<()>;
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> nix::Result<()>;
    fn chdir(&self, path: &CStr) -> nix::Result<()>;
    fn open_path(&self, path: &CStr, fd: RawFd) -> nix::Result<()>;
    fn create_file(&self, path: &CStr) -> nix::Result<()>;
    fn sethostname(&self, name: &CStr) -> nix::Result<()>;
    fn become_root(&self) -> nix::Result<()>;
}

/// The real calls. Every one is a bare system call on borrowed C strings: nix's path
/// arguments are passed through without copying when they are `CStr`s.
struct RealSyscall;

impl Syscall for RealSyscall {
    fn mount(
        &self,
        src: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: MsFlags,
        data: Option<&CStr>,
    ) -> nix::Result<()> {
        nix::mount::mount(src, target, fstype, flags, data)
    }
    fn umount2(&self, target: &CStr, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }
    fn chdir(&self, path: &CStr) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }
    fn open_path(&self, path: &CStr, fd: RawFd) -> nix::Result<()> {
        // SAFETY: open on a C string; dup3 and close on the descriptor it returned.
        unsafe {
            let tmp = Errno::result(libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC))?;
            if tmp != fd {
                let r = Errno::result(libc::dup3(tmp, fd, libc::O_CLOEXEC));
                libc::close(tmp);
                r?;
            }
        }
        Ok(())
    }
    fn create_file(&self, path: &CStr) -> nix::Result<()> {
        nix::sys::stat::mknod(path, SFlag::S_IFREG, Mode::from_bits_truncate(0o644), 0)
    }
    fn sethostname(&self, name: &CStr) -> nix::Result<()> {
        nix::unistd::sethostname(OsStr::from_bytes(name.to_bytes()))
    }
    fn become_root(&self) -> nix::Result<()> {
        // Raw system calls: glibc's wrappers would try to signal threads that only exist
        // in the parent.
        // SAFETY: setgroups with an empty list reads no memory; setresgid/setresuid take ids.
        unsafe {
            Errno::result(libc::syscall(
                libc::SYS_setgroups,
                0usize,
                std::ptr::null::<libc::gid_t>(),
            ))?;
            Errno::result(libc::syscall(libc::SYS_setresgid, 0u32, 0u32, 0u32))?;
            Errno::result(libc::syscall(libc::SYS_setresuid, 0u32, 0u32, 0u32))?;
        }
        Ok(())
    }
}

/// Walks the plan; the failing step's index and errno otherwise. Allocation-free.
fn run_plan(sys: &dyn Syscall, plan: &[Step]) -> Result<(), (usize, Errno)> {
    for (i, step) in plan.iter().enumerate() {
        let r = match step {
            Step::Mount { src, target, fstype, flags, data } => {
                sys.mount(src.as_deref(), target, fstype.as_deref(), *flags, data.as_deref())
            }
            Step::Umount { target, flags } => sys.umount2(target, *flags),
            Step::PivotRoot { new_root, put_old } => sys.pivot_root(new_root, put_old),
            Step::Chdir(p) => sys.chdir(p),
            Step::OpenPath { path, fd } => sys.open_path(path, *fd),
            Step::CreateFile(p) => sys.create_file(p),
            Step::SetHostname(h) => sys.sethostname(h),
            Step::BecomeRoot => sys.become_root(),
        };
        r.map_err(|e| (i, e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The child, between clone and exec.

/// Everything the child reads; borrowed from the parent's (copied) memory.
struct Child<'a> {
    plan: &'a [Step],
    /// The parent's ends of the pipes: closed first, so the child sees EOF if hostd dies.
    parent_ends: [RawFd; 2],
    sync_rd: RawFd,
    err_wr: RawFd,
    stdin: RawFd,
    log: RawFd,
    ctl: RawFd,
    /// A network namespace to join (a shared-stack guest), or -1.
    netns: RawFd,
    path: &'a CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
}

/// Failure codes for steps outside the plan (plan steps report their index).
const AT_PROCESS: u32 = u32::MAX;
const AT_FDS: u32 = u32::MAX - 1;
const AT_EXEC: u32 = u32::MAX - 2;
const AT_NETNS: u32 = u32::MAX - 3;

fn clone_child(child: &Child, flags: CloneFlags) -> nix::Result<Pid> {
    let mut stack = vec![0u8; CHILD_STACK];
    let cb: nix::sched::CloneCb = Box::new(|| -> isize { child_main(child) });
    // SAFETY: without CLONE_VM the child gets a copy of this address space, in which
    // `child`, the plan and `stack` stay valid; it runs `child_main` on its copy of `stack`
    // (ample for it) and only makes async-signal-safe calls until it execs or _exits.
    // SIGCHLD makes it an ordinary child for waitpid.
    unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
}

/// Clones a child in `flags`' namespaces that exits at once; reports the clone's error.
fn trial_clone(flags: CloneFlags) -> nix::Result<()> {
    let mut stack = vec![0u8; 64 << 10];
    // SAFETY: _exit is async-signal-safe and never returns.
    let cb: nix::sched::CloneCb = Box::new(|| -> isize { unsafe { libc::_exit(0) } });
    // SAFETY: as in clone_child; the child only calls _exit.
    let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }?;
    nix::sys::wait::waitpid(pid, None).map(drop)
}

/// The child: wait for the go-ahead, set up, exec. Never returns.
fn child_main(c: &Child) -> ! {
    for fd in c.parent_ends {
        // SAFETY: closes this process's copy of a descriptor it does not use.
        unsafe { libc::close(fd) };
    }
    let mut go = 0u8;
    loop {
        // SAFETY: reads at most one byte into a local.
        let n = unsafe { libc::read(c.sync_rd, (&mut go as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        // The parent gave up: nothing to report to.
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { libc::_exit(1) };
    }
    if let Err(e) = reset_process() {
        fail(c, AT_PROCESS, e);
    }
    if c.netns >= 0 {
        // SAFETY: setns(2) on a descriptor prepared before the clone; a raw system call,
        // async-signal-safe.
        if unsafe { libc::setns(c.netns, libc::CLONE_NEWNET) } != 0 {
            fail(c, AT_NETNS, Errno::last());
        }
    }
    if let Err((i, e)) = run_plan(&RealSyscall, c.plan) {
        fail(c, i as u32, e);
    }
    if let Err(e) = wire_fds(c) {
        fail(c, AT_FDS, e);
    }
    // SAFETY: path, argv and envp are NUL-terminated C strings and NULL-terminated pointer
    // arrays built before the clone; execve only returns on failure.
    unsafe { libc::execve(c.path.as_ptr(), c.argv.as_ptr(), c.envp.as_ptr()) };
    fail(c, AT_EXEC, Errno::last())
}

/// Own session (a Ctrl-C on hostd's terminal must not reach guests), no blocked signals,
/// SIGPIPE back to default (Rust ignores it; ignored dispositions survive exec).
fn reset_process() -> Result<(), Errno> {
    // SAFETY: setsid, sigemptyset on a local set, sigprocmask and signal are
    // async-signal-safe system call wrappers.
    unsafe {
        if libc::setsid() < 0 {
            return Err(Errno::last());
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) < 0 {
            return Err(Errno::last());
        }
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// stdin from /dev/null, stdout and stderr to the console log, the channel as fd 3; every
/// other descriptor close-on-exec so nothing of hostd's leaks into the guest.
fn wire_fds(c: &Child) -> Result<(), Errno> {
    // All sources are ≥ FD_FLOOR, so no dup2 here overwrites another source; dup2 clears
    // close-on-exec on the copy.
    for (from, to) in [(c.stdin, 0), (c.log, 1), (c.log, 2), (c.ctl, AGENT_FD)] {
        // SAFETY: dup2 on descriptors open in this process.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(Errno::last());
        }
    }
    // Best effort (Linux ≥ 5.11): hostd opens everything close-on-exec anyway.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (AGENT_FD + 1) as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Ok(())
}

/// Reports `(step, errno)` on the error pipe and exits.
fn fail(c: &Child, step: u32, e: Errno) -> ! {
    let mut msg = [0u8; 8];
    let (a, b) = msg.split_at_mut(4);
    a.copy_from_slice(&step.to_le_bytes());
    b.copy_from_slice(&(e as i32).to_le_bytes());
    // SAFETY: write of a local buffer (atomic on a pipe), then _exit; both async-signal-safe.
    unsafe {
        libc::write(c.err_wr, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Turns the child's `(step, errno)` report into an error naming the step.
fn decode_failure(report: &[u8], steps: &[Step], workdir: &Path) -> io::Error {
    let (Some(s), Some(e)) = (report.get(..4), report.get(4..8)) else {
        return io::Error::other(format!(
            "garbled failure report from the guest's child ({} bytes)",
            report.len()
        ));
    };
    let step = u32::from_le_bytes(s.try_into().unwrap_or_default());
    let errno = i32::from_le_bytes(e.try_into().unwrap_or_default());
    let what = match step {
        AT_PROCESS => "setting up the process (setsid, signals)".to_string(),
        AT_FDS => "wiring stdio and the control descriptor".to_string(),
        AT_EXEC => format!("executing {AGENT_PATH}"),
        AT_NETNS => "joining the fleet's network namespace (shared network mode)".to_string(),
        i => {
            let opened: Vec<(RawFd, &CString)> = steps
                .iter()
                .filter_map(|s| {
                    if let Step::OpenPath { path, fd } = s {
                        Some((*fd, path))
                    } else {
                        None
                    }
                })
                .collect();
            steps
                .get(i as usize)
                .map(|s| s.describe(workdir, &opened))
                .unwrap_or_else(|| format!("step {i}"))
        }
    };
    let os = io::Error::from_raw_os_error(errno);
    io::Error::new(os.kind(), format!("{what}: {os}"))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

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
        fn mount(
            &self,
            src: Option<&CStr>,
            target: &CStr,
            fstype: Option<&CStr>,
            flags: MsFlags,
            data: Option<&CStr>,
        ) -> nix::Result<()> {
            self.rec(format!(
                "mount {} {} {} {} {}",
                s(src),
                s(Some(target)),
                s(fstype),
                flag_names(flags),
                s(data)
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
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().starts_with("mounting tmpfs on /w/g0/root/tmp: "), "{err}");
        let bind = steps.iter().position(|s| matches!(s, Step::Mount { src: Some(_), flags, .. } if *flags == MsFlags::MS_BIND)).unwrap();
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
        assert_eq!(plan(&p).unwrap_err().kind(), io::ErrorKind::InvalidInput);
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
        let e = check_rootfs(&d.path().join("nope")).unwrap_err();
        assert!(e.contains("nope"), "{e}");
        let e = check_rootfs(d.path()).unwrap_err();
        assert!(e.contains("sbin/guest-agent"), "{e}");
        std::fs::create_dir_all(d.path().join("sbin")).unwrap();
        std::fs::write(d.path().join("sbin/guest-agent"), "").unwrap();
        for dir in ["dev", "proc", "tmp"] {
            std::fs::create_dir(d.path().join(dir)).unwrap();
        }
        let e = check_rootfs(d.path()).unwrap_err();
        assert!(e.contains("/data is missing"), "{e}");
        std::fs::create_dir(d.path().join("data")).unwrap();
        check_rootfs(d.path()).unwrap();
    }
}
