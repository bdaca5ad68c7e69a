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
pub enum Resource {
    /// A directory tree hostd created (work dirs, UML umid dirs, bundles).
    Dir {
        path: PathBuf,
    },
    /// A mount point to detach.
    Mount {
        path: PathBuf,
    },
    /// A link in the fleet namespace (tap or veth end).
    Link {
        netns: String,
        name: String,
    },
    /// A named network namespace (`ip netns`).
    Netns {
        name: String,
    },
    /// A container an OCI runtime knows, to `delete --force`.
    Container {
        runtime: PathBuf,
        root: Option<PathBuf>,
        id: String,
    },
    Cgroup(Cgroup),
}

impl Resource {
    pub fn release(&self) -> Result<(), String> {
        match self {
            Resource::Dir { path } => match std::fs::remove_dir_all(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(format!("removing {}: {e}", path.display()))
                }
                _ => Ok(()),
            },
            Resource::Mount { path } => {
                match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {
                        Ok(())
                    }
                    Err(e) => Err(format!("unmounting {}: {e}", path.display())),
                }
            }
            Resource::Link { netns, name } => {
                if !PathBuf::from("/run/netns").join(netns).exists() {
                    return Ok(());
                }
                // Already gone (e.g. a veth whose peer's namespace died) is fine.
                netlab::FleetNet { netns: netns.clone(), mode: Default::default() }
                    .del_link(name)
                    .map_err(|e| e.to_string())
            }
            Resource::Netns { name } => {
                netlab::FleetNet { netns: name.clone(), mode: Default::default() }
                    .destroy()
                    .map_err(|e| e.to_string())
            }
            Resource::Container { runtime, root, id } => {
                let mut c = Command::new(runtime);
                if let Some(r) = root {
                    c.arg("--root").arg(r);
                }
                let out = c
                    .args(["delete", "--force", id])
                    .output()
                    .map_err(|e| format!("running {}: {e}", runtime.display()))?;
                let err = String::from_utf8_lossy(&out.stderr);
                if out.status.success()
                    || err.contains("does not exist")
                    || err.contains("not found")
                {
                    Ok(())
                } else {
                    Err(format!("{} delete {id}: {}", runtime.display(), err.trim()))
                }
            }
            Resource::Cgroup(cg) => {
                cg.remove().map_err(|e| format!("removing cgroup {}: {e}", cg.dirs[0].display()))
            }
        }
    }
}

/// Releases in reverse order, continuing past failures; returns the failures.
pub fn release_all(rs: &[Resource]) -> Vec<String> {
    rs.iter().rev().filter_map(|r| r.release().err()).collect()
}
