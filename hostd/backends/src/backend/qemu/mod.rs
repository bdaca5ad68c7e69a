//! `qemu-microvm` and `qemu-full`: QEMU system emulation, the paper's paravirtualized
//! (Xen-like) and fully virtualized (VMware-like) rows.
//!
//! - microvm: `-M microvm` with virtio-mmio devices. Kernel console on the 8250 (ttyS0, the
//!   console log), control channel on a virtio-serial port named `vb.ctl`, disk virtio-blk
//!   (`/dev/vda`), NIC virtio-net.
//! - full: `-M q35` with emulated devices. ttyS0 is the console log, ttyS1 the control
//!   channel, an e1000 NIC, the disk on the chipset's AHCI controller (`/dev/sda`).
//!
//! Both boot the one x86_64 guest kernel, `kernel-pv`'s vmlinux, by its PVH entry (under q35
//! through QEMU's pvh.bin option ROM, after SeaBIOS). What makes q35 full virtualization is
//! the machine (firmware, ACPI, PCI, e1000, AHCI, no virtio device) and that the guest uses
//! no paravirtual interface: its command line has `nopv` ([`FULL_CMDLINE`]), as a
//! distribution kernel with PV support compiled in would run on an emulated PC.
//!
//! The control channel is one end of a socketpair given to QEMU as an already connected
//! socket chardev (`-chardev socket,fd=N`): no socket path (no 108-byte limit, nothing to
//! clean up) and no listen/connect race. The host sends nothing before the agent's hello,
//! as the guest tty echoes until the agent puts it in raw mode.
//!
//! Accelerator: unless configured, KVM is used only if a real boot under KVM reaches the
//! agent's hello ([`kvm_boot_probe`]); otherwise TCG. The decision is made once per backend.
//!
//! The launch plumbing the VMM backends share (staging and cleanup, tap attachment, the
//! kernel command line, probe boots) is in `vmm.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::launch::{boot_images, tool_version, vm_launch_files, ImageError, LaunchGuard};
use super::rootdisk::System;
use super::vmm::*;
use super::{
    stop_and_release, Backend, BackendKind, BackendOptions, Exit, GuestProcess, GuestSpec, Images,
    Kernel, LaunchError, LaunchFiles, Launched, Unavailable,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// QEMU's machine profile: a backend each.
pub enum Profile {
    /// `-M microvm`: virtio-mmio, no PCI, no firmware (qemu-microvm).
    Microvm,
    /// `-M q35`: a full PC with firmware and PCI, the guest kernel with `nopv` (qemu-full).
    Full,
}

impl Profile {
    /// The backend kind this profile is.
    pub fn kind(self) -> BackendKind {
        match self {
            Profile::Microvm => BackendKind::QemuMicrovm,
            Profile::Full => BackendKind::QemuFull,
        }
    }

    /// The agent's control channel in the guest (its `vb.ctl`). microvm's is a
    /// virtio-serial port, not a virtconsole: QEMU drops what a virtconsole cannot pass to
    /// the host socket at once (its hvc driver would stall the guest), so a reply larger
    /// than the socket's buffer while hostd was busy lost bytes; a port is throttled.
    pub fn ctl(self) -> &'static str {
        match self {
            Profile::Microvm => "vport:vb.ctl",
            Profile::Full => "tty:/dev/ttyS1",
        }
    }

    /// The data disk as the guest sees it.
    pub fn guest_disk(self) -> &'static str {
        match self {
            Profile::Microvm => "/dev/vda",
            Profile::Full => "/dev/sda",
        }
    }

    /// Both profiles boot the one x86_64 kernel; [`qemu_cmdline`] makes the difference.
    fn kernel(self, images: &Images) -> Option<Kernel> {
        images.kernel_pv.clone()
    }
}

/// How QEMU runs the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM: hardware virtualization.
    Kvm,
    /// `tsc_khz`: the host TSC rate, which is the rate a TCG guest's TSC ticks at.
    Tcg {
        /// kHz.
        tsc_khz: u64,
    },
}

/// The accelerator in use and why, for the probe's description.
#[derive(Debug, Clone)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Why it was chosen, for the probe record.
    pub why: String,
}

/// The descriptor number QEMU finds the control socket on.
pub use super::vmm::CTL_FD;
/// Where QEMU writes the serial console: its stdout.
const QEMU_CONSOLE: &str = "/proc/self/fd/1";
/// How long the KVM probe waits for the agent's hello (a KVM boot takes well under 1 s).
pub const KVM_PROBE_DEADLINE: Duration = Duration::from_secs(15);

/// The QEMU backend of one profile.
pub struct Qemu {
    profile: Profile,
    qemu: String,
    kernel: Option<Kernel>,
    initramfs: Option<PathBuf>,
    accel_opt: Option<String>,
    accel: OnceCell<Result<AccelChoice, AccelError>>,
    system: Option<System>,
}

impl Qemu {
    /// The backend of `profile` over `images`, with the QEMU binary and accelerator `opts` names.
    pub fn new(profile: Profile, images: &Images, opts: &BackendOptions) -> Self {
        Self {
            profile,
            qemu: opts.qemu.clone(),
            kernel: profile.kernel(images),
            initramfs: images.initramfs.clone(),
            accel_opt: opts.accel.clone(),
            accel: OnceCell::new(),
            system: images.system.clone(),
        }
    }

    /// The same profile, binary and accelerator decision over other images.
    pub fn with_images(&self, images: &Images) -> Self {
        Self {
            profile: self.profile,
            qemu: self.qemu.clone(),
            kernel: self.profile.kernel(images),
            initramfs: images.initramfs.clone(),
            accel_opt: self.accel_opt.clone(),
            accel: self.accel.clone(),
            system: images.system.clone(),
        }
    }

    fn images(&self) -> Result<(&Kernel, &Path), ImageError> {
        let what = match self.profile {
            Profile::Microvm => "microvm kernel (kernel-pv vmlinux)",
            Profile::Full => "q35 kernel (kernel-pv vmlinux)",
        };
        boot_images(what, self.kernel.as_ref(), self.initramfs.as_deref())
    }

    /// The accelerator guests of this backend use, decided once (the first call may boot a
    /// KVM probe guest). Err: the configured accelerator is unknown.
    pub async fn accel(&self) -> Result<AccelChoice, AccelError> {
        self.accel.get_or_init(|| self.decide_accel()).await.clone()
    }

    async fn decide_accel(&self) -> Result<AccelChoice, AccelError> {
        match self.accel_opt.as_deref() {
            Some("kvm") => Ok(AccelChoice { accel: Accel::Kvm, why: "KVM (configured)".into() }),
            Some("tcg") => Ok(tcg_choice("TCG (configured)".into()).await),
            Some(other) => Err(AccelError::Unknown(other.into())),
            None => {
                let (kernel, initramfs) = self.images()?;
                match kvm_boot_probe(
                    &self.qemu,
                    self.profile,
                    kernel,
                    initramfs,
                    KVM_PROBE_DEADLINE,
                )
                .await
                {
                    Ok(t) => Ok(AccelChoice {
                        accel: Accel::Kvm,
                        why: format!(
                            "KVM (probe guest reached the agent's hello in {:.2} s)",
                            t.as_secs_f64()
                        ),
                    }),
                    Err(reason) => {
                        Ok(tcg_choice(format!("KVM probe failed: {reason}; using TCG")).await)
                    }
                }
            }
        }
    }
}

async fn tcg_choice(why: String) -> AccelChoice {
    let tsc_khz = host_tsc_khz().await;
    AccelChoice {
        accel: Accel::Tcg { tsc_khz },
        why: format!("{why} (guest TSC = host TSC, {tsc_khz} kHz)"),
    }
}

/// Why no accelerator could be chosen for a QEMU backend's guests.
#[derive(Debug, Clone, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum AccelError {
    #[error("unknown accelerator {0:?} (use kvm or tcg)")]
    Unknown(String),
    /// The probe guest's kernel or initramfs is missing.
    #[error(transparent)]
    Images(#[from] ImageError),
}

/// Why a KVM probe guest did not boot, by step.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum KvmProbeError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    ScratchDir(#[from] ScratchDirError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Boot(#[from] ProbeBootError),
}

impl Backend for Qemu {
    fn kind(&self) -> BackendKind {
        self.profile.kind()
    }

    async fn probe(&self) -> Result<String, Unavailable> {
        let unavailable =
            |reason: String| Unavailable { backend: self.kind().name(), reason: reason.into() };
        let version =
            tool_version(&self.qemu, &["--version"]).await.map_err(|e| unavailable(e.into()))?;
        let (kernel, initramfs) = self.images().map_err(|e| unavailable(e.into()))?;
        let accel = self.accel().await.map_err(|e| unavailable(e.to_string()))?;
        // The probe record travels into results and the report: it says that q35's guest,
        // booting the same kernel as microvm, runs it with no paravirtual interface.
        let pv = match self.profile {
            Profile::Microvm => "",
            Profile::Full => " with nopv (no paravirtual interface)",
        };
        Ok(format!(
            "{version}; {}; kernel {}{pv}; initramfs {}",
            accel.why,
            kernel.path.display(),
            initramfs.display()
        ))
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        let not_ready = |reason: ImageError| LaunchError::Prepare {
            what: format!("{} images", self.kind()),
            source: reason.into(),
        };
        let (kernel, initramfs) = self.images().map_err(not_ready)?;
        let accel = self.accel().await.map_err(|e| LaunchError::Prepare {
            what: "the accelerator".into(),
            source: e.into(),
        })?;
        launch_qemu(
            &self.qemu,
            self.profile,
            accel.accel,
            kernel,
            initramfs,
            spec,
            self.system.as_ref(),
        )
        .await
    }

    /// A microvm guest has no ACPI, so its kernel halts instead of powering off and QEMU
    /// stays up: a halted guest counts as stopped cleanly once its log says so.
    async fn stop(&self, guest: &mut GuestProcess, grace: Duration) -> Exit {
        stop_vmm(guest, grace).await
    }

    fn launch_files(&self) -> LaunchFiles {
        let mut files =
            vm_launch_files(self.kernel.as_ref(), self.initramfs.as_deref(), &self.qemu);
        files.images.extend(self.system.as_ref().map(|s| s.ext4.clone()));
        files.data = qemu_firmware(self.profile);
        files
    }
}

/// The firmware and option ROMs QEMU loads for a profile, where this host has them (QEMU
/// reads them with read(2), so they do not show in its maps).
fn qemu_firmware(profile: Profile) -> Vec<PathBuf> {
    let names: &[&str] = match profile {
        Profile::Microvm => &["bios-microvm.bin"],
        Profile::Full => &[
            "bios-256k.bin",
            "kvmvapic.bin",
            // -kernel with an ELF vmlinux: QEMU boots its PVH entry through this ROM
            "pvh.bin",
            "efi-e1000.rom",
            "vgabios-stdvga.bin",
        ],
    };
    // Debian's QEMU looks in its own data directory, then in those of seabios and ipxe.
    let dirs = ["/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu"];
    names
        .iter()
        .filter_map(|n| dirs.iter().map(|d| Path::new(d).join(n)).find(|p| p.is_file()))
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect()
}

/// The full QEMU argument list (after the program name) for one guest.
pub fn qemu_args(
    profile: Profile,
    accel: Accel,
    kernel: &Kernel,
    initramfs: &Path,
    spec: &GuestSpec,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    let machine = match profile {
        // The kernel has no ACPI; without it QEMU lists the virtio-mmio devices on the
        // kernel command line. pit=off panics this kernel ("IO-APIC + timer doesn't work"),
        // rtc=off measurably slows its boot: the other defaults stay.
        Profile::Microvm => "microvm,acpi=off",
        Profile::Full => "q35",
    };
    push(&["-name", &spec.name, "-M", machine]);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg { .. } => push(&["-accel", "tcg,thread=multi", "-cpu", "max"]),
    }
    push(&["-m", &format!("{}M", spec.mem_mib), "-smp", &spec.vcpus.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    let cmdline = qemu_cmdline(profile, accel, &kernel.cmdline, spec).join(" ");
    push(&[
        "-kernel",
        &kernel.path.display().to_string(),
        "-initrd",
        &initramfs.display().to_string(),
        "-append",
        &cmdline,
    ]);
    // The serial console goes to QEMU's own stdout (reopened through /proc), the pipe hostd
    // reads into the capped console log; QEMU's stderr goes there too, so one log tells both
    // the kernel's and the VMM's side of a failure.
    push(&[
        "-chardev",
        &format!("file,id=con,path={QEMU_CONSOLE},append=on"),
        "-serial",
        "chardev:con",
    ]);
    push(&["-chardev", &format!("socket,id=ctl,fd={CTL_FD}")]);
    match profile {
        Profile::Microvm => push(&[
            "-device",
            "virtio-serial-device",
            "-device",
            "virtserialport,chardev=ctl,name=vb.ctl",
        ]),
        Profile::Full => push(&["-serial", "chardev:ctl"]),
    }
    if let Some(disk) = &spec.data_disk {
        let file = opt_value(disk);
        // cache.direct=on: QEMU opens the image with O_DIRECT, so guest reads come from the
        // device, never the host's page cache (datadisk::cache_policy). aio=threads is the
        // engine that works everywhere, TCG included.
        match profile {
            Profile::Microvm => push(&[
                "-drive",
                &format!(
                    "id=d0,file={file},format=raw,if=none,readonly=on,cache.direct=on,aio=threads"
                ),
                "-device",
                "virtio-blk-device,drive=d0",
            ]),
            // ide-hd refuses a read-only drive; snapshot=on opens the image read-only and
            // sends guest writes to a throwaway overlay (in TMPDIR = the work directory),
            // which QEMU always opens without O_DIRECT (cache=unsafe), so tmpfs will do.
            // The q35 chipset's own AHCI controller (bus ide.0) is used: a second one
            // would only add probing time.
            Profile::Full => push(&[
                "-drive",
                &format!(
                    "id=d0,file={file},format=raw,if=none,snapshot=on,cache.direct=on,aio=threads"
                ),
                "-device",
                "ide-hd,drive=d0,bus=ide.0",
            ]),
        }
    }
    if let Some(net) = &spec.net {
        let nic = match profile {
            Profile::Microvm => "virtio-net-device",
            Profile::Full => "e1000",
        };
        push(&[
            "-netdev",
            &format!("tap,id=n0,ifname={},script=no,downscript=no", net.link),
            "-device",
            // Every QEMU's first NIC defaults to 52:54:00:12:34:56: on one bridge the
            // guests would collide, so each gets a MAC from its address.
            &format!("{nic},netdev=n0,mac={}", guest_mac(net.addr)),
        ]);
    }
    a
}

/// The guest kernel command line (as words) for QEMU guests.
pub fn qemu_cmdline(profile: Profile, accel: Accel, base: &str, spec: &GuestSpec) -> Vec<String> {
    // The recipe's TSC settings are replaced: under TCG the guest TSC ticks at the host
    // TSC rate, so a fixed tsc_early_khz makes guest clocks run fast or slow (2 GHz on a
    // 2.6 GHz host: 30 % fast); under KVM the kernel learns the rate from the hypervisor
    // (or, the q35 guest running with `nopv` and so without kvmclock, calibrates it against
    // the emulated timers).
    // Skipping calibration under TCG matters: concurrent TCG guests otherwise hang at
    // "tsc: Unable to calibrate against PIT".
    let mut extra = match accel {
        Accel::Kvm => vec![],
        Accel::Tcg { tsc_khz } => vec![format!("tsc_early_khz={tsc_khz}"), "tsc=reliable".into()],
    };
    // The boot-time check that the timer interrupt arrives gives up after a fixed number of
    // loops; with many guests sharing two cores it failed ("IO-APIC + timer doesn't work!",
    // a panic) for 80 of 100 concurrent guests. Virtual timers work: skip the check.
    extra.push("no_timer_check".into());
    // The agent configures eth0 (vb.net=eth0=…); an image's own udev would rename the q35
    // guest's PCI NIC to enp0s2 ("setting the address on eth0: No such device" under systemd).
    extra.push("net.ifnames=0".into());
    // microvm has no ACPI, so its kernel cannot power off; with `reboot=t` and
    // `-no-reboot` QEMU exits on a reboot, so the agent reboots when told to power off.
    if profile == Profile::Microvm {
        extra.push("vb.poweroff=reboot".into());
    }
    // The kernel serves Xen too, so its recipe names no console: the kernel log goes to ttyS0
    // (-serial), and `reboot=t` (triple fault) ends QEMU at once on a reboot.
    let base = match profile {
        Profile::Microvm => format!("{MICROVM_CONSOLE} {base}"),
        Profile::Full => format!("{FULL_CMDLINE} {base}"),
    };
    kernel_cmdline(&base, &["tsc_early_khz", "tsc"], &extra, profile.ctl(), spec)
}

/// What the microvm profile puts before the kernel's recipe command line.
pub const MICROVM_CONSOLE: &str = "console=ttyS0 reboot=t";

/// What the q35 profile puts before the kernel's recipe command line: the console as under
/// microvm, and `nopv`, so the guest runs as a generic PC guest and ignores the KVM (or Xen,
/// Hyper-V) paravirtual interfaces, kvmclock included: full virtualization.
pub const FULL_CMDLINE: &str = "console=ttyS0 reboot=t nopv";

async fn launch_qemu(
    qemu: &str,
    profile: Profile,
    accel: Accel,
    kernel: &Kernel,
    initramfs: &Path,
    spec: &GuestSpec,
    system: Option<&System>,
) -> Result<Launched, LaunchError> {
    let g = LaunchGuard::new(spec)?;
    let mut args = qemu_args(profile, accel, kernel, initramfs, spec);
    if let Some(sys) = system {
        // In the work directory, so released with it.
        let (disk, format) = sys.vm_disk(&spec.workdir).await?;
        add_root_disk(&mut args, profile, sys, &disk, format);
    }
    spawn_vmm(g, spec, Path::new(qemu), args, &spec.workdir)
}

/// Adds the system image's root disk to a guest's QEMU arguments: virtio-blk (microvm) or
/// a disk on the q35 chipset's AHCI controller, port 1 (full; the data disk is on port 0),
/// and the agent's `vb.root`/`vb.init` on the kernel command line.
pub fn add_root_disk(
    args: &mut Vec<String>,
    profile: Profile,
    sys: &System,
    disk: &Path,
    format: &str,
) {
    let device = match profile {
        Profile::Microvm => "virtio-blk-device,drive=root".to_string(),
        Profile::Full => "ide-hd,drive=root,bus=ide.1".to_string(),
    };
    args.extend([
        "-drive".into(),
        format!("id=root,file={},format={format},if=none", opt_value(disk)),
        "-device".into(),
        device,
    ]);
    if let Some(i) = args.iter().position(|a| a == "-append") {
        if let Some(line) = args.get_mut(i + 1) {
            for w in sys.cmdline() {
                line.push(' ');
                line.push_str(&w);
            }
        }
    }
}

/// Boots a throwaway guest of `profile` under KVM (`-cpu host`, as real guests would run)
/// and waits for the agent's hello. Ok: the time to the hello. Err: why KVM is unusable,
/// e.g. no /dev/kvm, QEMU failing to start the vCPU, or a "KVM internal error" (on nested
/// hypervisors that cannot run an unmodified kernel: QEMU then pauses the VM, so the log
/// is watched rather than waiting for the deadline).
pub async fn kvm_boot_probe(
    qemu: &str,
    profile: Profile,
    kernel: &Kernel,
    initramfs: &Path,
    deadline: Duration,
) -> Result<Duration, KvmProbeError> {
    check_kvm()?;
    let dir = probe_dir("kvm-probe")?;
    let spec = probe_spec(dir.path(), "kvm-probe");
    let launched = launch_qemu(qemu, profile, Accel::Kvm, kernel, initramfs, &spec, None).await?;
    Ok(probe_boot(launched, "QEMU", deadline, Some("KVM internal error"), |g, d| {
        Box::pin(stop_and_release(g, d))
    })
    .await?)
}

/// The host TSC rate in kHz, measured once (50 ms against the monotonic clock).
pub async fn host_tsc_khz() -> u64 {
    static TSC_KHZ: OnceCell<u64> = OnceCell::const_new();
    *TSC_KHZ
        .get_or_init(|| async {
            tokio::task::spawn_blocking(measure_tsc_khz).await.unwrap_or(FALLBACK_TSC_KHZ)
        })
        .await
}

/// Used if the TSC cannot be measured (the kernel recipes' historical value).
const FALLBACK_TSC_KHZ: u64 = 2_000_000;

#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz() -> u64 {
    // SAFETY: RDTSC exists on every x86_64 CPU; it only reads the time-stamp counter.
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(50));
    let (c1, t1) = (tsc(), Instant::now());
    let khz = (c1.wrapping_sub(c0) as f64 / (t1 - t0).as_secs_f64() / 1000.0).round() as u64;
    // A TSC outside 100 MHz..20 GHz is a measurement gone wrong (e.g. migrated mid-way).
    if (100_000..20_000_000).contains(&khz) {
        khz
    } else {
        FALLBACK_TSC_KHZ
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz() -> u64 {
    FALLBACK_TSC_KHZ
}

#[cfg(test)]
mod tests;
