//! `firecracker`: Firecracker on KVM, booted from a config file (`--no-api --config-file`):
//! no API socket to name, clean up or race with.
//!
//! - Kernel: the paravirtual vmlinux (`kernel-pv`, PVH), the initramfs as initrd.
//! - Control channel: Firecracker's one serial port (guest `/dev/ttyS0`) is wired to its
//!   stdin/stdout, which are one end of a socketpair to hostd. The kernel console is kept
//!   off it (`quiet loglevel=0`, no `console=`); anything that still gets there (an agent
//!   note on /dev/console, a panic) is noise the frame decoder skips.
//! - Logs: `--log-path` (set on the command line so nothing is logged before it takes
//!   effect: Firecracker logs to stdout, our channel, until its logger is configured).
//! - Disk: virtio-blk, read-only, guest [`GUEST_DISK`]. NIC: virtio-net on a tap in the
//!   fleet namespace, which Firecracker runs in.
//! - Exit: Firecracker ends on the guest's i8042 reset (`reboot=k`). A guest that powers off
//!   without ACPI only halts and Firecracker stays up, so `stop` kills it after the grace
//!   period, unless the agent reboots rather than powers off where power-off is unavailable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::OnceCell;

use super::launch::{
    boot_images, control_pair, host_halves, tool_version, vm_launch_files, GuestCommand,
    ImageError, LaunchGuard, ToolError,
};
use super::rootdisk::System;
use super::vmm::{
    check_kvm, guest_mac, kernel_cmdline, probe_boot, probe_dir, probe_spec, stop_vmm, KvmError,
    ProbeBootError, ScratchDirError,
};
use super::{
    prepare, stop_and_release, Backend, BackendKind, BackendOptions, Exit, GuestProcess, GuestSpec,
    Images, Kernel, LaunchError, LaunchFiles, Launched, Proc, Unavailable,
};

/// The data disk inside a Firecracker guest (the only virtio-blk device).
pub const GUEST_DISK: &str = "/dev/vda";
/// The guest tty of the control channel: the only serial port.
pub const CTL_TTY: &str = "/dev/ttyS0";
const PROBE_DEADLINE: Duration = Duration::from_secs(15);
/// Recipe parameters replaced for Firecracker: the console and log level (the serial port
/// is the control channel), the TSC (KVM knows it) and the reboot method.
const DROPPED: [&str; 6] = ["console", "quiet", "loglevel", "tsc_early_khz", "tsc", "reboot"];

/// The Firecracker backend: one microVM per guest, configured by a JSON file, the control
/// channel on its serial console.
pub struct Firecracker {
    bin: String,
    kernel: Option<Kernel>,
    initramfs: Option<PathBuf>,
    probed: OnceCell<Result<String, std::sync::Arc<ProbeError>>>,
    system: Option<System>,
}

impl Firecracker {
    /// The backend over `images`, with the Firecracker binary `opts` names.
    pub fn new(images: &Images, opts: &BackendOptions) -> Self {
        Self {
            bin: opts.firecracker.clone(),
            kernel: images.kernel_pv.clone(),
            initramfs: images.initramfs.clone(),
            probed: OnceCell::new(),
            system: images.system.clone(),
        }
    }

    /// The same binary and probe outcome over other images (a guest's own copies).
    pub fn with_images(&self, images: &Images) -> Self {
        Self {
            bin: self.bin.clone(),
            kernel: images.kernel_pv.clone(),
            initramfs: images.initramfs.clone(),
            probed: self.probed.clone(),
            system: images.system.clone(),
        }
    }

    fn images(&self) -> Result<(&Kernel, &Path), ImageError> {
        boot_images("microvm kernel (vmlinux)", self.kernel.as_ref(), self.initramfs.as_deref())
    }

    /// Binary, KVM, images, then a real boot to the agent's hello.
    async fn check(&self) -> Result<String, ProbeError> {
        let version = tool_version(&self.bin, &["--version"]).await.map_err(|e| match e {
            ToolError::NotFound { .. } => ProbeError::NoBinary { bin: self.bin.clone() },
            e => ProbeError::Version(e),
        })?;
        check_kvm()?;
        let (kernel, initramfs) = self.images()?;
        let dir = probe_dir("fc-probe")?;
        let spec = probe_spec(dir.path(), "fc-probe");
        let launched = launch_firecracker(&self.bin, kernel, initramfs, &spec, None)
            .await
            .map_err(ProbeError::Launch)?;
        let t = probe_boot(launched, "Firecracker", PROBE_DEADLINE, None, |g, d| {
            Box::pin(stop_and_release(g, d))
        })
        .await
        .map_err(ProbeError::Boot)?;
        Ok(format!(
            "{version} ({}); KVM probe guest reached the agent's hello in {:.2} s; kernel {}; initramfs {}",
            self.bin,
            t.as_secs_f64(),
            kernel.path.display(),
            initramfs.display()
        ))
    }
}

/// Why the Firecracker backend's probe failed, by step.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ProbeError {
    #[error("firecracker binary not found ({bin})")]
    NoBinary { bin: String },
    /// `firecracker --version` failed.
    #[error(transparent)]
    Version(ToolError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Images(#[from] ImageError),
    #[error(transparent)]
    ScratchDir(#[from] ScratchDirError),
    #[error("probe guest: {0}")]
    Launch(LaunchError),
    #[error("KVM boot probe failed: {0}")]
    Boot(ProbeBootError),
}

/// The guest kernel command line (as words) for Firecracker guests.
pub fn fc_cmdline(base: &str, spec: &GuestSpec) -> Vec<String> {
    // No ACPI: the kernel cannot power off, but Firecracker exits on a reboot, so the agent
    // reboots when told to power off.
    let extra = ["reboot=k", "quiet", "loglevel=0", "vb.poweroff=reboot"].map(String::from);
    kernel_cmdline(base, &DROPPED, &extra, &format!("tty:{CTL_TTY}"), spec)
}

/// The `--config-file` contents for one guest.
pub fn vm_config(kernel: &Kernel, initramfs: &Path, spec: &GuestSpec) -> Value {
    // Neither io_engine (Sync, Async) nor cache_type (Unsafe, Writeback: flush handling)
    // opens the drive with O_DIRECT: reads go through the host page cache, so hostd evicts
    // the file before every measured read (datadisk::cache_policy).
    let drives: Vec<Value> = spec
        .data_disk
        .iter()
        .map(|d| json!({ "drive_id": "data", "path_on_host": d, "is_root_device": false, "is_read_only": true }))
        .collect();
    let nics: Vec<Value> = spec
        .net
        .iter()
        .map(|n| json!({ "iface_id": "eth0", "host_dev_name": n.link, "guest_mac": guest_mac(n.addr) }))
        .collect();
    json!({
        "boot-source": {
            "kernel_image_path": kernel.path,
            "initrd_path": initramfs,
            "boot_args": fc_cmdline(&kernel.cmdline, spec).join(" "),
        },
        "machine-config": { "vcpu_count": spec.vcpus, "mem_size_mib": spec.mem_mib, "smt": false },
        // Required by Firecracker's schema even when empty.
        "drives": drives,
        "network-interfaces": nics,
    })
}

/// Adds the system image's root drive (writable: the guest's own copy) and the agent's
/// `vb.root`/`vb.init` to a guest's config.
pub fn add_root_drive(config: &mut Value, sys: &System, disk: &Path) {
    if let Some(drives) = config["drives"].as_array_mut() {
        drives.push(json!({ "drive_id": "root", "path_on_host": disk, "is_root_device": false, "is_read_only": false }));
    }
    if let Some(args) = config["boot-source"]["boot_args"].as_str() {
        let line =
            std::iter::once(args.to_string()).chain(sys.cmdline()).collect::<Vec<_>>().join(" ");
        config["boot-source"]["boot_args"] = Value::String(line);
    }
}

/// Firecracker's arguments for one guest.
pub fn fc_args(config: &Path, log: &Path, spec: &GuestSpec) -> Vec<String> {
    vec![
        "--no-api".into(),
        "--config-file".into(),
        config.display().to_string(),
        "--id".into(),
        spec.name.clone(),
        "--log-path".into(),
        log.display().to_string(),
        "--level".into(),
        "Warning".into(),
    ]
}

async fn launch_firecracker(
    bin: &str,
    kernel: &Kernel,
    initramfs: &Path,
    spec: &GuestSpec,
    system: Option<&System>,
) -> Result<Launched, LaunchError> {
    let mut g = LaunchGuard::new(spec)?;
    let mut config = vm_config(kernel, initramfs, spec);
    if let Some(sys) = system {
        // Firecracker drives are raw files, so there is no overlay format: the guest writes
        // its own sparse copy, in the work directory the guard releases.
        let disk = sys.raw_copy(&spec.workdir).await?;
        add_root_drive(&mut config, sys, &disk);
    }
    // Firecracker opens its log without creating it, and writes from offset 0 (no append),
    // so its stderr (panics) gets a file of its own.
    let log_path = spec.workdir.join("firecracker.log");
    g.log_file(&log_path)?;
    g.console_file(&log_path);
    let stderr = g.log_file(&spec.workdir.join("firecracker.stderr"))?;
    let config_path = spec.workdir.join("vm.json");
    let config = serde_json::to_vec_pretty(&config).expect("a JSON value serializes");
    std::fs::write(&config_path, config).map_err(|e| prepare(config_path.display(), e))?;
    let (host, guest) = control_pair()?;
    let netns = g.attach_tap(spec)?;
    let (reader, writer) = host_halves(host)?;
    let guest_in = guest.try_clone().map_err(|e| prepare("control socket", e))?;
    let mut cmd = GuestCommand::new(bin, &spec.workdir);
    cmd.args(fc_args(&config_path, &log_path, spec))
        // The serial port: guest output to stdout, host input from stdin.
        .stdin(guest_in)
        .stdout(guest)
        .stderr(stderr)
        .netns(netns);
    cmd.cgroup(g.make_cgroup(spec)?);
    // Spawning closes hostd's copies of the guest ends, so the channel reports EOF once
    // Firecracker is gone.
    let child = cmd.spawn()?;
    Ok(g.launched(reader, writer, Proc::child(child)))
}

impl Backend for Firecracker {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn launch_files(&self) -> LaunchFiles {
        let mut files = vm_launch_files(self.kernel.as_ref(), self.initramfs.as_deref(), &self.bin);
        files.images.extend(self.system.as_ref().map(|s| s.ext4.clone()));
        files
    }

    async fn probe(&self) -> Result<String, Unavailable> {
        self.probed
            .get_or_init(|| async { self.check().await.map_err(std::sync::Arc::new) })
            .await
            .clone()
            .map_err(|reason| Unavailable { backend: "firecracker", reason: reason.into() })
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        let (kernel, initramfs) =
            self.images().map_err(|reason| prepare("firecracker images", reason))?;
        launch_firecracker(&self.bin, kernel, initramfs, spec, self.system.as_ref()).await
    }

    async fn stop(&self, guest: &mut GuestProcess, grace: Duration) -> Exit {
        stop_vmm(guest, grace).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::GuestNet;
    use crate::netlab::FleetNet;

    fn spec(full: bool) -> GuestSpec {
        GuestSpec {
            index: 2,
            name: "g2".into(),
            run: "r1".into(),
            vcpus: 2,
            mem_mib: 256,
            data_disk: full.then(|| "/store/disk.img".into()),
            workdir: "/run/virtbench/r1/g2".into(),
            net: full.then(|| GuestNet {
                fleet: FleetNet::named("vb-r1"),
                addr: std::net::Ipv4Addr::new(10, 211, 0, 4),
                prefix: 16,
                link: "vbl2".into(),
            }),
            cgroup: None,
            limits: Default::default(),
            images: None,
        }
    }

    fn kernel() -> Kernel {
        Kernel {
            path: "/k/vmlinux".into(),
            // kernel-pv's recipe line: no console (Firecracker's serial carries the control
            // channel, so the kernel keeps off it)
            cmdline: "panic=-1".into(),
        }
    }

    #[test]
    fn config_file_fields() {
        let c = vm_config(&kernel(), Path::new("/i/initramfs.cpio.gz"), &spec(true));
        let expect = json!({
            "boot-source": {
                "kernel_image_path": "/k/vmlinux",
                "initrd_path": "/i/initramfs.cpio.gz",
                "boot_args": "panic=-1 reboot=k quiet loglevel=0 vb.poweroff=reboot vb.ctl=tty:/dev/ttyS0 vb.hostname=g2 vb.net=eth0=10.211.0.4/16",
            },
            "machine-config": { "vcpu_count": 2, "mem_size_mib": 256, "smt": false },
            "drives": [{ "drive_id": "data", "path_on_host": "/store/disk.img", "is_root_device": false, "is_read_only": true }],
            "network-interfaces": [{ "iface_id": "eth0", "host_dev_name": "vbl2", "guest_mac": "02:76:62:d3:00:04" }],
        });
        assert_eq!(c, expect);
    }

    #[test]
    fn config_without_disk_or_network_keeps_the_required_keys() {
        let c = vm_config(&kernel(), Path::new("/i"), &spec(false));
        assert_eq!(c["drives"], json!([]));
        assert_eq!(c["network-interfaces"], json!([]));
        assert!(!c["boot-source"]["boot_args"].as_str().unwrap().contains("vb.net"));
    }

    #[test]
    fn a_system_image_is_a_writable_drive_and_the_agents_root() {
        let mut c = vm_config(&kernel(), Path::new("/i"), &spec(true));
        let sys = System {
            name: "tiny".into(),
            ext4: "/store/blobs/ab".into(),
            ext4_uuid: "0123abcd-4567-89ab-cdef-0123456789ab".into(),
            tree: "/store/trees/cd".into(),
            init: super::super::rootdisk::InitMode::Image,
            image_init: Some("/sbin/init".into()),
            private: false,
        };
        add_root_drive(&mut c, &sys, Path::new("/w/root.ext4"));
        // The data disk stays the first drive (the guest's /dev/vda).
        assert_eq!(c["drives"][0]["drive_id"], "data");
        assert_eq!(
            c["drives"][1],
            json!({ "drive_id": "root", "path_on_host": "/w/root.ext4", "is_root_device": false, "is_read_only": false })
        );
        let line = c["boot-source"]["boot_args"].as_str().unwrap();
        assert!(
            line.ends_with(" vb.root=0123abcd-4567-89ab-cdef-0123456789ab vb.init=image"),
            "{line}"
        );
    }

    #[test]
    fn command_line() {
        let a = fc_args(Path::new("/w/vm.json"), Path::new("/w/firecracker.log"), &spec(false));
        assert_eq!(
            a,
            [
                "--no-api",
                "--config-file",
                "/w/vm.json",
                "--id",
                "g2",
                "--log-path",
                "/w/firecracker.log",
                "--level",
                "Warning"
            ]
        );
    }

    #[tokio::test]
    async fn probe_without_the_binary_says_so() {
        let opts =
            BackendOptions { firecracker: "/nonexistent/firecracker".into(), ..Default::default() };
        let e = Firecracker::new(&Images::default(), &opts).probe().await.unwrap_err();
        assert_eq!(e.reason.to_string(), "firecracker binary not found (/nonexistent/firecracker)");
    }
}
