//! `native`: the agent as an ordinary host process, the paper's non-virtualized reference
//! (T_a). The control channel is a socketpair whose far end is the agent's fd 3. On a fleet
//! network the process gets a network namespace of its own on a veth pair to the fleet
//! bridge (the guests' path, [`NetMode::Private`]), or runs in the fleet's namespace itself
//! ([`NetMode::Shared`]: the loopback reference, and the network peer).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::console::{ConsoleLog, CONSOLE_CAP};
use crate::netlab::NetMode;

use super::{
    join_cgroup_in_child, make_cgroup, pass_fd_in_child, Backend, BackendKind, GuestProcess,
    GuestSpec, LaunchError, LaunchFiles, Launched, Proc, Resource, Unavailable,
};

/// The descriptor number the agent finds its channel on.
pub const AGENT_FD: i32 = 3;

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

    /// The agent is the program (a static binary).
    fn launch_files(&self) -> LaunchFiles {
        LaunchFiles {
            images: vec![self.agent.clone()],
            programs: vec![self.agent.display().to_string()],
            data: Vec::new(),
        }
    }

    async fn probe(&self) -> Result<String, Unavailable> {
        let unavailable = |reason: String| Unavailable { backend: "native", reason: reason.into() };
        let meta = std::fs::metadata(&self.agent)
            .map_err(|e| unavailable(format!("agent {}: {e}", self.agent.display())))?;
        if !meta.is_file() {
            return Err(unavailable(format!("agent {} is not a file", self.agent.display())));
        }
        Ok(format!("agent {}", self.agent.display()))
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        let mut held = Vec::new();
        match self.start(spec, &mut held) {
            Ok(l) => Ok(l),
            Err(e) => {
                // What the launch made so far goes: work directory, cgroup.
                for e in super::release_all(&held) {
                    tracing::warn!(guest = %spec.name, "failed launch cleanup: {e}");
                }
                Err(e)
            }
        }
    }
}

impl Native {
    /// Everything up to the spawned agent; what it creates is recorded in `held` until the
    /// guest owns it.
    fn start(&self, spec: &GuestSpec, held: &mut Vec<Resource>) -> Result<Launched, LaunchError> {
        std::fs::create_dir_all(&spec.workdir).map_err(|source| LaunchError::Prepare {
            what: spec.workdir.display().to_string(),
            source,
        })?;
        held.push(Resource::Dir { path: spec.workdir.clone() });
        let (host, guest) =
            socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
                .map_err(|e| LaunchError::Prepare {
                    what: "control socketpair".into(),
                    source: e.into(),
                })?;
        let log = spec.workdir.join("agent.log");
        let prepare = |source: std::io::Error| LaunchError::Prepare {
            what: log.display().to_string(),
            source,
        };
        let (console, out) =
            ConsoleLog::start(&log, CONSOLE_CAP).map_err(|e| prepare(std::io::Error::other(e)))?;
        let err = out.try_clone().map_err(prepare)?;
        let (reader, writer) = split_socket(host)
            .map_err(|source| LaunchError::Prepare { what: "control socket".into(), source })?;
        let cgroup = make_cgroup(spec)?;
        if let Some(cg) = &cgroup {
            held.push(Resource::Cgroup(cg.clone()));
        }
        let mut cmd = tokio::process::Command::new(&self.agent);
        cmd.args(["--ctl", &format!("fd:{AGENT_FD}")])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .current_dir(&spec.workdir)
            // Its own process group: a Ctrl-C on hostd's terminal must not reach guests
            // before hostd tears them down in order.
            .process_group(0)
            .kill_on_drop(true);
        pass_fd_in_child(&mut cmd, guest.as_raw_fd(), AGENT_FD);
        if let Some(cg) = &cgroup {
            join_cgroup_in_child(&mut cmd, cg);
        }
        if let Some(net) = &spec.net {
            match net.fleet.mode {
                // In the fleet namespace itself: the stack the peer and the bridge are in, so
                // its traffic stays local (the loopback reference).
                NetMode::Shared => crate::netlab::enter_in_child(&mut cmd, net.fleet.open()?),
                // The guests' path: a namespace of its own linked to the bridge by a veth pair,
                // exactly as an ns or oci guest; the agent sets eth0 up as they do. Only the
                // network is private: the process is otherwise a plain host process.
                NetMode::Private => {
                    let name = super::oci::netns_name(spec);
                    crate::netlab::ip(&["netns", "add", &name])?;
                    held.push(Resource::Netns { name: name.clone() });
                    net.fleet.add_veth_to_netns(&net.link, &name)?;
                    held.push(Resource::Link {
                        netns: net.fleet.netns.clone(),
                        name: net.link.clone(),
                    });
                    let own = crate::netlab::FleetNet { netns: name, mode: NetMode::Private };
                    crate::netlab::enter_in_child(&mut cmd, own.open()?);
                    cmd.args(["--net", &net.agent_arg()]);
                }
            }
        }
        let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            program: self.agent.display().to_string(),
            source,
        })?;
        // Closes hostd's copies of the channel's guest end and of the console pipe, so each
        // ends when the agent does.
        drop((cmd, guest));
        // The guest owns its cgroup (GuestProcess::cgroup); the rest stays in `resources`.
        held.retain(|r| !matches!(r, Resource::Cgroup(_)));
        let resources = std::mem::take(held);
        Ok(Launched {
            reader: Box::new(reader),
            writer: Box::new(writer),
            guest: GuestProcess {
                name: spec.name.clone(),
                proc: Proc::Child(child),
                cgroup,
                console_log: Some(log),
                console: Some(console),
                resources,
            },
        })
    }
}

/// Turns a connected Unix socket into tokio read/write halves.
pub fn split_socket(
    fd: OwnedFd,
) -> std::io::Result<(tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf)> {
    let std_sock = std::os::unix::net::UnixStream::from(fd);
    std_sock.set_nonblocking(true)?;
    Ok(tokio::net::UnixStream::from_std(std_sock)?.into_split())
}
