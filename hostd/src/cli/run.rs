//! `hostd run`: a campaign from its file, or resumed from its results directory.

use crate::*;

/// The campaign a results directory was started with, checked; errors name the file.
pub(crate) fn stored_campaign(dir: &std::path::Path) -> anyhow::Result<Campaign> {
    hostd::results::check_dir(dir)?;
    let path = dir.join("campaign.toml");
    let bytes = match hostd::results::read_file(&path, hostd::results::MAX_FILE_BYTES) {
        Err(hostd::results::ReadError::Missing { .. }) => anyhow::bail!(
            "{} is not a campaign results directory: it has no campaign.toml",
            dir.display()
        ),
        r => r?,
    };
    let text = String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let c: Campaign =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    c.check().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(c)
}

/// A fresh run's results directory, named after the campaign and the run (unique even for
/// runs started in the same second), with the campaign and provenance written. Removed
/// again if they cannot be written: nothing half-made is left.
pub(crate) fn new_results(
    base: &std::path::Path,
    campaign: &Campaign,
    run: &RunState,
    images: &hostd::backend::Images,
) -> anyhow::Result<ResultsDir> {
    let results =
        ResultsDir::create_unique(base, &format!("{}-run-{}-{}", stamp(), campaign.name, run.run))?;
    let written = (|| {
        results.write("campaign.toml", toml::to_string(campaign)?.as_bytes())?;
        let mut provenance = Provenance::collect(images.hashes.clone());
        provenance.notes.push(format!("campaign {}", campaign.name));
        results.write_json("provenance.json", &provenance)?;
        anyhow::Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&results.path);
        return Err(e);
    }
    Ok(results)
}

/// Whether a results directory holds no sample at all.
pub(crate) fn nothing_recorded(dir: &std::path::Path) -> bool {
    std::fs::metadata(dir.join(hostd::results::SAMPLES)).is_ok_and(|m| m.len() == 0)
}

pub(crate) async fn run_campaign(a: RunArgs) -> anyhow::Result<Done> {
    // Everything that can be checked is, before anything is made.
    if a.engine == Engine::Slurm && a.resume.is_some() {
        anyhow::bail!(
            "--resume with --engine slurm is not built yet: a campaign across hosts writes its results directory once every fleet has run (an interrupted one leaves only its single-host steps' own directory, .single-host-… under --results, which `hostd run --resume` continues on that node); run the campaign again"
        );
    }
    let campaign = campaign_of(&a)?;
    if a.suite_host.is_some() && a.engine != Engine::Slurm {
        anyhow::bail!("--suite-host names a Slurm node: it goes with --engine slurm");
    }
    if a.engine == Engine::Slurm {
        return run_slurm(a, campaign).await;
    }
    if a.dry_run {
        return dry_run(&a, &campaign);
    }
    let images = campaign_images(&a.images, &campaign, &system_source(&a, &campaign))?;
    reap_orphans();
    let run = RunState::create("run", Some(a.resume.clone().unwrap_or_else(|| a.results.clone())))?;
    let made = match &a.resume {
        Some(dir) => ResultsDir::open(dir).map_err(anyhow::Error::from),
        None => new_results(&a.results, &campaign, &run, &images),
    };
    let mut results = match made {
        Ok(r) => r,
        Err(e) => {
            run.finish();
            return Err(e);
        }
    };
    eprintln!("hostd: campaign {} → {}", campaign.name, results.path.display());
    let bar = run_progress(&campaign, &mut results);
    let mut say = |l: String| {
        hostd::progress::line(&bar, &l);
        bar.set_message(l.trim().chars().take(70).collect::<String>());
    };
    let bopts = backend_options(&a.images);
    let mixing = if a.force_mixed { runner::Mixing::Allow } else { runner::Mixing::Refuse };
    let outcome = tokio::select! {
        r = runner::run(&campaign, &images, &bopts, &run, &mut results, mixing, &mut say) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    bar.finish_and_clear();
    // What `--dry-run` predicts, counted: checkable against its plan.
    eprintln!("hostd: booted {}", runner::Boots::so_far());
    let cleaned = run.finish();
    conclude(outcome, a.resume.is_some(), &results, cleaned)
}

/// The campaign to run: resumed, from its file or the default; `--quick` applied; the
/// command line's system over the campaign's.
fn campaign_of(a: &RunArgs) -> anyhow::Result<Campaign> {
    let campaign = match (&a.resume, &a.campaign) {
        (Some(dir), _) => stored_campaign(dir)?,
        (None, Some(p)) => Campaign::load(p).map_err(anyhow::Error::msg)?,
        (None, None) => Campaign::default_campaign(),
    };
    let mut campaign = if a.quick { campaign.quick() } else { campaign };
    // The command line's system wins over the campaign's, and the campaign stored with the
    // run says which the guests booted (a resume boots the same).
    if let Some(s) = &a.images.system {
        campaign.guest.system = Some(s.clone());
        campaign.guest.init = a.images.init;
    }
    Ok(campaign)
}

/// `--dry-run`: the campaign checked against this host and its plan printed, with times
/// estimated from the latest (or the given) results.
fn dry_run(a: &RunArgs, campaign: &Campaign) -> anyhow::Result<Done> {
    let host = hostd::campaign::HostFacts::here();
    campaign.check_host(&host).map_err(|e| anyhow::anyhow!("campaign {}: {e}", campaign.name))?;
    let from = a
        .estimate_from
        .clone()
        .or_else(|| hostd::estimate::latest_results(&a.results, &campaign.name));
    let measured = match &from {
        Some(d) => hostd::estimate::Measured::read(d)?,
        None => hostd::estimate::Measured::default(),
    };
    for l in dry_run_lines(campaign, &host, &measured) {
        println!("{l}");
    }
    Ok(Done::All)
}

/// Where the system name came from, for errors about it: the flag, or the campaign's file.
fn system_source(a: &RunArgs, campaign: &Campaign) -> String {
    match (&a.resume, &a.campaign) {
        _ if a.images.system.is_some() => "--system".to_string(),
        (Some(dir), _) => {
            dir.join("campaign.toml").display().to_string() + ": field `guest.system`"
        }
        (None, Some(p)) => p.display().to_string() + ": field `guest.system`",
        (None, None) => format!("campaign {}: field `guest.system`", campaign.name),
    }
}

/// After the run: a fresh run that recorded nothing is removed; otherwise the report is
/// written and the outcome said (an interrupted run exits 130 with how to resume).
fn conclude(
    outcome: Option<anyhow::Result<()>>,
    resumed: bool,
    results: &ResultsDir,
    cleaned: hostd::runstate::Cleaned,
) -> anyhow::Result<Done> {
    // A fresh run that failed before recording anything leaves nothing behind: there is
    // nothing to resume or report.
    if let (Some(Err(_)), false) = (&outcome, resumed) {
        if nothing_recorded(&results.path) {
            match std::fs::remove_dir_all(&results.path) {
                Ok(()) => {
                    eprintln!("hostd: removed {}: the run recorded nothing", results.path.display())
                }
                Err(e) => eprintln!(
                    "hostd: could not remove {} (the run recorded nothing): {e}",
                    results.path.display()
                ),
            }
            return outcome.expect("matched").map(|()| Done::All);
        }
    }
    let report = hostd::report::write(&results.path, false);
    match outcome {
        None => {
            eprintln!(
                "hostd: interrupted; {cleaned}; resume with: hostd run --resume {}",
                results.path.display()
            );
            std::process::exit(130);
        }
        Some(r) => {
            r?;
            let rep = report?;
            println!("report: {}", report_line(&results.path, &rep));
            Ok(match rep.failed_steps.len() {
                0 => Done::All,
                k => Done::WithFailures(format!(
                    "{k} failed step{} (listed in {})",
                    if k == 1 { "" } else { "s" },
                    results.path.join("index.html").display()
                )),
            })
        }
    }
}

/// `hostd run`'s bar: step k of the campaign's N with ETA, counting the steps recorded
/// (those a resumed run already has included).
pub(crate) fn run_progress(
    campaign: &Campaign,
    results: &mut ResultsDir,
) -> indicatif::ProgressBar {
    let plans = campaign.resolved_plans(hostd::fidelity::llc());
    let total = runner::planned_steps(campaign, &plans, runner::xen_in_lab(campaign)) as u64;
    let done = hostd::results::read_records::<hostd::samples::Record>(&results.path)
        .map(|(r, _)| {
            r.iter().filter(|r| matches!(r, hostd::samples::Record::StepDone { .. })).count()
        })
        .unwrap_or(0) as u64;
    let bar = hostd::progress::steps(total.max(done), "step");
    bar.set_position(done);
    bar.reset_eta();
    let b = bar.clone();
    results.observe(move |line| {
        if let Ok(l) = serde_json::from_slice::<hostd::samples::Line>(line) {
            if let hostd::samples::Record::StepDone { .. }
            | hostd::samples::Record::StepFailed { .. } = l.record
            {
                // A step failed before is retried: it may count twice, so the bar grows.
                if b.position() + 1 > b.length().unwrap_or(0) {
                    b.inc_length(1);
                }
                b.inc(1);
            }
        }
    });
    bar
}

/// What `hostd run --dry-run` prints: the host, each backend's plan, the departures from
/// the paper.
pub(crate) fn dry_run_lines(
    c: &Campaign,
    host: &hostd::campaign::HostFacts,
    measured: &hostd::estimate::Measured,
) -> Vec<String> {
    let llc = host
        .llc
        .map(|l| l.to_string())
        .unwrap_or_else(|| format!("unknown (assumed {})", hostd::fidelity::LLC_FALLBACK));
    let mut v = vec![format!(
        "campaign {}: checks passed on this host ({} MiB, last-level cache {llc})",
        c.name,
        host.mem_total_kib / 1024
    )];
    for p in c.resolved_plans(host.llc) {
        v.push(format!(
            "{}: startup {:?}, overhead/linearity {:?}, memory {:?} (guests of {} MiB), ring {}, workloads {}; {}; {}",
            p.kind,
            p.startup_sizes,
            p.overhead_sizes,
            p.memory_sizes,
            p.mem_for_copies(1),
            p.ring_guests,
            p.workloads.params(vb_protocol::bench::Resource::Cpu),
            p.workloads.params(vb_protocol::bench::Resource::Memory),
            p.workloads.params(vb_protocol::bench::Resource::Disk),
        ));
    }
    if let Some(s) = &c.guest.system {
        v.push(format!(
            "guests boot the system image {s} (init: {}; native boots none)",
            c.guest.init.name()
        ));
    }
    // Users' commands, with the backends that run them (an override's workloads may differ).
    let plans = c.resolved_plans(host.llc);
    let mut commands: Vec<(&hostd::suite::command::UserCommand, Vec<String>)> = Vec::new();
    for p in &plans {
        for cmd in &p.workloads.commands {
            match commands.iter_mut().find(|(c, _)| c == &cmd) {
                Some((_, backends)) => backends.push(p.kind.to_string()),
                None => commands.push((cmd, vec![p.kind.to_string()])),
            }
        }
    }
    for (cmd, backends) in &commands {
        v.push(format!(
            "user workload {}: {} (timeout {} s{}{}) natively and in guests of {}: overhead and linearity at the overhead sizes, its time taken by the agent; the estimate assumes {} s a run",
            cmd.name,
            cmd.line(),
            cmd.timeout_s,
            cmd.cwd.as_ref().map(|d| format!(", cwd {d}")).unwrap_or_default(),
            if cmd.env.is_empty() {
                String::new()
            } else {
                format!(", env {}", cmd.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
            },
            backends.join(", "),
            hostd::estimate::COMMAND_RUN_S,
        ));
    }
    let lab = runner::xen_in_lab(c) && plans.iter().any(|p| p.kind == BackendKind::Xen);
    let work = runner::planned_work(c, &plans, lab);
    v.push(format!(
        "{} steps in all (the progress bar's N){}",
        work.iter().filter(|w| w.is_step()).count(),
        if lab {
            format!(
                "; xen in the Xen lab (this host is not a Xen dom0): its cold startup sizes up to xen.lab_max_guests = {} only",
                c.xen.lab_max_guests
            )
        } else {
            String::new()
        }
    ));
    v.push(format!(
        "boots: {} (every listed backend assumed available: one that is not boots none)",
        runner::Boots::of(&work)
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    v.push(hostd::estimate::estimate(c, &plans, &work, measured, cores).line(measured));
    let d = c.departures_from_paper(host.llc);
    if d.is_empty() {
        v.push("at the paper's sizes".into());
    } else {
        v.push("departs from the paper:".into());
        v.extend(d.into_iter().map(|l| format!("  {l}")));
    }
    v
}

/// The images a campaign's guests boot: the agent's, with the campaign's system (already
/// the command line's, when it gave one) added; errors start with `file`, where the system
/// was named.
fn campaign_images(
    a: &ImageArgs,
    c: &Campaign,
    file: &str,
) -> anyhow::Result<hostd::backend::Images> {
    let mut images = images_or_note(&ImageArgs { system: None, ..a.clone() })?;
    if let Some(name) = &c.guest.system {
        hostd::images::add_system(&mut images, name, c.guest.init)
            .map_err(|e| anyhow::anyhow!("{file}: {e:#}"))?;
    }
    Ok(images)
}

/// `hostd run --engine slurm`: the campaign's single-host steps (all but the ring) by
/// `hostd run` on one node of a Slurm allocation (salloc'd if not inside one), then for
/// each backend the campaign lists, in its order, a fleet of its ring's guests spread over
/// the hosts, one `hostd worker` per node, with its startup and its ring, all merged into
/// one results directory with its report and every host's provenance (docs/multihost.md).
/// With `--dry-run`, the plan per host, with no allocation made.
async fn run_slurm(a: RunArgs, campaign: Campaign) -> anyhow::Result<Done> {
    if let Some(n) = &a.suite_host {
        hostd::multihost::coordinator::check_name(n)?;
    }
    let plans = slurm_plans(&campaign)?;
    if a.dry_run {
        if a.estimate_from.is_some() {
            anyhow::bail!("--estimate-from: a run across hosts has no time estimate yet");
        }
        let (hosts, _) = cli::boot::slurm_hosts(a.slurm.hosts)?;
        let exe = std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("finding hostd's own path: {e}"))?;
        return slurm_dry_run(&campaign, &slurm_fleets(&a, &campaign, &plans, hosts, exe, None));
    }
    let (hosts, exe) = cli::boot::in_allocation(a.slurm.hosts)?;
    let images = hostd::images::resolve(a.images.agent.as_deref()).ok().map(|i| i.hashes);
    let c = slurm_fleets(&a, &campaign, &plans, hosts, exe, images);
    cli::boot::coordinate_campaign(&c).await
}

/// The backends the campaign lists, in its order, with their plans, and a note for each
/// one left out (a ring of fewer than two guests: none on one machine either); an error if
/// the campaign cannot be run across hosts at all.
fn slurm_plans(c: &Campaign) -> anyhow::Result<(Vec<hostd::campaign::BackendPlan>, Vec<String>)> {
    if !c.resources.contains(&vb_protocol::bench::Resource::Network) {
        anyhow::bail!(
            "--engine slurm measures the ring, a network test: campaign {} leaves out the network resource",
            c.name
        );
    }
    if c.guest.system.is_some() {
        anyhow::bail!("--engine slurm boots the agent's image only, not --system");
    }
    let mut notes = Vec::new();
    let plans: Vec<_> = c
        .plans()
        .into_iter()
        .filter(|p| c.backends.iter().any(|b| b == p.kind.name()))
        .filter(|p| {
            let ring = p.ring_guests >= 2;
            if !ring {
                notes.push(format!("{}: its ring has {} guest(s): no ring", p.kind, p.ring_guests));
            }
            ring
        })
        .collect();
    if plans.is_empty() {
        anyhow::bail!(
            "--engine slurm measures each backend's ring across hosts: campaign {} has no backend with a ring of two or more guests ({})",
            c.name,
            notes.join("; ")
        );
    }
    Ok((plans, notes))
}

/// One fleet a backend over `hosts` hosts, each with its ring, and the notes saying what
/// runs across hosts and what does not.
fn slurm_fleets(
    a: &RunArgs,
    campaign: &Campaign,
    (plans, notes): &(Vec<hostd::campaign::BackendPlan>, Vec<String>),
    hosts: u16,
    exe: std::path::PathBuf,
    images: Option<std::collections::BTreeMap<String, String>>,
) -> hostd::multihost::coordinator::CampaignOptions {
    use hostd::multihost::coordinator;
    let fleets: Vec<coordinator::Options> = plans
        .iter()
        .map(|p| coordinator::Options {
            // At least one guest a host, so the ring spans every host.
            groups: hostd::multihost::plan::FleetGroup::only(
                p.kind,
                p.ring_guests.max(usize::from(hosts)),
                p.mem_mib,
                campaign.guest.vcpus,
            ),
            mode: StartMode::Hot,
            parallelism: 0,
            boot_timeout: Duration::from_secs(campaign.guest.boot_timeout_s),
            network: true,
            limits: Default::default(),
            topology: None,
            hosts: usize::from(hosts),
            weights: Vec::new(),
            listen: a.slurm.listen,
            lost_after: Duration::from_secs_f64(a.slurm.lost_after),
            results: a.results.clone(),
            exe: exe.clone(),
            images: images.clone(),
            hold: Duration::ZERO,
            reach: false,
            ring: Some(coordinator::RingOptions {
                workloads: p.workloads.clone(),
                warmup: campaign.warmup,
                reps: campaign.reps,
                timeout: Duration::from_secs(campaign.guest.bench_timeout_s),
            }),
            label: format!("run-slurm-{}", campaign.name),
            notes: Vec::new(),
        })
        .collect();
    let ran: Vec<String> =
        fleets.iter().map(|o| format!("{} ({} guests)", o.backend(), o.n())).collect();
    let mut all = vec![format!(
        "campaign {} across {hosts} hosts: first its single-host steps on one node, then for each backend listed one fleet of its ring's guests (at least one a host) with its startup, then the ring, as planned: {}",
        campaign.name,
        ran.join(", ")
    )];
    all.extend(notes.iter().cloned());
    all.push(
        "ring samples of a guest whose neighbour is on another host have the path veth+bridge+vxlan (a VM's tap+bridge+vxlan): VXLAN-encapsulated over the hosts' link, at the fleet network's MTU, which VM guests' NICs get too".into(),
    );
    coordinator::CampaignOptions {
        fleets,
        results: a.results.clone(),
        label: format!("run-slurm-{}", campaign.name),
        notes: all,
        campaign: campaign.clone(),
        suite: Some(coordinator::SuiteOptions {
            node: a.suite_host.clone(),
            args: node_args(&a.images),
        }),
        exe,
    }
}

/// The image and runtime flags the node's `hostd run` gets as this one did.
fn node_args(i: &ImageArgs) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = Vec::new();
    let mut flag = |name: &str, value: std::ffi::OsString| v.extend([name.into(), value]);
    if let Some(p) = &i.agent {
        flag("--agent", p.clone().into());
    }
    if let Some(p) = &i.images {
        flag("--images", p.clone().into());
    }
    if let Some(x) = &i.accel {
        flag("--accel", x.into());
    }
    flag("--oci-runtime", (&i.oci_runtime).into());
    flag("--qemu", (&i.qemu).into());
    flag("--firecracker", (&i.firecracker).into());
    v
}

/// `--dry-run --engine slurm`: each backend's fleet split over the hosts (in node order:
/// their names are known once allocated) and its ring's rounds; nothing is allocated.
fn slurm_dry_run(
    campaign: &Campaign,
    c: &hostd::multihost::coordinator::CampaignOptions,
) -> anyhow::Result<Done> {
    use hostd::multihost::{plan, proto::SlicePart};
    let hosts = c.fleets.first().map_or(0, |o| o.hosts);
    println!(
        "campaign {} across {hosts} Slurm hosts (dry run: no allocation made, nothing started)",
        campaign.name
    );
    if let Some(s) = &c.suite {
        let node = hostd::multihost::coordinator::without_ring(&c.campaign);
        let plans = node.resolved_plans(hostd::fidelity::llc());
        let steps = runner::planned_steps(&node, &plans, runner::xen_in_lab(&node));
        println!(
            "== single-host steps: hostd run on node {} as one job step, the campaign without its ring: {steps} steps",
            s.node.as_deref().unwrap_or("(the allocation's first)")
        );
    }
    for o in &c.fleets {
        let split = plan::split_groups(&o.groups, &vec![1.0; hosts]).map_err(anyhow::Error::msg)?;
        let g = &o.groups[0];
        println!(
            "== {}: {} guests of {} MiB, one job step of {hosts} workers, hot start at one T0",
            o.backend(),
            o.n(),
            g.mem_mib
        );
        for (i, parts) in split.iter().enumerate() {
            println!("   host {}: {}", i + 1, SlicePart::describe(parts));
        }
        if let Some(r) = &o.ring {
            println!(
                "   ring of {} guests: {} warm-up + {} counted rounds each of bandwidth and latency",
                o.n(),
                r.warmup,
                r.reps
            );
        }
    }
    for n in &c.notes {
        println!("note: {n}");
    }
    println!("note: each backend is probed on every host when its fleet's workers start; one a host cannot run is left out then");
    Ok(Done::All)
}
