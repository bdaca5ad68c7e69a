//! What a launch has created so far, owned by one guard. Until [`LaunchGuard::finish`]
//! hands it to the started guest, dropping the guard (a `?` on the way, or the launch
//! future dropped at its deadline: launches are cancel-safe) releases everything in reverse
//! order of creation, the cgroup last. Every name in it is derived from the run id, so a
//! hostd killed mid-launch leaves nothing that the next one's orphan reaping cannot find.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::backend::{
    make_cgroup, prepare, release_all, GuestNet, GuestProcess, GuestSpec, LaunchError, Launched,
    Proc, Resource,
};
use crate::cgroup::Cgroup;
use crate::console::{ConsoleLog, CONSOLE_CAP};
use crate::netlab::FleetNet;

/// Owns everything a launch creates and releases it if the launch fails or is dropped.
pub struct LaunchGuard {
    name: String,
    resources: Vec<Resource>,
    cgroup: Option<Cgroup>,
    console: Option<ConsoleLog>,
    console_log: Option<PathBuf>,
    armed: bool,
}

impl LaunchGuard {
    /// Creates the guest's work directory (released last of the resources).
    pub fn new(spec: &GuestSpec) -> Result<Self, LaunchError> {
        let mut g = Self {
            name: spec.name.clone(),
            resources: Vec::new(),
            cgroup: None,
            console: None,
            console_log: None,
            armed: true,
        };
        std::fs::create_dir_all(&spec.workdir).map_err(|e| prepare(spec.workdir.display(), e))?;
        g.hold(Resource::Dir { path: spec.workdir.clone() });
        Ok(g)
    }

    /// Records a resource as soon as it exists (or before, when a half-failed creation can
    /// leave part of it): released in reverse order of holding.
    pub fn hold(&mut self, r: Resource) {
        self.resources.push(r);
    }

    /// Creates the guest's cgroup if its spec asks for one.
    pub fn make_cgroup(&mut self, spec: &GuestSpec) -> Result<Option<&Cgroup>, LaunchError> {
        self.cgroup = make_cgroup(spec)?;
        Ok(self.cgroup.as_ref())
    }

    /// A cgroup created by someone else (an OCI runtime), released with the guest.
    pub fn set_cgroup(&mut self, cg: Option<Cgroup>) {
        self.cgroup = cg;
    }

    /// The launch's cgroup, once made.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// The guest's console: a pipe hostd reads into the capped log at `path` (see
    /// `crate::console`). Returns the pipe's write end for the guest's program.
    pub fn console(&mut self, path: &Path) -> Result<OwnedFd, LaunchError> {
        let (log, wr) =
            ConsoleLog::start(path, CONSOLE_CAP).map_err(|e| prepare(path.display(), e))?;
        self.console = Some(log);
        self.console_log = Some(path.to_path_buf());
        Ok(wr)
    }

    /// The capped console log, once [`console`](Self::console) made it.
    pub fn console_log(&self) -> Option<&ConsoleLog> {
        self.console.as_ref()
    }

    /// The guest's console is a file its program writes itself (`path`), not a pipe.
    pub fn console_file(&mut self, path: &Path) {
        self.console_log = Some(path.to_path_buf());
    }

    /// Creates (empties) `path` and opens it for appending: a VMM's output and, where it
    /// writes the console itself, its console file share it without overwriting each other.
    pub fn log_file(&self, path: &Path) -> Result<File, LaunchError> {
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .and_then(|_| OpenOptions::new().append(true).open(path))
            .map_err(|e| prepare(path.display(), e))
    }

    /// Puts a tap for the guest on the fleet bridge and opens the fleet namespace, which the
    /// VMM must enter to open the tap by name. None: the guest has no network.
    pub fn attach_tap(&mut self, spec: &GuestSpec) -> Result<Option<OwnedFd>, LaunchError> {
        let Some(net) = &spec.net else { return Ok(None) };
        // Recorded first: a tap made by a half-failed add_tap is still removed.
        self.hold(Resource::Link { netns: net.fleet.netns.clone(), name: net.link.clone() });
        net.fleet.add_tap(&net.link, spec.index)?;
        Ok(Some(net.fleet.open()?))
    }

    /// Gives the guest a named network namespace of its own (`name`, from the run id) on a
    /// veth pair to guest `index`'s fleet bridge, as containers have. Returns that namespace.
    pub fn private_netns(
        &mut self,
        net: &GuestNet,
        index: usize,
        name: &str,
    ) -> Result<FleetNet, LaunchError> {
        FleetNet::add_netns(name)?;
        self.hold(Resource::Netns { name: name.into() });
        // A half-made pair goes when the namespace is deleted; a made one too, which
        // releasing the link tolerates.
        net.fleet.add_veth_to_netns(&net.link, index, name)?;
        self.hold(Resource::Link { netns: net.fleet.netns.clone(), name: net.link.clone() });
        Ok(FleetNet::named(name))
    }

    /// Hands everything to the started guest, whose main host process is `proc`.
    pub fn finish(mut self, proc: Proc) -> GuestProcess {
        self.armed = false;
        GuestProcess {
            name: std::mem::take(&mut self.name),
            proc,
            cgroup: self.cgroup.take(),
            console_log: self.console_log.take(),
            console: self.console.take(),
            resources: std::mem::take(&mut self.resources),
        }
    }

    /// [`finish`](Self::finish) with the host's halves of the control channel.
    pub fn launched(
        self,
        reader: impl tokio::io::AsyncRead + Send + Unpin + 'static,
        writer: impl tokio::io::AsyncWrite + Send + Unpin + 'static,
        proc: Proc,
    ) -> Launched {
        Launched { reader: Box::new(reader), writer: Box::new(writer), guest: self.finish(proc) }
    }
}

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut rs = std::mem::take(&mut self.resources);
        if let Some(cg) = self.cgroup.take() {
            rs.insert(0, Resource::Cgroup(cg));
        }
        for e in release_all(&rs) {
            tracing::warn!(guest = %self.name, "failed launch cleanup: {e}");
        }
    }
}
