//! `xen`: Xen domUs started with the `xl` toolstack from dom0, the paper's Xen row. hostd
//! runs in dom0; each guest is a PV domain (or PVH, where the hypervisor has HVM support and
//! `VIRTBENCH_XEN_TYPE=pvh` asks for it) booting the `kernel-xen` vmlinux with the agent's
//! initramfs.
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
//! - Teardown: after the agent's power-off the domain destroys itself and `xl create -F`
//!   exits; whatever is still there is `xl destroy`ed before the processes are killed.
//! - Memory: a domain's RAM is Xen's, not dom0's, so it is not in dom0's /proc/meminfo nor
//!   in any dom0 cgroup; [`xl_list`] and [`xl_info`] give Xen's own accounting (docs/xen.md).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::vmm::{check_file, guest_mac, kernel_cmdline, Staging};
use super::{
    join_cgroup_in_child, stop_and_release, Backend, BackendKind, BackendOptions, Exit, GuestNet,
    GuestProcess, GuestSpec, Images, Kernel, LaunchError, LaunchFiles, Launched, Proc, Resource,
    Unavailable, UnavailableReason,
};
use crate::netlab;

/// The data disk inside a domU (the first Xen virtual block device).
pub const GUEST_DISK: &str = "/dev/xvda";
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
    pub fn name(self) -> &'static str {
        match self {
            DomainType::Pv => "pv",
            DomainType::Pvh => "pvh",
        }
    }

    /// From the value of [`TYPE_ENV`] (unset or empty: PV, the paper's Xen).
    pub fn parse(v: Option<&str>) -> Result<Self, String> {
        match v {
            None | Some("") | Some("pv") => Ok(DomainType::Pv),
            Some("pvh") => Ok(DomainType::Pvh),
            Some(other) => Err(format!("{TYPE_ENV}={other:?}: expected pv or pvh")),
        }
    }

    fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var(TYPE_ENV).ok().as_deref())
    }
}

pub struct Xen {
    kernel: Option<Kernel>,
    initramfs: Option<PathBuf>,
    /// The toolstack and xenstore programs (names on PATH, or paths).
    xl: String,
    xenstore_read: String,
    /// Where `/sys`, `/proc` and `/dev` are looked for (`/` but in tests).
    root: PathBuf,
    /// A system image asked for: refused at launch (see there).
    system: Option<super::rootdisk::System>,
}

impl Xen {
    pub fn new(images: &Images, _opts: &BackendOptions) -> Self {
        Self {
            kernel: images.kernel_xen.clone(),
            initramfs: images.initramfs.clone(),
            xl: "xl".into(),
            xenstore_read: "xenstore-read".into(),
            root: PathBuf::from("/"),
            system: images.system.clone(),
        }
    }

    pub fn with_images(&self, images: &Images) -> Self {
        Self {
            kernel: images.kernel_xen.clone(),
            initramfs: images.initramfs.clone(),
            xl: self.xl.clone(),
            xenstore_read: self.xenstore_read.clone(),
            root: self.root.clone(),
            system: images.system.clone(),
        }
    }

    fn images(&self) -> Result<(&Kernel, &Path), String> {
        let kernel = self.kernel.as_ref().ok_or("no Xen domU kernel (kernel-xen) configured")?;
        check_file("Xen domU kernel", &kernel.path)?;
        let initramfs = self.initramfs.as_deref().ok_or("no initramfs configured")?;
        check_file("initramfs", initramfs)?;
        Ok((kernel, initramfs))
    }
}

/// Why this system is not a working dom0 of a Xen host ([`check_dom0`]).
#[derive(Debug, Clone, thiserror::Error)]
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

/// A program on PATH (or a path), if it exists.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Runs `program args` and returns its standard output; the error names the command and
/// quotes what it said.
async fn run_tool(program: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let what = format!("{program} {}", args.join(" "));
    let out = tokio::time::timeout(
        timeout,
        tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("`{what}` did not finish within {} s", timeout.as_secs()))?
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{program} not found"),
        _ => format!("cannot run {program}: {e}"),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("`{what}` failed ({}): {}", out.status, err.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `xl info` as key → value.
pub fn parse_xl_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Memory Xen has handed out (to dom0 and every domU, with its own per-domain overhead),
/// KiB, from `xl info`: on a Xen host, the part of the machine's used memory that dom0's
/// /proc/meminfo does not see.
pub fn xen_used_kib(info: &BTreeMap<String, String>) -> Option<u64> {
    let mib = |k: &str| info.get(k)?.parse::<u64>().ok();
    Some(mib("total_memory")?.saturating_sub(mib("free_memory")?) * 1024)
}

pub async fn xl_info(xl: &str) -> Result<BTreeMap<String, String>, String> {
    Ok(parse_xl_info(&run_tool(xl, &["info"], Duration::from_secs(60)).await?))
}

/// One line of `xl list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DomainInfo {
    pub name: String,
    pub id: u32,
    /// Memory Xen gives the domain, MiB.
    pub mem_mib: u64,
    pub vcpus: u32,
    pub state: String,
}

pub fn parse_xl_list(text: &str) -> Result<Vec<DomainInfo>, String> {
    let mut out = Vec::new();
    for l in
        text.lines().skip_while(|l| !l.starts_with("Name")).skip(1).filter(|l| !l.trim().is_empty())
    {
        let w: Vec<&str> = l.split_whitespace().collect();
        let bad = || format!("unexpected `xl list` line {l:?}");
        if w.len() < 6 {
            return Err(bad());
        }
        // Name ID Mem VCPUs State Time(s): a name cannot contain blanks, the rest are fixed.
        out.push(DomainInfo {
            name: w[0].to_string(),
            id: w[1].parse().map_err(|_| bad())?,
            mem_mib: w[2].parse().map_err(|_| bad())?,
            vcpus: w[3].parse().map_err(|_| bad())?,
            state: w[4].to_string(),
        });
    }
    Ok(out)
}

pub async fn xl_list(xl: &str) -> Result<Vec<DomainInfo>, String> {
    parse_xl_list(&run_tool(xl, &["list"], Duration::from_secs(60)).await?)
}

/// The Xen domain name of a guest: unique on the host across runs.
pub fn domain_name(spec: &GuestSpec) -> String {
    format!("vb-{}-{}", spec.run, spec.name)
}

/// A value for an xl config string. xl's parser has escapes, but nothing hostd generates
/// needs them: a value that would is refused instead (naming it).
fn xl_string(what: &str, v: &str) -> Result<String, LaunchError> {
    if v.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(LaunchError::Prepare {
            what: what.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{v:?}: quotes, backslashes and control characters cannot go in an xl config"
                ),
            ),
        });
    }
    Ok(format!("\"{v}\""))
}

/// The `xl` domain config of one guest. `vif_script` is the hotplug script for its vif
/// (when it has a network).
pub fn domain_config(
    ty: DomainType,
    kernel: &Kernel,
    initramfs: &Path,
    spec: &GuestSpec,
    vif_script: Option<&Path>,
) -> Result<String, LaunchError> {
    let mut c = String::new();
    let mut line = |k: &str, v: String| c.push_str(&format!("{k} = {v}\n"));
    line("name", xl_string("domain name", &domain_name(spec))?);
    line("type", format!("\"{}\"", ty.name()));
    line("kernel", xl_string("kernel path", &kernel.path.display().to_string())?);
    line("ramdisk", xl_string("initramfs path", &initramfs.display().to_string())?);
    line(
        "cmdline",
        xl_string(
            "kernel command line",
            &kernel_cmdline(&kernel.cmdline, &[], &[], CTL_TTY, spec).join(" "),
        )?,
    );
    // maxmem = memory: no ballooning, the domain has exactly what was asked.
    line("memory", spec.mem_mib.to_string());
    line("maxmem", spec.mem_mib.to_string());
    line("vcpus", spec.vcpus.to_string());
    if let Some(cpus) = spec.limits.cpuset {
        // The physical CPUs the vCPUs may run on: Xen's counterpart of the cgroup cpuset.
        line("cpus", xl_string("cpuset", cpus)?);
    }
    for ev in ["on_poweroff", "on_reboot", "on_crash"] {
        line(ev, "\"destroy\"".into());
    }
    if let (Some(net), Some(script)) = (&spec.net, vif_script) {
        let script = script.display().to_string();
        if script.contains(',') {
            return Err(LaunchError::Prepare {
                what: script,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a vif script path cannot contain a comma",
                ),
            });
        }
        line(
            "vif",
            format!(
                "[ {} ]",
                xl_string("vif", &format!("mac={},script={script}", guest_mac(net.addr)))?
            ),
        );
    }
    if let Some(disk) = &spec.data_disk {
        // target= goes last: everything after it is the path, commas included.
        line(
            "disk",
            format!(
                "[ {} ]",
                xl_string(
                    "disk",
                    &format!(
                        "format=raw,vdev=xvda,access=ro,backendtype=qdisk,direct-io-safe,target={}",
                        disk.display()
                    )
                )?
            ),
        );
    }
    Ok(c)
}

/// The domain name in a config written by [`domain_config`].
pub fn config_domain_name(cfg: &str) -> Option<String> {
    cfg.lines().find_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"').map(String::from))
}

/// A shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The vif hotplug script of one guest. libxl runs it with `online` when the domain's
/// vif exists (netback's name in `$vif`) and `offline` when it goes. It moves the vif into
/// the fleet namespace under the guest's link name and onto the bridge; the link goes away
/// with the domain. `ip` is iproute2's (by path: a busybox shell would run its own applet).
pub fn vif_script(ip: &Path, net: &GuestNet) -> String {
    let ip = sh_quote(&ip.display().to_string());
    let ns = sh_quote(&net.fleet.netns);
    let link = sh_quote(&net.link);
    format!(
        "#!/bin/sh\n\
         # Written by hostd's xen backend; run by libxl for the guest's vif.\n\
         case \"$1\" in\n\
         online|add)\n    \
             {ip} link set dev \"$vif\" netns {ns} &&\n    \
             {ip} -n {ns} link set dev \"$vif\" name {link} &&\n    \
             {ip} -n {ns} link set dev {link} master {br} up ;;\n\
         esac\n",
        br = sh_quote(netlab::BRIDGE)
    )
}

/// The domid in `xl create`'s "Waiting for domain NAME (domid N) to die" line.
pub fn created_domid(xl_output: &str) -> Option<u32> {
    xl_output.lines().find_map(|l| {
        let rest = l.strip_prefix("Waiting for domain ")?;
        rest.split_once("(domid ")?.1.split_once(')')?.0.parse().ok()
    })
}

/// The guest's console log: xl's output and everything read from the console, up to
/// [`LOG_CAP`] bytes (then it says so once and stops growing).
#[derive(Clone)]
struct Log(Arc<Mutex<(std::fs::File, u64)>>);

impl Log {
    fn append(&self, data: &[u8]) {
        let Ok(mut g) = self.0.lock() else { return };
        let (f, written) = &mut *g;
        if *written >= LOG_CAP {
            return;
        }
        let take = data.len().min((LOG_CAP - *written) as usize);
        let _ = f.write_all(&data[..take]);
        *written += take as u64;
        if *written >= LOG_CAP {
            let _ = f.write_all(b"\n[hostd: console log full, not logging more]\n");
        }
    }
}

/// A tty in raw mode, non-blocking: the dom0 end of a domain's console (a pty slave).
pub struct RawTty(AsyncFd<OwnedFd>);

impl RawTty {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        let fd = OwnedFd::from(f);
        // Raw (xenconsoled sets its end so, but the line discipline is the slave's). No
        // flush: the agent's hello may already be waiting.
        let mut t = nix::sys::termios::tcgetattr(&fd).map_err(std::io::Error::from)?;
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(&fd, nix::sys::termios::SetArg::TCSANOW, &t)
            .map_err(std::io::Error::from)?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until dropped, so the
        // descriptor stays open and unchanged for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(RawTty(fd))
    }
}

impl RawTty {
    /// Waits until everything written has left (before a power-off cuts it short).
    pub fn drain(&self) -> std::io::Result<()> {
        nix::sys::termios::tcdrain(self.0.get_ref()).map_err(std::io::Error::from)
    }
}

impl AsyncRead for RawTty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.as_raw_fd(), unfilled).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The master closed (xenconsoled let go of the dead domain): end of stream.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for RawTty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Copies what passes through a reader into the console log.
struct Tee<R> {
    inner: R,
    log: Log,
}

impl<R: AsyncRead + Unpin> AsyncRead for Tee<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            self.log.append(new);
        }
        Poll::Ready(Ok(()))
    }
}

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
        let prep = |what: &str, e: std::io::Error| LaunchError::Prepare {
            what: what.to_string(),
            source: e,
        };
        let invalid = |what: &str, m: String| prep(what, std::io::Error::other(m));
        let mut st = Staging::new(spec)?;
        let script = match &spec.net {
            Some(net) => {
                let ip = find_program("ip").ok_or_else(|| {
                    invalid("the vif hotplug script", "iproute2's ip is not on PATH".into())
                })?;
                let path = spec.workdir.join("vif-hotplug");
                std::fs::write(&path, vif_script(&ip, net))
                    .and_then(|_| {
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    })
                    .map_err(|e| prep(&path.display().to_string(), e))?;
                // The link disappears with the domain; listed so a half-started guest's goes too.
                st.resources.push(Resource::Link {
                    netns: net.fleet.netns.clone(),
                    name: net.link.clone(),
                });
                Some(path)
            }
            None => None,
        };
        let cfg_path = spec.workdir.join("domain.cfg");
        let cfg = domain_config(ty, kernel, initramfs, spec, script.as_deref())?;
        std::fs::write(&cfg_path, &cfg).map_err(|e| prep(&cfg_path.display().to_string(), e))?;
        let log_path = spec.workdir.join("console.log");
        let log = Log(Arc::new(Mutex::new((st.log_file(&log_path)?, 0))));
        st.make_cgroup(spec)?;

        // xl's stdout and stderr: one pipe, read here (into the log, and for the domid).
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| prep("xl's output pipe", e.into()))?;
        let wr2 = wr.try_clone().map_err(|e| prep("xl's output pipe", e))?;
        let mut cmd = tokio::process::Command::new(&self.xl);
        cmd.arg("create")
            .arg("-F")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(wr))
            .stderr(Stdio::from(wr2))
            .current_dir(&spec.workdir)
            // Its own group: a Ctrl-C on hostd's terminal must not reach it before hostd
            // tears the guests down in order.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cg) = &st.cgroup {
            join_cgroup_in_child(&mut cmd, cg);
        }
        let name = domain_name(spec);
        let mut child = cmd
            .spawn()
            .map_err(|source| LaunchError::Spawn { program: self.xl.clone(), source })?;
        drop(cmd); // closes our copies of the pipe's write end: EOF comes when xl exits
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
                "`xl create` exited ({status}) before the domain ran: {}",
                log_tail(&log_path)
            )));
        };

        let tty = self.console_tty(domid, &mut child).await.map_err(LaunchError::Channel)?;
        let pty =
            RawTty::open(Path::new(&tty)).map_err(|e| prep(&format!("console pty {tty}"), e))?;
        let (reader, writer) = tokio::io::split(pty);
        guard.armed = false;
        Ok(Launched {
            reader: Box::new(Tee { inner: reader, log }),
            writer: Box::new(writer),
            guest: st.finish(spec, Proc::Child(child), Some(log_path)),
        })
    }

    /// The pty xenconsoled made for `domid`, once it has named it in xenstore.
    async fn console_tty(
        &self,
        domid: u32,
        xl: &mut tokio::process::Child,
    ) -> Result<String, String> {
        let key = format!("/local/domain/{domid}/console/tty");
        let end = tokio::time::Instant::now() + TTY_DEADLINE;
        loop {
            if let Ok(Some(status)) = xl.try_wait() {
                return Err(format!("domain {domid} ended ({status} from `xl create`) before its console was opened"));
            }
            match run_tool(&self.xenstore_read, &[&key], Duration::from_secs(10)).await {
                Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
                Err(e) if e.contains("not found") || e.contains("cannot run") => return Err(e),
                r => {
                    if tokio::time::Instant::now() >= end {
                        let why = r.err().unwrap_or_else(|| "empty".into());
                        return Err(format!("xenconsoled did not name domain {domid}'s console in {} s ({key}: {why}); is xenconsoled running?", TTY_DEADLINE.as_secs()));
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
                Proc::Child(c) => c.try_wait().ok().flatten().is_some_and(|s| s.success()),
                _ => false,
            };
        let mut destroyed = false;
        if let (Some(name), false) = (&name, died) {
            match run_tool(&self.xl, &["destroy", name], Duration::from_secs(60)).await {
                Ok(_) => destroyed = !ended,
                // xl says "… is an invalid domain identifier" for a domain already gone.
                Err(e) if e.contains("invalid domain identifier") => {}
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
        LaunchFiles {
            images: self
                .kernel
                .iter()
                .map(|k| k.path.clone())
                .chain(self.initramfs.clone())
                .collect(),
            programs: vec![self.xl.clone()],
            data: Vec::new(),
        }
    }

    /// dom0 of a Xen host (hypervisor, xenfs, privcmd), the images, `xl info` answering
    /// (xenstored runs), xenconsoled running, and the tools the guests need.
    async fn probe(&self) -> Result<String, Unavailable> {
        let unavailable = |reason: String| Unavailable { backend: "xen", reason: reason.into() };
        let caps = check_dom0(&self.root)
            .map_err(|e| Unavailable { backend: "xen", reason: UnavailableReason::Dom0(e) })?;
        let ty = DomainType::from_env().map_err(unavailable)?;
        let (kernel, initramfs) = self.images().map_err(unavailable)?;
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
    async fn unseen_used_kib(&self) -> Result<u64, String> {
        let info = xl_info(&self.xl).await?;
        xen_used_kib(&info).ok_or_else(|| "`xl info` lacks total_memory or free_memory".to_string())
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        let not_ready = |reason: String| LaunchError::Prepare {
            what: "xen images".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, reason),
        };
        let (kernel, initramfs) = self.images().map_err(not_ready)?;
        if let Some(sys) = &self.system {
            // Refused rather than half-supported: the domU kernel would not find its root.
            return Err(LaunchError::Prepare {
                what: format!("system image {} on xen", sys.name),
                source: std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "the Xen domU kernel (kernel-xen, recipes/kernels/xen.config) is built without ext4, so it cannot mount a system image's root; boot system images on uml, qemu-microvm, qemu-full, firecracker, ns or oci",
                ),
            });
        }
        let ty = DomainType::from_env().map_err(|e| LaunchError::Prepare {
            what: "the domain type".into(),
            source: std::io::Error::other(e),
        })?;
        self.launch_domain(ty, kernel, initramfs, spec).await
    }

    async fn stop(&self, guest: &mut GuestProcess, grace: Duration) -> Exit {
        self.stop_domain(guest, grace).await
    }
}

/// Whether a process named `comm` runs (per /proc under `root`).
fn process_running(root: &Path, comm: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(root.join("proc")) else { return false };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .any(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    use crate::backend::test_spec as spec;

    fn kernel() -> Kernel {
        Kernel { path: "/k/vmlinux-xen".into(), cmdline: "console=hvc0 quiet panic=-1".into() }
    }

    #[test]
    fn pv_config_with_network_and_disk() {
        let c = domain_config(
            DomainType::Pv,
            &kernel(),
            Path::new("/i/initramfs.cpio.gz"),
            &spec(true, true),
            Some(Path::new("/run/virtbench/r1/g1/vif-hotplug")),
        )
        .unwrap();
        let expect = "\
name = \"vb-r1-g1\"
type = \"pv\"
kernel = \"/k/vmlinux-xen\"
ramdisk = \"/i/initramfs.cpio.gz\"
cmdline = \"console=hvc0 quiet panic=-1 vb.ctl=tty:/dev/hvc0 vb.hostname=g1 vb.net=eth0=10.211.0.3/16\"
memory = 192
maxmem = 192
vcpus = 2
on_poweroff = \"destroy\"
on_reboot = \"destroy\"
on_crash = \"destroy\"
vif = [ \"mac=02:76:62:d3:00:03,script=/run/virtbench/r1/g1/vif-hotplug\" ]
disk = [ \"format=raw,vdev=xvda,access=ro,backendtype=qdisk,direct-io-safe,target=/store/disk,1.img\" ]
";
        assert_eq!(c, expect);
        assert_eq!(config_domain_name(&c).as_deref(), Some("vb-r1-g1"));
    }

    #[test]
    fn pvh_config_without_network_or_disk_but_pinned() {
        let mut s = spec(false, false);
        s.limits.cpuset = Some("0");
        let c = domain_config(DomainType::Pvh, &kernel(), Path::new("/i"), &s, None).unwrap();
        assert!(c.contains("type = \"pvh\"\n"), "{c}");
        assert!(c.contains("cpus = \"0\"\n"), "{c}");
        assert!(!c.contains("\nvif =") && !c.contains("\ndisk =") && !c.contains("vb.net="), "{c}");
    }

    #[test]
    fn values_xl_cannot_carry_are_refused_by_name() {
        let s = GuestSpec { data_disk: Some("/a/\"b\".img".into()), ..spec(false, false) };
        let e = domain_config(DomainType::Pv, &kernel(), Path::new("/i"), &s, None).unwrap_err();
        assert!(
            e.to_string().contains("preparing disk") && e.to_string().contains("\\\"b\\\""),
            "{e}"
        );
        let e = domain_config(
            DomainType::Pv,
            &kernel(),
            Path::new("/i"),
            &spec(true, false),
            Some(Path::new("/w,x/vif")),
        )
        .unwrap_err();
        assert!(e.to_string().contains("comma"), "{e}");
    }

    #[test]
    fn vif_script_moves_the_vif_onto_the_fleet_bridge() {
        let s = spec(true, false);
        let text = vif_script(Path::new("/usr/sbin/ip"), s.net.as_ref().unwrap());
        assert!(text.starts_with("#!/bin/sh\n"));
        assert!(text.contains("'/usr/sbin/ip' link set dev \"$vif\" netns 'vb-r1' &&"), "{text}");
        assert!(
            text.contains("'/usr/sbin/ip' -n 'vb-r1' link set dev \"$vif\" name 'vbl1' &&"),
            "{text}"
        );
        assert!(text.contains("link set dev 'vbl1' master 'vbbr0' up ;;"), "{text}");
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn parses_xl_output() {
        assert_eq!(created_domid("Parsing config from /w/domain.cfg\nWaiting for domain vb-r1-g0 (domid 12) to die [pid 345]\n"), Some(12));
        assert_eq!(created_domid("libxl: error: …\n"), None);
        let l = parse_xl_list(
            "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
             Domain-0                                     0   512     1     r-----      49.9\n\
             vb-t1-g1                                     1   128     1     -b----      28.5\n",
        )
        .unwrap();
        assert_eq!(
            l[1],
            DomainInfo {
                name: "vb-t1-g1".into(),
                id: 1,
                mem_mib: 128,
                vcpus: 1,
                state: "-b----".into()
            }
        );
        assert!(parse_xl_list("Name ID\nx y z\n").is_err());
        let i = parse_xl_info("host                   : dom0\nvirt_caps              : pv gnttab-v1\nxen_commandline        : a=b c\n");
        assert_eq!(i["virt_caps"], "pv gnttab-v1");
        assert_eq!(i["xen_commandline"], "a=b c");
        let i = parse_xl_info("total_memory           : 2047\nfree_memory            : 1128\n");
        assert_eq!(xen_used_kib(&i), Some(919 * 1024));
        assert_eq!(xen_used_kib(&parse_xl_info("total_memory : 1\n")), None);
    }

    #[test]
    fn dom0_check_says_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let e = check_dom0(r).unwrap_err();
        assert!(
            e.not_dom0() && e.to_string().starts_with("not dom0 of a Xen host: no Xen hypervisor"),
            "{e}"
        );
        std::fs::create_dir_all(r.join("sys/hypervisor/properties")).unwrap();
        std::fs::write(r.join("sys/hypervisor/type"), "kvm\n").unwrap();
        let e = check_dom0(r).unwrap_err();
        assert!(e.not_dom0() && e.to_string().contains("runs on a kvm hypervisor"), "{e}");
        std::fs::write(r.join("sys/hypervisor/type"), "xen\n").unwrap();
        // A dom0 missing a piece is not "not dom0": the Xen lab does not stand in for it.
        let e = check_dom0(r).unwrap_err();
        assert!(!e.not_dom0() && e.to_string().contains("mount -t xenfs"), "{e}");
        std::fs::create_dir_all(r.join("proc/xen")).unwrap();
        std::fs::write(r.join("proc/xen/capabilities"), "").unwrap();
        let e = check_dom0(r).unwrap_err();
        assert!(e.not_dom0() && e.to_string().contains("is a Xen domU"), "{e}");
        std::fs::write(r.join("proc/xen/capabilities"), "control_d\n").unwrap();
        let e = check_dom0(r).unwrap_err();
        assert!(!e.not_dom0() && e.to_string().contains("xen-privcmd"), "{e}");
        std::fs::create_dir_all(r.join("dev/xen")).unwrap();
        std::fs::write(r.join("dev/xen/privcmd"), "").unwrap();
        std::fs::write(
            r.join("sys/hypervisor/properties/capabilities"),
            "xen-3.0-x86_64 hvm-3.0-x86_64\n",
        )
        .unwrap();
        assert_eq!(check_dom0(r).unwrap(), "xen-3.0-x86_64 hvm-3.0-x86_64");
    }

    /// A stand-in toolstack: `xl create -F` announces domain 7 and stays until the domain is
    /// "gone" (a file), as the real one stays until the domain dies; `xl destroy` makes it
    /// gone, or says the domain is invalid if it already is; every destroy is logged.
    /// `xenstore-read` names the test's pty as domain 7's console.
    fn fake_tools(dir: &Path, create_fails: bool) {
        let create = if create_fails {
            "echo 'libxl: error: libxl_create.c:1921:domcreate_attach_devices: Domain 7:unable to add vif devices' >&2; exit 3"
        } else {
            "name=$(sed -n 's/^name = \"\\(.*\\)\"$/\\1/p' \"$3\")\n  echo \"Parsing config from $3\"\n  echo \"Waiting for domain $name (domid 7) to die [pid $$]\"\n  while [ ! -e \"$d/gone\" ]; do sleep 0.02; done"
        };
        let xl = format!(
            "#!/bin/sh\nd=$(dirname \"$0\")\ncase \"$1\" in\ninfo)\n  printf 'total_memory           : 2047\\nfree_memory            : 1512\\n' ;;\ncreate)\n  {create} ;;\ndestroy)\n  echo \"destroy $2\" >> \"$d/calls\"\n  if [ -e \"$d/gone\" ]; then echo \"$2 is an invalid domain identifier (rc=-6)\" >&2; exit 1; fi\n  touch \"$d/gone\" ;;\nesac\n"
        );
        let xsr = "#!/bin/sh\n[ \"$1\" = /local/domain/7/console/tty ] || exit 1\ncat \"$(dirname \"$0\")/tty\"\n";
        for (name, text) in [("xl", xl.as_str()), ("xenstore-read", xsr)] {
            std::fs::write(dir.join(name), text).unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
    }

    fn fake_xen(dir: &Path) -> (Xen, GuestSpec) {
        std::fs::write(dir.join("vmlinux"), "k").unwrap();
        std::fs::write(dir.join("initramfs"), "i").unwrap();
        let x = Xen {
            kernel: Some(Kernel { path: dir.join("vmlinux"), cmdline: "console=hvc0".into() }),
            initramfs: Some(dir.join("initramfs")),
            xl: dir.join("xl").display().to_string(),
            xenstore_read: dir.join("xenstore-read").display().to_string(),
            root: PathBuf::from("/"),
            system: None,
        };
        let s = GuestSpec { workdir: dir.join("work/g1"), ..spec(false, false) };
        (x, s)
    }

    /// Launch opens the console xenstore names and copies what it reads into the log;
    /// stopping a guest that did not power off destroys its domain and removes its files.
    #[tokio::test]
    async fn launch_then_teardown_of_a_running_domain() {
        let d = tempfile::tempdir().unwrap();
        fake_tools(d.path(), false);
        let pty = nix::pty::openpty(None, None).unwrap();
        std::fs::write(
            d.path().join("tty"),
            nix::unistd::ttyname(&pty.slave).unwrap().as_os_str().as_encoded_bytes(),
        )
        .unwrap();
        let (x, s) = fake_xen(d.path());
        let mut l = x.launch(&s).await.unwrap();
        let cfg = std::fs::read_to_string(s.workdir.join("domain.cfg")).unwrap();
        assert_eq!(config_domain_name(&cfg).as_deref(), Some("vb-r1-g1"));
        nix::unistd::write(&pty.master, b"guest says hi").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !String::from_utf8_lossy(&got).contains("guest says hi") {
            let n = tokio::time::timeout(Duration::from_secs(5), l.reader.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "console closed early");
            got.extend_from_slice(&buf[..n]);
        }
        let log = std::fs::read_to_string(s.workdir.join("console.log")).unwrap();
        assert!(log.contains("Waiting for domain vb-r1-g1 (domid 7) to die"), "{log}");
        assert!(log.contains("guest says hi"), "{log}");
        tokio::io::AsyncWriteExt::write_all(&mut l.writer, b"to the guest").await.unwrap();
        let mut back = [0u8; 12];
        nix::unistd::read(pty.master.as_raw_fd(), &mut back).unwrap();
        assert_eq!(&back, b"to the guest");

        assert_eq!(x.stop(&mut l.guest, Duration::ZERO).await, Exit::Killed);
        assert_eq!(std::fs::read_to_string(d.path().join("calls")).unwrap(), "destroy vb-r1-g1\n");
        assert!(l.guest.proc.has_exited(), "the monitoring xl ended with its domain");
        assert!(!s.workdir.exists(), "work directory released");
    }

    /// A guest that powered off (its domain gone, xl exited 0) stops cleanly, with nothing
    /// to destroy.
    #[tokio::test]
    async fn teardown_of_a_powered_off_domain_is_clean() {
        let d = tempfile::tempdir().unwrap();
        fake_tools(d.path(), false);
        let pty = nix::pty::openpty(None, None).unwrap();
        std::fs::write(
            d.path().join("tty"),
            nix::unistd::ttyname(&pty.slave).unwrap().as_os_str().as_encoded_bytes(),
        )
        .unwrap();
        let (x, s) = fake_xen(d.path());
        let mut l = x.launch(&s).await.unwrap();
        std::fs::write(d.path().join("gone"), "").unwrap();
        assert_eq!(x.stop(&mut l.guest, Duration::from_secs(10)).await, Exit::Clean);
        assert!(!d.path().join("calls").exists(), "xl exited 0, so the domain is gone: no destroy");
        assert!(!s.workdir.exists());
    }

    /// A failed `xl create` fails the launch with xl's own error and leaves nothing.
    #[tokio::test]
    async fn failed_create_reports_xl_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        fake_tools(d.path(), true);
        let (x, s) = fake_xen(d.path());
        let e = x.launch(&s).await.err().expect("create fails");
        let e = e.to_string();
        assert!(e.contains("`xl create` exited (exit status: 3) before the domain ran"), "{e}");
        assert!(e.contains("unable to add vif devices"), "{e}");
        assert!(!s.workdir.exists(), "work directory released");
    }

    /// M_used on a Xen host counts what Xen handed out, which dom0's meminfo does not see.
    #[tokio::test]
    async fn memory_dom0_cannot_see_comes_from_xl_info() {
        let d = tempfile::tempdir().unwrap();
        fake_tools(d.path(), false);
        let (x, _) = fake_xen(d.path());
        assert_eq!(x.unseen_used_kib().await.unwrap(), (2047 - 1512) * 1024);
        let broken = Xen { xl: d.path().join("no-xl").display().to_string(), ..x };
        assert!(broken.unseen_used_kib().await.is_err(), "no toolstack: an error, never 0");
    }

    #[test]
    fn domain_types() {
        assert_eq!(DomainType::parse(None).unwrap(), DomainType::Pv);
        assert_eq!(DomainType::parse(Some("")).unwrap(), DomainType::Pv);
        assert_eq!(DomainType::parse(Some("pvh")).unwrap(), DomainType::Pvh);
        assert!(DomainType::parse(Some("hvm")).unwrap_err().contains("expected pv or pvh"));
    }
}
