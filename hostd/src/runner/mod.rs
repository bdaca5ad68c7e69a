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
use crate::startup::boot_and_measure;
use crate::suite::{isolation, linearity, overhead, ring, BenchSample, Targets};

mod plan;
pub use plan::{planned_steps, planned_work, xen_in_lab, Boots, Work};
use plan::{LABS, LAB_GUESTS};

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
        let plan = &BackendPlan {
            overhead_sizes: pass
                .overhead_sizes
                .clone()
                .unwrap_or_else(|| plan.overhead_sizes.clone()),
            ..plan.clone()
        };
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

async fn startup(
    ctx: &mut Ctx<'_>,
    backend: &AnyBackend,
    plan: &BackendPlan,
    say: Say<'_>,
) -> Result<()> {
    for &n in &plan.startup_sizes {
        for &mode in &ctx.campaign.startup.modes {
            let key = format!("{}/startup/n={n}/{}", plan.kind, mode.name());
            if ctx.done.contains(&key) {
                continue;
            }
            let cfg = FleetConfig {
                data_disk: None,
                data_copies: None,
                ..ctx.fleet_config(n, plan.mem_mib)
            };
            let settle = Duration::from_secs(ctx.campaign.startup.settle_s);
            let copies = ctx.campaign.startup.image_copies.then_some(ctx.images);
            match boot_and_measure(backend, ctx.run, &cfg, mode, settle, copies, |_| {}).await {
                Ok(b) => {
                    // The step's completion is its StepDone, not FleetDone.
                    for r in b.records() {
                        if !matches!(r, Record::FleetDone { .. }) {
                            ctx.record(&r)?;
                        }
                    }
                    say(format!(
                        "   startup n={n} {}: {}/{n} ready, T_startup {} s{}, M_used {} MiB{}",
                        b.label(),
                        b.startups.len(),
                        b.t_startup().map(|t| format!("{t:.3}")).unwrap_or("-".into()),
                        if b.startups.len() < n {
                            format!(" (partial: {} of {n})", b.startups.len())
                        } else {
                            String::new()
                        },
                        b.memory
                            .as_ref()
                            .map(|m| format!(
                                "{:.1} ± {:.1}",
                                m.fleet_kib() as f64 / 1024.0,
                                m.checks.noise_kib.unwrap_or(0) as f64 / 1024.0
                            ))
                            .unwrap_or("-".into()),
                        match &b.memory {
                            Some(m) if m.disagrees() => format!(
                                " (guests' cgroups + hostd: {:.1} MiB, beyond the noise bound)",
                                m.checks.cross_check_kib.unwrap_or(0) as f64 / 1024.0
                            ),
                            _ => String::new(),
                        }
                    ));
                    ctx.finish(&key)?;
                }
                Err(e) => ctx.fail(&key, format!("{e:#}"), say)?,
            }
        }
    }
    Ok(())
}

/// The `xen` backend where this host is not a Xen dom0: one Xen lab (`hostd xen-lab`) per
/// startup size, whose startup, memory and CPU samples join the campaign's like any
/// backend's. The lab measures cold starts only (each lab is a freshly booted Xen host) and
/// no suite beyond the CPU benchmark at n busy guests; its own results directories (with
/// Xen's and dom0's console) are kept under `xen-lab/`.
async fn xen_lab(ctx: &mut Ctx<'_>, plan: &BackendPlan, say: Say<'_>) -> Result<()> {
    let max = ctx.campaign.xen.lab_max_guests;
    let mut probed = false;
    for &n in &plan.startup_sizes {
        let key = format!("{}/startup/n={n}/cold", plan.kind);
        if n > max {
            say(format!("   startup n={n}: not run in the Xen lab (xen.lab_max_guests = {max})"));
            continue;
        }
        if ctx.done.contains(&key) {
            continue;
        }
        let g = &ctx.campaign.guest;
        let args = crate::xenlab::LabArgs {
            guests: n,
            mem_mib: plan.mem_mib,
            vcpus: g.vcpus,
            cpu_rounds: plan.workloads.cpu_rounds,
            host_mib: None,
            timeout: g.boot_timeout_s.max(300).saturating_add(g.bench_timeout_s),
            qemu: ctx.opts.qemu.clone(),
            accel: ctx.opts.accel.clone(),
            results: ctx.results.path.join("xen-lab"),
            in_dom0: None,
        };
        let mut lab_say = |l: String| say(format!("   {l}"));
        match crate::xenlab::run(&args, &mut lab_say).await {
            Ok(o) => {
                let r = &o.report;
                LABS.fetch_add(1, Ordering::Relaxed);
                LAB_GUESTS.fetch_add(r.boot.n, Ordering::Relaxed);
                if !probed {
                    ctx.record(&Record::BackendProbe {
                        backend: plan.kind,
                        description: format!("{}; {}", r.probe, crate::xenlab::EMULATED_NOTE),
                        emulated: true,
                    })?;
                    probed = true;
                }
                let cpu = ctx.campaign.resources.contains(&Resource::Cpu);
                // As the campaign's own startup steps: completion is its StepDone, not FleetDone.
                for rec in r.records() {
                    match rec {
                        Record::FleetDone { .. } => {}
                        Record::Bench(_) if !cpu => {}
                        rec => ctx.record(&rec)?,
                    }
                }
                let b = &r.boot;
                say(format!(
                    "   startup n={n} cold (Xen lab): {}/{n} ready, T_startup {} s, M_used {} MiB",
                    b.startups.len(),
                    b.t_startup().map(|t| format!("{t:.3}")).unwrap_or("-".into()),
                    b.memory
                        .as_ref()
                        .map(|m| format!("{:.1}", m.m_used_kib as f64 / 1024.0))
                        .unwrap_or("-".into())
                ));
                // Startup and memory are recorded: the step is done, whatever came after.
                ctx.finish(&key)?;
                if let Some(e) = &r.bench_error {
                    let bench_key = format!(
                        "{}/linearity/n={n}/cpu/{} (Xen lab)",
                        plan.kind,
                        plan.workloads.params(Resource::Cpu)
                    );
                    ctx.fail(&bench_key, e.clone(), say)?;
                }
                if !r.leftover_domains.is_empty() {
                    ctx.fail(
                        &format!("{key} (Xen lab teardown)"),
                        format!("domains left: {}", r.leftover_domains.join(", ")),
                        say,
                    )?;
                }
            }
            Err(e) => ctx.fail(&key, format!("the Xen lab: {e:#}"), say)?,
        }
    }
    Ok(())
}

/// The network peer on the fleet's bridge, and where guests find it and the data disk:
/// the bridge's address, or loopback for guests that share the peer's stack.
async fn start_peer(ctx: &Ctx<'_>, net: &FleetNet) -> Result<(Peer, Targets)> {
    let peer = Peer::start(ctx.images, ctx.opts, ctx.run, net).await?;
    let addr = match net.mode {
        NetMode::Private => peer.addr,
        NetMode::Shared => {
            std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, peer.addr.port()))
        }
    };
    let targets = Targets {
        disk: ctx.disk.clone().unwrap_or_else(|| PathBuf::from("/nonexistent")),
        peer: addr,
    };
    Ok((peer, targets))
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

/// The native plan measuring the host's T_a (n = 1) for `plan`'s own workloads, where
/// they differ from the campaign's (an override).
fn host_baseline(native: &BackendPlan, plan: &BackendPlan) -> BackendPlan {
    BackendPlan {
        kind: BackendKind::Native,
        startup_sizes: vec![],
        overhead_sizes: vec![1],
        memory_sizes: vec![1],
        ring_guests: 0,
        mem_mib: native.mem_mib,
        mem_bench_mib: native.mem_bench_mib,
        workloads: plan.workloads.clone(),
    }
}

/// An overhead or linearity step's key: backend, test, n, resource, workload, path.
fn step_key(plan: &BackendPlan, test: &str, n: usize, r: Resource, suffix: &str) -> String {
    format!("{}/{test}/n={n}/{}/{}{suffix}", plan.kind, r.name(), plan.workloads.params(r))
}

/// Overhead and linearity: the memory resource in a fleet of its own, whose guests hold
/// the working set, at its own sizes; the other resources in one fleet of `guest.mem_mib`
/// guests.
async fn overhead_and_linearity(
    ctx: &mut Ctx<'_>,
    backend: &AnyBackend,
    plan: &BackendPlan,
    pass: &Pass,
    say: Say<'_>,
) -> Result<()> {
    let (memory, others): (Vec<Resource>, Vec<Resource>) =
        pass.resources.iter().partition(|&&r| r == Resource::Memory);
    if !others.is_empty() {
        overhead_fleet(ctx, backend, plan, pass, &others, &plan.overhead_sizes, plan.mem_mib, say)
            .await?;
    }
    if !memory.is_empty() {
        let mem = u32::try_from(plan.mem_for_copies(1))
            .context("guest memory for the memory benchmark")?;
        // A pass limited to some sizes (a baseline at n = 1) keeps to them.
        let sizes: Vec<usize> = plan
            .memory_sizes
            .iter()
            .copied()
            .filter(|n| pass.overhead_sizes.as_ref().is_none_or(|o| o.contains(n)))
            .collect();
        overhead_fleet(ctx, backend, plan, pass, &memory, &sizes, mem, say).await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn overhead_fleet(
    ctx: &mut Ctx<'_>,
    backend: &AnyBackend,
    plan: &BackendPlan,
    pass: &Pass,
    resources: &[Resource],
    sizes: &[usize],
    mem_mib: u32,
    say: Say<'_>,
) -> Result<()> {
    let key = |test: &str, n: usize, r: Resource| step_key(plan, test, n, r, &pass.suffix);
    let todo = sizes.iter().any(|&n| {
        resources.iter().any(|&r| {
            !ctx.done.contains(&key("overhead", n, r))
                || !ctx.done.contains(&key("linearity", n, r))
        })
    });
    if !todo {
        return Ok(());
    }
    let cfg = FleetConfig { n: 0, net_mode: pass.mode, ..ctx.fleet_config(0, mem_mib) };
    let mut fleet = fleet::start(backend, ctx.run, &cfg, |_| {}).await?;
    let result = async {
        let (peer, targets) = start_peer(ctx, fleet.net.as_ref().expect("network on")).await?;
        let r = async {
            for &n in sizes {
                fleet.grow(backend, ctx.run, n, |_| {}).await?;
                if fleet.guests.len() < n {
                    let why = fleet.failures.last().map(|f| f.error.clone()).unwrap_or_default();
                    for &r in resources {
                        ctx.fail(
                            &key("overhead", n, r),
                            format!("only {}/{n} guests ready: {why}", fleet.guests.len()),
                            say,
                        )?;
                    }
                    break;
                }
                for &r in resources {
                    for (test, k) in
                        [("overhead", key("overhead", n, r)), ("linearity", key("linearity", n, r))]
                    {
                        if ctx.done.contains(&k) {
                            continue;
                        }
                        let w = &plan.workloads;
                        let (c, t) = (ctx.campaign, ctx.timeout());
                        let m = if test == "overhead" {
                            overhead::measure(&fleet, r, w, &targets, c.warmup, c.reps, t).await
                        } else {
                            linearity::measure(&fleet, r, w, &targets, c.warmup, c.reps, t).await
                        };
                        record_samples(ctx, &k, m, say)?;
                        prune(ctx, &mut fleet, backend, &k, say).await?;
                    }
                }
                say(format!("   overhead and linearity at n={n} done"));
            }
            anyhow::Ok(())
        }
        .await;
        peer.stop().await;
        r
    }
    .await;
    teardown(ctx, fleet, backend, result).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Test {
    Isolation,
    Ring,
}

async fn small_fleet_test(
    ctx: &mut Ctx<'_>,
    backend: &AnyBackend,
    plan: &BackendPlan,
    test: Test,
    pass: &Pass,
    say: Say<'_>,
) -> Result<()> {
    let resources = pass.resources.clone();
    let sfx = &pass.suffix;
    let keys: Vec<(Option<Resource>, String)> = match test {
        Test::Isolation => resources
            .iter()
            .map(|&r| {
                (
                    Some(r),
                    format!(
                        "{}/isolation/{}/{}{sfx}",
                        plan.kind,
                        r.name(),
                        plan.workloads.params(r)
                    ),
                )
            })
            .collect(),
        Test::Ring => {
            vec![(
                None,
                format!(
                    "{}/ring/n={}/{}{sfx}",
                    plan.kind,
                    plan.ring_guests,
                    plan.workloads.params(Resource::Network)
                ),
            )]
        }
    };
    if keys.iter().all(|(_, k)| ctx.done.contains(k)) {
        return Ok(());
    }
    let n = if test == Test::Isolation { 2 } else { plan.ring_guests };
    // Isolation's guest 2 runs two copies of each benchmark: room for two working sets.
    let mem = if test == Test::Isolation && resources.contains(&Resource::Memory) {
        u32::try_from(plan.mem_for_copies(2)).context("guest memory for the memory benchmark")?
    } else {
        plan.mem_mib
    };
    let mut cfg = FleetConfig { net_mode: pass.mode, ..ctx.fleet_config(n, mem) };
    if test == Test::Ring {
        // The ring reads no disk: no copies to make.
        (cfg.data_disk, cfg.data_copies) = (None, None);
    }
    let mut fleet = match fleet::start(backend, ctx.run, &cfg, |_| {}).await {
        Ok(f) => f,
        Err(e) => {
            for (_, k) in &keys {
                ctx.fail(k, e.to_string(), say)?;
            }
            return Ok(());
        }
    };
    let result = async {
        if fleet.guests.len() < n {
            let why = fleet.failures.first().map(|f| f.error.clone()).unwrap_or_default();
            for (_, k) in &keys {
                ctx.fail(k, format!("only {}/{n} guests ready: {why}", fleet.guests.len()), say)?;
            }
            return anyhow::Ok(());
        }
        let (peer, targets) = start_peer(ctx, fleet.net.as_ref().expect("network on")).await?;
        let r = async {
            for (r, k) in &keys {
                if ctx.done.contains(k) {
                    continue;
                }
                let (c, t, w) = (ctx.campaign, ctx.timeout(), &plan.workloads);
                let m = match (test, r) {
                    (Test::Isolation, Some(r)) => {
                        isolation::measure(&fleet, *r, w, &targets, c.warmup, c.reps, t).await
                    }
                    _ => ring::measure(&fleet, w, c.warmup, c.reps, t).await,
                };
                record_samples(ctx, k, m, say)?;
                prune(ctx, &mut fleet, backend, k, say).await?;
            }
            anyhow::Ok(())
        }
        .await;
        peer.stop().await;
        r
    }
    .await;
    let result = teardown(ctx, fleet, backend, result).await;
    say(format!("   {} done", if test == Test::Isolation { "isolation" } else { "ring" }));
    result
}

/// The emulated network's accuracy ([`crate::netem_accuracy`]) at each of `[netem]`'s
/// sizes: a fleet of n guests, all shaped alike and measuring at once.
async fn netem_accuracy(
    ctx: &mut Ctx<'_>,
    backend: &AnyBackend,
    plan: &BackendPlan,
    say: Say<'_>,
) -> Result<()> {
    let s = &ctx.campaign.netem;
    for &n in &s.sizes {
        let key = format!("{}/netem/n={n}/{}", plan.kind, s.describe());
        if ctx.done.contains(&key) {
            continue;
        }
        let mut cfg = ctx.fleet_config(n, plan.mem_mib);
        (cfg.data_disk, cfg.data_copies) = (None, None);
        let fleet = match fleet::start(backend, ctx.run, &cfg, |_| {}).await {
            Ok(f) => f,
            Err(e) => {
                ctx.fail(&key, e.to_string(), say)?;
                continue;
            }
        };
        let result = async {
            if fleet.guests.len() < n {
                let why = fleet.failures.first().map(|f| f.error.clone()).unwrap_or_default();
                let got = fleet.guests.len();
                return ctx.fail(&key, format!("only {got}/{n} guests ready: {why}"), say);
            }
            let (peer, targets) = start_peer(ctx, fleet.net.as_ref().expect("network on")).await?;
            let (c, w) = (ctx.campaign, &plan.workloads);
            let m = crate::netem_accuracy::measure(
                &fleet,
                &c.netem,
                targets.peer,
                w.net_duration_ms,
                w.net_msg_size,
                c.warmup,
                c.reps,
                ctx.timeout(),
            )
            .await;
            peer.stop().await;
            match m {
                Ok(samples) => {
                    for smp in samples {
                        ctx.record(&crate::samples::Record::Netem(smp))?;
                    }
                    ctx.finish(&key)
                }
                Err(e) => ctx.fail(&key, e, say),
            }
        }
        .await;
        teardown(ctx, fleet, backend, result).await?;
        say(format!("   netem accuracy at n={n} done"));
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
