//! `native`: the agent as an ordinary host process, the paper's non-virtualized reference
//! (T_a). The control channel is a socketpair whose far end is the agent's fd 3. On a fleet
//! network the process gets a network namespace of its own on a veth pair to the fleet
//! bridge (the guests' path, [`NetMode::Private`]), or runs in the fleet's namespace itself
//! ([`NetMode::Shared`]: the loopback reference, and the network peer).

use std::path::PathBuf;

use crate::netlab::NetMode;

use super::launch::{control_pair, host_halves, GuestCommand, LaunchGuard};
use super::{
    Backend, BackendKind, GuestSpec, LaunchError, LaunchFiles, Launched, Proc, Resource,
    Unavailable,
};

/// The descriptor number the agent finds its channel on.
pub const AGENT_FD: i32 = 3;

/// The native backend: the agent as a host process, the baseline every figure is against.
pub struct Native {
    agent: PathBuf,
    /// A mechanism's floor instead of the bare agent (`hostd boot`'s startup floors).
    wrap: Option<Wrap>,
}

/// A mechanism's own startup floor: the agent started by the system's tool for that
/// mechanism alone, with nothing of hostd's around it (no veth, no cgroup, no data disk, no
/// bundle written in the timed window). Launched like a native guest, so its launch → hello
/// is timed exactly as a guest's is.
#[derive(Debug, Clone)]
pub enum Wrap {
    /// `unshare` of the ns backend's namespace set (pid, mount, uts, ipc, net), `chroot`
    /// into the rootfs, exec of the agent in it as PID 1.
    Unshare {
        /// The tree `chroot` enters (the ns backend's rootfs).
        rootfs: PathBuf,
    },
    /// A foreground `runc run` of a bundle written before the timing starts
    /// ([`super::oci::Oci::floor_bundle`]).
    Runtime {
        /// The OCI runtime binary.
        runtime: PathBuf,
        /// The bundle directory it runs.
        bundle: PathBuf,
    },
}

impl Native {
    /// Runs the agent binary at `agent`.
    pub fn new(agent: PathBuf) -> Self {
        Self { agent, wrap: None }
    }

    /// The agent under `wrap`: a startup floor.
    pub fn floor(agent: PathBuf, wrap: Wrap) -> Self {
        Self { agent, wrap: Some(wrap) }
    }

    /// The floor's command for guest `spec`: `unshare … chroot … agent` or `runc run …`.
    fn wrapped(&self, wrap: &Wrap, spec: &GuestSpec, g: &mut LaunchGuard) -> GuestCommand {
        let ctl = format!("fd:{AGENT_FD}");
        match wrap {
            Wrap::Unshare { rootfs } => {
                let mut cmd = GuestCommand::new("unshare", &spec.workdir);
                // --kill-child: the agent goes when unshare does (a kill on timeout).
                cmd.args(["--pid", "--mount", "--uts", "--ipc", "--net", "--kill-child", "chroot"])
                    .arg(rootfs)
                    .args([super::ns::AGENT_PATH, "--ctl", &ctl, "--hostname", &spec.name]);
                cmd
            }
            Wrap::Runtime { runtime, bundle } => {
                let state = spec.workdir.join("state");
                let id = format!("vb-{}-{}", spec.run, spec.name);
                g.hold(Resource::Container {
                    runtime: runtime.clone(),
                    root: Some(state.clone()),
                    id: id.clone(),
                });
                let mut cmd = GuestCommand::new(runtime, &spec.workdir);
                cmd.arg("--root")
                    .arg(state)
                    .args(["run", "--preserve-fds", "1", "--bundle"])
                    .arg(bundle)
                    .arg(id);
                cmd
            }
        }
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
        let mut g = LaunchGuard::new(spec)?;
        let (host, guest) = control_pair()?;
        let log = g.console(&spec.workdir.join("agent.log"))?;
        let (reader, writer) = host_halves(host)?;
        let mut cmd = match &self.wrap {
            Some(w) => self.wrapped(w, spec, &mut g),
            None => {
                let mut cmd = GuestCommand::new(&self.agent, &spec.workdir);
                cmd.args(["--ctl", &format!("fd:{AGENT_FD}")]);
                cmd
            }
        };
        cmd.output(log)?.pass_fd(guest, AGENT_FD);
        cmd.cgroup(g.make_cgroup(spec)?);
        if let (Some(_), Some(_)) = (&spec.net, &self.wrap) {
            return Err(super::prepare(
                "a startup floor",
                super::PrepareError::Unsupported("a floor runs without the fleet network"),
            ));
        }
        if let Some(net) = &spec.net {
            match net.fleet.mode {
                // In the fleet namespace itself: the stack the peer and the bridge are in, so
                // its traffic stays local (the loopback reference).
                NetMode::Shared => {
                    cmd.netns(Some(net.fleet.open()?));
                }
                // The guests' path: a namespace of its own linked to the bridge by a veth pair,
                // exactly as an ns or oci guest; the agent sets eth0 up as they do. Only the
                // network is private: the process is otherwise a plain host process.
                NetMode::Private => {
                    let own = g.private_netns(net, spec.index, &super::oci::netns_name(spec))?;
                    cmd.netns(Some(own.open()?)).args(["--net", &net.agent_arg()]);
                }
            }
        }
        // Spawning closes hostd's copies of the channel's guest end and of the console
        // pipe, so each ends when the agent does.
        let child = cmd.spawn()?;
        Ok(g.launched(reader, writer, Proc::child(child)))
    }
}

/// Turns a connected Unix socket into tokio read/write halves.
pub use super::launch::split_socket;
