//! A guest's config.json: the bundle's template with this guest's fields set.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder, Spec};

use super::DISK_IN_GUEST;
use crate::backend::rootdisk::AGENT_IN_IMAGE;
use crate::cgroup::Limits;

/// Per-guest settings applied to the bundle's template.
pub(super) struct GuestConfig<'a> {
    /// The shared rootfs, absolute.
    pub(super) rootfs: &'a Path,
    pub(super) hostname: &'a str,
    /// Appended to the template's process args (`--net …`).
    pub(super) agent_args: Vec<String>,
    /// A named network namespace to join (None: the template's, i.e. a fresh empty one).
    pub(super) netns: Option<PathBuf>,
    pub(super) cgroups_path: PathBuf,
    pub(super) limits: Limits,
    /// Bound read-only at /data/disk.img.
    pub(super) data_disk: Option<&'a Path>,
}

/// Why a guest's config cannot be made from the bundle's template, by what is missing.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ConfigError {
    #[error("the template has no root")]
    NoRoot,
    #[error("the template has no process")]
    NoProcess,
    #[error("the template's process has no args")]
    NoArgs,
    #[error("the template has no linux section")]
    NoLinux,
    /// oci-spec refused a namespace or mount it was asked to build.
    #[error(transparent)]
    Build(#[from] oci_spec::OciSpecError),
    #[error("memory limit {0} too large")]
    MemoryLimit(u64),
    #[error("pids limit {0} too large")]
    PidsLimit(u64),
}

/// The template with this guest's fields set; everything else as the template has it.
/// The root is forced read-only: it is shared by every guest.
pub(super) fn derive_config(template: &Spec, g: &GuestConfig) -> Result<Spec, ConfigError> {
    let mut s = template.clone();
    let mut root = s.root().clone().ok_or(ConfigError::NoRoot)?;
    root.set_path(g.rootfs.to_path_buf());
    root.set_readonly(Some(true));
    s.set_root(Some(root));
    s.set_hostname(Some(g.hostname.to_string()));

    let process = s.process_mut().as_mut().ok_or(ConfigError::NoProcess)?;
    let mut args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(ConfigError::NoArgs);
    }
    args.extend(g.agent_args.iter().cloned());
    process.set_args(Some(args));

    let linux = s.linux_mut().as_mut().ok_or(ConfigError::NoLinux)?;
    if let Some(path) = &g.netns {
        let nss = linux.namespaces_mut().get_or_insert_with(Vec::new);
        match nss.iter_mut().find(|n| n.typ() == LinuxNamespaceType::Network) {
            Some(n) => {
                n.set_path(Some(path.clone()));
            }
            None => nss.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(path.clone())
                    .build()?,
            ),
        }
    }
    linux.set_cgroups_path(Some(g.cgroups_path.clone()));
    let l = g.limits;
    if l.memory_bytes.is_some() || l.cpus.is_some() || l.pids.is_some() || l.cpuset.is_some() {
        let r = linux.resources_mut().get_or_insert_with(Default::default);
        if let Some(m) = l.memory_bytes {
            let mut mem = r.memory().unwrap_or_default();
            mem.set_limit(Some(i64::try_from(m).map_err(|_| ConfigError::MemoryLimit(m))?));
            r.set_memory(Some(mem));
        }
        if l.cpus.is_some() || l.cpuset.is_some() {
            let mut cpu = r.cpu().clone().unwrap_or_default();
            if let Some(c) = l.cpus {
                // The same period Cgroup::create uses.
                cpu.set_period(Some(100_000));
                cpu.set_quota(Some((c * 100_000.0) as i64));
            }
            if let Some(set) = l.cpuset {
                cpu.set_cpus(Some(set.to_string()));
            }
            r.set_cpu(Some(cpu));
        }
        if let Some(p) = l.pids {
            let mut pids = r.pids().unwrap_or_default();
            pids.set_limit(i64::try_from(p).map_err(|_| ConfigError::PidsLimit(p))?);
            r.set_pids(Some(pids));
        }
    }
    if let Some(disk) = g.data_disk {
        let mount =
            |dst: &str, typ: &str, src: &Path, opts: &[&str]| -> Result<Mount, ConfigError> {
                MountBuilder::default()
                    .destination(dst)
                    .typ(typ)
                    .source(src)
                    .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                    .build()
                    .map_err(ConfigError::from)
            };
        let mounts = s.mounts_mut().get_or_insert_with(Vec::new);
        // A tiny tmpfs holds the mount-point file, so the shared image never gains one.
        mounts.push(mount(
            "/data",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "nodev", "noexec", "mode=755", "size=4k"],
        )?);
        mounts.push(mount(
            DISK_IN_GUEST,
            "bind",
            disk,
            &["bind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }
    Ok(s)
}

/// A config for a guest over its own overlay of a system image: the root is writable (the
/// overlay's upper layer takes the writes) and the agent is the copy added to it.
pub(super) fn over_system(mut s: Spec) -> Result<Spec, ConfigError> {
    let mut root = s.root().clone().ok_or(ConfigError::NoRoot)?;
    root.set_readonly(Some(false));
    s.set_root(Some(root));
    let process = s.process_mut().as_mut().ok_or(ConfigError::NoProcess)?;
    let mut args = process.args().clone().unwrap_or_default();
    let first = args.first_mut().ok_or(ConfigError::NoArgs)?;
    *first = AGENT_IN_IMAGE.to_string();
    args.push("--system-root".into());
    process.set_args(Some(args));
    Ok(s)
}
