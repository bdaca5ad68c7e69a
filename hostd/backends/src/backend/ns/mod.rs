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

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use super::launch::{control_pair, host_halves, Halves, LaunchGuard};
use super::native::AGENT_FD;
use super::rootdisk::{System, AGENT_IN_IMAGE};
use super::{
    prepare, Backend, BackendKind, BackendOptions, GuestSpec, Images, LaunchError, LaunchFiles,
    Launched, PrepareError, Proc, Resource, SpawnError, Unavailable,
};
use crate::cgroup;
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
    /// The host uid the guest's root maps to.
    pub host_uid: u32,
    /// The host gid the guest's root maps to.
    pub host_gid: u32,
    /// How many ids are mapped.
    pub count: u32,
}

/// The ns backend: the agent in its own namespaces over the rootfs image, set up by hostd.
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
    /// The backend over `images`.
    pub fn new(images: &Images, _opts: &BackendOptions) -> Self {
        Self { rootfs: images.rootfs.clone(), system: system_of(images), user_ns: None }
    }

    /// The same backend over other images.
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
    images.system.clone().map(|s| (s.for_container("ns"), images.agent.clone()))
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
        check_rootfs(rootfs).map_err(|e| unavailable(e.to_string()))?;
        let mode = cgroup::detect().map_err(|e| unavailable(format!("cgroups: {e}")))?;
        // Really create the namespaces once: a kernel built without one fails here, not at
        // the first launch.
        let flags = self.clone_flags();
        trial_clone(flags).map_err(|e| unavailable(format!("clone({flags:?}): {e}")))?;
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
        let mut g = LaunchGuard::new(spec)?;
        let ((reader, writer), proc) = self.start(spec, &mut g).await?;
        Ok(g.launched(reader, writer, proc))
    }
}

/// A path or argument for a system call holds a NUL byte, which a C string cannot carry.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} contains a NUL byte, which a system call's argument cannot carry")]
pub struct NulByteError {
    /// The path or argument, lossily as text.
    pub text: String,
}

fn cstring(p: impl AsRef<OsStr>) -> Result<CString, NulByteError> {
    let p = p.as_ref();
    CString::new(p.as_bytes()).map_err(|_| NulByteError { text: p.to_string_lossy().into() })
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
    /// Everything up to the agent's exec. Whatever it creates is held by `g`; a child that
    /// fails is killed and reaped here.
    async fn start(
        &self,
        spec: &GuestSpec,
        g: &mut LaunchGuard,
    ) -> Result<(Halves, Proc), LaunchError> {
        let (rootfs, workdir) = self.guest_root(spec, g)?;
        let log_wr = g.console(&spec.workdir.join("console.log"))?;
        let null = File::open("/dev/null").map_err(|e| prepare("/dev/null", e))?;
        let (host, guest) = control_pair()?;
        let (sync_rd, sync_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| prepare("sync pipe", io::Error::from(e)))?;
        let (err_rd, err_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| prepare("error pipe", io::Error::from(e)))?;
        let high = |fd: OwnedFd| above_floor(fd).map_err(|e| prepare("child descriptors", e));
        let (sync_rd, err_wr, null, log_fd, guest) =
            (high(sync_rd)?, high(err_wr)?, high(null.into())?, high(log_wr)?, high(guest)?);

        let steps = self.guest_plan(spec, &rootfs, &workdir)?;

        let mode = spec.net.as_ref().map(|n| n.fleet.mode).unwrap_or_default();
        let (argv_c, shared_netns) = self.agent_argv(spec)?;
        let shared_netns = shared_netns.map(high).transpose()?;
        let envp_c = [CString::from(c"PATH=/sbin:/bin")];
        let path = cstring(self.agent_path()).map_err(|e| prepare("agent path", e))?;

        g.make_cgroup(spec)?;

        let spawn_err = |source: SpawnError| LaunchError::Spawn {
            program: format!("{} in new namespaces", self.agent_path()),
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
        .map_err(|e| spawn_err(SpawnError::Step { step: "clone".into(), source: e.into() }))?;
        // The child has its copies; the parent's would hide the exec's EOF on the error pipe.
        drop((sync_rd, err_wr, null, log_fd, guest, shared_netns));
        let mut proc = match Proc::from_pid(pid.as_raw() as u32, true) {
            Ok(p) => p,
            Err(e) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(spawn_err(e.into()));
            }
        };
        let started = self.release_child(spec, pid, g, sync_wr, err_rd, (&steps, &workdir)).await;
        match started.and_then(|()| host_halves(host)) {
            Ok(halves) => Ok((halves, proc)),
            Err(e) => {
                proc.kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), proc.wait()).await;
                Err(e)
            }
        }
    }

    /// Where the agent is in the guest's root: the image's own, or the copy added to a
    /// system image.
    fn agent_path(&self) -> &'static str {
        if self.system.is_some() {
            AGENT_IN_IMAGE
        } else {
            AGENT_PATH
        }
    }

    /// The image (canonical) or, with a system image, the guest's own writable overlay of
    /// it (held by `g`), and the guest's work directory (canonical, reachable by a guest
    /// root in a user namespace, holding the empty `root` mount point: the image is mounted
    /// there inside the guest's mount namespace only).
    fn guest_root(
        &self,
        spec: &GuestSpec,
        g: &mut LaunchGuard,
    ) -> Result<(PathBuf, PathBuf), LaunchError> {
        let workdir =
            std::fs::canonicalize(&spec.workdir).map_err(|e| prepare(spec.workdir.display(), e))?;
        let rootfs = match &self.system {
            // The guest's own overlay over the image's tree: writable, never the image.
            Some((sys, agent)) => sys.container_root(&workdir, agent, &NEEDED_DIRS, g)?,
            None => {
                let rootfs = self.rootfs.as_ref().ok_or_else(|| {
                    prepare("the rootfs image", PrepareError::Missing("none given"))
                })?;
                std::fs::canonicalize(rootfs)
                    .map_err(|e| prepare(format!("rootfs {}", rootfs.display()), e))?
            }
        };
        // A guest root in a user namespace is "other" to this directory and must still reach
        // the mount point in it.
        std::fs::set_permissions(&workdir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| prepare(workdir.display(), e))?;
        let root = workdir.join("root");
        std::fs::create_dir_all(&root).map_err(|e| prepare(root.display(), e))?;
        Ok((rootfs, workdir))
    }

    /// The guest's filesystem plan (see [`plan`]).
    fn guest_plan(
        &self,
        spec: &GuestSpec,
        rootfs: &Path,
        workdir: &Path,
    ) -> Result<Vec<Step>, LaunchError> {
        let disk = match &spec.data_disk {
            Some(d) => Some(
                std::fs::canonicalize(d)
                    .map_err(|e| prepare(format!("data disk {}", d.display()), e))?,
            ),
            None => None,
        };
        let input = PlanInput {
            workdir,
            rootfs,
            data_disk: disk.as_deref(),
            hostname: &spec.name,
            rootfs_keep: keep_flags(rootfs)
                .map_err(|e| prepare(format!("statvfs {}", rootfs.display()), e))?,
            disk_keep: match &disk {
                Some(d) => {
                    keep_flags(d).map_err(|e| prepare(format!("statvfs {}", d.display()), e))?
                }
                None => MsFlags::empty(),
            },
            user_ns: self.user_ns.is_some(),
            writable: self.system.is_some(),
        };
        plan(&input).map_err(|e| prepare("mount plan", e))
    }

    /// The agent's argv, and for a guest sharing the fleet's stack the fleet's network
    /// namespace, which its child joins.
    fn agent_argv(&self, spec: &GuestSpec) -> Result<(Vec<CString>, Option<OwnedFd>), LaunchError> {
        let mut args = vec![
            self.agent_path().to_string(),
            "--ctl".into(),
            format!("fd:{AGENT_FD}"),
            "--hostname".into(),
            spec.name.clone(),
        ];
        if self.system.is_some() {
            args.push("--system-root".into());
        }
        // The fleet's namespace, for a guest that shares its stack: joined by the child.
        let shared_netns = match &spec.net {
            Some(n) if n.fleet.mode == NetMode::Shared => {
                if self.user_ns.is_some() {
                    return Err(prepare(
                        "the shared network mode",
                        PrepareError::Unsupported(
                            "cannot be combined with a user namespace (joining the fleet's network namespace needs the host's privileges)",
                        ),
                    ));
                }
                Some(n.fleet.open()?)
            }
            Some(n) => {
                args.extend(["--net".to_string(), n.agent_arg()]);
                None
            }
            None => None,
        };
        let argv = args
            .iter()
            .map(cstring)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| prepare("agent arguments", e))?;
        Ok((argv, shared_netns))
    }

    /// Parent side between clone and exec: ids, cgroup, network, go-ahead, exec outcome.
    async fn release_child(
        &self,
        spec: &GuestSpec,
        pid: Pid,
        g: &mut LaunchGuard,
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
        if let Some(cg) = g.cgroup() {
            cg.add(pid.as_raw() as u32).map_err(LaunchError::Cgroup)?;
        }
        if let Some(n) = spec.net.as_ref().filter(|n| n.fleet.mode == NetMode::Private) {
            // A half-made pair goes with the guest's network namespace when the child is
            // killed; a made one also disappears with it later, which releasing tolerates.
            n.fleet.add_veth(&n.link, spec.index, pid.as_raw() as u32)?;
            g.hold(Resource::Link { netns: n.fleet.netns.clone(), name: n.link.clone() });
        }
        nix::unistd::write(&sync_wr, &[1]).map_err(|e| prepare("sync pipe", io::Error::from(e)))?;
        drop(sync_wr);
        let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(err_rd)
            .map_err(|e| prepare("error pipe", e))?;
        let mut report = Vec::new();
        let program = format!("{} in new namespaces", self.agent_path());
        match tokio::time::timeout(EXEC_TIMEOUT, rx.read_to_end(&mut report)).await {
            Err(_) => Err(LaunchError::Spawn {
                program,
                source: SpawnError::TimedOut {
                    waiting: "the guest did not exec",
                    after: EXEC_TIMEOUT,
                },
            }),
            Ok(Err(source)) => Err(LaunchError::Spawn { program, source: source.into() }),
            Ok(Ok(_)) if report.is_empty() => Ok(()),
            Ok(Ok(_)) => {
                Err(LaunchError::Spawn { program, source: decode_failure(&report, steps, workdir) })
            }
        }
    }
}

/// What the ns backend's root file system lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum RootfsError {
    #[error("rootfs image {} is missing or not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("rootfs image lacks the agent: {} is missing", .0.display())]
    NoAgent(PathBuf),
    #[error("rootfs image lacks a mount point the guest needs: {} is missing", .0.display())]
    NoMountPoint(PathBuf),
}

fn check_rootfs(rootfs: &Path) -> Result<(), RootfsError> {
    if !rootfs.is_dir() {
        return Err(RootfsError::NotADirectory(rootfs.into()));
    }
    let agent = rootfs.join(AGENT_PATH.trim_start_matches('/'));
    if !agent.is_file() {
        return Err(RootfsError::NoAgent(agent));
    }
    for d in NEEDED_DIRS {
        let p = rootfs.join(d);
        if !p.is_dir() {
            return Err(RootfsError::NoMountPoint(p));
        }
    }
    Ok(())
}

mod child;
mod plan;
mod syscalls;
#[cfg(test)]
mod tests;

use child::{clone_child, decode_failure, trial_clone, Child};
use plan::{keep_flags, plan, PlanInput, Step};
