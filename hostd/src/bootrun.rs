//! `hostd boot`: concurrent cold and hot startup and memory occupation of one backend for
//! several fleet sizes, recorded durably, summarised, fitted and plotted.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::backend::{AnyBackend, BackendKind};
use crate::fleet::{FleetConfig, FleetEvent};
use crate::plot;
use crate::provenance::Provenance;
use crate::results::ResultsDir;
use crate::runstate::RunState;
use crate::startup::{boot_and_measure, BootPlan, StartMode};

#[derive(Debug, Clone)]
pub struct BootOptions {
    pub backend: BackendKind,
    /// Fleet sizes, each measured cold then hot.
    pub sizes: Vec<usize>,
    pub modes: Vec<StartMode>,
    pub fleet: FleetConfig,
    /// Idle time after the last guest is ready, before memory is read.
    pub settle: Duration,
    /// Parent of the results directory.
    pub results: PathBuf,
    /// Pairs of hot starts measured against the backend's floor (0: none).
    pub floor_reps: usize,
    /// Each guest boots its own copies of the images (the paper's setting).
    pub image_copies: bool,
    /// Check that every guest reaches a neighbour on another bridge ([`crate::reach`]).
    pub reach: bool,
    /// After `sizes`, boot the largest fleet that fits in memory ([`crate::capacity`]).
    pub to_memory_bound: bool,
}
// The summary's types sit below the report (hostd-measure), its figures and table in the
// report's crate; re-exported so `hostd::bootrun::…` keeps naming them.
pub use crate::boot::{fit_points, row, summarise, BootRow, BootSummary, RowChecks};
pub use crate::bootreport::{charts, startup_notes_html, table};

/// Runs the whole measurement, appending samples as they come; `progress` sees fleet events.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    backend: &AnyBackend,
    images: &crate::backend::Images,
    backend_opts: &crate::backend::BackendOptions,
    opts: &BootOptions,
    run: &RunState,
    results: &mut ResultsDir,
    provenance: Provenance,
    mut progress: impl FnMut(&str, FleetEvent),
) -> Result<BootSummary> {
    results.write_json("provenance.json", &provenance)?;
    let mut rows = Vec::new();
    let mut bound = None;
    let mut sizes = opts.sizes.clone();
    let mut i = 0;
    while i < sizes.len() {
        let n = sizes[i];
        i += 1;
        // From the third size on, a fleet that the sizes so far say would not fit is not
        // started: the run stops with the bound instead of meeting the OOM killer.
        if let Some(b) = crate::boot::memory_bound(&rows).filter(|b| n > b.largest_n) {
            let b = crate::capacity::MemoryBound { refused_n: Some(n), ..b };
            tracing::warn!("{}", b.line());
            bound = Some(b);
            break;
        }
        for &mode in &opts.modes {
            let cfg = FleetConfig { n, ..opts.fleet.clone() };
            let label = format!("{} n={n} {}", opts.backend, mode.name());
            let copies = opts.image_copies.then_some(images);
            let plan =
                BootPlan { mode, settle: opts.settle, copy_images: copies, reach: opts.reach };
            let b = boot_and_measure(backend, run, &cfg, &plan, |e| progress(&label, e))
                .await
                .with_context(|| label.clone())?;
            for r in b.records() {
                results.append(&r)?;
            }
            rows.push(row(&b));
        }
        if i == sizes.len() && opts.to_memory_bound {
            match crate::boot::memory_bound(&rows).map(|b| capped(b, opts.backend)) {
                Some(b) if b.size() > n => {
                    eprintln!("hostd: {}: booting n = {}", b.line(), b.size());
                    sizes.push(b.size());
                    bound = Some(b);
                }
                Some(b) => bound = Some(b),
                None => tracing::warn!(
                    "--to-memory-bound: no bound from these sizes (M_used did not grow with n): no larger fleet booted"
                ),
            }
        }
    }
    let mut summary = summarise(provenance, rows);
    summary.memory_bound = bound;
    if opts.floor_reps > 0 {
        // Floor fleets of the sizes measured hot: the comparison at the same concurrency.
        let hot_sizes: Vec<usize> =
            if opts.modes.contains(&StartMode::Hot) { opts.sizes.clone() } else { Vec::new() };
        summary.floor = crate::floor::measure(
            opts.backend,
            images,
            backend_opts,
            run,
            opts.floor_reps,
            &hot_sizes,
            opts.fleet.boot_timeout,
        )
        .await
        .context("measuring the startup floor")?;
    }
    write_outputs(results, &summary)?;
    crate::report::write(&results.path, false).context("writing the report")?;
    Ok(summary)
}

/// `b` with the limits that bind before memory: hostd's descriptors and the fleet
/// network's address plan.
fn capped(mut b: crate::capacity::MemoryBound, kind: BackendKind) -> crate::capacity::MemoryBound {
    let plan = crate::limits::GUESTS.max as usize;
    let fds = crate::fleet::descriptor_capacity(kind).unwrap_or(usize::MAX);
    if fds < b.largest_n && fds <= plan {
        b.capped_by = Some(("hostd's file descriptors (ulimit -n)".into(), fds));
    } else if plan < b.largest_n {
        b.capped_by = Some(("the fleet network's addresses".into(), plan));
    }
    b
}

/// The command's own detail: `boot.json` (the summary with the floor) and `boot.csv` (one
/// row per fleet), and its figures. The report files (`report.*`, `index.html`) are
/// `hostd report`'s, the same in every results directory.
pub fn write_outputs(results: &ResultsDir, s: &BootSummary) -> Result<()> {
    results.write_json("boot.json", s)?;
    results.write("boot.csv", &csv(s)?)?;
    for (name, chart) in charts(s) {
        plot::write(&chart, &results.path.join("figures").join(name))
            .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

fn csv(s: &BootSummary) -> Result<Vec<u8>> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    w.write_record([
        "backend",
        "n",
        "mode",
        "ready",
        "failed",
        "t_startup_s",
        "ready_mean_s",
        "ready_std_s",
        "ready_min_s",
        "ready_max_s",
        "guest_boot_mean_s",
        "m_used_mib",
        "per_guest_cgroup_mib",
        "per_guest_pss_mib",
        "stall_cpu",
        "stall_memory",
        "stall_io",
    ])?;
    let o = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_default();
    for r in &s.rows {
        w.write_record([
            r.backend.to_string(),
            r.n.to_string(),
            r.mode.name().to_string(),
            r.ready.to_string(),
            r.failed.to_string(),
            o(r.t_startup_s),
            o(r.ready_times.as_ref().map(|x| x.mean)),
            o(r.ready_times.as_ref().map(|x| x.std_dev)),
            o(r.ready_times.as_ref().map(|x| x.min)),
            o(r.ready_times.as_ref().map(|x| x.max)),
            o(r.guest_boot.as_ref().map(|x| x.mean)),
            o(r.m_used_mib),
            o(r.per_guest_cgroup_mib),
            o(r.per_guest_pss_mib),
            o(r.checks.pressure.map(|p| p.cpu)),
            o(r.checks.pressure.map(|p| p.memory)),
            o(r.checks.pressure.map(|p| p.io)),
        ])?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("boot.csv: {}", e.error()))
}

/// One progress bar per fleet size and mode of `hostd boot`: guests ready out of n, and a
/// line per guest that failed.
pub struct FleetBars {
    bars: indicatif::MultiProgress,
    /// The fleet being booted: its label, bar, guests ready and failed.
    current: Option<(String, indicatif::ProgressBar, usize, usize)>,
}

impl Default for FleetBars {
    fn default() -> Self {
        Self::new()
    }
}

impl FleetBars {
    /// No bar yet: the first event starts one.
    pub fn new() -> Self {
        FleetBars { bars: crate::progress::multi(), current: None }
    }

    /// Counts `e` on the bar of the fleet `label` ("… n=N …"), starting that bar (and
    /// finishing the previous one) when the label changes.
    pub fn event(&mut self, label: &str, e: FleetEvent) {
        let n: usize = label
            .split("n=")
            .nth(1)
            .and_then(|x| x.split(' ').next())
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        if self.current.as_ref().map(|c| c.0.as_str()) != Some(label) {
            if let Some((_, b, _, _)) = self.current.take() {
                b.finish();
            }
            let b = self.bars.add(indicatif::ProgressBar::new(n as u64));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>24} [{bar:30}] {pos}/{len} ready {msg} {elapsed}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            self.current = Some((label.to_string(), b, 0, 0));
        }
        let (_, b, ready, failed) = self.current.as_mut().expect("set above");
        match e {
            FleetEvent::Ready { .. } => *ready += 1,
            FleetEvent::Failed(f) => {
                *failed += 1;
                let line = format!(
                    "  {} {}: {:?}: {}",
                    label,
                    f.name,
                    f.kind,
                    f.error.lines().next().unwrap_or("")
                );
                crate::progress::line(b, &line);
            }
        }
        b.set_position(*ready as u64);
        if *failed > 0 {
            b.set_message(format!("{failed} failed"));
        }
    }
}

/// The fleets of `s` in which a guest did not come up ("n=N mode: R of N ready").
pub fn short_fleets(s: &BootSummary) -> Vec<String> {
    let mut short: Vec<String> = s
        .rows
        .iter()
        .filter(|r| r.failed > 0 || r.ready < r.n)
        .map(|r| format!("n={} {}: {} of {} ready", r.n, r.mode.name(), r.ready, r.n))
        .collect();
    // A reachability check that was asked for and failed is a failure of the run too.
    for r in &s.rows {
        if let Some(x) = r.checks.reach.as_ref().filter(|x| x.reached < x.checked) {
            short.push(format!(
                "n={} {}: {} of {} guests reached their neighbour",
                r.n,
                r.mode.name(),
                x.reached,
                x.checked
            ));
        }
    }
    short
}
