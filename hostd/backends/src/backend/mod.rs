//! Backends: one file each behind [`Backend`], dispatched over the closed set in
//! [`AnyBackend`]. A backend knows how to start a guest and give back its control channel
//! and the host processes that make it up; it knows nothing of metrics or reports.

mod error;
pub mod firecracker;
pub mod launch;
pub mod native;
pub mod ns;
pub mod oci;
mod process;
pub mod qemu;
mod resource;
pub mod rootdisk;
pub mod uml;
mod vmm;
pub mod xen;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::cgroup::{self, Cgroup};
use crate::netlab::FleetNet;
pub(crate) use error::prepare;
pub use error::{LaunchError, PrepareError, SpawnError, UnseenError};
pub use process::Proc;
pub use resource::{release_all, ReleaseError, Resource};

hostd_host::named_set! {
    /// The systems hostd can boot guests on.
    // The CLI parses it (the `clap` feature, which only the hostd binary crate turns on).
    #[cfg_attr(feature = "clap", derive(clap::ValueEnum), clap(rename_all = "kebab-case"))]
    #[serde(rename_all = "kebab-case")]
    pub enum BackendKind {
        /// The agent as a plain host process: the paper's non-virtualized reference (T_a).
        Native,
        /// Linux namespaces + cgroups over the image rootfs, one shared kernel (the modern Vserver).
        Ns,
        /// An OCI runtime (runc by default) over the imagegen bundle.
        Oci,
        /// User-Mode Linux: a guest kernel as host processes (the paper's UML).
        Uml,
        /// QEMU `microvm` with virtio-mmio devices: paravirtualized I/O (the paper's Xen-like row).
        QemuMicrovm,
        /// QEMU `q35` with emulated serial, e1000 and AHCI, the guest kernel with `nopv` (no
        /// paravirtual interface): full virtualization (the VMware-like row).
        QemuFull,
        /// Firecracker on KVM.
        Firecracker,
        /// Xen domUs started with `xl` from dom0 (the paper's Xen).
        Xen,
    }
}

impl BackendKind {
    /// Every backend.
    pub const ALL: [BackendKind; 8] = [
        BackendKind::Native,
        BackendKind::Ns,
        BackendKind::Oci,
        BackendKind::Uml,
        BackendKind::QemuMicrovm,
        BackendKind::QemuFull,
        BackendKind::Firecracker,
        BackendKind::Xen,
    ];

    /// The backend's name, as campaign files and reports write it.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Ns => "ns",
            BackendKind::Oci => "oci",
            BackendKind::Uml => "uml",
            BackendKind::QemuMicrovm => "qemu-microvm",
            BackendKind::QemuFull => "qemu-full",
            BackendKind::Firecracker => "firecracker",
            BackendKind::Xen => "xen",
        }
    }

    /// Where a guest of this backend sees the data disk whose host file is `host`: the same
    /// file for a native process, a bind mount for containers, a block device for VMs.
    pub fn guest_disk(self, host: &std::path::Path) -> String {
        match self {
            BackendKind::Native => host.display().to_string(),
            BackendKind::Ns | BackendKind::Oci => CONTAINER_DISK.into(),
            BackendKind::Uml => uml::GUEST_DISK.into(),
            BackendKind::QemuMicrovm => qemu::Profile::Microvm.guest_disk().into(),
            BackendKind::QemuFull => qemu::Profile::Full.guest_disk().into(),
            BackendKind::Firecracker => firecracker::GUEST_DISK.into(),
            BackendKind::Xen => xen::GUEST_DISK.into(),
        }
    }

    /// Whether each guest runs its own kernel (its clocks then start at its own boot).
    pub fn own_kernel(self) -> bool {
        matches!(
            self,
            BackendKind::Uml
                | BackendKind::QemuMicrovm
                | BackendKind::QemuFull
                | BackendKind::Firecracker
                | BackendKind::Xen
        )
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is none of [`BackendKind::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
#[error("unknown backend {0:?} (known: {known})", known = BackendKind::ALL.map(|k| k.name()).join(", "))]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for BackendKind {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        BackendKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| UnknownBackend(s.into()))
    }
}

/// Where container guests (ns, oci) find the data disk: a read-only bind mount.
pub const CONTAINER_DISK: &str = "/data/disk.img";

/// What one guest should be.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Position in its fleet, from 0.
    pub index: usize,
    /// Unique within the run; used for host-side names (paths, links, cgroups). [a-z0-9-].
    pub name: String,
    /// The run this guest belongs to ([a-z0-9-]); scopes cgroups and namespaces.
    pub run: String,
    /// Virtual CPUs (ignored where the guest has none of its own).
    pub vcpus: u32,
    /// Memory, MiB.
    pub mem_mib: u32,
    /// A file or device the disk benchmark reads inside the guest.
    pub data_disk: Option<PathBuf>,
    /// Per-guest scratch directory (sockets, console log); removed with the guest.
    pub workdir: PathBuf,
    /// The guest's place on the fleet network, if it has one.
    pub net: Option<GuestNet>,
    /// Put the guest's host processes in a cgroup of this kind (None: no cgroup).
    pub cgroup: Option<cgroup::Mode>,
    /// Resource limits applied to its cgroup.
    pub limits: cgroup::Limits,
    /// This guest's own copies of the images it boots (kernel, initramfs, rootfs, bundle,
    /// agent), replacing the backend's: the paper's "each VM its own image". None: the
    /// backend's shared images.
    pub images: Option<std::sync::Arc<Images>>,
}

/// What one launch reads from the host's files, as a backend knows it: checked for
/// page-cache residency before a cold start (`crate::coldstart`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchFiles {
    /// Image files and directory trees (kernel, initramfs, rootfs, bundle, agent).
    pub images: Vec<PathBuf>,
    /// Programs the launch executes (names looked up on PATH, or paths); their shared
    /// libraries count too.
    pub programs: Vec<String>,
    /// Other files the program reads (firmware), where present on this host.
    pub data: Vec<PathBuf>,
}

/// A guest's attachment to the fleet network.
#[derive(Debug, Clone)]
pub struct GuestNet {
    /// The fleet's network namespace.
    pub fleet: FleetNet,
    /// The guest's address.
    pub addr: Ipv4Addr,
    /// The prefix length of the fleet's network.
    pub prefix: u8,
    /// Host-side link name (tap or veth end on the bridge), ≤ 15 bytes.
    pub link: String,
}

impl GuestNet {
    /// The agent's `--net`/`vb.net=` value.
    pub fn agent_arg(&self) -> String {
        format!("eth0={}/{}", self.addr, self.prefix)
    }
}

/// The images a backend boots, resolved from the imagegen store or given by hand. A backend
/// whose image is missing says so in its probe.
#[derive(Debug, Clone, Default)]
pub struct Images {
    /// Static guest-agent binary.
    pub agent: PathBuf,
    /// gzip'd newc cpio with the agent as /init.
    pub initramfs: Option<PathBuf>,
    /// Unpacked root filesystem tree (read-only; shared by all container guests).
    pub rootfs: Option<PathBuf>,
    /// Unpacked OCI bundle directory (config.json template + rootfs/).
    pub bundle: Option<PathBuf>,
    /// Raw data disk image the disk benchmark reads.
    pub disk: Option<PathBuf>,
    /// UML's kernel.
    pub kernel_uml: Option<Kernel>,
    /// The one x86_64 guest kernel (`kernel-pv`): QEMU's microvm and q35 profiles (the latter
    /// with `nopv`), Firecracker and Xen domUs. Its recipe's command line names no console:
    /// each backend adds its own.
    pub kernel_pv: Option<Kernel>,
    /// A user's system image guests boot as their root (`--system`); None: the agent's own
    /// initramfs (VMs) or rootfs (containers).
    pub system: Option<rootdisk::System>,
    /// Provenance: artifact name → sha256.
    pub hashes: std::collections::BTreeMap<String, String>,
    /// What was stale or missing when the images were resolved.
    pub notes: Vec<String>,
}

/// A guest kernel and the command line its recipe recommends.
#[derive(Debug, Clone, Default)]
pub struct Kernel {
    /// The kernel image.
    pub path: PathBuf,
    /// Its command line from the recipe (a backend adds its own words).
    pub cmdline: String,
}

/// Per-backend settings a campaign or the CLI can change.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// OCI runtime binary (name on PATH or path). Default `runc`.
    pub oci_runtime: String,
    /// QEMU accelerator: None probes KVM with a real boot and falls back to TCG.
    pub accel: Option<String>,
    /// Path to the QEMU system emulator. Default `qemu-system-x86_64`.
    pub qemu: String,
    /// Path to the Firecracker binary. Default `firecracker`.
    pub firecracker: String,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            oci_runtime: "runc".into(),
            accel: None,
            qemu: "qemu-system-x86_64".into(),
            firecracker: "firecracker".into(),
        }
    }
}

/// Why a backend cannot run on this host.
#[derive(Debug, Clone, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
#[error("backend {backend} unavailable: {reason}")]
pub struct Unavailable {
    pub backend: &'static str,
    pub reason: UnavailableReason,
}

/// What a backend's probe found missing: typed where a caller acts on it (the Xen lab
/// stands in for a host that is not dom0), words otherwise.
#[derive(Debug, Clone, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum UnavailableReason {
    /// The `xen` backend's host is not a working dom0.
    #[error(transparent)]
    Dom0(#[from] xen::Dom0Error),
    /// Firecracker's probe, by step (shared: a backend's probe runs once).
    #[error(transparent)]
    Firecracker(#[from] std::sync::Arc<firecracker::ProbeError>),
    /// Anything else the probe found missing or broken, in words.
    #[error("{0}")]
    Other(String),
}

impl UnavailableReason {
    /// This host is not dom0 of a Xen host at all (see [`xen::Dom0Error::not_dom0`]).
    pub fn not_dom0(&self) -> bool {
        matches!(self, Self::Dom0(e) if e.not_dom0())
    }
}

impl From<String> for UnavailableReason {
    fn from(s: String) -> Self {
        Self::Other(s)
    }
}

/// A started guest: the host side of its control channel plus what must be torn down.
pub struct Launched {
    /// Reads the agent's side of the control channel.
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    /// Writes to the agent.
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
    /// The guest's host processes and resources.
    pub guest: GuestProcess,
}

/// The host processes and resources that make up a guest.
#[derive(Debug)]
pub struct GuestProcess {
    /// The guest's name.
    pub name: String,
    /// The main host process: the VMM, the runtime, or the agent itself.
    pub proc: Proc,
    /// Every host process of the guest, for memory attribution and a sure kill.
    pub cgroup: Option<Cgroup>,
    /// Where the guest's console output goes, if it has one of its own.
    pub console_log: Option<PathBuf>,
    /// The capped console log hostd writes from the guest's output pipe (see
    /// `crate::console`), when the backend reads the console that way.
    pub console: Option<crate::console::ConsoleLog>,
    /// What to release at teardown, in creation order (released in reverse).
    pub resources: Vec<Resource>,
}

impl GuestProcess {
    /// The main process's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Host pids whose memory belongs to the guest.
    pub fn pids(&self) -> Vec<u32> {
        match &self.cgroup {
            Some(cg) => cg.pids(),
            None => vec![self.proc.pid()],
        }
    }

    /// The last `max` bytes of the console log, for error reports.
    pub fn log_tail(&self, max: usize) -> Option<String> {
        let text = match &self.console {
            Some(c) => c.tail(max).trim().to_string(),
            None => {
                let data = std::fs::read(self.console_log.as_ref()?).ok()?;
                String::from_utf8_lossy(&data[data.len().saturating_sub(max)..]).trim().to_string()
            }
        };
        (!text.is_empty()).then_some(text)
    }
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Exit {
    /// Stopped on request within the grace period.
    Clean,
    /// Had to be killed after the grace period.
    Killed,
    /// Was already gone, with this status.
    Exited(String),
}

/// One way of running a guest (a host process, a namespace, a container, a VM): what every
/// backend offers fleets and measurements, which see guests only through it. Launches are
/// cancel-safe (the boot deadline may drop one anywhere) and every host resource a launch
/// creates is named after the run ([`GuestSpec::run`]) so a crashed run can be cleaned up.
/// [`AnyBackend`] dispatches over the closed set of implementations.
pub trait Backend {
    /// Which backend this is (its name in results, flags and campaign files).
    fn kind(&self) -> BackendKind;
    /// Checks that the backend can run here; the error says why not. Ok: one line saying
    /// what will run (versions, accelerator, runtime), recorded with the run's samples.
    async fn probe(&self) -> Result<String, Unavailable>;
    /// Starts one guest; returns as soon as its control channel exists (not when ready).
    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError>;
    /// Stops a guest that was asked to power off: waits up to `grace`, then kills every
    /// process of it and releases its resources.
    async fn stop(&self, guest: &mut GuestProcess, grace: Duration) -> Exit {
        stop_and_release(guest, grace).await
    }
    /// Memory in use on the machine that the host kernel's /proc/meminfo does not count,
    /// KiB: guest RAM a hypervisor below the host hands out (Xen). 0 where the host kernel
    /// owns all memory, which is every backend but Xen.
    async fn unseen_used_kib(&self) -> Result<u64, UnseenError> {
        Ok(0)
    }
    /// The host files a launch of this backend reads, with its own images (see
    /// [`GuestSpec::images`] for per-guest copies).
    fn launch_files(&self) -> LaunchFiles;
}

/// The common teardown: wait for the main process, kill the rest, release resources.
pub async fn stop_and_release(guest: &mut GuestProcess, grace: Duration) -> Exit {
    let exit = guest.proc.wait_or_kill(grace).await;
    if let Some(cg) = &guest.cgroup {
        let _ = cg.kill_all(Duration::from_secs(5));
    }
    let mut rs = std::mem::take(&mut guest.resources);
    if let Some(cg) = guest.cgroup.take() {
        rs.insert(0, Resource::Cgroup(cg));
    }
    for e in release_all(&rs) {
        tracing::warn!(guest = %guest.name, "teardown: {e}");
    }
    exit
}

/// Enum dispatch over the closed set of backends.
pub enum AnyBackend {
    /// Agents as host processes.
    Native(native::Native),
    /// Linux namespaces, set up by hostd itself.
    Ns(ns::Ns),
    /// An OCI runtime (runc, crun).
    Oci(oci::Oci),
    /// User-mode Linux.
    Uml(uml::Uml),
    /// QEMU, microvm or q35.
    Qemu(qemu::Qemu),
    /// Firecracker.
    Firecracker(firecracker::Firecracker),
    /// Xen domUs through xl.
    Xen(xen::Xen),
}

impl AnyBackend {
    /// The backend of `kind` over `images`.
    pub fn new(kind: BackendKind, images: &Images, opts: &BackendOptions) -> Self {
        match kind {
            BackendKind::Native => AnyBackend::Native(native::Native::new(images.agent.clone())),
            BackendKind::Ns => AnyBackend::Ns(ns::Ns::new(images, opts)),
            BackendKind::Oci => AnyBackend::Oci(oci::Oci::new(images, opts)),
            BackendKind::Uml => AnyBackend::Uml(uml::Uml::new(images, opts)),
            BackendKind::QemuMicrovm => {
                AnyBackend::Qemu(qemu::Qemu::new(qemu::Profile::Microvm, images, opts))
            }
            BackendKind::QemuFull => {
                AnyBackend::Qemu(qemu::Qemu::new(qemu::Profile::Full, images, opts))
            }
            BackendKind::Firecracker => {
                AnyBackend::Firecracker(firecracker::Firecracker::new(images, opts))
            }
            BackendKind::Xen => AnyBackend::Xen(xen::Xen::new(images, opts)),
        }
    }

    /// The same backend and settings (QEMU's accelerator choice included) over other
    /// images: how a guest with its own image copies is launched.
    pub async fn with_images(&self, images: &Images) -> AnyBackend {
        match self {
            AnyBackend::Native(_) => AnyBackend::Native(native::Native::new(images.agent.clone())),
            AnyBackend::Ns(b) => AnyBackend::Ns(b.with_images(images)),
            AnyBackend::Oci(b) => AnyBackend::Oci(b.with_images(images)),
            AnyBackend::Uml(b) => AnyBackend::Uml(b.with_images(images)),
            AnyBackend::Qemu(b) => {
                // Decided once, by the fleet's backend, so per-guest copies share it.
                let _ = b.accel().await;
                AnyBackend::Qemu(b.with_images(images))
            }
            AnyBackend::Firecracker(b) => AnyBackend::Firecracker(b.with_images(images)),
            AnyBackend::Xen(b) => AnyBackend::Xen(b.with_images(images)),
        }
    }

    /// What the launches of these guests read: the backend's files, or with per-guest
    /// image copies each guest's copies plus the shared programs.
    pub fn fleet_launch_files(&self, per_guest: &[std::sync::Arc<Images>]) -> LaunchFiles {
        let mut all = self.launch_files();
        if per_guest.is_empty() {
            return all;
        }
        // The copies replace the images, and the programs too where the image is the
        // program (UML's kernel, the native agent).
        all.images.clear();
        all.programs.clear();
        for images in per_guest {
            let own = match self {
                AnyBackend::Native(_) => native::Native::new(images.agent.clone()).launch_files(),
                AnyBackend::Ns(b) => b.with_images(images).launch_files(),
                AnyBackend::Oci(b) => b.with_images(images).launch_files(),
                AnyBackend::Uml(b) => b.with_images(images).launch_files(),
                AnyBackend::Qemu(b) => b.with_images(images).launch_files(),
                AnyBackend::Firecracker(b) => b.with_images(images).launch_files(),
                AnyBackend::Xen(b) => b.with_images(images).launch_files(),
            };
            all.images.extend(own.images);
            for p in own.programs {
                if !all.programs.contains(&p) {
                    all.programs.push(p);
                }
            }
        }
        all
    }
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Native($b) => $e,
            AnyBackend::Ns($b) => $e,
            AnyBackend::Oci($b) => $e,
            AnyBackend::Uml($b) => $e,
            AnyBackend::Qemu($b) => $e,
            AnyBackend::Firecracker($b) => $e,
            AnyBackend::Xen($b) => $e,
        }
    };
}

impl Backend for AnyBackend {
    fn kind(&self) -> BackendKind {
        dispatch!(self, b => b.kind())
    }
    async fn probe(&self) -> Result<String, Unavailable> {
        dispatch!(self, b => b.probe().await)
    }
    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        if let Some(images) = &spec.images {
            let own = self.with_images(images).await;
            let own = &own;
            return dispatch!(own, b => b.launch(spec).await);
        }
        dispatch!(self, b => b.launch(spec).await)
    }
    async fn stop(&self, guest: &mut GuestProcess, grace: Duration) -> Exit {
        dispatch!(self, b => b.stop(guest, grace).await)
    }
    async fn unseen_used_kib(&self) -> Result<u64, UnseenError> {
        dispatch!(self, b => b.unseen_used_kib().await)
    }
    fn launch_files(&self) -> LaunchFiles {
        dispatch!(self, b => b.launch_files())
    }
}

/// Creates the guest's cgroup if the spec asks for one.
pub fn make_cgroup(spec: &GuestSpec) -> Result<Option<Cgroup>, LaunchError> {
    spec.cgroup
        .map(|mode| {
            Cgroup::create(mode, &spec.run, &spec.name, spec.limits).map_err(LaunchError::Cgroup)
        })
        .transpose()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use tests::test_spec;
