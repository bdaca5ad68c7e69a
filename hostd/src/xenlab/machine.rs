//! The lab machine: Xen, dom0's kernel and initramfs booted under QEMU, its accelerator
//! and size, launched with the backends' launch toolkit.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{LAB_CPU, SYSTEM_SERIAL};
use crate::backend::launch::{control_pair, host_halves, tool_version, GuestCommand};
use crate::backend::Images;
use crate::cgroup::Cgroup;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabAccel {
    /// `-accel kvm -cpu host`: Xen runs on the host's CPU model, PV guests need no nesting.
    Kvm,
    /// `-accel tcg -cpu Haswell-noTSX`.
    Tcg,
}

impl LabAccel {
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            LabAccel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            LabAccel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", LAB_CPU],
        }
    }
}

/// The KVM probe's verdict, once per process (a campaign boots several labs).
static KVM_VERDICT: tokio::sync::OnceCell<Result<f64, String>> = tokio::sync::OnceCell::const_new();

/// The lab's accelerator and why: `asked` (kvm or tcg), else KVM if a probe guest reaches
/// the agent's hello under it (the qemu backend's probe), else TCG.
pub async fn choose_accel(
    asked: Option<&str>,
    qemu: &str,
    images: &Images,
) -> Result<(LabAccel, String)> {
    match asked {
        Some("kvm") => return Ok((LabAccel::Kvm, "KVM (asked for)".into())),
        Some("tcg") => return Ok((LabAccel::Tcg, "TCG (asked for)".into())),
        Some(other) => bail!("--accel {other:?}: expected kvm or tcg"),
        None => {}
    }
    let (Some(kernel), Some(initramfs)) = (&images.kernel_pv, &images.initramfs) else {
        return Ok((
            LabAccel::Tcg,
            "TCG (no kernel-pv or initramfs to probe KVM with: run `imagegen build`)".into(),
        ));
    };
    let verdict = KVM_VERDICT
        .get_or_init(|| async {
            let d = crate::backend::qemu::KVM_PROBE_DEADLINE;
            crate::backend::qemu::kvm_boot_probe(
                qemu,
                crate::backend::qemu::Profile::Microvm,
                kernel,
                initramfs,
                d,
            )
            .await
            .map(|t| t.as_secs_f64())
            .map_err(|e| e.to_string())
        })
        .await;
    Ok(match verdict {
        Ok(t) => {
            (LabAccel::Kvm, format!("KVM (probe guest reached the agent's hello in {t:.2} s)"))
        }
        Err(why) => (LabAccel::Tcg, format!("TCG (KVM probe failed: {why})")),
    })
}

/// The lab machine's boot images and size.
#[derive(Clone)]
pub struct LabMachine<'a> {
    pub xen: &'a Path,
    pub xen_cmdline: String,
    pub dom0_kernel: &'a Path,
    pub dom0_cmdline: &'a str,
    pub dom0_initramfs: &'a Path,
    pub host_mib: u64,
    pub accel: LabAccel,
    /// A system image's ext4, given to dom0 as a read-only virtio disk (serial
    /// [`SYSTEM_SERIAL`]): dom0's 512 MiB could not hold it in its initramfs.
    pub system_disk: Option<&'a Path>,
}

/// The lab machine running: its QEMU and the host's halves of its control channel.
pub struct LabRunning {
    pub qemu: tokio::process::Child,
    pub reader: tokio::net::unix::OwnedReadHalf,
    pub writer: tokio::net::unix::OwnedWriteHalf,
}

/// dom0's control channel: a socketpair end QEMU finds as this descriptor (its ttyS1).
const CTL_FD: i32 = 3;

impl LabMachine<'_> {
    /// Starts the machine's QEMU with the launch toolkit: in its own process group (a
    /// Ctrl-C reaches hostd, which shuts the lab down), killed when dropped, in a cgroup of
    /// the lab's run (so a later hostd reaps it if this one dies), its output in `dir`'s
    /// qemu.log and Xen's console in `log`.
    pub fn launch(&self, qemu: &str, dir: &Path, run: &str, log: &Path) -> Result<LabRunning> {
        let (host_end, qemu_end) = control_pair().context("the lab's control socketpair")?;
        let out = std::fs::File::create(dir.join("qemu.log")).context("QEMU's log")?;
        let mut cmd = GuestCommand::new(qemu, dir);
        cmd.args(qemu_args(self, log, CTL_FD)).output(out.into())?.pass_fd(qemu_end, CTL_FD);
        if let Ok(mode) = crate::cgroup::detect() {
            let cg =
                Cgroup::create(mode, run, "lab", Default::default()).context("the lab's cgroup")?;
            cmd.cgroup(Some(&cg));
        }
        let qemu = cmd.spawn()?;
        let (reader, writer) = host_halves(host_end)?;
        Ok(LabRunning { qemu, reader, writer })
    }
}

/// The QEMU command line (after the program) of the lab VM.
pub fn qemu_args(m: &LabMachine<'_>, log: &Path, ctl_fd: i32) -> Vec<String> {
    // Multiboot modules are separated by commas (a literal one is doubled), each a path
    // followed by its command line.
    let esc = |s: &str| s.replace(',', ",,");
    let modules = format!(
        "{} {},{}",
        esc(&m.dom0_kernel.display().to_string()),
        esc(m.dom0_cmdline),
        esc(&m.dom0_initramfs.display().to_string())
    );
    let (xen, xen_cmdline, host_mib) = (m.xen, m.xen_cmdline.as_str(), m.host_mib);
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-name", "xen-lab", "-M", "pc"]);
    push(&m.accel.qemu_args());
    push(&["-smp", "2"]);
    push(&[
        "-m",
        &format!("{host_mib}M"),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ]);
    push(&["-kernel", &xen.display().to_string(), "-append", xen_cmdline, "-initrd", &modules]);
    // COM1: Xen's console (and through it dom0's hvc0) into the lab log; COM2: the channel.
    push(&[
        "-chardev",
        &format!("file,id=con,path={},append=on", log.display().to_string().replace(',', ",,")),
        "-serial",
        "chardev:con",
    ]);
    push(&["-chardev", &format!("socket,id=ctl,fd={ctl_fd}"), "-serial", "chardev:ctl"]);
    if let Some(disk) = m.system_disk {
        // Read-only for QEMU too: dom0 only reads it (each domU writes its own overlay).
        push(&[
            "-drive",
            &format!(
                "file={},if=none,readonly=on,format=raw,id=sys",
                esc(&disk.display().to_string())
            ),
            "-device",
            &format!("virtio-blk-pci,drive=sys,serial={SYSTEM_SERIAL}"),
        ]);
    }
    a
}

/// Xen's command line in the lab: its console on COM1 with boot-relative timestamps; dom0
/// gets 512 MiB (fixed, so the rest is Xen's free memory for the domUs) and both CPUs. Two
/// things only cost time under TCG: scrubbing free memory at boot (it competes with dom0 for
/// the CPUs, and a lab machine has no previous tenant) and the page-table isolation Xen
/// turns on for PV guests of the emulated Haswell, which it takes for Meltdown-affected
/// (XPTI made domU boots three times slower; a current CPU is not affected and runs without
/// it). The other mitigations stay: with `spec-ctrl=no` Xen switches the FPU lazily, and
/// concurrent guests' CPU benchmarks then computed NaN under TCG.
pub fn xen_cmdline() -> String {
    "console=com1 com1=115200,8n1 console_timestamps=boot bootscrub=off xpti=false pv-l1tf=false dom0_mem=512M,max:512M dom0_max_vcpus=2 loglvl=warning guest_loglvl=warning".into()
}

/// The least memory an emulated Xen host needs for `n` domUs of `mem_mib`, MiB: dom0's
/// fixed 512, 256 for Xen itself, and each domain's RAM plus 16 for its page tables and
/// Xen's per-domain structures.
pub fn host_mib_needed(n: usize, mem_mib: u32) -> u64 {
    768 + n as u64 * (mem_mib as u64 + 16)
}

/// The lab's default host memory: what the fleet needs with some room, never below the
/// 2 GiB the lab was measured with.
pub fn host_mib_for(n: usize, mem_mib: u32) -> u64 {
    (host_mib_needed(n, mem_mib) + 256).max(2048)
}

/// The first line of `qemu --version`.
pub(super) async fn qemu_version(qemu: &str) -> Result<String> {
    tool_version(qemu, &["--version"])
        .await
        .with_context(|| format!("running {qemu} (the Xen lab needs QEMU: qemu-system-x86)"))
}
