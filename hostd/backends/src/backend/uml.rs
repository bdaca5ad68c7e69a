//! `uml`: User-Mode Linux, the paper's UML row. The guest kernel is a host program (`linux`)
//! that runs guest processes as ptraced host processes; all of them share its process group
//! and cgroup.
//!
//! - Console: `con0` (the kernel console, /dev/console) writes to stderr, a pipe hostd reads
//!   into the capped console log (`crate::console`).
//! - Control channel: `con1=fd:3,fd:3` maps a socketpair end to guest `/dev/tty1`.
//! - Memory: `mem=<M>M` backed by a file in TMPDIR=/dev/shm (shmem: counted as used memory
//!   and charged to the guest's cgroup as it is touched). UML maps it page by page, so
//!   `vm.max_map_count` is raised to one mapping per guest page if lower.
//! - Disk: `ubd0r=<file>` (read-only), guest [`GUEST_DISK`].
//! - Network: `eth0=tuntap,<tap>,<mac>`; UML runs in the fleet namespace to open the tap.
//! - `umid=<name> uml_dir=<workdir>`: its pid file and mconsole socket stay in the workdir.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::killpg;
use nix::sys::signal::Signal::SIGKILL;
use nix::unistd::Pid;

use super::launch::{boot_images, tool_version, ImageError, LaunchGuard};
use super::rootdisk::System;
use super::vmm::{guest_mac, kernel_cmdline, probe_boot, probe_dir, probe_spec, spawn_vmm};
use super::{
    prepare, stop_and_release, Backend, BackendKind, BackendOptions, Exit, GuestProcess, GuestSpec,
    Images, Kernel, LaunchError, LaunchFiles, Launched, PrepareError, Proc, Resource, Unavailable,
};

/// The data disk inside a UML guest (ubd0).
pub const GUEST_DISK: &str = "/dev/ubda";
/// The guest tty of the control channel (con1).
pub const CTL_TTY: &str = "/dev/tty1";
/// The descriptor number UML finds the control socket on.
pub use super::vmm::CTL_FD;
/// Where UML's guest memory file goes: tmpfs, so the memory is shmem.
const MEMORY_DIR: &str = "/dev/shm";
const PROBE_DEADLINE: Duration = Duration::from_secs(20);

/// The UML backend: each guest a User-mode Linux kernel run as host processes.
pub struct Uml {
    kernel: Option<Kernel>,
    initramfs: Option<PathBuf>,
    system: Option<System>,
}

impl Uml {
    /// The backend over `images`.
    pub fn new(images: &Images, _opts: &BackendOptions) -> Self {
        Self {
            kernel: images.kernel_uml.clone(),
            initramfs: images.initramfs.clone(),
            system: images.system.clone(),
        }
    }

    /// The same backend over other images.
    pub fn with_images(&self, images: &Images) -> Self {
        Self::new(images, &BackendOptions::default())
    }

    fn images(&self) -> Result<(&Kernel, &Path), ImageError> {
        boot_images("UML kernel (linux)", self.kernel.as_ref(), self.initramfs.as_deref())
    }
}

/// UML's arguments (its kernel command line, one parameter per argument) for one guest.
pub fn uml_args(kernel: &Kernel, initramfs: &Path, spec: &GuestSpec) -> Vec<String> {
    let mut a = vec![
        format!("mem={}M", spec.mem_mib),
        format!("initrd={}", initramfs.display()),
        format!("umid={}", spec.name),
        format!("uml_dir={}", spec.workdir.display()),
        // Every console but these two discards; con0 output is stderr, its input nothing.
        "con=null".into(),
        "con0=null,fd:2".into(),
        format!("con1=fd:{CTL_FD},fd:{CTL_FD}"),
    ];
    if let Some(disk) = &spec.data_disk {
        // ubd has no O_DIRECT mode (its flags are r, s = O_SYNC, d, c): its reads go
        // through the host page cache, so hostd evicts the file before every measured read.
        a.push(format!("ubd0r={}", disk.display()));
    }
    if let Some(net) = &spec.net {
        a.push(format!("eth0=tuntap,{},{}", net.link, guest_mac(net.addr)));
    }
    a.extend(kernel_cmdline(&kernel.cmdline, &[], &[], &format!("tty:{CTL_TTY}"), spec));
    a
}

/// UML joins its arguments into one command line and splits ubd specs at commas, so paths
/// with blanks or commas cannot be expressed.
fn check_uml_path(p: &Path) -> Result<(), LaunchError> {
    let s = p.display().to_string();
    if s.contains(|c: char| c.is_whitespace() || c == ',') {
        return Err(LaunchError::Prepare {
            what: s,
            source: PrepareError::Invalid(
                "a path with blanks or commas cannot go on UML's command line".into(),
            ),
        });
    }
    Ok(())
}

const MAX_MAP_COUNT: &str = "/proc/sys/vm/max_map_count";

/// The memory-map count a UML guest of `mem_mib` may need: UML maps guest pages one by one
/// into its address-space processes, so a guest touching all its memory holds one mapping
/// per 4 KiB page; plus the kernel's default limit for everything else.
fn map_count_for(mem_mib: u32) -> u64 {
    mem_mib as u64 * 256 + 65_530
}

/// Raises `vm.max_map_count` to what a guest of `mem_mib` needs, if lower: at the default
/// (65530) a UML guest panicked ("UML ran out of memory on the host side") once its working
/// set passed about 256 MiB.
fn ensure_map_count(mem_mib: u32) -> Result<(), LaunchError> {
    let need = map_count_for(mem_mib);
    let now: u64 = std::fs::read_to_string(MAX_MAP_COUNT)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if now >= need {
        return Ok(());
    }
    std::fs::write(MAX_MAP_COUNT, need.to_string()).map_err(|e| {
        prepare(
            format!(
                "{MAX_MAP_COUNT} (raising it from {now} to {need} for a {mem_mib} MiB UML guest)"
            ),
            e,
        )
    })?;
    tracing::info!("raised vm.max_map_count from {now} to {need} for {mem_mib} MiB UML guests");
    Ok(())
}

async fn launch_uml(
    kernel: &Kernel,
    initramfs: &Path,
    spec: &GuestSpec,
    system: Option<&System>,
) -> Result<Launched, LaunchError> {
    for p in [
        Some(initramfs),
        Some(spec.workdir.as_path()),
        spec.data_disk.as_deref(),
        system.map(|s| s.ext4.as_path()),
    ]
    .into_iter()
    .flatten()
    {
        check_uml_path(p)?;
    }
    ensure_map_count(spec.mem_mib)?;
    if spec.vcpus > 1 {
        tracing::warn!(guest = %spec.name, "UML kernels are uniprocessor: {} vCPUs requested, 1 used", spec.vcpus);
    }
    let mut g = LaunchGuard::new(spec)?;
    // Released before the work directory (reverse order); UML removes it itself only on a
    // clean exit.
    g.hold(Resource::Dir { path: spec.workdir.join(&spec.name) });
    let mut args = uml_args(kernel, initramfs, spec);
    if let Some(sys) = system {
        // ubd1 (guest /dev/ubdb; the data disk stays ubd0): writes go to a COW file in the
        // work directory, which UML creates, or to the guest's private copy.
        args.push(sys.uml_arg(1, &spec.workdir));
        args.extend(sys.cmdline());
    }
    // Guest memory is a file under TMPDIR: tmpfs, so it counts as shmem.
    spawn_vmm(g, spec, &kernel.path, args, Path::new(MEMORY_DIR))
}

/// Stops a UML guest. UML's helper processes (the guest's address-space processes, I/O
/// threads) outlive a killed kernel process for a second or so. They share its process
/// group, which is killed while the kernel process is still unreaped (so the group id
/// cannot have been reused); the cgroup, if any, then catches anything else.
pub async fn stop_uml(guest: &mut GuestProcess, grace: Duration) -> Exit {
    // 0: already reaped; the group can no longer be named safely.
    let pid = guest.pid();
    if pid == 0 {
        return stop_and_release(guest, grace).await;
    }
    // Watches the exit through a pidfd, which does not reap: the tokio child stays
    // unreaped, and its pid keeps the group id, until stop_and_release. (A watcher dropped
    // before the exit kills the process, as the group kill below does anyway.)
    let ended = match Proc::from_pid(pid, false) {
        Ok(mut w) if grace.is_zero() => w.has_exited(),
        Ok(mut w) => tokio::time::timeout(grace, w.wait()).await.is_ok(),
        Err(_) => false,
    };
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, SIGKILL);
    // With a cgroup, stop_and_release waits until the group is empty: every member is dead.
    let counted = guest.cgroup.is_some();
    let exit = stop_and_release(guest, Duration::ZERO).await;
    // Killed members linger as zombies until whoever inherited them reaps them. That is
    // hostd itself for those orphaned while it was a child subreaper (an oci launch running
    // beside, in a mixed fleet or a test binary: see oci's `Subreaper`): nobody else would
    // ever reap those, so reap them here. Without a cgroup, also wait for the others' reaper
    // (signal 0 only checks, so a recycled group id would come to no harm).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        reap_adopted(group);
        if counted || killpg(group, None).is_err() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match (ended, grace.is_zero()) {
        // Ended within the grace period: the agent acknowledged the power-off before stop
        // was called, so even a guest already gone by now went cleanly.
        (true, false) => Exit::Clean,
        // Gone before stop was called without a grace period: its own exit status.
        (true, true) => exit,
        // The group kill above ended it.
        (false, _) => Exit::Killed,
    }
}

/// Reaps whichever dead members of process group `group` are hostd's children (adopted
/// ones: the kernel process itself is reaped by then). waitpid on a negative pid waits only
/// for this process's children in that group, so nobody else's child is touched.
fn reap_adopted(group: Pid) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let any_in_group = Pid::from_raw(-group.as_raw());
    while matches!(waitpid(any_in_group, Some(WaitPidFlag::WNOHANG)), Ok(s) if s != WaitStatus::StillAlive)
    {
    }
}

impl Backend for Uml {
    fn kind(&self) -> BackendKind {
        BackendKind::Uml
    }

    /// Kernel and initramfs present, the binary runs, /dev/shm is writable, and a tiny
    /// guest boots to the agent's hello (which catches a kernel that crashes on this host's
    /// FPU state size, as unpatched 6.12 UML does on AMX hosts).
    async fn probe(&self) -> Result<String, Unavailable> {
        let unavailable = |reason: String| Unavailable { backend: "uml", reason: reason.into() };
        let (kernel, initramfs) = self.images().map_err(|e| unavailable(e.to_string()))?;
        let version =
            tool_version(&kernel.path, &["--version"]).await.map_err(|e| unavailable(e.into()))?;
        tempfile::tempfile_in(MEMORY_DIR)
            .map_err(|e| unavailable(format!("{MEMORY_DIR} is not writable: {e}")))?;
        // Guest memory is allocated there as it is touched: a full tmpfs kills guests (SIGBUS).
        let free_mib = nix::sys::statvfs::statvfs(MEMORY_DIR)
            .map(|v| (v.blocks_available() * v.fragment_size()) >> 20)
            .unwrap_or(0);
        let dir = probe_dir("uml-probe").map_err(|e| unavailable(e.to_string()))?;
        let spec = probe_spec(dir.path(), "uml-probe");
        let launched = launch_uml(kernel, initramfs, &spec, None)
            .await
            .map_err(|e| unavailable(format!("probe guest: {e}")))?;
        let t = probe_boot(launched, "UML", PROBE_DEADLINE, None, |g, d| Box::pin(stop_uml(g, d)))
            .await
            .map_err(|e| unavailable(format!("probe guest did not boot: {e}")))?;
        Ok(format!(
            "UML {version} ({}), probe guest reached the agent's hello in {:.2} s; initramfs {}; guest memory in {MEMORY_DIR} ({free_mib} MiB free)",
            kernel.path.display(),
            t.as_secs_f64(),
            initramfs.display()
        ))
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        let (kernel, initramfs) = self
            .images()
            .map_err(|e| LaunchError::Prepare { what: "uml images".into(), source: e.into() })?;
        launch_uml(kernel, initramfs, spec, self.system.as_ref()).await
    }

    async fn stop(&self, guest: &mut GuestProcess, grace: Duration) -> Exit {
        stop_uml(guest, grace).await
    }

    /// The kernel is the program (a static binary); it reads the initramfs.
    fn launch_files(&self) -> LaunchFiles {
        let k = self.kernel.as_ref().map(|k| k.path.clone());
        LaunchFiles {
            images: k
                .iter()
                .cloned()
                .chain(self.initramfs.clone())
                .chain(self.system.as_ref().map(|s| s.ext4.clone()))
                .collect(),
            programs: k.iter().map(|p| p.display().to_string()).collect(),
            data: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::GuestNet;
    use crate::netlab::FleetNet;

    #[test]
    fn command_line() {
        let spec = GuestSpec {
            index: 0,
            name: "g0".into(),
            run: "r1".into(),
            vcpus: 1,
            mem_mib: 96,
            data_disk: Some("/store/disk.img".into()),
            workdir: "/run/virtbench/r1/g0".into(),
            net: Some(GuestNet {
                fleet: FleetNet::named("vb-r1"),
                addr: std::net::Ipv4Addr::new(10, 211, 0, 2),
                prefix: 16,
                link: "vbl0".into(),
            }),
            cgroup: None,
            limits: Default::default(),
            images: None,
        };
        let k = Kernel { path: "/k/linux".into(), cmdline: "loglevel=7".into() };
        let a = uml_args(&k, Path::new("/i/initramfs.cpio.gz"), &spec);
        let expect = [
            "mem=96M",
            "initrd=/i/initramfs.cpio.gz",
            "umid=g0",
            "uml_dir=/run/virtbench/r1/g0",
            "con=null",
            "con0=null,fd:2",
            "con1=fd:3,fd:3",
            "ubd0r=/store/disk.img",
            "eth0=tuntap,vbl0,02:76:62:d3:00:02",
            "loglevel=7",
            "vb.ctl=tty:/dev/tty1",
            "vb.hostname=g0",
            "vb.net=eth0=10.211.0.2/16",
        ];
        assert_eq!(a, expect);
    }

    #[test]
    fn paths_uml_cannot_carry_are_refused() {
        assert!(check_uml_path(Path::new("/a/b.img")).is_ok());
        let e = check_uml_path(Path::new("/a/b c.img")).unwrap_err();
        assert!(e.to_string().contains("/a/b c.img"), "{e}");
        assert!(check_uml_path(Path::new("/a/b,c.img")).is_err());
    }

    #[tokio::test]
    async fn probe_names_the_missing_kernel() {
        let images =
            Images { initramfs: Some("/nonexistent/initramfs".into()), ..Default::default() };
        let e = Uml::new(&images, &BackendOptions::default()).probe().await.unwrap_err();
        assert!(e.reason.to_string().contains("no UML kernel"), "{e}");
        let images = Images {
            kernel_uml: Some(Kernel { path: "/nonexistent/linux".into(), cmdline: String::new() }),
            ..images
        };
        let e = Uml::new(&images, &BackendOptions::default()).probe().await.unwrap_err();
        assert!(e.reason.to_string().contains("/nonexistent/linux"), "{e}");
    }
}
