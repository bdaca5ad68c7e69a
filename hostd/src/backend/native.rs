//! `native`: the agent as an ordinary host process, the paper's non-virtualized reference
//! (T_a). The control channel is a socketpair whose far end is the agent's fd 3.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::{wait_or_kill, Backend, BackendKind, Exit, GuestProcess, GuestSpec, LaunchError, Launched, Unavailable};

/// The descriptor number the agent finds its channel on.
const AGENT_FD: i32 = 3;

pub struct Native {
    agent: PathBuf,
}

impl Native {
    pub fn new(agent: PathBuf) -> Self {
        Self { agent }
    }
}

impl Backend for Native {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }

    async fn probe(&self) -> Result<String, Unavailable> {
        let unavailable = |reason: String| Unavailable { backend: "native", reason };
        let meta = std::fs::metadata(&self.agent).map_err(|e| unavailable(format!("agent {}: {e}", self.agent.display())))?;
        if !meta.is_file() {
            return Err(unavailable(format!("agent {} is not a file", self.agent.display())));
        }
        Ok(format!("agent {}", self.agent.display()))
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        std::fs::create_dir_all(&spec.workdir)
            .map_err(|source| LaunchError::Prepare { what: spec.workdir.display().to_string(), source })?;
        let (host, guest) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| LaunchError::Prepare { what: "control socketpair".into(), source: e.into() })?;
        let log = spec.workdir.join("agent.log");
        let stderr = std::fs::File::create(&log).map_err(|source| LaunchError::Prepare { what: log.display().to_string(), source })?;
        let mut cmd = tokio::process::Command::new(&self.agent);
        cmd.args(["--ctl", &format!("fd:{AGENT_FD}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .current_dir(&spec.workdir)
            // Its own process group: a Ctrl-C on hostd's terminal must not reach guests
            // before hostd tears them down in order.
            .process_group(0)
            .kill_on_drop(true);
        let guest_fd = guest.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls dup2 and
        // fcntl, which are async-signal-safe; guest_fd stays open until after spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(guest_fd, AGENT_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 clears FD_CLOEXEC on the new descriptor, which is what we want; when
                // guest_fd already is 3, dup2 is a no-op that keeps the flag, so clear it.
                if libc::fcntl(AGENT_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| LaunchError::Spawn { program: self.agent.display().to_string(), source })?;
        drop(guest);
        let (reader, writer) = split_socket(host).map_err(|source| LaunchError::Prepare { what: "control socket".into(), source })?;
        Ok(Launched {
            reader: Box::new(reader),
            writer: Box::new(writer),
            guest: GuestProcess { name: spec.name.clone(), child, console_log: Some(log) },
        })
    }

    async fn stop(&self, guest: &mut GuestProcess, grace: Duration) -> Exit {
        wait_or_kill(&mut guest.child, grace).await
    }

    fn pids(&self, guest: &GuestProcess) -> Vec<u32> {
        guest.pid().into_iter().collect()
    }
}

/// Turns a connected Unix socket into tokio read/write halves.
pub fn split_socket(fd: OwnedFd) -> std::io::Result<(tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf)> {
    let std_sock = std::os::unix::net::UnixStream::from(fd);
    std_sock.set_nonblocking(true)?;
    Ok(tokio::net::UnixStream::from_std(std_sock)?.into_split())
}
