//! `hostd run CAMPAIGN`: for each backend, startup and memory occupation, then the suite
//! (overhead, linearity, isolation, ring) on all selected resources, every step recorded
//! durably and marked done, so a killed campaign resumes where it stopped. A backend that
//! cannot run, or a step that fails, is recorded with its reason and the campaign goes on.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use vb_protocol::bench::Resource;

use crate::backend::{AnyBackend, Backend, BackendKind, BackendOptions, Images};
use crate::campaign::{BackendPlan, Campaign, HostFacts};
use crate::cgroup::Limits;
use crate::datadisk::DataDisks;
use crate::fleet::{self, Fleet, FleetConfig};
use crate::netlab::{FleetNet, NetMode};
use crate::peer::Peer;
use crate::provenance::Provenance;
use crate::results::{read_records, ResultsDir};
use crate::runstate::RunState;
use crate::samples::Record;
use crate::startup::{boot_and_measure, BootPlan};
use crate::suite::command::{self, CommandSample, UserCommand};
use crate::suite::{
    isolation, linearity, overhead, ring, BenchSample, StepPlan, Targets, Test as SuiteTest,
    Workloads,
};

mod plan;
mod startup;
mod suite;
pub use plan::{planned_steps, planned_work, xen_in_lab, Boots, Work};
use plan::{LABS, LAB_GUESTS};
use startup::*;
use suite::*;

/// Progress lines for a person watching.
pub type Say<'a> = &'a mut dyn FnMut(String);

struct Ctx<'a> {
    campaign: &'a Campaign,
    images: &'a Images,
    opts: &'a BackendOptions,
    run: &'a RunState,
    results: &'a mut ResultsDir,
    done: HashSet<String>,
    disk: Option<PathBuf>,
    /// Every guest's own copy of the data disk (the disk benchmark's replicated data set).
    copies: Option<Arc<DataDisks>>,
    /// The provenance this session measures under ([`Provenance::id`]); every sample is tagged.
    provenance: String,
}

impl Ctx<'_> {
    fn record(&mut self, r: &Record) -> Result<()> {
        if r.provenance_id().is_some() {
            let mut r = r.clone();
            r.tag_provenance(&self.provenance);
            return self.results.append(&r).context("recording a sample");
        }
        self.results.append(r).context("recording a sample")
    }

    fn finish(&mut self, key: &str) -> Result<()> {
        self.done.insert(key.to_string());
        self.record(&Record::StepDone { key: key.to_string() })
    }

    fn fail(&mut self, key: &str, error: String, say: Say) -> Result<()> {
        say(format!("   {key}: FAILED: {error}"));
        self.record(&Record::StepFailed { key: key.to_string(), error })
    }

    /// A fleet of `n` guests of `mem_mib` MiB each.
    fn fleet_config(&self, n: usize, mem_mib: u32) -> FleetConfig {
        let g = &self.campaign.guest;
        FleetConfig {
            n,
            parallelism: 0,
            vcpus: g.vcpus,
            mem_mib,
            network: true,
            net_mode: NetMode::Private,
            data_disk: self.disk.clone(),
            data_copies: self.copies.clone(),
            boot_timeout: Duration::from_secs(g.boot_timeout_s),
            limits: Limits { cpuset: g.pin_one_core.then_some("0"), ..Default::default() },
            image_copies: Vec::new(),
            stop: None,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.campaign.guest.bench_timeout_s)
    }
}

/// Whether a resumed run may go on under another provenance than the one its samples came
/// from (`hostd run --resume DIR --force-mixed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mixing {
    #[default]
    Refuse,
    Allow,
}

/// The provenance a results directory's latest samples came from: its last provenance
/// record, else its `provenance.json`.
fn last_provenance(dir: &std::path::Path, records: &[Record]) -> Result<Option<Provenance>> {
    if let Some(p) = records.iter().rev().find_map(|r| {
        if let Record::Provenance { provenance, .. } = r {
            Some(provenance.clone())
        } else {
            None
        }
    }) {
        return Ok(Some(p));
    }
    let bytes =
        crate::results::read_optional(&dir.join("provenance.json"), crate::results::MAX_FILE_BYTES)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("provenance.json").display()))?;
    bytes
        .map(|b| {
            serde_json::from_slice(&b).with_context(|| {
                format!("{}: not a provenance", dir.join("provenance.json").display())
            })
        })
        .transpose()
}

/// Checks that resuming `dir` now would not mix provenances: the artifacts' hashes, hostd's
/// version and revision and the host must be those its samples came from. With
/// [`Mixing::Allow`] a difference is only reported. Returns the lines that differ.
pub fn check_resume(
    dir: &std::path::Path,
    records: &[Record],
    now: &Provenance,
    mixing: Mixing,
) -> Result<Vec<String>> {
    let measured = records.iter().any(|r| r.provenance_id().is_some());
    let Some(was) = last_provenance(dir, records)? else { return Ok(Vec::new()) };
    let diff = now.differences(&was);
    if measured && !diff.is_empty() && mixing == Mixing::Refuse {
        anyhow::bail!(
            "{}: this run's samples were measured under another provenance; resuming would mix them:\n  {}\n(rebuild the same artifacts and hostd, or start a new run; --force-mixed resumes anyway and the report lists both provenances)",
            dir.display(),
            diff.join("\n  ")
        );
    }
    Ok(diff)
}

/// Runs (or resumes) a campaign into `results`. A resume under another provenance than the
/// samples' is refused unless `mixing` allows it ([`check_resume`]).
pub async fn run(
    campaign: &Campaign,
    images: &Images,
    opts: &BackendOptions,
    run: &RunState,
    results: &mut ResultsDir,
    mixing: Mixing,
    say: Say<'_>,
) -> Result<()> {
    let (records, _) = read_records::<Record>(&results.path)?;
    let now = {
        let mut p = Provenance::collect(images.hashes.clone());
        p.notes.push(format!("campaign {}", campaign.name));
        p
    };
    let diff = check_resume(&results.path, &records, &now, mixing)?;
    let host = HostFacts::here();
    campaign.check_host(&host).map_err(|e| anyhow::anyhow!("campaign {}: {e}", campaign.name))?;
    let done: HashSet<String> = records
        .iter()
        .filter_map(|r| if let Record::StepDone { key } = r { Some(key.clone()) } else { None })
        .collect();
    if !done.is_empty() {
        say(format!("resuming: {} steps already done", done.len()));
    }
    for d in &diff {
        say(format!("   provenance changed (--force-mixed): {d}"));
    }
    let plans = campaign.resolved_plans(host.llc);
    let (disk, copies) = data_disk(campaign, images, run, &plans, say).await?;
    // Recorded once everything is checked: a run refused here leaves its samples as they were.
    let provenance = record_provenance(results, &records, now)?;
    let mut ctx = Ctx { campaign, images, opts, run, results, done, disk, copies, provenance };
    for plan in &plans {
        backend_steps(&mut ctx, plan, &plans, say).await?;
    }
    Ok(())
}

/// The data disk and every guest's copy of it, made before the first backend, where the
/// campaign measures the disk.
async fn data_disk(
    campaign: &Campaign,
    images: &Images,
    run: &RunState,
    plans: &[BackendPlan],
    say: Say<'_>,
) -> Result<(Option<PathBuf>, Option<Arc<DataDisks>>)> {
    if !campaign.resources.contains(&Resource::Disk) {
        return Ok((None, None));
    }
    let d = images
        .disk
        .clone()
        .context("the disk benchmark needs the data disk image: run `imagegen build`")?;
    let size = std::fs::metadata(&d).with_context(|| format!("data disk {}", d.display()))?.len();
    // Copies hold what the largest of the campaign's disk workloads reads.
    let mib =
        plans.iter().map(|p| p.workloads.disk_mib).max().unwrap_or(campaign.workloads.disk_mib);
    let need = crate::limits::mib_to_bytes(mib).filter(|need| size >= *need);
    let Some(need) = need else {
        anyhow::bail!(
            "data disk {} has {size} bytes, workloads.disk_mib asks for {mib} MiB",
            d.display()
        );
    };
    let copies = Arc::new(
        DataDisks::new(&d, need, &run.disk_dir(), &run.run)
            .context("per-guest data disk copies")?,
    );
    // Every copy a disk test reads is made now, before the first backend: a read right
    // after a large write is slower on some disks, and the first backend measured (the
    // native baseline) must not be the one that pays for it.
    let most = plans
        .iter()
        .map(|p| p.overhead_sizes.iter().copied().max().unwrap_or(0).max(2))
        .max()
        .unwrap_or(0);
    say(format!(
        "making {most} copies of the data disk and a native reference ({need} bytes each) in {}",
        run.disk_dir().display()
    ));
    let c = copies.clone();
    // And the native reference copy every non-native disk read is paired with.
    tokio::task::spawn_blocking(move || {
        c.reference()?;
        (0..most).try_for_each(|i| c.copy_for(i).map(|_| ()))
    })
    .await
    .context("data disk copies")?
    .context("per-guest data disk copies")?;
    Ok((Some(d), Some(copies)))
}

/// Records the provenance this session measures under, unless the last one recorded is
/// the same; returns its id, which every sample is tagged with.
fn record_provenance(
    results: &mut ResultsDir,
    records: &[Record],
    now: Provenance,
) -> Result<String> {
    let provenance = now.id();
    let last_id = records.iter().rev().find_map(|r| {
        if let Record::Provenance { id, .. } = r {
            Some(id.clone())
        } else {
            None
        }
    });
    if last_id.as_deref() != Some(provenance.as_str()) {
        results
            .append(&Record::Provenance { id: provenance.clone(), provenance: now })
            .context("recording the provenance")?;
    }
    Ok(provenance)
}

/// One backend's part of the campaign: its probe, then startup, the suite's passes, the
/// emulated network's accuracy and, for other workloads, the host baseline; or the Xen
/// lab, or the reason it cannot run.
async fn backend_steps(
    ctx: &mut Ctx<'_>,
    plan: &BackendPlan,
    plans: &[BackendPlan],
    say: Say<'_>,
) -> Result<()> {
    let (campaign, images, opts) = (ctx.campaign, ctx.images, ctx.opts);
    let backend = AnyBackend::new(plan.kind, images, opts);
    say(format!("== {}", plan.kind));
    match backend.probe().await {
        Ok(desc) => {
            say(format!("   {desc}"));
            ctx.record(&Record::BackendProbe {
                backend: plan.kind,
                description: desc,
                emulated: false,
            })?;
        }
        Err(e) if plan.kind == BackendKind::Xen && campaign.xen.lab && e.reason.not_dom0() => {
            say(format!("   {}; measuring it in the Xen lab (Xen under QEMU)", e.reason));
            return xen_lab(ctx, plan, say).await;
        }
        Err(e) => {
            say(format!("   unavailable: {}", e.reason));
            return ctx.record(&Record::BackendUnavailable {
                backend: plan.kind,
                reason: e.reason.to_string(),
            });
        }
    }
    startup(ctx, &backend, plan, say).await?;
    for pass in Pass::all(campaign, plan.kind) {
        if pass.resources.is_empty() {
            continue;
        }
        if let Some(note) = &pass.note {
            say(format!("   {note}"));
        }
        let plan = &pass.plan_of(plan);
        overhead_and_linearity(ctx, &backend, plan, &pass, say).await?;
        if campaign.isolation.enabled && pass.isolation {
            small_fleet_test(ctx, &backend, plan, Test::Isolation, &pass, say).await?;
        }
        if plan.ring_guests >= 2 && pass.ring {
            small_fleet_test(ctx, &backend, plan, Test::Ring, &pass, say).await?;
        }
    }
    if campaign.netem.enabled {
        netem_accuracy(ctx, &backend, plan, say).await?;
    }
    // A backend run with other workloads (an override) needs the host's T_a for them.
    if plan.kind != BackendKind::Native && plan.workloads != plans[0].workloads {
        let native = AnyBackend::new(BackendKind::Native, images, opts);
        let baseline = host_baseline(&plans[0], plan);
        say(format!("   host baseline T_a for {}'s workloads", plan.kind));
        let pass = Pass::own(campaign, BackendKind::Native);
        overhead_and_linearity(ctx, &native, &baseline, &pass, say).await?;
    }
    Ok(())
}

/// Takes the guests that failed during `step` out of the fleet (killed, their resources
/// released at once) and records why.
async fn prune(
    ctx: &mut Ctx<'_>,
    fleet: &mut Fleet,
    backend: &AnyBackend,
    step: &str,
    say: Say<'_>,
) -> Result<()> {
    for f in fleet.prune(backend).await {
        say(format!("   {step}: guest {} lost ({:?}): {}", f.name, f.kind, f.error));
        ctx.record(&Record::GuestLost {
            backend: fleet.backend,
            step: step.to_string(),
            failure: f,
        })?;
    }
    Ok(())
}

/// Tears the fleet down, records the guests found failed on the way, and returns `result`
/// (or the recording's error if that failed and `result` had not).
async fn teardown(
    ctx: &mut Ctx<'_>,
    fleet: Fleet,
    backend: &AnyBackend,
    result: Result<()>,
) -> Result<()> {
    let kind = fleet.backend;
    let t = fleet.teardown(backend, Duration::from_secs(10)).await;
    let mut recorded = Ok(());
    for f in t.failed {
        recorded = recorded.and(ctx.record(&Record::GuestLost {
            backend: kind,
            step: "teardown".into(),
            failure: f,
        }));
    }
    result.and(recorded)
}

fn record_samples(
    ctx: &mut Ctx<'_>,
    key: &str,
    m: Result<Vec<BenchSample>, String>,
    say: Say<'_>,
) -> Result<()> {
    match m {
        Ok(samples) => {
            for s in samples {
                ctx.record(&Record::Bench(s))?;
            }
            ctx.finish(key)
        }
        Err(e) => ctx.fail(key, e, say),
    }
}

/// A user command's runs: every one recorded (failed runs are samples with their reason),
/// then the step marked done; a guest that failed fails the step.
fn record_commands(
    ctx: &mut Ctx<'_>,
    key: &str,
    m: Result<Vec<CommandSample>, String>,
    say: Say<'_>,
) -> Result<()> {
    match m {
        Ok(samples) => {
            let failed = samples.iter().filter(|s| s.failure.is_some()).count();
            if let Some(why) = samples.iter().find_map(|s| s.failure.as_deref()) {
                say(format!("   {key}: {failed} of {} runs failed, e.g.: {why}", samples.len()));
            }
            for s in samples {
                ctx.record(&Record::Command(s))?;
            }
            ctx.finish(key)
        }
        Err(e) => ctx.fail(key, e, say),
    }
}

/// One pass of a backend's suite on one network mode: the backend's own (every resource,
/// step keys as always), or an extra network path's (network only, keys tagged with the
/// path): native's loopback reference (T_a at n = 1) and ns's further modes.
struct Pass {
    mode: NetMode,
    resources: Vec<Resource>,
    /// Appended to every step key of an extra pass.
    suffix: String,
    overhead_sizes: Option<Vec<usize>>,
    isolation: bool,
    ring: bool,
    note: Option<String>,
}

impl Pass {
    /// The backend's plan as this pass runs it (its own overhead sizes, if it has them).
    fn plan_of(&self, plan: &BackendPlan) -> BackendPlan {
        BackendPlan {
            overhead_sizes: self
                .overhead_sizes
                .clone()
                .unwrap_or_else(|| plan.overhead_sizes.clone()),
            ..plan.clone()
        }
    }

    fn own(c: &Campaign, kind: BackendKind) -> Pass {
        let mode = if kind == BackendKind::Ns { c.network.ns_modes[0] } else { NetMode::Private };
        Pass {
            mode,
            resources: c.resources.clone(),
            suffix: String::new(),
            overhead_sizes: None,
            isolation: true,
            ring: true,
            note: None,
        }
    }

    fn all(c: &Campaign, kind: BackendKind) -> Vec<Pass> {
        let mut v = vec![Pass::own(c, kind)];
        let network: Vec<Resource> =
            c.resources.iter().copied().filter(|&r| r == Resource::Network).collect();
        match kind {
            BackendKind::Native if c.network.native_loopback => v.push(Pass {
                mode: NetMode::Shared,
                resources: network,
                suffix: "/loopback".into(),
                overhead_sizes: Some(vec![1]),
                isolation: false,
                ring: false,
                note: Some("network: the loopback reference (agent and peer in one stack)".into()),
            }),
            BackendKind::Ns => {
                for &mode in &c.network.ns_modes[1..] {
                    let label = if mode == NetMode::Shared { "host-stack" } else { "veth+bridge" };
                    v.push(Pass {
                        mode,
                        resources: network.clone(),
                        suffix: format!("/{label}"),
                        overhead_sizes: None,
                        isolation: true,
                        ring: true,
                        note: Some(format!("network on the {label} path")),
                    });
                }
            }
            _ => {}
        }
        v
    }
}
