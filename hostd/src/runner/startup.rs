//! A backend's startup and memory steps, here or in the Xen lab.

use super::*;

pub(super) async fn startup(
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
            let plan = BootPlan { mode, settle, copy_images: copies, reach: false };
            match boot_and_measure(backend, ctx.run, &cfg, &plan, |_| {}).await {
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
pub(super) async fn xen_lab(ctx: &mut Ctx<'_>, plan: &BackendPlan, say: Say<'_>) -> Result<()> {
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
            // The campaign's system image goes into the lab's dom0 as a disk (docs/xen.md).
            system: ctx.images.system.as_ref().map(|s| s.name.clone()),
            init: ctx.images.system.as_ref().map(|s| s.init).unwrap_or_default(),
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
