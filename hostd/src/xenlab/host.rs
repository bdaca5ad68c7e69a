//! The host side: boots the lab machine, ferries the job in and the report out, and writes
//! the results like `hostd boot` does, every figure marked as measured inside an emulated
//! host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use vb_protocol::frame::FrameDecoder;

use super::ferry::{next_msg, send};
use super::machine::qemu_version;
use super::{
    choose_accel, host_mib_for, host_mib_needed, xen_cmdline, LabArgs, LabJob, LabMachine, LabMsg,
    LabReport, LabSystem, EMULATED_NOTE,
};
use crate::backend::{BackendKind, Images};
use crate::bootrun;
use crate::provenance::Provenance;
use crate::results::ResultsDir;
use crate::runstate::RunState;
use crate::samples::Record;

/// What a lab run produced.
pub struct LabOutcome {
    pub dir: PathBuf,
    pub report: LabReport,
    /// QEMU start → dom0's ready message, host clock.
    pub lab_boot_s: f64,
    pub total_s: f64,
    pub summary: bootrun::BootSummary,
}

/// The host side: boots the lab, drives dom0, writes the results.
pub async fn run(a: &LabArgs, say: &mut dyn FnMut(String)) -> Result<LabOutcome> {
    if a.guests == 0 {
        bail!("--guests needs at least 1");
    }
    let host_mib = a.host_mib.map(u64::from).unwrap_or_else(|| host_mib_for(a.guests, a.mem_mib));
    let needed = host_mib_needed(a.guests, a.mem_mib);
    if host_mib < needed {
        bail!("--host-mib {host_mib} is too small for {} domUs of {} MiB (dom0 takes 512): give at least {needed}", a.guests, a.mem_mib);
    }
    let t_start = Instant::now();
    let images = lab_images(a)?;
    let parts = LabImages::resolve(&images)?;
    let qemu_version = qemu_version(&a.qemu).await?;
    let (accel, accel_why) = choose_accel(a.accel.as_deref(), &a.qemu, &images).await?;
    let machine = LabMachine {
        xen: &parts.xen,
        xen_cmdline: xen_cmdline(),
        dom0_kernel: &parts.dom0_kernel,
        dom0_cmdline: &parts.dom0_cmdline,
        dom0_initramfs: &parts.dom0_initramfs,
        host_mib,
        accel,
        system_disk: parts.system.as_ref().map(|(p, _)| p.as_path()),
    };
    let run = RunGuard(
        RunState::create("xen-lab", Some(a.results.clone())).context("creating the run's state")?,
    );
    let run = &run.0;
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    let mut results =
        ResultsDir::create_unique(&a.results, &format!("{stamp}-xen-lab-{}", run.run))
            .context("creating the results directory")?;
    // Kept with the results: Xen's and dom0's boot, for whoever reads the figures.
    let log = results.path.join("lab-console.log");
    say(format!(
        "xen-lab: booting Xen under QEMU, {accel_why} ({qemu_version}); lab log {}",
        log.display()
    ));
    let t_qemu = Instant::now();
    let mut lab = machine.launch(&a.qemu, &results.path, &run.run, &log)?;
    let job = LabJob {
        guests: a.guests,
        mem_mib: a.mem_mib,
        vcpus: a.vcpus,
        cpu_rounds: a.cpu_rounds,
        domu_cmdline: parts.domu_cmdline.clone(),
        boot_timeout_s: a.timeout,
        settle_s: 2,
        system: parts.system.as_ref().map(|(_, s)| s.clone()),
    };
    let deadline = Duration::from_secs(a.timeout);
    let outcome = tokio::select! {
        r = tokio::time::timeout(deadline, drive(&mut lab.reader, &mut lab.writer, job, t_qemu, say)) => match r {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("no report from dom0 within {} s", deadline.as_secs())),
        },
        status = lab.qemu.wait() => Err(anyhow::anyhow!("QEMU exited ({}) before dom0 reported", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))),
    };
    let (report, lab_boot_s) = match outcome {
        Ok(x) => x,
        Err(e) => {
            let _ = lab.qemu.start_kill();
            let _ = lab.qemu.wait().await;
            return Err(e.context(format!(
                "the Xen lab failed; its console ends with:\n{}",
                lab_log_tail(&log)
            )));
        }
    };
    // dom0 powers off once it has reported: Xen then switches the machine off.
    if tokio::time::timeout(Duration::from_secs(60), lab.qemu.wait()).await.is_err() {
        say("xen-lab: the lab did not power off within 60 s; killing QEMU".into());
        let _ = lab.qemu.start_kill();
        let _ = lab.qemu.wait().await;
    }
    let total_s = t_start.elapsed().as_secs_f64();
    let mut provenance = report.provenance.clone();
    provenance.artifacts.extend(parts.artifacts);
    provenance.notes.insert(0, EMULATED_NOTE.into());
    provenance.notes.push(format!(
        "emulated Xen host: {qemu_version}, -M pc {} -smp 2 -m {} on {} ({} CPUs), {accel_why}; Xen command line: {}",
        accel.qemu_args().join(" "),
        host_mib,
        crate::provenance::HostInfo::collect().cpu_model,
        crate::provenance::HostInfo::collect().cpus,
        xen_cmdline()
    ));
    provenance.notes.push(format!("backend xen: {}", report.probe));
    let summary = write_results(&mut results, provenance, &report, lab_boot_s, total_s)?;
    Ok(LabOutcome { dir: results.path.clone(), report, lab_boot_s, total_s, summary })
}

/// The image store's images, with `--system`'s image added (checked against its manifest).
fn lab_images(a: &LabArgs) -> Result<Images> {
    let mut images = crate::images::resolve(None).context("resolving the images")?;
    if let Some(name) = &a.system {
        crate::images::add_system(&mut images, name, a.init)?;
    }
    Ok(images)
}

/// What the lab boots, from the image store, and the hashes of all of it (what dom0 boots
/// too, its hostd included).
struct LabImages {
    xen: PathBuf,
    dom0_kernel: PathBuf,
    dom0_cmdline: String,
    dom0_initramfs: PathBuf,
    domu_cmdline: String,
    /// The system image's ext4 (the lab machine's disk) and what dom0 checks it against.
    system: Option<(PathBuf, LabSystem)>,
    artifacts: std::collections::BTreeMap<String, String>,
}

/// The job's description of `images`' system image, from its manifest's hash and UUID.
fn lab_system(images: &Images) -> Result<Option<(PathBuf, LabSystem)>> {
    let Some(sys) = &images.system else { return Ok(None) };
    let key = format!("system {} (rootfs.ext4)", sys.name);
    let sha = images.hashes.get(&key).with_context(|| format!("no hash recorded for {key}"))?;
    let bytes = std::fs::metadata(&sys.ext4)
        .with_context(|| format!("system image {} ({})", sys.name, sys.ext4.display()))?
        .len();
    let job = LabSystem {
        name: sys.name.clone(),
        ext4_sha256: sha.clone(),
        ext4_bytes: bytes,
        ext4_uuid: sys.ext4_uuid.clone(),
        init: sys.init,
        image_init: sys.image_init.clone(),
    };
    Ok(Some((sys.ext4.clone(), job)))
}

impl LabImages {
    fn resolve(images: &Images) -> Result<LabImages> {
        let artifact = |recipe: &str, output: &str| {
            crate::images::store_artifact(recipe, output)
                .with_context(|| format!("the Xen lab needs {recipe}: run `imagegen build`"))
        };
        let (xen, xen_sha, _) = artifact("xen-hypervisor", "file")?;
        let (dom0_kernel, dom0_kernel_sha, dom0_cmdline) = artifact("kernel-dom0", "file")?;
        let (dom0_initramfs, dom0_initramfs_sha, _) = artifact("xen-lab-dom0", "initramfs")?;
        let (_, _, domu_cmdline) = artifact("kernel-pv", "kernel")?;
        let mut artifacts: std::collections::BTreeMap<String, String> = images
            .hashes
            .iter()
            .filter(|(k, _)| {
                ["agent", "initramfs", "kernel-pv", "system "].iter().any(|p| k.starts_with(p))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        artifacts.insert("hostd-static".into(), artifact("hostd-static", "agent")?.1);
        artifacts.insert("xen-hypervisor".into(), xen_sha);
        artifacts.insert("kernel-dom0".into(), dom0_kernel_sha);
        artifacts.insert("xen-lab-dom0".into(), dom0_initramfs_sha);
        let system = lab_system(images)?;
        Ok(LabImages {
            xen,
            dom0_kernel,
            dom0_cmdline,
            dom0_initramfs,
            domu_cmdline,
            system,
            artifacts,
        })
    }
}

/// The conversation with dom0: its ready message, the job, progress lines until its report.
/// Returns the report and the lab's boot time (QEMU start, `t_qemu`, to dom0's ready).
async fn drive(
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    job: LabJob,
    t_qemu: Instant,
    say: &mut dyn FnMut(String),
) -> Result<(LabReport, f64)> {
    let mut dec = FrameDecoder::default();
    let mut queue = Vec::new();
    let ready = next_msg(rd, &mut dec, &mut queue).await?;
    let lab_boot_s = t_qemu.elapsed().as_secs_f64();
    match ready {
        Some(LabMsg::Ready { dom0_uptime_s, kernel, hostd_version }) => say(format!(
            "xen-lab: dom0 ready after {lab_boot_s:.1} s (dom0 uptime {dom0_uptime_s:.1} s, kernel {kernel}, hostd {hostd_version})"
        )),
        Some(other) => bail!("dom0 spoke before it was ready: {other:?}"),
        None => bail!("the lab stopped before dom0 was ready"),
    }
    send(wr, &LabMsg::Job(job)).await.context("sending dom0 its job")?;
    loop {
        match next_msg(rd, &mut dec, &mut queue).await? {
            Some(LabMsg::Progress { line }) => say(format!("xen-lab: dom0: {line}")),
            Some(LabMsg::Done(report)) => return Ok((*report, lab_boot_s)),
            Some(LabMsg::Failed { error }) => bail!("dom0 failed: {error}"),
            Some(other) => bail!("unexpected message from dom0: {other:?}"),
            None => bail!("the lab stopped before dom0 reported"),
        }
    }
}

/// The lab's results directory, as `hostd boot` writes one (through [`bootrun`]'s
/// writers), plus `lab.json`; the probe record is marked as an emulated host's.
fn write_results(
    results: &mut ResultsDir,
    provenance: Provenance,
    report: &LabReport,
    lab_boot_s: f64,
    total_s: f64,
) -> Result<bootrun::BootSummary> {
    results.write_json("provenance.json", &provenance)?;
    results.append(&Record::BackendProbe {
        backend: BackendKind::Xen,
        description: report.probe.clone(),
        emulated: true,
    })?;
    for r in report.records() {
        results.append(&r)?;
    }
    #[derive(Serialize)]
    struct LabFile<'a> {
        note: &'static str,
        lab_boot_s: f64,
        total_s: f64,
        report: &'a LabReport,
    }
    results
        .write_json("lab.json", &LabFile { note: EMULATED_NOTE, lab_boot_s, total_s, report })?;
    let summary = bootrun::summarise(provenance, vec![bootrun::row(&report.boot)]);
    bootrun::write_outputs(results, &summary)?;
    crate::report::write(&results.path, false).context("writing the lab's report")?;
    Ok(summary)
}

/// Releases the lab run's resources (its QEMU's cgroup, scratch) however the run ends,
/// cancellation (Ctrl-C) included.
struct RunGuard(RunState);

impl Drop for RunGuard {
    fn drop(&mut self) {
        let cleaned = self.0.finish();
        if !cleaned.errors.is_empty() {
            tracing::warn!("xen-lab cleanup: {}", cleaned.errors.join("; "));
        }
    }
}

/// The end of the lab's console (Xen's and dom0's), for an error.
fn lab_log_tail(log: &Path) -> String {
    let data = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&data[data.len().saturating_sub(4000)..]).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

impl LabReport {
    /// The samples of the lab's fleet, as every driver records a fleet
    /// ([`FleetBoot::records`](crate::startup::FleetBoot::records)), then the CPU
    /// benchmark's samples.
    pub fn records(&self) -> Vec<Record> {
        let mut out = self.boot.records();
        out.extend(self.bench.iter().cloned().map(Record::Bench));
        out
    }
}
