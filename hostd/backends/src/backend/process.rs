//! A guest's main host process, whether hostd spawned it (a tokio child) or only knows its
//! pid (a process created with clone(2), or a container process a runtime started): the
//! latter is watched through a pidfd, so its exit is seen at once and never confused with a
//! recycled pid.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use super::launch::Reaped;
use super::Exit;

#[derive(Debug)]
/// A guest's main host process.
pub enum Proc {
    /// A child hostd spawned through tokio; killed and reaped if dropped before its exit was
    /// seen ([`Reaped`], not tokio's orphan queue).
    Child(Reaped),
    /// `reap`: the process is hostd's child and must be waited for once it exits.
    /// `waited`: its exit has been seen (and reaped, if ours).
    Pidfd {
        /// Its pid.
        pid: u32,
        /// The pidfd, readable once the process exits; shared with the guest's exit watch
        /// ([`Proc::exit_watch`]): one descriptor for both.
        fd: Arc<AsyncFd<OwnedFd>>,
        /// Whether hostd must reap it.
        reap: bool,
        /// Whether its exit was seen.
        waited: bool,
    },
}

/// A process dropped before its exit was seen (a launch abandoned at its deadline, a guest
/// never stopped) is killed, and reaped if it is hostd's child, as tokio's `kill_on_drop`
/// does for spawned children: no process and no zombie outlives its handle.
impl Drop for Proc {
    fn drop(&mut self) {
        let Proc::Pidfd { pid, fd, reap, waited: false } = self else { return };
        pidfd_kill(fd.get_ref());
        if *reap {
            let pid = Pid::from_raw(*pid as i32);
            if !matches!(nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)), Ok(st) if st != nix::sys::wait::WaitStatus::StillAlive)
            {
                // Dies within moments of SIGKILL; reaped off the caller's thread.
                let _ = std::thread::Builder::new()
                    .name("reap".into())
                    .spawn(move || nix::sys::wait::waitpid(pid, None));
            }
        }
    }
}

/// SIGKILL through a pidfd: reaches exactly that process, never a recycled pid.
fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: pidfd_send_signal takes a pidfd, a signal number, a null siginfo and flags 0.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            std::os::fd::AsRawFd::as_raw_fd(fd),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

impl Proc {
    /// A child hostd spawned through tokio.
    pub fn child(child: tokio::process::Child) -> Self {
        Proc::Child(Reaped::new(child))
    }

    /// Watches `pid` through a pidfd.
    pub fn from_pid(pid: u32, reap: bool) -> std::io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor returned by pidfd_open, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until dropped, so the
        // descriptor stays open and unchanged for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Proc::Pidfd { pid, fd: Arc::new(fd), reap, waited: false })
    }

    /// A future that completes when the process exits: on the pidfd this already holds
    /// (a guest costs hostd one pidfd, not two), or a new one for a tokio child (whose own
    /// pidfd tokio keeps to itself).
    pub fn exit_watch(&self) -> Option<crate::channel::ExitWatch> {
        match self {
            Proc::Child(_) => crate::guest::exit_watch(self.pid()),
            Proc::Pidfd { fd, .. } => {
                let fd = fd.clone();
                Some(Box::pin(async move {
                    let _ = fd.readable().await;
                }))
            }
        }
    }

    /// Its pid (0 for a child already reaped).
    pub fn pid(&self) -> u32 {
        match self {
            Proc::Child(c) => c.id().unwrap_or(0),
            Proc::Pidfd { pid, .. } => *pid,
        }
    }

    /// Whether the process has exited (without blocking).
    pub fn has_exited(&mut self) -> bool {
        match self {
            Proc::Child(c) => !matches!(c.child().try_wait(), Ok(None)),
            Proc::Pidfd { fd, .. } => {
                let mut pfd = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(fd.get_ref()),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on one valid pollfd with a zero timeout.
                unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
            }
        }
    }

    /// Waits for the exit and describes it.
    pub async fn wait(&mut self) -> String {
        match self {
            Proc::Child(c) => c
                .child()
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_else(|e| format!("wait failed: {e}")),
            Proc::Pidfd { pid, fd, reap, waited } => {
                let _ = fd.readable().await.map(|mut g| g.retain_ready());
                *waited = true;
                if *reap {
                    match nix::sys::wait::waitpid(Pid::from_raw(*pid as i32), None) {
                        Ok(st) => format!("{st:?}"),
                        Err(e) => format!("exited (waitpid: {e})"),
                    }
                } else {
                    "exited".into()
                }
            }
        }
    }

    /// Sends SIGKILL, unless it is known to be gone.
    pub fn kill(&mut self) {
        match self {
            Proc::Child(c) => {
                let _ = c.child().start_kill();
            }
            Proc::Pidfd { fd, waited: false, .. } => pidfd_kill(fd.get_ref()),
            Proc::Pidfd { .. } => {}
        }
    }

    /// Waits up to `grace` for the process to end on its own, then kills it.
    pub async fn wait_or_kill(&mut self, grace: Duration) -> Exit {
        if self.has_exited() {
            let status = self.wait().await;
            // A grace period follows an acknowledged power-off: gone already means gone as asked.
            return if grace.is_zero() { Exit::Exited(status) } else { Exit::Clean };
        }
        if !grace.is_zero() {
            if let Ok(_status) = tokio::time::timeout(grace, self.wait()).await {
                return Exit::Clean;
            }
        }
        self.kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.wait()).await;
        Exit::Killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` still exists, as a process or a zombie.
    fn present(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    /// A child dropped before its exit was seen is killed and reaped by `Proc` itself, even
    /// when whoever spawned it did not ask tokio for `kill_on_drop`.
    #[tokio::test]
    async fn a_dropped_child_is_killed_and_reaped() {
        let child = tokio::process::Command::new("sleep").arg("300").spawn().unwrap();
        let proc = Proc::child(child);
        let pid = proc.pid();
        assert!(pid > 0 && present(pid));
        drop(proc);
        let gone = async {
            while present(pid) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone).await.unwrap_or_else(|_| {
            panic!("pid {pid} still there (alive or a zombie) 10 s after the drop")
        });
    }
}
