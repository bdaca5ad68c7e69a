//! The dom0 side: says ready, takes the job, boots and measures the fleet through the xen
//! backend with the same measurement code as every backend (`startup::start_and_measure`),
//! adds Xen's own memory accounting and the CPU benchmark, and reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vb_protocol::bench::Resource;
use vb_protocol::frame::FrameDecoder;

use super::ferry::{next_msg, send, GuestRoot};
use super::{
    Dom0Timings, LabJob, LabMsg, LabReport, XenMemory, DOM0_AGENT, DOM0_DOMU_INITRAMFS,
    DOM0_DOMU_KERNEL,
};
use crate::backend::xen::{self, RawTty};
use crate::backend::{AnyBackend, Backend, BackendKind, BackendOptions, Images, Kernel};
use crate::fleet::{Fleet, FleetConfig, FleetEvent};
use crate::memory;
use crate::provenance::Provenance;
use crate::runstate::RunState;
use crate::startup::{self, FleetBoot, StartMode};
use crate::suite::{linearity, BenchSample, StepPlan, Targets, Workloads};

/// The dom0 side: says ready, takes the job, measures, reports.
pub(super) async fn dom0_side(tty: &Path) -> Result<()> {
    let mut ctl = RawTty::open(tty)
        .with_context(|| format!("opening the lab's control channel {}", tty.display()))?;
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    send(
        &mut ctl,
        &LabMsg::Ready {
            dom0_uptime_s: uptime,
            kernel,
            hostd_version: env!("CARGO_PKG_VERSION").into(),
        },
    )
    .await?;
    let mut dec = FrameDecoder::default();
    let mut queue = Vec::new();
    let job = match next_msg(&mut ctl, &mut dec, &mut queue).await? {
        Some(LabMsg::Job(j)) => j,
        other => bail!("expected the lab's job, got {other:?}"),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let measuring = measure(&job, uptime, tx);
    tokio::pin!(measuring);
    // Progress lines go out while the measurement runs.
    let result = loop {
        tokio::select! {
            r = &mut measuring => break r,
            Some(line) = rx.recv() => send(&mut ctl, &LabMsg::Progress { line }).await?,
        }
    };
    while let Ok(line) = rx.try_recv() {
        send(&mut ctl, &LabMsg::Progress { line }).await?;
    }
    let last = match result {
        Ok(report) => LabMsg::Done(Box::new(report)),
        Err(e) => LabMsg::Failed { error: format!("{e:#}") },
    };
    send(&mut ctl, &last).await?;
    ctl.drain().context("draining the control channel")?;
    Ok(())
}

/// Boots the job's fleet through the xen backend and measures it (see the module doc).
async fn measure(
    job: &LabJob,
    uptime: f64,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<LabReport> {
    let say = |l: String| {
        let _ = progress.send(l);
    };
    let mut images = Images {
        agent: DOM0_AGENT.into(),
        initramfs: Some(DOM0_DOMU_INITRAMFS.into()),
        kernel_pv: Some(Kernel {
            path: DOM0_DOMU_KERNEL.into(),
            cmdline: job.domu_cmdline.clone(),
        }),
        ..Default::default()
    };
    let system_disk = match &job.system {
        Some(sys) => {
            let (system, disk) =
                super::sysdisk::find(sys, Path::new("/sys/block"), Path::new("/dev")).await?;
            say(format!(
                "system {}: {} checked (sha256 {}, hashed in {:.1} s)",
                system.name, disk.device, disk.sha256, disk.hash_s
            ));
            images.system = Some(system);
            Some(disk)
        }
        None => None,
    };
    let backend = AnyBackend::new(BackendKind::Xen, &images, &BackendOptions::default());
    let probe = backend.probe().await.map_err(anyhow::Error::msg)?;
    say(format!("probe: {probe}"));
    let provenance = dom0_provenance().await;
    let run = RunState::create("xen-lab", None).context("creating the run's state")?;
    let result = measure_fleet(job, &backend, &run, &say).await.map(|m| LabReport {
        provenance,
        probe,
        boot: m.boot,
        xen_memory: m.xen_memory,
        dom0_used_before_kib: m.dom0_before,
        dom0_used_after_kib: m.dom0_after,
        bench: m.bench,
        bench_error: m.bench_error,
        leftover_domains: m.leftover_domains,
        roots: m.roots,
        system_disk,
        timings: Dom0Timings {
            dom0_uptime_at_ready_s: uptime,
            fleet_ready_s: m.fleet_ready_s,
            bench_s: m.bench_s,
            teardown_s: m.teardown_s,
        },
    });
    let cleaned = run.finish();
    if !cleaned.errors.is_empty() {
        say(format!("cleanup: {}", cleaned.errors.join("; ")));
    }
    result
}

/// dom0's provenance, with Xen's version and size.
async fn dom0_provenance() -> Provenance {
    let mut provenance = Provenance::collect(Default::default());
    if let Ok(info) = xen::xl_info("xl").await {
        let g = |k: &str| info.get(k).cloned().unwrap_or_default();
        provenance.notes.push(format!(
            "Xen {} ({} physical CPUs, {} MiB); dom0 hostd in a {} MiB dom0",
            g("xen_version"),
            g("nr_cpus"),
            g("total_memory"),
            provenance.host.mem_total_kib / 1024
        ));
    }
    provenance
}

/// What [`measure_fleet`] found.
struct Measured {
    boot: FleetBoot,
    xen_memory: XenMemory,
    dom0_before: u64,
    dom0_after: u64,
    bench: Vec<BenchSample>,
    bench_error: Option<String>,
    leftover_domains: Vec<String>,
    roots: Vec<GuestRoot>,
    fleet_ready_s: f64,
    bench_s: f64,
    teardown_s: f64,
}

/// dom0's own used memory (/proc/meminfo), KiB: the machine's minus what Xen handed out.
async fn dom0_used_kib() -> Result<u64> {
    memory::host_used_kib_median(5, Duration::from_millis(100))
        .await
        .context("reading /proc/meminfo")
}

/// A cold start of the job's fleet, measured by the code every backend's fleets are
/// ([`startup::start_and_measure`]: the xen backend adds the memory Xen handed out, which
/// dom0's /proc/meminfo does not see); Xen's own accounting around it; the CPU benchmark
/// in every guest at once; the teardown and what `xl list` still shows after it.
async fn measure_fleet(
    job: &LabJob,
    backend: &AnyBackend,
    run: &RunState,
    say: &impl Fn(String),
) -> Result<Measured> {
    let cfg = FleetConfig {
        n: job.guests,
        mem_mib: job.mem_mib,
        vcpus: job.vcpus,
        network: true,
        boot_timeout: Duration::from_secs(job.boot_timeout_s),
        ..Default::default()
    };
    let dom0_before = dom0_used_kib().await?;
    let info_before = xen::xl_info("xl")
        .await
        .map_err(anyhow::Error::msg)
        .context("Xen's memory before the fleet")?;
    say(format!("starting {} PV domUs together", job.guests));
    let t0 = Instant::now();
    let settle = Duration::from_secs(job.settle_s);
    let (fleet, mut boot) =
        startup::start_and_measure(backend, run, &cfg, StartMode::Cold, settle, |e| match e {
            FleetEvent::Ready { index, after } => {
                say(format!("g{index} ready after {:.2} s", after.as_secs_f64()))
            }
            FleetEvent::Failed(f) => say(format!(
                "{} failed ({:?}): {}",
                f.name,
                f.kind,
                f.error.lines().next().unwrap_or("")
            )),
        })
        .await?;
    let fleet_ready_s = boot.t_startup().unwrap_or(t0.elapsed().as_secs_f64());
    let dom0_after = dom0_used_kib().await?;
    let xen_memory = xen_memory(&info_before).await?;
    say(format!(
        "CPU benchmark ({} rounds) in {} guests at once",
        job.cpu_rounds,
        fleet.guests.len()
    ));
    let roots = fleet
        .guests
        .iter()
        .map(|g| GuestRoot { guest: g.spec.name.clone(), root: g.hello.root.clone() })
        .collect();
    let t_bench = Instant::now();
    let (bench, bench_error) = cpu_benchmark(job, &fleet).await;
    let bench_s = t_bench.elapsed().as_secs_f64();
    let t_down = Instant::now();
    startup::tear_down(backend, fleet, &mut boot, Duration::from_secs(30)).await;
    let teardown_s = t_down.elapsed().as_secs_f64();
    let leftover_domains = match xen::xl_list("xl").await {
        Ok(l) => l.into_iter().filter(|d| d.id != 0).map(|d| d.name).collect(),
        Err(e) => vec![format!("(xl list failed: {e})")],
    };
    say(format!(
        "torn down in {teardown_s:.1} s: {} clean, {} killed, {} domains left",
        boot.teardown_clean,
        boot.teardown_killed,
        leftover_domains.len()
    ));
    Ok(Measured {
        boot,
        xen_memory,
        dom0_before,
        dom0_after,
        bench,
        bench_error,
        leftover_domains,
        roots,
        fleet_ready_s,
        bench_s,
        teardown_s,
    })
}

/// Xen's memory with the fleet up against `before`, and its domains.
async fn xen_memory(before: &BTreeMap<String, String>) -> Result<XenMemory> {
    let after = xen::xl_info("xl")
        .await
        .map_err(anyhow::Error::msg)
        .context("Xen's memory with the fleet up")?;
    let domains =
        xen::xl_list("xl").await.map_err(anyhow::Error::msg).context("listing the domains")?;
    let mib = |i: &BTreeMap<String, String>, k: &str| -> Result<u64> {
        i.get(k).and_then(|v| v.parse().ok()).with_context(|| format!("`xl info` has no {k}"))
    };
    Ok(XenMemory {
        total_mib: mib(&after, "total_memory")?,
        free_before_mib: mib(before, "free_memory")?,
        free_after_mib: mib(&after, "free_memory")?,
        used_by_fleet_mib: mib(before, "free_memory")? as i64 - mib(&after, "free_memory")? as i64,
        domains,
    })
}

/// The CPU benchmark in every ready guest at once (the suite's linearity step at n).
async fn cpu_benchmark(job: &LabJob, fleet: &Fleet) -> (Vec<BenchSample>, Option<String>) {
    if fleet.guests.is_empty() {
        return (Vec::new(), Some("no guest became ready".to_string()));
    }
    let w = Workloads { cpu_rounds: job.cpu_rounds, ..Default::default() };
    let targets = Targets {
        disk: PathBuf::from("/nonexistent"),
        peer: (crate::netlab::BRIDGE_ADDR, 0).into(),
    };
    let timeout = Duration::from_secs(job.boot_timeout_s);
    let p = StepPlan {
        resource: Resource::Cpu,
        workloads: &w,
        targets: &targets,
        warmup: 0,
        reps: 1,
        timeout,
    };
    match linearity::measure(fleet, &p).await {
        Ok(s) => (s, None),
        Err(e) => (Vec::new(), Some(e)),
    }
}
