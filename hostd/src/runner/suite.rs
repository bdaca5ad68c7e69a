//! A backend's suite steps (overhead, linearity, isolation, ring) and the emulated
//! network's accuracy step, each on a fleet of its own.

use super::*;

/// The network peer on the fleet's bridge, and where guests find it and the data disk:
/// the bridge's address, or loopback for guests that share the peer's stack.
pub(super) async fn start_peer(ctx: &Ctx<'_>, net: &FleetNet) -> Result<(Peer, Targets)> {
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

/// The native plan measuring the host's T_a (n = 1) for `plan`'s own workloads, where
/// they differ from the campaign's (an override).
pub(super) fn host_baseline(native: &BackendPlan, plan: &BackendPlan) -> BackendPlan {
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
pub(super) fn step_key(
    plan: &BackendPlan,
    test: &str,
    n: usize,
    r: Resource,
    suffix: &str,
) -> String {
    format!("{}/{test}/n={n}/{}/{}{suffix}", plan.kind, r.name(), plan.workloads.params(r))
}

/// Overhead and linearity: the memory resource in a fleet of its own, whose guests hold
/// the working set, at its own sizes; the other resources in one fleet of `guest.mem_mib`
/// guests.
pub(super) async fn overhead_and_linearity(
    ctx: &mut Ctx<'_>,
    backend: &AnyBackend,
    plan: &BackendPlan,
    pass: &Pass,
    say: Say<'_>,
) -> Result<()> {
    let (memory, others): (Vec<Resource>, Vec<Resource>) =
        pass.resources.iter().partition(|&&r| r == Resource::Memory);
    // Users' commands run in the backend's own pass, in the fleet of the other resources.
    let commands = own_commands(plan, pass);
    if !others.is_empty() || !commands.is_empty() {
        let (sizes, mem) = (&plan.overhead_sizes, plan.mem_mib);
        overhead_fleet(ctx, backend, plan, pass, &others, commands, sizes, mem, say).await?;
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
        overhead_fleet(ctx, backend, plan, pass, &memory, &[], &sizes, mem, say).await?;
    }
    Ok(())
}

/// The users' commands a pass runs: the plan's, in the backend's own pass only (the extra
/// passes measure other network paths).
pub(super) fn own_commands<'p>(plan: &'p BackendPlan, pass: &Pass) -> &'p [UserCommand] {
    if pass.suffix.is_empty() {
        &plan.workloads.commands
    } else {
        &[]
    }
}

/// A user command's overhead or linearity step key: backend, test, n, the workload's name
/// and what it runs (an override's command of the same name is another step).
pub(super) fn command_key(plan: &BackendPlan, test: &str, n: usize, c: &UserCommand) -> String {
    format!("{}/{test}/n={n}/command/{}/{}", plan.kind, c.name, c.digest())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn overhead_fleet(
    ctx: &mut Ctx<'_>,
    backend: &AnyBackend,
    plan: &BackendPlan,
    pass: &Pass,
    resources: &[Resource],
    commands: &[UserCommand],
    sizes: &[usize],
    mem_mib: u32,
    say: Say<'_>,
) -> Result<()> {
    let key = |test: &str, n: usize, r: Resource| step_key(plan, test, n, r, &pass.suffix);
    let todo = sizes.iter().any(|&n| {
        resources.iter().any(|&r| {
            !ctx.done.contains(&key("overhead", n, r))
                || !ctx.done.contains(&key("linearity", n, r))
        }) || commands.iter().any(|c| {
            !ctx.done.contains(&command_key(plan, "overhead", n, c))
                || !ctx.done.contains(&command_key(plan, "linearity", n, c))
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
                    let why = format!("only {}/{n} guests ready: {why}", fleet.guests.len());
                    for &r in resources {
                        ctx.fail(&key("overhead", n, r), why.clone(), say)?;
                    }
                    for c in commands {
                        ctx.fail(&command_key(plan, "overhead", n, c), why.clone(), say)?;
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
                        let p = step_plan(ctx, r, &plan.workloads, &targets);
                        let m = if test == "overhead" {
                            overhead::measure(&fleet, &p).await
                        } else {
                            linearity::measure(&fleet, &p).await
                        };
                        record_samples(ctx, &k, m, say)?;
                        prune(ctx, &mut fleet, backend, &k, say).await?;
                    }
                }
                for c in commands {
                    for (test, name) in
                        [(SuiteTest::Overhead, "overhead"), (SuiteTest::Linearity, "linearity")]
                    {
                        let k = command_key(plan, name, n, c);
                        if ctx.done.contains(&k) {
                            continue;
                        }
                        let (warmup, reps) = (ctx.campaign.warmup, ctx.campaign.reps);
                        let m = command::measure(&fleet, c, test, warmup, reps).await;
                        record_commands(ctx, &k, m, say)?;
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
pub(super) enum Test {
    Isolation,
    Ring,
}

pub(super) async fn small_fleet_test(
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
                        isolation::measure(&fleet, &step_plan(ctx, *r, w, &targets)).await
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
pub(super) async fn netem_accuracy(
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

/// A campaign's suite step of `resource`: its warm-up, repetitions and per-run deadline.
fn step_plan<'a>(
    ctx: &Ctx<'_>,
    resource: Resource,
    workloads: &'a Workloads,
    targets: &'a Targets,
) -> StepPlan<'a> {
    let c = ctx.campaign;
    StepPlan {
        resource,
        workloads,
        targets,
        warmup: c.warmup,
        reps: c.reps,
        timeout: ctx.timeout(),
    }
}
