//! `xen`: Xen domUs started with the `xl` toolstack from dom0, the paper's Xen row. hostd
//! runs in dom0; each guest is a PV domain (or PVH, where the hypervisor has HVM support and
//! `VIRTBENCH_XEN_TYPE=pvh` asks for it) booting the paravirtual `kernel-pv` vmlinux (after
//! `console=hvc0 quiet`) with the agent's initramfs.
//!
//! - Domain: a generated `xl` config in the guest's work directory, started with `xl create
//!   -F`. That xl process stays in the foreground until the domain is gone, so it is the
//!   guest's main host process (its exit is the guest's end) and it runs in the guest's
//!   cgroup with the hotplug scripts it forks. `on_poweroff`/`on_reboot`/`on_crash` are
//!   `destroy`: a guest that stops for any reason is gone.
//! - Control channel: the domain's primary PV console (guest `/dev/hvc0`). xenconsoled relays
//!   it to a pty in dom0 and names it in xenstore (`/local/domain/<id>/console/tty`); hostd
//!   opens that pty in raw mode. A second PV console (`channel=`) would keep the kernel log
//!   apart, but secondary consoles are served by a QEMU device model per guest, which a PV
//!   guest otherwise does not need; the shared console is safe because frames carry their
//!   own checksums and the decoder skips kernel messages, and the kernel runs `quiet`.
//!   Everything read from the console (and xl's output) also goes to `console.log`.
//! - Network: a vif whose hotplug script (written per guest, run by libxl) moves netback's
//!   `vif<domid>.<n>` into the fleet namespace as the guest's link name and puts it on the
//!   bridge.
//! - Disk: the data disk as a read-only `xvda` served by QEMU's Xen block backend (`qdisk`)
//!   with `direct-io-safe`, which lets it open the image with O_DIRECT: the toolstack's
//!   default for a file (blkback over a loop device) reads through dom0's page cache.
//! - Root disk (a system image, `--system`): `xvdb`, the guest's own qcow2 overlay in its
//!   work directory over the shared image (or its private raw copy), served by the same
//!   `qdisk` backend, which opens the backing image read-only; `vb.root=`/`vb.init=` on the
//!   command line as on the other VM backends. qdisk rather than blkback because blkback
//!   serves only raw block devices: an overlay would need device-mapper snapshots and loop
//!   devices per guest, where QEMU reads the qcow2 the other VM backends already make.
//! - Teardown: after the agent's power-off the domain destroys itself and `xl create -F`
//!   exits; whatever is still there is `xl destroy`ed before the processes are killed.
//! - Memory: a domain's RAM is Xen's, not dom0's, so it is not in dom0's /proc/meminfo nor
//!   in any dom0 cgroup; [`xl_list`] and [`xl_info`] give Xen's own accounting (docs/xen.md).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::launch::{
    boot_images, run_tool, vm_launch_files, GuestCommand, ImageError, LaunchGuard, ToolError,
};
use super::rootdisk::System;
use super::{
    prepare, stop_and_release, Backend, BackendKind, BackendOptions, Exit, GuestProcess, GuestSpec,
    Images, Kernel, LaunchError, LaunchFiles, Launched, PrepareError, Proc, Resource, Unavailable,
    UnavailableReason,
};

/// The data disk inside a domU (the first Xen virtual block device).
pub const GUEST_DISK: &str = "/dev/xvda";
/// The system image's root disk, after the data disk's (as on UML and qemu-full); the agent
/// finds it by its ext4 UUID, not by this name.
pub const ROOT_VDEV: &str = "xvdb";
/// The guest tty of the control channel: the primary PV console.
pub const CTL_TTY: &str = "/dev/hvc0";
/// Chooses the domain type (`pv`, the default, or `pvh`).
pub const TYPE_ENV: &str = "VIRTBENCH_XEN_TYPE";
/// From `xl create` to the domain's existence (builder, devices, hotplug scripts). Generous:
/// under an emulated dom0 one creation takes seconds and concurrent ones queue on its CPUs.
const CREATE_DEADLINE: Duration = Duration::from_secs(300);
/// From the domain's existence to xenconsoled naming its pty.
const TTY_DEADLINE: Duration = Duration::from_secs(30);
/// Most bytes of a guest's console (and xl's output) kept in `console.log`.
const LOG_CAP: u64 = 1 << 20;

/// How Xen runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// Paravirtualized: the guest kernel runs deprivileged and calls Xen for privileged
    /// operations; no hardware virtualization needed.
    Pv,
    /// An HVM container without emulated devices; needs VT-x/AMD-V.
    Pvh,
}

impl DomainType {
    /// The name `VIRTBENCH_XEN_TYPE` and the probe record use.
    pub fn name(self) -> &'static str {
        match self {
            DomainType::Pv => "pv",
            DomainType::Pvh => "pvh",
        }
    }

    /// From the value of [`TYPE_ENV`] (unset or empty: PV, the paper's Xen).
    pub fn parse(v: Option<&str>) -> Result<Self, DomainTypeError> {
        match v {
            None | Some("") | Some("pv") => Ok(DomainType::Pv),
            Some("pvh") => Ok(DomainType::Pvh),
            Some(other) => Err(DomainTypeError(other.to_string())),
        }
    }

    fn from_env() -> Result<Self, DomainTypeError> {
        Self::parse(std::env::var(TYPE_ENV).ok().as_deref())
    }
}

/// [`TYPE_ENV`] names no domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
#[error("{TYPE_ENV}={0:?}: expected pv or pvh")]
pub struct DomainTypeError(pub String);

/// Why a domain's console pty was not had, by step.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ConsoleTtyError {
    #[error("domain {domid} ended ({status} from `xl create`) before its console was opened")]
    Ended { domid: u32, status: std::process::ExitStatus },
    /// xenstore-read cannot be run at all.
    #[error(transparent)]
    Xenstore(ToolError),
    /// xenconsoled did not write the pty's name in time; `why` is the last read's outcome.
    #[error(
        "xenconsoled did not name domain {domid}'s console in {} s ({key}: {why}); is xenconsoled running?",
        TTY_DEADLINE.as_secs()
    )]
    Unnamed { domid: u32, key: String, why: String },
}

/// Why the memory Xen handed out could not be read.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum XenMemoryError {
    #[error(transparent)]
    XlInfo(#[from] ToolError),
    #[error("`xl info` lacks total_memory or free_memory")]
    Incomplete,
}

/// The Xen backend: each guest a domU made with `xl create`, run from dom0.
pub struct Xen {
    kernel: Option<Kernel>,
    initramfs: Option<PathBuf>,
    /// The toolstack and xenstore programs (names on PATH, or paths).
    xl: String,
    xenstore_read: String,
    /// What makes a system image's per-guest overlay.
    qemu_img: String,
    /// Where `/sys`, `/proc` and `/dev` are looked for (`/` but in tests).
    root: PathBuf,
    /// The system image the guests boot from, if any.
    system: Option<System>,
}

impl Xen {
    /// The backend over `images`.
    pub fn new(images: &Images, _opts: &BackendOptions) -> Self {
        Self {
            kernel: images.kernel_pv.clone(),
            initramfs: images.initramfs.clone(),
            xl: "xl".into(),
            xenstore_read: "xenstore-read".into(),
            qemu_img: "qemu-img".into(),
            root: PathBuf::from("/"),
            system: images.system.clone(),
        }
    }

    /// The same backend over other images.
    pub fn with_images(&self, images: &Images) -> Self {
        Self {
            kernel: images.kernel_pv.clone(),
            initramfs: images.initramfs.clone(),
            xl: self.xl.clone(),
            xenstore_read: self.xenstore_read.clone(),
            qemu_img: self.qemu_img.clone(),
            root: self.root.clone(),
            system: images.system.clone(),
        }
    }

    fn images(&self) -> Result<(&Kernel, &Path), ImageError> {
        boot_images("Xen domU kernel (kernel-pv)", self.kernel.as_ref(), self.initramfs.as_deref())
    }
}

/// Why this system is not a working dom0 of a Xen host ([`check_dom0`]).
#[derive(Debug, Clone, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum Dom0Error {
    #[error("not dom0 of a Xen host: this system runs on a {hypervisor} hypervisor ({})", path.display())]
    OtherHypervisor { hypervisor: String, path: PathBuf },
    #[error(
        "not dom0 of a Xen host: no Xen hypervisor under this system ({} does not exist); \
         run hostd in dom0, or measure Xen under QEMU with `hostd xen-lab`",
        path.display()
    )]
    NoHypervisor { path: PathBuf },
    #[error("not dom0: this system is a Xen domU ({} has no control_d)", path.display())]
    DomU { path: PathBuf },
    #[error("running on Xen, but {}: {error} (mount xenfs: mount -t xenfs xenfs /proc/xen)", path.display())]
    NoXenfs { path: PathBuf, error: String },
    #[error("dom0 without {} (load the xen-privcmd module)", path.display())]
    NoPrivcmd { path: PathBuf },
}

impl Dom0Error {
    /// This system is not dom0 at all (no Xen, or a domU), rather than a dom0 missing a
    /// piece: where the Xen lab measures `xen` instead.
    pub fn not_dom0(&self) -> bool {
        matches!(self, Self::OtherHypervisor { .. } | Self::NoHypervisor { .. } | Self::DomU { .. })
    }
}

/// Whether this system is dom0 of a Xen host, from its /sys, /proc and /dev under `root`;
/// the error says what is missing. Ok: the hypervisor's capabilities line.
pub fn check_dom0(root: &Path) -> Result<String, Dom0Error> {
    let ty = root.join("sys/hypervisor/type");
    match std::fs::read_to_string(&ty) {
        Ok(t) if t.trim() == "xen" => {}
        Ok(t) => {
            return Err(Dom0Error::OtherHypervisor { hypervisor: t.trim().to_string(), path: ty })
        }
        Err(_) => return Err(Dom0Error::NoHypervisor { path: ty }),
    }
    let caps = root.join("proc/xen/capabilities");
    match std::fs::read_to_string(&caps) {
        Ok(c) if c.split(',').any(|w| w.trim() == "control_d") => {}
        Ok(_) => return Err(Dom0Error::DomU { path: caps }),
        Err(e) => return Err(Dom0Error::NoXenfs { path: caps, error: e.to_string() }),
    }
    let privcmd = root.join("dev/xen/privcmd");
    if !privcmd.exists() {
        return Err(Dom0Error::NoPrivcmd { path: privcmd });
    }
    let cap = std::fs::read_to_string(root.join("sys/hypervisor/properties/capabilities"))
        .unwrap_or_default();
    Ok(cap.trim().to_string())
}

mod config;
#[cfg(test)]
mod tests;
mod tty;
mod xl;

pub use config::{config_domain_name, domain_config, domain_name, vif_script, RootDisk};
pub use tty::RawTty;
use tty::{Log, Tee};
pub use xl::{
    created_domid, find_program, parse_xl_info, parse_xl_list, xen_used_kib, xl_info, xl_list,
    DomainInfo,
};

/// Destroys a domain that a failed launch leaves behind (disarmed once the guest is handed
/// over: then [`Xen::stop`] does it).
struct DomainGuard<'a> {
    xl: &'a str,
    name: String,
    armed: bool,
}

impl Drop for DomainGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Synchronous on purpose: a drop cannot await, and this is a failure path.
            let _ = std::process::Command::new(self.xl)
                .args(["destroy", &self.name])
                .stdin(Stdio::null())
                .output();
        }
    }
}

impl Xen {
    async fn launch_domain(
        &self,
        ty: DomainType,
        kernel: &Kernel,
        initramfs: &Path,
        spec: &GuestSpec,
    ) -> Result<Launched, LaunchError> {
        let prep = |what: &str, e: std::io::Error| prepare(what, e);
        let mut g = LaunchGuard::new(spec)?;
        let script = vif_hotplug(spec, &mut g)?;
        let cfg_path = spec.workdir.join("domain.cfg");
        // In the work directory, so released with it (on stop, a failed launch, or by the
        // reaping of an orphaned run).
        let root = match &self.system {
            Some(sys) => Some((sys, root_disk(sys, &self.qemu_img, &spec.workdir).await?)),
            None => None,
        };
        let root = root.as_ref().map(|(system, (path, format))| RootDisk { system, path, format });
        let cfg = domain_config(ty, kernel, initramfs, spec, script.as_deref(), root)?;
        std::fs::write(&cfg_path, &cfg).map_err(|e| prep(&cfg_path.display().to_string(), e))?;
        let log_path = spec.workdir.join("console.log");
        let log = Log(Arc::new(Mutex::new((g.log_file(&log_path)?, 0))));
        g.console_file(&log_path);

        // xl's stdout and stderr: one pipe, read here (into the log, and for the domid).
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| prep("xl's output pipe", e.into()))?;
        let wr2 = wr.try_clone().map_err(|e| prep("xl's output pipe", e))?;
        let mut cmd = GuestCommand::new(&self.xl, &spec.workdir);
        cmd.arg("create").arg("-F").arg(&cfg_path).stdout(wr).stderr(wr2);
        cmd.cgroup(g.make_cgroup(spec)?);
        let name = domain_name(spec);
        // Spawning closes our copies of the pipe's write end: EOF comes when xl exits.
        let mut child = cmd.spawn()?;
        let mut guard = DomainGuard { xl: &self.xl, name: name.clone(), armed: true };
        let (domid_tx, mut domid_rx) = watch::channel(None::<u32>);
        let out_log = log.clone();
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(rd)
            .map_err(|e| prep("xl's output pipe", e))?;
        let copier = tokio::spawn(async move {
            let mut seen = String::new();
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                out_log.append(&buf[..n]);
                if domid_tx.borrow().is_none() && seen.len() < 64 << 10 {
                    seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if let Some(id) = created_domid(&seen) {
                        let _ = domid_tx.send(Some(id));
                    }
                }
            }
        });

        let reported = tokio::select! {
            r = tokio::time::timeout(CREATE_DEADLINE, domid_rx.wait_for(Option::is_some)) => match r {
                Ok(Ok(id)) => *id,
                // xl's output ended: it exited without naming the domain.
                Ok(Err(_)) => None,
                Err(_) => {
                    let _ = child.start_kill();
                    return Err(LaunchError::Channel(format!("`xl create` did not report the domain within {} s: {}", CREATE_DEADLINE.as_secs(), log_tail(&log_path))));
                }
            },
            _ = child.wait() => None,
        };
        let Some(domid) = reported else {
            let status =
                child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            // xl's last words may still be in the pipe: the copier ends at its EOF (bounded,
            // as a hotplug script xl forked could hold the write end open).
            let _ = tokio::time::timeout(Duration::from_secs(5), copier).await;
            return Err(LaunchError::Channel(format!(
                "`xl create` exited ({status}) before the domain ran: {}{}",
                log_tail(&log_path),
                dm_log_tail(&self.root, &domain_name(spec))
            )));
        };

        let tty = self
            .console_tty(domid, &mut child)
            .await
            .map_err(|e| LaunchError::Channel(e.to_string()))?;
        let pty =
            RawTty::open(Path::new(&tty)).map_err(|e| prep(&format!("console pty {tty}"), e))?;
        let (reader, writer) = tokio::io::split(pty);
        guard.armed = false;
        Ok(Launched {
            reader: Box::new(Tee { inner: reader, log }),
            writer: Box::new(writer),
            guest: g.finish(Proc::child(child)),
        })
    }

    /// The pty xenconsoled made for `domid`, once it has named it in xenstore.
    async fn console_tty(
        &self,
        domid: u32,
        xl: &mut tokio::process::Child,
    ) -> Result<String, ConsoleTtyError> {
        let key = format!("/local/domain/{domid}/console/tty");
        let end = tokio::time::Instant::now() + TTY_DEADLINE;
        loop {
            if let Ok(Some(status)) = xl.try_wait() {
                return Err(ConsoleTtyError::Ended { domid, status });
            }
            match run_tool(&self.xenstore_read, &[&key], Duration::from_secs(10)).await {
                Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
                Err(e) if e.not_runnable() => return Err(ConsoleTtyError::Xenstore(e)),
                r => {
                    if tokio::time::Instant::now() >= end {
                        let why = r.err().map_or_else(|| "empty".into(), |e| e.to_string());
                        return Err(ConsoleTtyError::Unnamed { domid, key, why });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Waits up to `grace` for the domain to end by itself (xl then exits), destroys it if
    /// it did not, then kills what is left of the guest's processes and releases the rest.
    pub async fn stop_domain(&self, guest: &mut GuestProcess, grace: Duration) -> Exit {
        let name = guest
            .console_log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l.with_file_name("domain.cfg")).ok())
            .and_then(|c| config_domain_name(&c));
        let gone_before = guest.proc.has_exited();
        let ended = gone_before
            || (!grace.is_zero() && tokio::time::timeout(grace, guest.proc.wait()).await.is_ok());
        // `xl create -F` exits 0 only after the domain's death; any other end (killed, an
        // error) may leave the domain behind.
        let died = ended
            && match &mut guest.proc {
                Proc::Child(c) => c.child().try_wait().ok().flatten().is_some_and(|s| s.success()),
                _ => false,
            };
        let mut destroyed = false;
        if let (Some(name), false) = (&name, died) {
            match run_tool(&self.xl, &["destroy", name], Duration::from_secs(60)).await {
                Ok(_) => destroyed = !ended,
                // xl says "… is an invalid domain identifier" for a domain already gone.
                Err(e) if e.said().contains("invalid domain identifier") => {}
                Err(e) => tracing::warn!(guest = %guest.name, "xl destroy {name}: {e}"),
            }
        }
        // After a destroy the monitoring xl notices the death and exits by itself.
        let exit = stop_and_release(
            guest,
            if destroyed { Duration::from_secs(10) } else { Duration::ZERO },
        )
        .await;
        match (ended, gone_before, grace.is_zero()) {
            (true, true, true) => exit,
            (true, _, _) => Exit::Clean,
            (false, _, _) => Exit::Killed,
        }
    }
}

/// The guest's vif hotplug script in its work directory (see [`vif_script`]), when it has a
/// network; its link is held from here on, as a half-started domain's goes too.
fn vif_hotplug(spec: &GuestSpec, g: &mut LaunchGuard) -> Result<Option<PathBuf>, LaunchError> {
    let prep = |what: &str, e: std::io::Error| prepare(what, e);
    match &spec.net {
        Some(net) => {
            let ip = find_program("ip").ok_or_else(|| {
                prepare(
                    "the vif hotplug script",
                    PrepareError::Missing("iproute2's ip is not on PATH"),
                )
            })?;
            let path = spec.workdir.join("vif-hotplug");
            std::fs::write(&path, vif_script(&ip, net))
                .and_then(|_| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                })
                .map_err(|e| prep(&path.display().to_string(), e))?;
            // The link disappears with the domain; listed so a half-started guest's goes too.
            g.hold(Resource::Link { netns: net.fleet.netns.clone(), name: net.link.clone() });
            Ok(Some(path))
        }
        None => Ok(None),
    }
}

/// A guest's root disk over the system image: its qcow2 overlay made in `workdir`, or the
/// private copy itself. A missing or unreadable image is named before anything is made.
async fn root_disk(
    sys: &System,
    qemu_img: &str,
    workdir: &Path,
) -> Result<(PathBuf, &'static str), LaunchError> {
    let what = || format!("system image {} ({})", sys.name, sys.ext4.display());
    let meta = std::fs::metadata(&sys.ext4).map_err(|e| prepare(what(), e))?;
    // A block device is fine too: the Xen lab hands dom0 the image as a disk.
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return Err(prepare(
            what(),
            PrepareError::Invalid("neither a regular file nor a block device".into()),
        ));
    }
    sys.vm_disk_with(qemu_img, workdir).await
}

/// The end of the domain's device model log (the QEMU libxl starts per domain to serve
/// its qdisk disks), when libxl left one: why that QEMU stopped is only written there.
fn dm_log_tail(root: &Path, domain: &str) -> String {
    let path = root.join(format!("var/log/xen/qemu-dm-{domain}.log"));
    match path.exists() {
        true => format!("\n{}:\n{}", path.display(), log_tail(&path)),
        false => String::new(),
    }
}

/// The last lines of a console log, for a launch error.
fn log_tail(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&data[data.len().saturating_sub(2000)..]).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

impl Backend for Xen {
    fn kind(&self) -> BackendKind {
        BackendKind::Xen
    }

    fn launch_files(&self) -> LaunchFiles {
        let mut files = vm_launch_files(self.kernel.as_ref(), self.initramfs.as_deref(), &self.xl);
        files.images.extend(self.system.as_ref().map(|s| s.ext4.clone()));
        files
    }

    /// dom0 of a Xen host (hypervisor, xenfs, privcmd), the images, `xl info` answering
    /// (xenstored runs), xenconsoled running, and the tools the guests need.
    async fn probe(&self) -> Result<String, Unavailable> {
        let unavailable = |reason: String| Unavailable { backend: "xen", reason: reason.into() };
        let caps = check_dom0(&self.root)
            .map_err(|e| Unavailable { backend: "xen", reason: UnavailableReason::Dom0(e) })?;
        let ty = DomainType::from_env().map_err(|e| unavailable(e.to_string()))?;
        let (kernel, initramfs) = self.images().map_err(|e| unavailable(e.into()))?;
        let info = xl_info(&self.xl)
            .await
            .map_err(|e| unavailable(format!("the toolstack does not answer: {e}")))?;
        let virt_caps = info.get("virt_caps").cloned().unwrap_or_default();
        if ty == DomainType::Pvh && !virt_caps.split_whitespace().any(|c| c == "hvm") {
            return Err(unavailable(format!("PVH domains need HVM support, which this Xen lacks (virt_caps: {virt_caps}); unset {TYPE_ENV} for PV")));
        }
        if !process_running(&self.root, "xenconsoled") {
            return Err(unavailable(
                "xenconsoled is not running: guests would have no console, so no control channel"
                    .into(),
            ));
        }
        for tool in [&self.xenstore_read, &"ip".to_string()] {
            if find_program(tool).is_none() {
                return Err(unavailable(format!("{tool} is not on PATH")));
            }
        }
        if let Some(sys) = &self.system {
            if find_program(&self.qemu_img).is_none() {
                return Err(unavailable(format!(
                    "system image {}: {} is not on PATH (it makes each guest's overlay)",
                    sys.name, self.qemu_img
                )));
            }
            if !qdisk_backend_running(&self.root) {
                return Err(unavailable(format!("system image {}: no QEMU serves Xen block devices in dom0 (`qemu-system-i386 -xen-domid 0 -xen-attach …`, Debian's qemu-system-xen, started by xencommons), so no domU would get its root disk", sys.name)));
            }
        }
        let get = |k: &str| info.get(k).map(String::as_str).unwrap_or("?");
        Ok(format!(
            "Xen {} ({caps}; virt_caps: {virt_caps}), dom0 kernel {}; {} domUs; {} of {} MiB free; kernel {}; initramfs {}",
            get("xen_version"),
            get("release"),
            ty.name(),
            get("free_memory"),
            get("total_memory"),
            kernel.path.display(),
            initramfs.display()
        ))
    }

    /// What Xen has handed out (dom0's allocation and every domU's RAM): dom0's
    /// /proc/meminfo sees none of a domU's memory.
    async fn unseen_used_kib(&self) -> Result<u64, super::UnseenError> {
        let info = xl_info(&self.xl).await.map_err(XenMemoryError::from)?;
        Ok(xen_used_kib(&info).ok_or(XenMemoryError::Incomplete)?)
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        let (kernel, initramfs) = self.images().map_err(|e| prepare("xen images", e))?;
        let ty = DomainType::from_env().map_err(|e| prepare("the domain type", e))?;
        self.launch_domain(ty, kernel, initramfs, spec).await
    }

    async fn stop(&self, guest: &mut GuestProcess, grace: Duration) -> Exit {
        self.stop_domain(guest, grace).await
    }
}

/// Whether dom0's QEMU for Xen backends (`-xen-domid 0 -xen-attach`, which serves `qdisk`
/// devices) runs (per /proc under `root`).
fn qdisk_backend_running(root: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(root.join("proc")) else { return false };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| {
            let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
            args.contains(&&b"-xen-attach"[..])
                && args.windows(2).any(|w| w[0] == b"-xen-domid" && w[1] == b"0")
        })
}

/// Whether a process named `comm` runs (per /proc under `root`).
fn process_running(root: &Path, comm: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(root.join("proc")) else { return false };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .any(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm))
}
