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
use crate::samples::Record;
use crate::startup::{boot_and_measure, StartMode};

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
    for &n in &opts.sizes {
        for &mode in &opts.modes {
            let cfg = FleetConfig { n, ..opts.fleet.clone() };
            let label = format!("{} n={n} {}", opts.backend, mode.name());
            let copies = opts.image_copies.then_some(images);
            let b = boot_and_measure(backend, run, &cfg, mode, opts.settle, copies, |e| {
                progress(&label, e)
            })
            .await
            .with_context(|| label.clone())?;
            for s in &b.startups {
                results.append(&Record::Startup(s.clone()))?;
            }
            for f in &b.failures {
                results.append(&Record::Failure {
                    backend: b.backend,
                    n,
                    mode,
                    failure: f.clone(),
                })?;
            }
            if let Some(m) = &b.memory {
                results.append(&Record::Memory(m.clone()))?;
            }
            results.append(&Record::FleetDone {
                backend: b.backend,
                n,
                mode,
                ready: b.startups.len(),
                failed: b.failures.len(),
                t_startup_s: b.t_startup(),
            })?;
            rows.push(row(&b));
        }
    }
    let mut summary = summarise(provenance, rows);
    if opts.floor_reps > 0 {
        summary.floor = crate::floor::measure(
            opts.backend,
            images,
            backend_opts,
            run,
            opts.floor_reps,
            opts.fleet.boot_timeout,
        )
        .await
        .context("measuring the startup floor")?;
    }
    write_outputs(results, &summary)?;
    crate::report::write(&results.path, false).context("writing the report")?;
    Ok(summary)
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
        ])?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("boot.csv: {}", e.error()))
}
