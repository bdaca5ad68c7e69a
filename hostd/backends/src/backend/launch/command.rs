//! A guest's host program (agent, VMM, runtime, toolstack) with the setup every backend
//! gives it: no stdin unless given one, its own process group (a Ctrl-C on hostd's terminal
//! must not reach guests before hostd tears them down in order; UML's helpers stay in that
//! group, which its `stop` relies on), killed when dropped, the fleet's network namespace
//! entered, descriptors passed at fixed numbers and the guest's cgroup joined before exec
//! (so everything it allocates is charged there).

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Stdio;

use crate::backend::{prepare, LaunchError};
use crate::cgroup::Cgroup;

/// A guest's host program, with the setup every backend's launch shares (see the module).
pub struct GuestCommand {
    cmd: tokio::process::Command,
    program: String,
    netns: Option<OwnedFd>,
    fds: Vec<(OwnedFd, RawFd)>,
    cgroup: Option<Cgroup>,
}

impl GuestCommand {
    /// `program`, run in `workdir`.
    pub fn new(program: impl AsRef<OsStr>, workdir: &Path) -> Self {
        let mut cmd = tokio::process::Command::new(program.as_ref());
        cmd.stdin(Stdio::null()).current_dir(workdir).process_group(0).kill_on_drop(true);
        Self {
            cmd,
            program: program.as_ref().to_string_lossy().into_owned(),
            netns: None,
            fds: Vec::new(),
            cgroup: None,
        }
    }

    /// Adds one argument.
    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg(a);
        self
    }

    /// Adds arguments.
    pub fn args<S: AsRef<OsStr>>(&mut self, a: impl IntoIterator<Item = S>) -> &mut Self {
        self.cmd.args(a);
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(k, v);
        self
    }

    /// Sets standard input (default: none).
    pub fn stdin(&mut self, s: impl Into<Stdio>) -> &mut Self {
        self.cmd.stdin(s);
        self
    }

    /// Sets standard output.
    pub fn stdout(&mut self, s: impl Into<Stdio>) -> &mut Self {
        self.cmd.stdout(s);
        self
    }

    /// Sets standard error.
    pub fn stderr(&mut self, s: impl Into<Stdio>) -> &mut Self {
        self.cmd.stderr(s);
        self
    }

    /// Standard output and error both to `fd` (a console pipe, a log file).
    pub fn output(&mut self, fd: OwnedFd) -> Result<&mut Self, LaunchError> {
        let err = fd.try_clone().map_err(|e| prepare(format!("{}'s output", self.program), e))?;
        Ok(self.stdout(fd).stderr(err))
    }

    /// Starts the program inside the network namespace `ns` (a VMM opens its tap by name
    /// there; a native agent in the fleet's shared stack). None: the host's.
    pub fn netns(&mut self, ns: Option<OwnedFd>) -> &mut Self {
        self.netns = ns;
        self
    }

    /// Passes `fd` as descriptor `target`, open across exec. hostd's copy closes when the
    /// program has been spawned, so the far end sees EOF once the program is gone.
    pub fn pass_fd(&mut self, fd: OwnedFd, target: RawFd) -> &mut Self {
        self.fds.push((fd, target));
        self
    }

    /// Joins `cg` (every hierarchy) before exec. None: stays in hostd's groups.
    pub fn cgroup(&mut self, cg: Option<&Cgroup>) -> &mut Self {
        self.cgroup = cg.cloned();
        self
    }

    /// What the program is called in errors.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The command with its child-side setup in the one safe order: the namespace first
    /// (a descriptor passed onto a low number could otherwise replace its fd), then the
    /// passed descriptors, then the cgroup. The passed descriptors live in the command:
    /// dropping it closes hostd's copies.
    pub fn build(self) -> tokio::process::Command {
        let Self { mut cmd, netns, fds, cgroup, .. } = self;
        if let Some(ns) = netns {
            crate::netlab::enter_in_child(&mut cmd, ns);
        }
        for (fd, target) in fds {
            pass_fd_in_child(&mut cmd, fd, target);
        }
        if let Some(cg) = &cgroup {
            join_cgroup_in_child(&mut cmd, cg);
        }
        cmd
    }

    /// Spawns the program; hostd's copies of the passed descriptors and output ends are
    /// closed before this returns.
    pub fn spawn(self) -> Result<tokio::process::Child, LaunchError> {
        let program = self.program.clone();
        let mut cmd = self.build();
        cmd.spawn().map_err(|source| LaunchError::Spawn { program, source: source.into() })
    }
}

/// Puts the child into `cg` before it execs, so everything it allocates is charged there.
fn join_cgroup_in_child(cmd: &mut tokio::process::Command, cg: &Cgroup) {
    let files: Vec<std::ffi::CString> = cg
        .dirs
        .iter()
        .map(|d| {
            std::ffi::CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes())
                .expect("no NUL in path")
        })
        .collect();
    // SAFETY: runs in the forked child before exec using only open/write/close (async-signal-
    // safe) on paths allocated before the fork; "0" means the writing process itself.
    unsafe {
        cmd.pre_exec(move || {
            for f in &files {
                let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Passes `fd` to the child as descriptor `target` (inherited across exec).
fn pass_fd_in_child(cmd: &mut tokio::process::Command, fd: OwnedFd, target: RawFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: runs in the forked child before exec; dup2 and fcntl are async-signal-safe.
    // `fd` is moved into the closure, so the descriptor stays open until the child has
    // used it (and closes in hostd when the command is dropped).
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &fd;
            if raw != target && libc::dup2(raw, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears FD_CLOEXEC on the copy; when fd == target it keeps it, so clear it.
            if libc::fcntl(target, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
