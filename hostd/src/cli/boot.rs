//! `hostd boot` and `hostd bench`.

use crate::*;

pub(crate) async fn boot(a: BootArgs) -> anyhow::Result<Done> {
    limits::check_sizes(&a.sizes).map_err(|e| anyhow::anyhow!("--sizes: {e}"))?;
    if a.to_memory_bound && a.sizes.len() < 2 {
        anyhow::bail!("--to-memory-bound fits M_used(n) over the sizes given: give at least two with -n (got {:?})", a.sizes);
    }
    let images = images_or_note(&a.images)?;
    let bopts = backend_options(&a.images);
    let backend = AnyBackend::new(a.backend, &images, &bopts);
    reap_orphans();
    let probe = backend.probe().await?;
    eprintln!("hostd: {}: {probe}", a.backend);
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    let run = RunState::create("boot", Some(a.results.clone()))?;
    let mut results = match ResultsDir::create_unique(
        &a.results,
        &format!("{stamp}-boot-{}-{}", a.backend, run.run),
    ) {
        Ok(r) => r,
        Err(e) => {
            run.finish();
            return Err(e.into());
        }
    };
    let mut provenance = Provenance::collect(images.hashes.clone());
    provenance.notes.push(format!("backend {}: {probe}", a.backend));
    let opts = BootOptions {
        backend: a.backend,
        sizes: a.sizes,
        modes: a.modes,
        fleet: FleetConfig {
            mem_mib: a.mem_mib,
            vcpus: a.vcpus,
            parallelism: a.parallelism,
            network: !a.no_network,
            boot_timeout: Duration::from_secs(a.boot_timeout),
            ..Default::default()
        },
        settle: Duration::from_secs(a.settle),
        results: a.results.clone(),
        floor_reps: a.floor_reps,
        image_copies: a.image_copies,
        reach: a.reach,
        to_memory_bound: a.to_memory_bound,
    };
    let mut bars = bootrun::FleetBars::new();
    let progress = |label: &str, e: FleetEvent| bars.event(label, e);
    let outcome = tokio::select! {
        r = bootrun::run(&backend, &images, &bopts, &opts, &run, &mut results, provenance, progress) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    let cleaned = run.finish();
    match outcome {
        None => {
            eprintln!(
                "hostd: interrupted; {cleaned}; samples recorded so far are in {}",
                results.path.display()
            );
            std::process::exit(130);
        }
        Some(r) => {
            let summary = r?;
            print!("{}", bootrun::table(&summary));
            a.export.write(&hostd::export::of_boot(&summary))?;
            eprintln!("hostd: results in {}", results.path.display());
            if !cleaned.errors.is_empty() {
                anyhow::bail!("teardown: {}", cleaned.errors.join("; "));
            }
            // A fleet in which a guest did not come up is a finished run with failures.
            let short = bootrun::short_fleets(&summary);
            Ok(if short.is_empty() { Done::All } else { Done::WithFailures(short.join("; ")) })
        }
    }
}

pub(crate) async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let images = images_or_note(&a.images)?;
    let workdir = tempfile::Builder::new().prefix("virtbench-bench-").tempdir()?;
    let opts = BenchOptions {
        backend: a.backend,
        images,
        backend_opts: backend_options(&a.images),
        benches: a.bench,
        reps: a.reps,
        warmup: a.warmup,
        instances: a.instances,
        cpu_rounds: a.cpu_rounds,
        mem_n: if a.mem_n == hostd::fidelity::AUTO {
            hostd::fidelity::auto_mem_n(
                hostd::fidelity::llc().unwrap_or(hostd::fidelity::LLC_FALLBACK),
            )
        } else {
            a.mem_n
        },
        mem_passes: a.mem_passes,
        disk_file: a.disk_file,
        disk_mib: a.disk_mib,
        disk_block_kib: a.disk_block_kib,
        net_duration_ms: a.net_duration_ms,
        net_msg_size: a.net_msg_size,
        rr_size: a.rr_size,
        hello_timeout: Duration::from_secs(a.hello_timeout),
        bench_timeout: Duration::from_secs(a.bench_timeout),
        workdir: workdir.path().to_path_buf(),
    };
    let runs = opts.benches.len() as u64 * u64::from(opts.warmup + opts.reps);
    let mut progress =
        BenchProgress { bar: hostd::progress::steps(runs, "run"), pending: Vec::new() };
    let run = microbench::run(&opts, &mut progress).await;
    progress.bar.finish_and_clear();
    let run = run?;
    a.export.write(&hostd::export::of_bench(&run))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&hostd::samples::Versioned::new(&run))?);
    } else {
        print!("{}", microbench::table(&run));
    }
    Ok(())
}

/// `hostd bench`'s progress: the library's lines go above a bar of every run (warm-up and
/// counted) of every benchmark; each "… done in" line is one run.
pub(crate) struct BenchProgress {
    bar: indicatif::ProgressBar,
    pending: Vec<u8>,
}

impl std::io::Write for BenchProgress {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..i]).into_owned();
            if text.contains(" done in ") {
                self.bar.inc(1);
            }
            hostd::progress::line(&self.bar, &text);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `hostd boot --engine slurm`: inside an allocation, the coordinator; outside one, the
/// same command again under `salloc -N K`.
pub(crate) async fn boot_slurm(a: BootArgs) -> anyhow::Result<Done> {
    use hostd::multihost::{coordinator, plan::FleetGroup};
    if a.sizes.len() != 1 {
        anyhow::bail!("--engine slurm boots one fleet: give one size with -n (got {:?})", a.sizes);
    }
    if a.image_copies {
        anyhow::bail!("--engine slurm does not do --image-copies yet");
    }
    if a.to_memory_bound {
        anyhow::bail!("--engine slurm boots one size: --to-memory-bound needs several on one host");
    }
    let (hosts, exe) = in_allocation(a.slurm.hosts)?;
    let mode = a.modes[0];
    if a.modes.len() > 1 {
        eprintln!("hostd: --engine slurm measures one start mode: {}", mode.name());
    }
    // The images are the workers'; the coordinator checks theirs against its own if it has
    // any.
    let images = hostd::images::resolve(a.images.agent.as_deref()).ok().map(|i| i.hashes);
    let o = coordinator::Options {
        groups: FleetGroup::only(a.backend, a.sizes[0], a.mem_mib, a.vcpus),
        mode,
        parallelism: a.parallelism,
        boot_timeout: Duration::from_secs(a.boot_timeout),
        network: !a.no_network,
        limits: Default::default(),
        topology: None,
        hosts: usize::from(hosts),
        weights: a.weights,
        listen: a.slurm.listen,
        lost_after: Duration::from_secs_f64(a.slurm.lost_after),
        results: a.results,
        exe,
        images,
        hold: Duration::from_secs(a.hold),
        reach: a.reach,
        ring: None,
        label: format!("boot-slurm-{}", a.backend),
        notes: Vec::new(),
    };
    coordinate(&o).await
}

/// Runs the coordinator until it is done or Ctrl-C, and sums up its outcome.
pub(crate) async fn coordinate(o: &hostd::multihost::coordinator::Options) -> anyhow::Result<Done> {
    let out = until_ctrl_c(hostd::multihost::coordinator::run(o)).await;
    Ok(slurm_summary(&out?))
}

/// `f`'s output, or on Ctrl-C exit 130: the coordinator's future is dropped, and with it the
/// workers' links; every worker whose link drops tears its fleet down, and srun ends with them.
async fn until_ctrl_c<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::select! {
        r = f => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("hostd: interrupted: the workers tear down as their links drop");
            std::process::exit(130);
        }
    }
}

/// `hostd run --engine slurm`'s campaign, interrupted as [`coordinate`] is.
pub(crate) async fn coordinate_campaign(
    c: &hostd::multihost::coordinator::CampaignOptions,
) -> anyhow::Result<Done> {
    let out = until_ctrl_c(hostd::multihost::coordinator::run_campaign(c)).await?;
    let mut short = Vec::new();
    for (m, boot) in out.record.fleets.iter().zip(&out.boots) {
        println!("== {}", m.backend);
        short.extend(fleet_summary(m, boot).into_iter().map(|s| format!("{}: {s}", m.backend)));
    }
    for l in &out.record.unavailable {
        println!("== {}: unavailable: {}", l.backend, l.reason);
    }
    for l in &out.record.failed {
        short.push(format!("{}: {}", l.backend, l.reason));
    }
    if let Some(h) = &out.record.single_host {
        println!("== single-host steps on node {}: {}", h.node, h.outcome);
        if h.records == 0 {
            short.push(format!("single-host steps: {}", h.outcome));
        } else if h.steps_failed > 0 {
            short.push(format!(
                "{} single-host step(s) failed on node {} (listed in {})",
                h.steps_failed,
                h.node,
                out.results.join("index.html").display()
            ));
        }
    }
    eprintln!("hostd: results in {}", out.results.display());
    Ok(if short.is_empty() { Done::All } else { Done::WithFailures(short.join("; ")) })
}

/// The nodes to use and hostd's own path, inside a Slurm allocation; outside one, runs the
/// same command again under `salloc -N K` (and so does not return unless salloc cannot run).
pub(crate) fn in_allocation(hosts: Option<u16>) -> anyhow::Result<(u16, std::path::PathBuf)> {
    let (hosts, in_job) = slurm_hosts(hosts)?;
    let exe =
        std::env::current_exe().map_err(|e| anyhow::anyhow!("finding hostd's own path: {e}"))?;
    if !in_job {
        // salloc runs the command with the allocation's SLURM_* set: back here, in_job.
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new("salloc")
            .arg("-N")
            .arg(hosts.to_string())
            .arg("--")
            .arg(&exe)
            .args(std::env::args_os().skip(1))
            .exec();
        anyhow::bail!("running salloc: {err}");
    }
    Ok((hosts, exe))
}

/// The nodes to use (`--hosts`, or inside an allocation its size) and whether this process
/// is inside an allocation.
pub(crate) fn slurm_hosts(hosts: Option<u16>) -> anyhow::Result<(u16, bool)> {
    let in_job = std::env::var_os("SLURM_JOB_ID").is_some();
    let job_nodes: Option<u16> =
        std::env::var("SLURM_JOB_NUM_NODES").ok().and_then(|v| v.parse().ok());
    let hosts = match (hosts, job_nodes, in_job) {
        (Some(k), Some(j), true) if k > j => {
            anyhow::bail!("--hosts {k}: the allocation has only {j} nodes")
        }
        (Some(k), _, _) => k,
        (None, Some(j), true) => j,
        (None, _, _) => anyhow::bail!(
            "--engine slurm outside an allocation needs --hosts K (the nodes salloc asks for)"
        ),
    };
    Ok((hosts, in_job))
}

/// What a multi-host boot did, host by host and in all; with failures when guests were
/// lost or the reach check fell short.
pub(crate) fn slurm_summary(out: &hostd::multihost::coordinator::Outcome) -> Done {
    let short = fleet_summary(&out.multihost, &out.boot);
    eprintln!("hostd: results in {}", out.results.display());
    if short.is_empty() {
        Done::All
    } else {
        Done::WithFailures(short.join("; "))
    }
}

/// One fleet across hosts, host by host and in all, printed; what fell short of it.
fn fleet_summary(
    m: &hostd::multihost::coordinator::MultiHost,
    boot: &hostd::startup::FleetBoot,
) -> Vec<String> {
    for h in &m.hosts {
        let c = h
            .clock
            .map_or("?".to_string(), |c| format!("{:+.6} s ± {:.6} s", c.offset_s, c.bound_s));
        let b = h.booted.as_ref();
        eprintln!(
            "hostd: host {}: guests {}: {} ready, lateness {}, clock {c}{}",
            h.hostname,
            hostd::multihost::proto::SlicePart::describe(&h.parts),
            b.map_or(0, |b| b.ready.len()),
            b.map_or("?".into(), |b| format!("{:.4} s", b.lateness_s)),
            h.lost.as_ref().map_or(String::new(), |l| format!(", LOST: {l}"))
        );
    }
    if let Some(r) = &boot.reach {
        println!("reach across hosts: {}", r.line());
    }
    if let Some(r) = &m.ring {
        println!(
            "ring across hosts: {} guests on {} hosts, {} of the {} links to a guest on another host, {} samples",
            r.guests, r.hosts, r.links_across_hosts, r.guests, r.samples
        );
        for f in &r.failures {
            eprintln!("hostd: ring: {f}");
        }
    }
    println!(
        "T_startup({}) across {} hosts: {}",
        m.n,
        m.hosts.len(),
        m.t_startup_s.map_or("no guest ready".into(), |t| format!("{t:.4} s"))
    );
    if let Some(mem) = &m.memory {
        println!(
            "memory across hosts: {:.1} MiB for {} guests (each host's guests' cgroups and hostd; per host in multihost.json)",
            mem.slice_kib as f64 / 1024.0,
            mem.guests
        );
    }
    hostd::multihost::coordinator::shortfalls(m, boot)
}

/// `hostd worker`.
pub(crate) async fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    // A worker with no images still says hello: the coordinator names what it lacks.
    let images = hostd::images::resolve(a.images.agent.as_deref()).unwrap_or_else(|e| {
        eprintln!("hostd worker: no images: {e:#}");
        hostd::backend::Images::default()
    });
    hostd::multihost::worker::run(hostd::multihost::worker::WorkerOptions {
        connect: a.connect,
        token: a.token,
        backends: a.backend,
        backend_opts: backend_options(&a.images),
        images,
        lost_after: Duration::from_secs_f64(a.lost_after),
        systems: a.systems,
    })
    .await
}
