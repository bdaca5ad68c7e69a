//! Host resources a guest holds besides its processes, released in reverse order of creation.
//! Serializable: the fleet's state file lists them before the guests start, so a later hostd
//! can release what a killed one left behind.

use std::path::PathBuf;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::netlab;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
/// One host resource a guest holds, and how to release it.
pub enum Resource {
    /// A directory tree hostd created (work dirs, UML umid dirs, bundles).
    Dir {
        /// The directory.
        path: PathBuf,
    },
    /// A mount point to detach.
    Mount {
        /// The mount point.
        path: PathBuf,
    },
    /// A link in the fleet namespace (tap or veth end).
    Link {
        /// The fleet namespace it is in.
        netns: String,
        /// The link's name.
        name: String,
    },
    /// A named network namespace (`ip netns`).
    Netns {
        /// Its name.
        name: String,
    },
    /// A container an OCI runtime knows, to `delete --force`.
    Container {
        /// The runtime's binary.
        runtime: PathBuf,
        /// The runtime's state directory (`--root`), if not its default.
        root: Option<PathBuf>,
        /// The container's id.
        id: String,
    },
    /// A guest's cgroup, removed (after its processes are killed).
    Cgroup(Cgroup),
}

/// Why a resource could not be released, by kind of resource.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ReleaseError {
    #[error("removing {}: {source}", path.display())]
    RemoveDir { path: PathBuf, source: std::io::Error },
    #[error("unmounting {}: {source}", path.display())]
    Unmount { path: PathBuf, source: nix::errno::Errno },
    /// A tap or veth end that is still there.
    #[error(transparent)]
    DelLink(netlab::NetError),
    #[error(transparent)]
    DestroyNetns(netlab::NetError),
    /// The OCI runtime could not be run at all.
    #[error("running {}: {source}", runtime.display())]
    RunRuntime { runtime: PathBuf, source: std::io::Error },
    /// The runtime refused to delete the container; `said` is its standard error.
    #[error("{} delete {id}: {said}", runtime.display())]
    DeleteContainer { runtime: PathBuf, id: String, said: String },
    #[error(transparent)]
    RemoveCgroup(#[from] crate::cgroup::CgroupError),
}

impl Resource {
    /// Releases it; what is already gone counts as released.
    pub fn release(&self) -> Result<(), ReleaseError> {
        match self {
            Resource::Dir { path } => match std::fs::remove_dir_all(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(ReleaseError::RemoveDir { path: path.clone(), source: e })
                }
                _ => Ok(()),
            },
            Resource::Mount { path } => {
                match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {
                        Ok(())
                    }
                    Err(e) => Err(ReleaseError::Unmount { path: path.clone(), source: e }),
                }
            }
            Resource::Link { netns, name } => {
                if !PathBuf::from("/run/netns").join(netns).exists() {
                    return Ok(());
                }
                // Already gone (e.g. a veth whose peer's namespace died) is fine.
                netlab::FleetNet::named(netns.clone()).del_link(name).map_err(ReleaseError::DelLink)
            }
            Resource::Netns { name } => {
                netlab::FleetNet::named(name.clone()).destroy().map_err(ReleaseError::DestroyNetns)
            }
            Resource::Container { runtime, root, id } => {
                let mut c = Command::new(runtime);
                if let Some(r) = root {
                    c.arg("--root").arg(r);
                }
                let out = c.args(["delete", "--force", id]).output().map_err(|e| {
                    ReleaseError::RunRuntime { runtime: runtime.clone(), source: e }
                })?;
                let err = String::from_utf8_lossy(&out.stderr);
                if out.status.success()
                    || err.contains("does not exist")
                    || err.contains("not found")
                {
                    Ok(())
                } else {
                    Err(ReleaseError::DeleteContainer {
                        runtime: runtime.clone(),
                        id: id.clone(),
                        said: err.trim().to_string(),
                    })
                }
            }
            Resource::Cgroup(cg) => Ok(cg.remove()?),
        }
    }
}

/// Releases in reverse order, continuing past failures; returns the failures.
pub fn release_all(rs: &[Resource]) -> Vec<ReleaseError> {
    rs.iter().rev().filter_map(|r| r.release().err()).collect()
}
