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
    /// Each guest boots its own copies of the images (the paper's setting).
    pub image_copies: bool,
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
    /// What makes the row's figures trustworthy (absent from older summaries).
    #[serde(flatten, default)]
    pub checks: RowChecks,
}

/// A row's start label, residency, M_used noise bound and cross-check, tmpfs scratch and
/// hostd's growth (issue 11 items 2, 14, 15).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RowChecks {
    /// "cold" (verified: nothing the launches read was in the page cache), "hot" (all of it
    /// was), "warm" (between, whichever mode was asked); "cold?" for samples from before the
    /// check.
    #[serde(default)]
    pub label: String,
    /// Resident share of what the launches read, just before the fleet started.
    #[serde(default)]
    pub resident_fraction: Option<f64>,
    /// The residency in words (files, bytes, what stayed resident).
    #[serde(default)]
    pub residency: Option<String>,
    /// Each guest booted its own image copies.
    #[serde(default)]
    pub image_copies: bool,
    /// M_used's noise bound (the host's drift with no fleet, and with it idle), MiB.
    #[serde(default)]
    pub m_used_noise_mib: Option<f64>,
    /// M_used repeated (each reading with the fleet idle against the noise floor), MiB.
    #[serde(default)]
    pub m_used_repeats_mib: Vec<f64>,
    /// Σ guests' cgroup charges + hostd's RSS growth, MiB.
    #[serde(default)]
    pub cross_check_mib: Option<f64>,
    /// The two figures differ by more than the noise bound.
    #[serde(default)]
    pub m_used_disagrees: bool,
    /// tmpfs the fleet's scratch held (reported apart from M_used), MiB.
    #[serde(default)]
    pub scratch_tmpfs_mib: Option<f64>,
    /// hostd's RSS growth with the fleet (part of M_tool), MiB.
    #[serde(default)]
    pub hostd_growth_mib: Option<f64>,
}

impl BootRow {
    /// T_startup over fewer guests than were started: the slowest may be among the missing.
    pub fn partial(&self) -> bool {
        self.ready < self.n
    }

    /// The mode as labelled: the verified label where there is one.
    pub fn label(&self) -> &str {
        if self.checks.label.is_empty() {
            self.mode.name()
        } else {
            &self.checks.label
        }
    }
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
        guest_boot: Summary::of(
            "guest_boot",
            "s",
            b.startups.iter().filter_map(|s| s.guest_boot_s).collect(),
        ),
        m_used_mib: mem.map(|m| mib(m.fleet_kib() as f64)),
        per_guest_cgroup_mib: mem.and_then(|m| {
            mean(m.guests.iter().filter_map(|g| g.cgroup_kib).map(|k| mib(k as f64)).collect())
        }),
        per_guest_pss_mib: mem
            .and_then(|m| mean(m.guests.iter().map(|g| mib(g.pss_kib as f64)).collect())),
        checks: RowChecks {
            label: b.label().to_string(),
            resident_fraction: b.residency.as_ref().map(|r| r.fraction()),
            // Which files stayed resident matters only where a start was meant to be cold.
            residency: b
                .residency
                .as_ref()
                .map(|r| crate::coldstart::describe(r, b.mode == StartMode::Cold)),
            image_copies: b.startups.iter().any(|s| s.image_copies),
            m_used_noise_mib: mem.and_then(|m| m.checks.noise_kib).map(|k| mib(k as f64)),
            m_used_repeats_mib: mem
                .map(|m| m.fleet_repeats_kib().into_iter().map(|k| mib(k as f64)).collect())
                .unwrap_or_default(),
            cross_check_mib: mem.and_then(|m| m.checks.cross_check_kib).map(|k| mib(k as f64)),
            m_used_disagrees: mem.is_some_and(|m| m.disagrees()),
            scratch_tmpfs_mib: mem.and_then(|m| m.checks.scratch_tmpfs_kib).map(|k| mib(k as f64)),
            hostd_growth_mib: mem.and_then(|m| m.hostd_growth_kib()).map(|k| mib(k as f64)),
        },
    }
}

pub fn summarise(provenance: Provenance, rows: Vec<BootRow>) -> BootSummary {
    let mut memory_fit = BTreeMap::new();
    let mut kinds: Vec<BackendKind> = rows.iter().map(|r| r.backend).collect();
    kinds.dedup();
    for b in kinds {
        for mode in [StartMode::Cold, StartMode::Hot] {
            // Every repeated figure is a point: the fit sees the spread, not one reading.
            let pts = fit_points(rows.iter().filter(|r| r.backend == b && r.mode == mode));
            if let Some(f) = linear_fit(&pts) {
                memory_fit.insert(format!("{b} {}", mode.name()), f);
            }
        }
    }
    BootSummary { provenance, rows, memory_fit, floor: None }
}

/// The (n, M_used) points of the fit: each row's repeated figures (its one figure for rows
/// from before the repeats).
pub fn fit_points<'a>(rows: impl Iterator<Item = &'a BootRow>) -> Vec<(f64, f64)> {
    rows.flat_map(|r| {
        let ys = if r.checks.m_used_repeats_mib.is_empty() {
            r.m_used_mib.into_iter().collect()
        } else {
            r.checks.m_used_repeats_mib.clone()
        };
        ys.into_iter().map(move |y| (r.ready as f64, y))
    })
    .collect()
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

/// A curve's legend: backend and mode, the sizes whose start was not what the mode asked
/// for (a cold start that found files resident, a hot one whose files were not), and those
/// at which fewer guests came up than were started (partial T_startup).
fn series_name(b: BackendKind, m: StartMode, rows: &[&BootRow]) -> String {
    let mut name = format!("{b} {}", m.name());
    let odd: Vec<String> = rows
        .iter()
        .filter(|r| r.label() != m.name())
        .map(|r| format!("n={} {}", r.n, r.label()))
        .collect();
    if !odd.is_empty() {
        name.push_str(&format!(" [not verified {}: {}]", m.name(), odd.join(", ")));
    }
    let partial: Vec<String> = rows
        .iter()
        .filter(|r| r.partial())
        .map(|r| format!("n={}: {} of {}", r.n, r.ready, r.n))
        .collect();
    if !partial.is_empty() {
        name.push_str(&format!(" [partial: {}]", partial.join(", ")));
    }
    name
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
                name: series_name(*b, *m, rows),
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
                // Error bars: the noise bound.
                series: series(&|r| {
                    Some(Point {
                        x: r.ready as f64,
                        y: r.m_used_mib?,
                        err: r.checks.m_used_noise_mib,
                    })
                }),
                log_y: false,
            },
        ),
    ]
}

/// What the report says under its startup table: what cold, warm and resident mean, the
/// partial fleets, the M_used bound, scratch and hostd's share (a maud template, escaped).
pub fn startup_notes_html(s: &BootSummary) -> maud::Markup {
    let partial: Vec<String> = s
        .rows
        .iter()
        .filter(|r| r.partial())
        .map(|r| format!("{} n={} {}: {} of {}", r.backend, r.n, r.label(), r.ready, r.n))
        .collect();
    let checks = s.rows.iter().filter_map(|r| {
        let mut bits = Vec::new();
        if let Some(res) = &r.checks.residency {
            bits.push(res.clone());
        }
        if let Some(t) = r.checks.scratch_tmpfs_mib {
            bits.push(format!("tmpfs scratch {t:.1} MiB (not in M_used)"));
        }
        if let Some(g) = r.checks.hostd_growth_mib {
            bits.push(format!("hostd's RSS grew {g:.2} MiB (part of M_tool)"));
        }
        (!bits.is_empty()).then(|| (r, bits.join("; ")))
    });
    maud::html! {
        p {
            "mode: " b { "cold" } " = nothing the launches read (images, VMM or runtime and its libraries but those other running processes hold) \
             was in the page cache just before the start (checked with mincore after eviction); " b { "hot" } " = all of it was (read just \
             before); " b { "warm" } " = anything between, whichever mode was asked (not counted as cold or hot). M_used: median of repeated readings against a \
             noise floor read with no fleet, ± the larger drift of the two windows; tmpfs scratch excluded."
        }
        @if !partial.is_empty() {
            p.bad { "Partial fleets (T_startup over the guests that came up; the slowest may be among the missing): " (partial.join("; ")) "." }
        }
        @for (r, bits) in checks {
            p { (r.backend) " n=" (r.n) " " (r.label()) ": " (bits) "." }
        }
    }
}

/// The human-readable table.
pub fn table(s: &BootSummary) -> String {
    let mut out = String::new();
    for l in s.provenance.lines() {
        out.push_str(&format!("# {l}\n"));
    }
    out.push_str(&format!(
        "{:<13} {:>4} {:<5} {:>9} {:>7} {:>13} {:>26} {:>12} {:>14} {:>14} {:>12} {:>10} {:>10}\n",
        "backend",
        "n",
        "start",
        "resident",
        "ready",
        "T_startup s",
        "ready time s mean±sd [min,max]",
        "guest boot s",
        "M_used MiB",
        "cgroups+hostd",
        "cgroup/guest",
        "PSS/guest",
        "tmpfs MiB"
    ));
    let o = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
    for r in &s.rows {
        let dist = r
            .ready_times
            .as_ref()
            .map(|d| format!("{:.3}±{:.3} [{:.3},{:.3}]", d.mean, d.std_dev, d.min, d.max))
            .unwrap_or_else(|| "-".into());
        // A partial fleet's T_startup is over the guests that came up: marked, never bare.
        let t = match r.t_startup_s {
            Some(t) if r.partial() => format!("{t:.3} ({}/{})", r.ready, r.n),
            t => o(t, 3),
        };
        let m = match (r.m_used_mib, r.checks.m_used_noise_mib) {
            (Some(m), Some(b)) => format!("{m:.1}±{b:.1}"),
            (m, _) => o(m, 1),
        };
        out.push_str(&format!(
            "{:<13} {:>4} {:<5} {:>9} {:>7} {:>13} {:>26} {:>12} {:>14} {:>14} {:>12} {:>10} {:>10}\n",
            r.backend.name(),
            r.n,
            r.label(),
            r.checks.resident_fraction.map(|f| format!("{:.1} %", 100.0 * f)).unwrap_or_else(|| "-".into()),
            format!("{}/{}", r.ready, r.n),
            t,
            dist,
            o(r.guest_boot.as_ref().map(|g| g.mean), 3),
            m,
            o(r.checks.cross_check_mib, 1),
            o(r.per_guest_cgroup_mib, 2),
            o(r.per_guest_pss_mib, 2),
            o(r.checks.scratch_tmpfs_mib, 1)
        ));
    }
    for r in &s.rows {
        if let Some(res) = &r.checks.residency {
            out.push_str(&format!(
                "note: {} n={} {}{}: {res}\n",
                r.backend,
                r.n,
                r.label(),
                if r.checks.image_copies {
                    " (per-guest image copies)"
                } else {
                    " (shared images)"
                }
            ));
        }
    }
    for r in s.rows.iter().filter(|r| r.partial() && r.t_startup_s.is_some()) {
        out.push_str(&format!(
            "note: {} n={} {}: partial fleet: T_startup is over the {} of {} guests that came up (the slowest may be among the missing)\n",
            r.backend, r.n, r.label(), r.ready, r.n
        ));
    }
    for r in s.rows.iter().filter(|r| r.checks.m_used_disagrees) {
        out.push_str(&format!(
            "note: {} n={} {}: M_used {} MiB (host-wide) and {} MiB (guests' cgroups + hostd's growth) differ by more than the ±{} MiB noise bound: both reported\n",
            r.backend,
            r.n,
            r.label(),
            o(r.m_used_mib, 1),
            o(r.checks.cross_check_mib, 1),
            o(r.checks.m_used_noise_mib, 1)
        ));
    }
    for r in s.rows.iter().filter(|r| r.checks.hostd_growth_mib.is_some()) {
        out.push_str(&format!(
            "note: {} n={} {}: hostd's own RSS grew {} MiB (part of M_tool)\n",
            r.backend,
            r.n,
            r.label(),
            o(r.checks.hostd_growth_mib, 2)
        ));
    }
    for (mode, f) in &s.memory_fit {
        out.push_str(&format!(
            "fit ({mode}): M_used(n) = {:.2} MiB × n + {:.1} MiB (M_VM, M_tool; residual {:.2} MiB over {} points: every repeated figure of each size)\n",
            f.slope, f.intercept, f.residual_std, f.points
        ));
    }
    if let Some(f) = &s.floor {
        out.push_str(&crate::floor::line(f));
        out.push('\n');
    }
    out.push_str(
        "units: seconds on the host clock from the fleet's start request; MiB = 2^20 bytes; one fleet per row (1 repetition); \
         start: cold = nothing the launches read was in the page cache (mincore), hot = all of it was, warm = between (whichever mode was asked); \
         resident = share of the launches' files (images, programs, libraries but those other running processes hold) in the page cache just before the start; \
         M_used = median of repeated readings against a noise floor taken with no fleet, ± the floor's and the idle fleet's drift, tmpfs scratch excluded (tmpfs column)\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coldstart::StartResidency;
    use crate::startup::StartupSample;

    fn sample(index: usize, mode: StartMode, ready_s: f64, resident: u64) -> StartupSample {
        StartupSample {
            backend: BackendKind::Uml,
            n: 10,
            mode,
            index,
            ready_s,
            own_s: ready_s,
            guest_boot_s: None,
            guest_kernel_s: None,
            provenance: String::new(),
            residency: Some(StartResidency {
                files: 20,
                bytes: 1000,
                resident_bytes: resident,
                shared_files: 0,
                shared_bytes: 0,
                shared_resident_bytes: 0,
                resident: vec![],
            }),
            image_copies: true,
        }
    }

    fn boot(mode: StartMode, ready: usize, resident: u64) -> FleetBoot {
        let startups: Vec<StartupSample> =
            (0..ready).map(|i| sample(i, mode, 1.0 + i as f64, resident)).collect();
        FleetBoot {
            backend: BackendKind::Uml,
            n: 10,
            mode,
            residency: startups[0].residency.clone(),
            startups,
            failures: vec![],
            memory: None,
            teardown_clean: ready,
            teardown_killed: 0,
        }
    }

    #[test]
    fn partial_fleets_and_unverified_cold_starts_are_marked() {
        let rows = vec![
            row(&boot(StartMode::Cold, 7, 0)),
            row(&boot(StartMode::Hot, 10, 1000)),
            row(&boot(StartMode::Cold, 10, 10)),
        ];
        assert_eq!(
            (rows[0].label(), rows[0].partial(), rows[0].t_startup_s),
            ("cold", true, Some(7.0))
        );
        assert_eq!((rows[1].label(), rows[1].checks.resident_fraction), ("hot", Some(1.0)));
        assert_eq!((rows[2].label(), rows[2].checks.resident_fraction), ("warm", Some(0.01)));
        let s = summarise(Provenance::collect(Default::default()), rows);
        let t = table(&s);
        assert!(t.contains("7.000 (7/10)"), "{t}");
        assert!(t.contains("partial fleet: T_startup is over the 7 of 10 guests"), "{t}");
        assert!(
            t.lines().any(|l| l.starts_with("uml") && l.contains(" warm ") && l.contains("1.0 %")),
            "{t}"
        );
        let charts = charts(&s);
        let names: Vec<&str> = charts[0].1.series.iter().map(|x| x.name.as_str()).collect();
        assert!(names.iter().any(|n| n.contains("partial: n=10: 7 of 10")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("not verified cold: n=10 warm")), "{names:?}");
    }

    #[test]
    fn older_summary_rows_still_read() {
        let mut v = serde_json::to_value(row(&boot(StartMode::Cold, 10, 0))).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in [
            "label",
            "resident_fraction",
            "residency",
            "image_copies",
            "m_used_noise_mib",
            "m_used_repeats_mib",
            "cross_check_mib",
            "m_used_disagrees",
            "scratch_tmpfs_mib",
            "hostd_growth_mib",
        ] {
            assert!(o.remove(k).is_some(), "{k} is not serialised flat");
        }
        let old: BootRow = serde_json::from_value(v).unwrap();
        assert_eq!((old.label(), old.checks.resident_fraction), ("cold", None));
    }

    #[test]
    fn the_fit_uses_every_repeated_figure() {
        let mut a = row(&boot(StartMode::Hot, 10, 1000));
        a.checks.m_used_repeats_mib = vec![100.0, 102.0];
        let mut b = row(&boot(StartMode::Hot, 5, 1000));
        b.m_used_mib = Some(51.0);
        assert_eq!(
            fit_points([&a, &b].into_iter()),
            vec![(10.0, 100.0), (10.0, 102.0), (5.0, 51.0)]
        );
        // M_used(n) = 10 n + 1 through (5, 51) and the mean (10, 101) of the repeats.
        let f = linear_fit(&fit_points([&a, &b].into_iter())).unwrap();
        assert!((f.slope - 10.0).abs() < 1e-9 && (f.intercept - 1.0).abs() < 1e-9, "{f:?}");
    }
}
