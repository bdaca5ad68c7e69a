//! A user's system image as guests' root: the shared, read-only ext4 image (VMs) or tree
//! (containers) of an imagegen root file system artifact, and each guest's own writable
//! layer over it, so no guest ever writes to what its siblings boot:
//!
//! - QEMU: a qcow2 overlay whose backing file is the image (`qemu-img create -b`);
//! - Xen: the same qcow2 overlay, served to the domU by QEMU's Xen block backend in dom0
//!   (`backendtype=qdisk`);
//! - UML: a COW file (`ubdN=cow,image`), which UML creates on first use;
//! - ns, oci: overlayfs with the tree as its lower layer, the agent added in the upper one.
//!
//! A guest with a private copy of the image (the paper's "each VM its own image") writes it
//! in place instead. The agent finds the root device by the image's ext4 UUID, so the
//! device's name (vda, sdb, ubdb, xvdb) does not matter.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::launch::{run_tool, LaunchGuard};
use super::{prepare, LaunchError, PrepareError, Resource};

/// How long making a guest's root disk (an overlay, a sparse copy) may take.
const DISK_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the agent goes inside a system image: a directory of its own, so no file of the
/// image is replaced (and a merged-/usr `/sbin` link is left alone). The same path the agent
/// installs itself at for `init = "image"`.
pub const AGENT_IN_IMAGE: &str = "/.virtbench/guest-agent";

/// Who is PID 1 of a guest booting a system image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum), clap(rename_all = "kebab-case"))]
#[serde(rename_all = "kebab-case")]
pub enum InitMode {
    /// The agent, as without a system image.
    #[default]
    Agent,
    /// The image's /sbin/init; the agent runs as its service and says hello once the
    /// system is up.
    Image,
}

impl InitMode {
    /// The name campaign and fleet files use, and the agent's `vb.init`.
    pub fn name(self) -> &'static str {
        match self {
            InitMode::Agent => "agent",
            InitMode::Image => "image",
        }
    }
}

/// A system image to boot (`--system`, a fleet's `system`).
#[derive(Debug, Clone)]
pub struct System {
    /// The imagegen recipe it was built from.
    pub name: String,
    /// The raw ext4 image (`rootfs.ext4`): shared and never written, unless `private`.
    pub ext4: PathBuf,
    /// Its file system UUID, which the agent finds the root device by.
    pub ext4_uuid: String,
    /// The unpacked tree (containers' lower layer), read-only.
    pub tree: PathBuf,
    /// What the guest runs as its init.
    pub init: InitMode,
    /// The image's init as its manifest records it (None: it has no usable one).
    pub image_init: Option<String>,
    /// `ext4` is this guest's own copy: written in place, without an overlay.
    pub private: bool,
}

/// `init = "image"` for a system image without a usable init.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
#[error(
    "system {system}: init = \"image\", but the image has no usable /sbin/init (its manifest's system.init is null); use init = \"agent\""
)]
pub struct NoImageInit {
    /// The system image's name.
    pub system: String,
}

impl System {
    /// The kernel command line words that make the agent boot this image.
    pub fn cmdline(&self) -> Vec<String> {
        vec![format!("vb.root={}", self.ext4_uuid), format!("vb.init={}", self.init.name())]
    }

    /// What a container backend (ns, oci) runs for this system: the agent as PID 1 over the
    /// image's tree, also for `init = "image"`, which it says once per backend and process
    /// (a warning), as the fleet's output must. Containers here do not boot the image's init:
    /// systemd as PID 1 needs a cgroup hierarchy of its own to manage (a cgroup namespace
    /// over a delegated subtree), which hostd's container guests are not given, and this
    /// host's hybrid cgroups (v1 controllers, an empty v2) leave no v2 tree to delegate.
    pub fn for_container(self, backend: &'static str) -> Self {
        static SAID: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
        if self.init == InitMode::Image {
            let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
            if !said.contains(&backend) {
                said.push(backend);
                tracing::warn!(
                    "{backend}: system {}: init = \"image\" is not run in containers: the agent is PID 1 over the image's tree (systemd would need a delegated cgroup hierarchy that {backend} guests are not given)",
                    self.name
                );
            }
        }
        self
    }

    /// Refuses `init = "image"` for an image without a usable init, naming it.
    pub fn check(&self) -> Result<(), NoImageInit> {
        if self.init == InitMode::Image && self.image_init.is_none() {
            return Err(NoImageInit { system: self.name.clone() });
        }
        Ok(())
    }

    /// The disk a VM guest boots: the image itself when private, else a qcow2 overlay made
    /// in `workdir` (removed with it) whose backing file is the image.
    pub async fn vm_disk(&self, workdir: &Path) -> Result<(PathBuf, &'static str), LaunchError> {
        self.vm_disk_with("qemu-img", workdir).await
    }

    /// [`System::vm_disk`] with the overlay made by `qemu_img` (a name on PATH, or a path).
    pub async fn vm_disk_with(
        &self,
        qemu_img: &str,
        workdir: &Path,
    ) -> Result<(PathBuf, &'static str), LaunchError> {
        if self.private {
            return Ok((self.ext4.clone(), "raw"));
        }
        let overlay = workdir.join("root.qcow2");
        let args = [
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            "raw".as_ref(),
            "-b".as_ref(),
            self.ext4.as_os_str(),
            overlay.as_os_str(),
        ];
        run_tool(qemu_img, &args, DISK_TIMEOUT)
            .await
            .map_err(|e| prepare(format!("the root disk overlay {}", overlay.display()), e))?;
        Ok((overlay, "qcow2"))
    }

    /// The raw disk a Firecracker guest boots (its drives are raw files, so there is no
    /// overlay format): the image itself when private, else the guest's own sparse copy (a
    /// reflink where the file system has them) in `workdir`, released with it.
    pub async fn raw_copy(&self, workdir: &Path) -> Result<PathBuf, LaunchError> {
        if self.private {
            return Ok(self.ext4.clone());
        }
        let copy = workdir.join("root.ext4");
        let args = [
            "--reflink=auto".as_ref(),
            "--sparse=always".as_ref(),
            self.ext4.as_os_str(),
            copy.as_os_str(),
        ];
        run_tool("cp", &args, DISK_TIMEOUT)
            .await
            .map_err(|e| prepare(format!("copying the root image to {}", copy.display()), e))?;
        Ok(copy)
    }

    /// UML's block device argument for the root: `ubd<n>=<cow>,<image>` (UML creates the
    /// COW file), or the private image itself.
    pub fn uml_arg(&self, n: u32, workdir: &Path) -> String {
        if self.private {
            format!("ubd{n}={}", self.ext4.display())
        } else {
            // `c` (shared): UML takes no host lock on the files. Its default whole-file
            // read lock on the shared image makes QEMU guests booting the same image (a
            // mixed fleet, or fleets side by side) fail their "consistent read" lock; the
            // image is never written, and the COW file is this guest's alone.
            format!("ubd{n}c={},{}", workdir.join("root.cow").display(), self.ext4.display())
        }
    }

    /// A container guest's root: overlayfs with the image's tree below and an upper layer
    /// in `workdir` holding the agent and the mount points the guest needs, mounted at
    /// `workdir/sysroot`. Returns the mount point; the launch's guard holds the mount, so
    /// it is detached with the guest or when the launch fails.
    pub fn container_root(
        &self,
        workdir: &Path,
        agent: &Path,
        mount_points: &[&str],
        guard: &mut LaunchGuard,
    ) -> Result<PathBuf, LaunchError> {
        let upper = workdir.join("upper");
        let work = workdir.join("ovl-work");
        let merged = workdir.join("sysroot");
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(|e| prepare(d.display(), e))?;
        }
        let dst = upper.join(AGENT_IN_IMAGE.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().expect("agent path has a parent"))
            .map_err(|e| prepare(dst.display(), e))?;
        std::fs::copy(agent, &dst)
            .map_err(|e| prepare(format!("copying the agent to {}", dst.display()), e))?;
        for m in mount_points {
            let rel = m.trim_start_matches('/');
            // Only where the image lacks it (a link in the tree is left to the tree).
            if std::fs::symlink_metadata(self.tree.join(rel)).is_err() {
                let d = upper.join(rel);
                std::fs::create_dir_all(&d).map_err(|e| prepare(d.display(), e))?;
            }
        }
        for p in [&self.tree, &upper, &work] {
            let s = p.display().to_string();
            if s.contains([',', ':', '\\']) {
                return Err(prepare(
                    format!("overlay layer {s}"),
                    PrepareError::Invalid(
                        "a path with ',', ':' or '\\' cannot be an overlayfs option".into(),
                    ),
                ));
            }
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.tree.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| {
            prepare(format!("overlayfs on {} ({data})", merged.display()), io::Error::from(e))
        })?;
        guard.hold(Resource::Mount { path: merged.clone() });
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(private: bool) -> System {
        System {
            name: "tiny".into(),
            ext4: "/store/blobs/sha256/ab".into(),
            ext4_uuid: "0123abcd-4567-89ab-cdef-0123456789ab".into(),
            tree: "/store/trees/cd".into(),
            init: InitMode::Agent,
            image_init: None,
            private,
        }
    }

    #[test]
    fn arguments() {
        let s = sys(false);
        assert_eq!(s.cmdline(), ["vb.root=0123abcd-4567-89ab-cdef-0123456789ab", "vb.init=agent"]);
        assert_eq!(s.uml_arg(1, Path::new("/w")), "ubd1c=/w/root.cow,/store/blobs/sha256/ab");
        assert_eq!(sys(true).uml_arg(1, Path::new("/w")), "ubd1=/store/blobs/sha256/ab");
    }

    #[test]
    fn image_init_needs_an_init() {
        let mut s = sys(false);
        assert!(s.check().is_ok());
        s.init = InitMode::Image;
        assert!(s.check().unwrap_err().to_string().contains("no usable /sbin/init"));
        s.image_init = Some("/bin/busybox".into());
        assert!(s.check().is_ok());
    }
}
