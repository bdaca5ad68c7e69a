//! `hostd boot`: concurrent cold and hot startup and memory occupation of one backend for
//! several fleet sizes, recorded durably, summarised, fitted and plotted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::backend::{AnyBackend, BackendKind};
use crate::fleet::{FleetConfig, FleetEvent};
use crate::plot::{self, Chart, Point, Series};
use crate::provenance::Provenance;
use crate::results::ResultsDir;
use crate::runstate::RunState;
use crate::samples::Record;
use crate::startup::{boot_and_measure, FleetBoot, StartMode};
use crate::stats::{linear_fit, LinearFit, Summary};

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
}

/// One row of the summary: a fleet size in one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootRow {
    pub backend: BackendKind,
    pub n: usize,
    pub mode: StartMode,
    pub ready: usize,
    pub failed: usize,
    /// max(startup[1..n]), seconds.
    pub t_startup_s: Option<f64>,
    /// Distribution of the per-guest ready times, seconds.
    pub ready_times: Option<Summary>,
    /// Guest kernel uptime at ready (own-kernel backends), seconds.
    pub guest_boot: Option<Summary>,
    pub m_used_mib: Option<f64>,
    /// Mean per-guest cgroup memory and PSS, MiB.
    pub per_guest_cgroup_mib: Option<f64>,
    pub per_guest_pss_mib: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootSummary {
    pub provenance: Provenance,
    pub rows: Vec<BootRow>,
    /// M_used(n) = n·M_VM + M_tool per "backend mode" (MiB), when ≥ 2 sizes were measured.
    pub memory_fit: BTreeMap<String, LinearFit>,
    /// Hot start against its floor (hostd boot only).
    #[serde(default)]
    pub floor: Option<crate::floor::Floor>,
}

pub fn row(b: &FleetBoot) -> BootRow {
    let mib = |k: f64| k / 1024.0;
    let mem = b.memory.as_ref();
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    BootRow {
        backend: b.backend,
        n: b.n,
        mode: b.mode,
        ready: b.startups.len(),
        failed: b.failures.len(),
        t_startup_s: b.t_startup(),
        ready_times: b.ready_summary(),
        guest_boot: Summary::of("guest_boot", "s", b.startups.iter().filter_map(|s| s.guest_boot_s).collect()),
        m_used_mib: mem.map(|m| mib(m.m_used_kib as f64)),
        per_guest_cgroup_mib: mem.and_then(|m| mean(m.guests.iter().filter_map(|g| g.cgroup_kib).map(|k| mib(k as f64)).collect())),
        per_guest_pss_mib: mem.and_then(|m| mean(m.guests.iter().map(|g| mib(g.pss_kib as f64)).collect())),
    }
}

pub fn summarise(provenance: Provenance, rows: Vec<BootRow>) -> BootSummary {
    let mut memory_fit = BTreeMap::new();
    let mut kinds: Vec<BackendKind> = rows.iter().map(|r| r.backend).collect();
    kinds.dedup();
    for b in kinds {
        for mode in [StartMode::Cold, StartMode::Hot] {
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.backend == b && r.mode == mode)
                .filter_map(|r| Some((r.ready as f64, r.m_used_mib?)))
                .collect();
            if let Some(f) = linear_fit(&pts) {
                memory_fit.insert(format!("{b} {}", mode.name()), f);
            }
        }
    }
    BootSummary { provenance, rows, memory_fit, floor: None }
}

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
            let b = boot_and_measure(backend, run, &cfg, mode, opts.settle, |e| progress(&label, e))
                .await
                .with_context(|| label.clone())?;
            for s in &b.startups {
                results.append(&Record::Startup(s.clone()))?;
            }
            for f in &b.failures {
                results.append(&Record::Failure { backend: b.backend, n, mode, failure: f.clone() })?;
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
        summary.floor = crate::floor::measure(opts.backend, images, backend_opts, run, opts.floor_reps, opts.fleet.boot_timeout)
            .await
            .context("measuring the startup floor")?;
    }
    write_outputs(results, &summary)?;
    Ok(summary)
}

pub fn write_outputs(results: &ResultsDir, s: &BootSummary) -> Result<()> {
    results.write_json("summary.json", s)?;
    results.write("summary.csv", csv(s).as_bytes())?;
    for (name, chart) in charts(s) {
        plot::write(&chart, &results.path.join("figures").join(name)).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

fn csv(s: &BootSummary) -> String {
    let mut out = String::from(
        "backend,n,mode,ready,failed,t_startup_s,ready_mean_s,ready_std_s,ready_min_s,ready_max_s,guest_boot_mean_s,m_used_mib,per_guest_cgroup_mib,per_guest_pss_mib\n",
    );
    let o = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_default();
    for r in &s.rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.backend,
            r.n,
            r.mode.name(),
            r.ready,
            r.failed,
            o(r.t_startup_s),
            o(r.ready_times.as_ref().map(|x| x.mean)),
            o(r.ready_times.as_ref().map(|x| x.std_dev)),
            o(r.ready_times.as_ref().map(|x| x.min)),
            o(r.ready_times.as_ref().map(|x| x.max)),
            o(r.guest_boot.as_ref().map(|x| x.mean)),
            o(r.m_used_mib),
            o(r.per_guest_cgroup_mib),
            o(r.per_guest_pss_mib)
        ));
    }
    out
}

/// Startup vs n (cold and hot) and memory vs n, one curve per backend and mode.
pub fn charts(s: &BootSummary) -> Vec<(String, Chart)> {
    let mut by: BTreeMap<(BackendKind, StartMode), Vec<&BootRow>> = BTreeMap::new();
    for r in &s.rows {
        by.entry((r.backend, r.mode)).or_default().push(r);
    }
    let series = |f: &dyn Fn(&BootRow) -> Option<Point>| -> Vec<Series> {
        by.iter()
            .map(|((b, m), rows)| Series {
                name: format!("{b} {}", m.name()),
                points: rows.iter().filter_map(|r| f(r)).collect(),
                // One colour per backend; hot dashed next to cold.
                color: BackendKind::ALL.iter().position(|k| k == b),
                dashed: *m == StartMode::Hot,
                ..Default::default()
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    vec![
        (
            "startup.svg".into(),
            Chart {
                title: "Concurrent startup (paper Fig. 1)".into(),
                x_label: "guests started together, n".into(),
                y_label: "T_startup = max ready time (s)".into(),
                series: series(&|r| Some(Point { x: r.n as f64, y: r.t_startup_s?, err: None })),
                // Backends span three orders of magnitude.
                log_y: true,
            },
        ),
        (
            "memory.svg".into(),
            Chart {
                title: "Memory occupation M_used(n)".into(),
                x_label: "guests booted and idle, n".into(),
                y_label: "M_used (MiB)".into(),
                series: series(&|r| Some(Point { x: r.ready as f64, y: r.m_used_mib?, err: None })),
                log_y: false,
            },
        ),
    ]
}

/// The human-readable table.
pub fn table(s: &BootSummary) -> String {
    let mut out = String::new();
    for l in s.provenance.lines() {
        out.push_str(&format!("# {l}\n"));
    }
    out.push_str(&format!(
        "{:<13} {:>4} {:<4} {:>7} {:>12} {:>26} {:>14} {:>11} {:>14} {:>12}\n",
        "backend", "n", "mode", "ready", "T_startup s", "ready time s mean±sd [min,max]", "guest boot s", "M_used MiB", "cgroup/guest", "PSS/guest"
    ));
    let o = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
    for r in &s.rows {
        let dist = r.ready_times.as_ref().map(|d| format!("{:.3}±{:.3} [{:.3},{:.3}]", d.mean, d.std_dev, d.min, d.max)).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<13} {:>4} {:<4} {:>7} {:>12} {:>26} {:>14} {:>11} {:>14} {:>12}\n",
            r.backend.name(),
            r.n,
            r.mode.name(),
            format!("{}/{}", r.ready, r.n),
            o(r.t_startup_s, 3),
            dist,
            o(r.guest_boot.as_ref().map(|g| g.mean), 3),
            o(r.m_used_mib, 1),
            o(r.per_guest_cgroup_mib, 2),
            o(r.per_guest_pss_mib, 2)
        ));
    }
    for (mode, f) in &s.memory_fit {
        out.push_str(&format!(
            "fit ({mode}): M_used(n) = {:.2} MiB × n + {:.1} MiB (M_VM, M_tool; residual {:.2} MiB over {} sizes)\n",
            f.slope, f.intercept, f.residual_std, f.points
        ));
    }
    if let Some(f) = &s.floor {
        out.push_str(&crate::floor::line(f));
        out.push('\n');
    }
    out.push_str("units: seconds on the host clock from the fleet's start request; MiB = 2^20 bytes; one fleet per row (1 repetition)\n");
    out
}
