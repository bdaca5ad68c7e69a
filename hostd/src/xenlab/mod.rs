//! `hostd xen-lab`: the `xen` backend measured on a Xen host that is itself a QEMU guest,
//! for machines that are not Xen hosts. KVM where a probe guest really boots under it
//! (`-cpu host`), TCG otherwise (here: nested KVM crashes unmodified guests).
//!
//! The host side boots Debian's Xen hypervisor under QEMU (`-M pc`; under TCG `-cpu
//! Haswell-noTSX`: with `-cpu max` dom0 crashes early) with the dom0 kernel and the `xen-lab-dom0` initramfs as
//! multiboot modules. dom0's /init starts Xen's daemons and then this same hostd as the
//! lab's dom0 side (`hostd xen-lab --in-dom0 /dev/ttyS1`). The two talk over QEMU's second
//! serial port (dom0's ttyS1; Xen keeps COM1 for its console, which is the lab's log), with
//! the agent protocol's framing and [`LabMsg`] messages: dom0 says [`LabMsg::Ready`], the
//! host sends the [`LabJob`], dom0 answers with progress lines and one [`LabReport`], then
//! powers off, which ends QEMU.
//!
//! The dom0 side measures exactly what `hostd boot` does for one fleet (a cold start of n
//! guests: startup, then memory after a settle time), adds Xen's own memory accounting,
//! runs the CPU benchmark in every guest at once, tears the fleet down and checks that
//! `xl list` has nothing but dom0 left. The host writes it all as a results directory like
//! `hostd boot`'s, every figure marked as measured inside an emulated host.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::bootrun;
use crate::limits;

mod dom0;
mod ferry;
mod host;
mod machine;
mod sysdisk;
#[cfg(test)]
mod tests;

pub use ferry::{
    Dom0Timings, GuestRoot, LabJob, LabMsg, LabReport, LabSystem, SystemDisk, XenMemory,
    SYSTEM_SERIAL,
};
pub use host::{run, LabOutcome};
pub use machine::{
    choose_accel, host_mib_for, host_mib_needed, qemu_args, xen_cmdline, LabAccel, LabMachine,
};
pub use sysdisk::SystemDiskError;

/// Where the dom0 image (recipes/xen-lab-dom0.toml) keeps what the dom0 side boots.
pub const DOM0_AGENT: &str = "/usr/lib/virtbench/guest-agent";
pub const DOM0_DOMU_KERNEL: &str = "/usr/lib/virtbench/vmlinux-pv";
pub const DOM0_DOMU_INITRAMFS: &str = "/usr/lib/virtbench/initramfs.cpio.gz";
/// dom0's end of the lab's control channel (QEMU's second serial port).
pub const DOM0_CTL: &str = "/dev/ttyS1";
/// The CPU QEMU emulates: the lab's measured configuration (`max` crashes dom0 early).
pub const LAB_CPU: &str = "Haswell-noTSX";
/// What every figure of the lab carries.
pub const EMULATED_NOTE: &str = "measured inside an emulated host: Xen and its guests ran in a QEMU virtual machine (TCG or KVM: see the provenance), so every figure includes that machine's cost and is not that of a real Xen host";

#[derive(clap::Args, Debug, Clone)]
pub struct LabArgs {
    /// domUs to start together (1-64).
    #[arg(long, default_value_t = 3, value_parser = limits::LAB_GUESTS.cli::<usize>())]
    pub guests: usize,
    /// Memory of each domU, MiB (32-1048576).
    #[arg(long, default_value_t = 128, value_parser = limits::MEM_MIB.cli::<u32>())]
    pub mem_mib: u32,
    /// vCPUs of each domU (1-64).
    #[arg(long, default_value_t = 1, value_parser = limits::VCPUS.cli::<u32>())]
    pub vcpus: u32,
    /// CPU benchmark: Newton steps towards √2 in each guest (the lab's own default, smaller
    /// than the 200000000 of campaigns and `hostd bench`: its guests run under a nested
    /// emulator; the output and the report state the size used).
    #[arg(long, default_value_t = 5_000_000)]
    pub cpu_rounds: u64,
    /// Memory of the emulated Xen host, MiB (dom0 gets 512) [default: enough for the
    /// fleet, at least 2048].
    #[arg(long)]
    pub host_mib: Option<u32>,
    /// Seconds the whole lab may take (1-172800 s; seconds or e.g. 15m, 2h).
    #[arg(long, default_value_t = 900, value_parser = limits::LAB_TIMEOUT_S.cli_secs())]
    pub timeout: u64,
    /// The QEMU system emulator.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: String,
    /// Parent directory of the results directory.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// How QEMU runs the emulated host: kvm or tcg [default: KVM if a probe guest boots
    /// under it, else TCG].
    #[arg(long)]
    pub accel: Option<String>,
    /// Boot the domUs from this system image (a root file system recipe in the image store,
    /// docs/systems.md), carried to dom0 as a read-only disk of the lab machine.
    #[arg(long, value_name = "RECIPE")]
    pub system: Option<String>,
    /// With --system: PID 1 is the agent, or the image's own /sbin/init with the agent as
    /// its service.
    #[arg(long, value_enum, default_value = "agent", requires = "system")]
    pub init: crate::backend::rootdisk::InitMode,
    /// Run as the lab's dom0 side, talking to the host on this tty (dom0's /init does).
    #[arg(long, hide = true)]
    pub in_dom0: Option<PathBuf>,
}

/// The lab's CPU workload as its output states it: its own default (`--cpu-rounds`) is
/// smaller than campaigns' and `hostd bench`'s, and a figure must not hide that.
pub fn cpu_note(rounds: u64) -> String {
    let params = crate::suite::Workloads { cpu_rounds: rounds, ..Default::default() }
        .params(vb_protocol::bench::Resource::Cpu);
    crate::report::cpu_workload_note(&params).replacen(&params, &format!("{params} per guest"), 1)
}

/// `hostd xen-lab`: either side, by `--in-dom0`.
pub async fn main(a: LabArgs) -> Result<()> {
    if let Some(tty) = &a.in_dom0 {
        return dom0::dom0_side(tty).await;
    }
    let bar = crate::progress::spinner("xen-lab");
    let mut say = |l: String| {
        crate::progress::line(&bar, &l);
        bar.set_message(l.trim().to_string());
    };
    // On Ctrl-C the lab's future is dropped first: that kills QEMU and releases the run.
    let done = tokio::select! {
        r = run(&a, &mut say) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    bar.finish_and_clear();
    let Some(o) = done else {
        eprintln!("hostd: interrupted; the Xen lab is shut down");
        std::process::exit(130);
    };
    let o = o?;
    print!("{}", bootrun::table(&o.summary));
    let r = &o.report;
    println!(
        "xen-lab (host clock, 1 run): Xen + dom0 boot {:.1} s (dom0 uptime {:.1} s); {}/{} domUs ready, T_startup {} s; CPU benchmark in all at once {:.1} s ({}); teardown {:.1} s ({} left); total {:.1} s",
        o.lab_boot_s,
        r.timings.dom0_uptime_at_ready_s,
        r.boot.startups.len(),
        r.boot.n,
        r.boot.t_startup().map(|t| format!("{t:.2}")).unwrap_or_else(|| "-".into()),
        r.timings.bench_s,
        cpu_note(a.cpu_rounds),
        r.timings.teardown_s,
        r.leftover_domains.len(),
        o.total_s
    );
    let x = &r.xen_memory;
    println!(
        "xen-lab: memory: the fleet took {} MiB of Xen's {} MiB ({} → {} MiB free) and {:.1} MiB of dom0's",
        x.used_by_fleet_mib,
        x.total_mib,
        x.free_before_mib,
        x.free_after_mib,
        (r.dom0_used_after_kib as f64 - r.dom0_used_before_kib as f64) / 1024.0
    );
    for s in &r.bench {
        println!(
            "xen-lab: guest {} CPU benchmark (√2, {}, {} guests busy, 1 repetition, guest clock): {:.3} {}",
            s.guest,
            crate::report::cpu_workload_note(&s.params),
            s.n,
            s.value,
            s.unit
        );
    }
    if let Some(d) = &r.system_disk {
        println!(
            "xen-lab: system {}: dom0's disk {} has the manifest's sha256 {} (hashed in {:.1} s)",
            a.system.as_deref().unwrap_or("?"),
            d.device,
            d.sha256,
            d.hash_s
        );
    }
    for g in &r.roots {
        if let Some(root) = &g.root {
            println!(
                "xen-lab: {} root {} ({}), PID 1 {}",
                g.guest,
                root.device,
                root.os.as_deref().unwrap_or("no os-release"),
                root.init
            );
        }
    }
    println!("xen-lab: {EMULATED_NOTE}");
    println!("xen-lab: results in {}", o.dir.display());
    if !r.leftover_domains.is_empty() {
        bail!("domains left after the teardown: {}", r.leftover_domains.join(", "));
    }
    Ok(())
}
