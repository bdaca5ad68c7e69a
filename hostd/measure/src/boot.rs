//! What `hostd boot` measures, summarised: one row per fleet size and mode, and the memory
//! fit M_used(n) = n·M_VM + M_tool. Below the report and the CLI, which both read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::provenance::Provenance;
use crate::startup::{FleetBoot, StartMode};
use crate::stats::{linear_fit, LinearFit, Summary};

/// One row of the summary: a fleet size in one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootRow {
    /// The backend.
    pub backend: BackendKind,
    /// Guests started together.
    pub n: usize,
    /// Cold or hot.
    pub mode: StartMode,
    /// Guests that said hello.
    pub ready: usize,
    /// Guests that failed.
    pub failed: usize,
    /// max(startup[1..n]), seconds.
    pub t_startup_s: Option<f64>,
    /// Distribution of the per-guest ready times, seconds.
    pub ready_times: Option<Summary>,
    /// Guest kernel uptime at ready (own-kernel backends), seconds.
    pub guest_boot: Option<Summary>,
    /// M_used(n): the host's used memory with the fleet up less before it, MiB.
    pub m_used_mib: Option<f64>,
    /// Mean per-guest cgroup memory and PSS, MiB.
    pub per_guest_cgroup_mib: Option<f64>,
    /// Mean per-guest PSS, MiB.
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
    /// hostd's own cost per guest: RSS growth (KiB), descriptors, and CPU time spent starting
    /// the fleet per launch (ms).
    #[serde(default)]
    pub hostd_kib_per_guest: Option<f64>,
    /// hostd's open descriptors per guest (growth with the fleet booted ÷ guests ready).
    #[serde(default)]
    pub hostd_fds_per_guest: Option<f64>,
    /// hostd's CPU time spent starting the fleet, per launch, ms.
    #[serde(default)]
    pub hostd_cpu_ms_per_launch: Option<f64>,
    /// Each ready guest's own start (its launch call → hello, without waiting for a
    /// parallelism slot), seconds: what the floor is compared with.
    #[serde(default)]
    pub own_start: Option<Summary>,
    /// Each guest reaching a neighbour on another bridge (`hostd boot --reach`).
    #[serde(default)]
    pub reach: Option<crate::reach::Reach>,
    /// How long some task stalled on CPU, memory or I/O while the fleet started.
    #[serde(default)]
    pub pressure: Option<crate::pressure::Pressure>,
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

/// A `hostd boot` run summarised: its rows, the memory fits and the startup floor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootSummary {
    /// What the boots were measured with.
    pub provenance: Provenance,
    /// One row per fleet size and mode.
    pub rows: Vec<BootRow>,
    /// M_used(n) = n·M_VM + M_tool per "backend mode" (MiB), when ≥ 2 sizes were measured.
    pub memory_fit: BTreeMap<String, LinearFit>,
    /// Hot start against its floor (hostd boot only).
    #[serde(default)]
    pub floor: Option<crate::floor::Floor>,
    /// T_startup(n) fitted per "backend mode", with its knee, when ≥ 2 sizes had every
    /// guest ready.
    #[serde(default)]
    pub startup_scaling: BTreeMap<String, crate::scaling::Scaling>,
    /// How many guests fit in this host's memory, when the run asked or stopped for it.
    #[serde(default)]
    pub memory_bound: Option<crate::capacity::MemoryBound>,
}

/// One fleet's row: its startup distribution, memory figures and their checks.
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
            hostd_kib_per_guest: mem
                .filter(|m| m.ready > 0)
                .and_then(|m| Some(m.hostd_growth_kib()? as f64 / m.ready as f64)),
            hostd_fds_per_guest: mem.and_then(|m| m.hostd_fds_per_guest()),
            hostd_cpu_ms_per_launch: mem
                .and_then(|m| m.checks.hostd_cpu_start_s)
                .filter(|_| b.n > 0)
                .map(|s| 1e3 * s / b.n as f64),
            reach: b.reach.clone(),
            pressure: mem.and_then(|m| m.checks.pressure),
            own_start: Summary::of("own_start", "s", b.startups.iter().map(|s| s.own_s).collect()),
        },
    }
}

/// The summary of `rows`, with M_used(n) fitted per backend and mode (no floor yet).
pub fn summarise(provenance: Provenance, rows: Vec<BootRow>) -> BootSummary {
    let mut memory_fit = BTreeMap::new();
    let mut startup_scaling = BTreeMap::new();
    let mut kinds: Vec<BackendKind> = rows.iter().map(|r| r.backend).collect();
    kinds.dedup();
    for b in kinds {
        for mode in [StartMode::Cold, StartMode::Hot] {
            // Every repeated figure is a point: the fit sees the spread, not one reading.
            let pts = fit_points(rows.iter().filter(|r| r.backend == b && r.mode == mode));
            if let Some(f) = linear_fit(&pts) {
                memory_fit.insert(format!("{b} {}", mode.name()), f);
            }
            // Only full fleets: a partial one's T_startup misses its slowest guests.
            let full: Vec<crate::scaling::Point> = rows
                .iter()
                .filter(|r| r.backend == b && r.mode == mode && !r.partial())
                .filter_map(|r| {
                    Some(crate::scaling::Point {
                        n: r.n,
                        t_s: r.t_startup_s?,
                        pressure: r.checks.pressure,
                    })
                })
                .collect();
            if let Some(s) = crate::scaling::analyse(&full) {
                startup_scaling.insert(format!("{b} {}", mode.name()), s);
            }
        }
    }
    BootSummary { provenance, rows, memory_fit, floor: None, startup_scaling, memory_bound: None }
}

/// The memory bound from `rows` (every mode's M_used(n) fit; the steepest counts) against
/// the memory available now; None before two sizes, or where M_used does not grow with n.
pub fn memory_bound(rows: &[BootRow]) -> Option<crate::capacity::MemoryBound> {
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.n).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.len() < 2 {
        return None;
    }
    // The guests' own charges (cgroups + hostd's growth) where every fleet has them: other
    // processes on a busy host move the host-wide M_used by hundreds of MiB, which over two
    // small sizes can double the slope; the charges are the guests' alone.
    let mut figure = crate::capacity::CROSS_CHECK;
    let mut fits = Vec::new();
    for m in [StartMode::Cold, StartMode::Hot] {
        let of_mode: Vec<&BootRow> = rows.iter().filter(|r| r.mode == m).collect();
        let charges: Option<Vec<(f64, f64)>> =
            of_mode.iter().map(|r| Some((r.ready as f64, r.checks.cross_check_mib?))).collect();
        match charges.and_then(|c| linear_fit(&c)) {
            Some(f) => fits.push(f),
            None => {
                figure = crate::capacity::HOST_WIDE;
                fits.extend(linear_fit(&fit_points(of_mode.into_iter())));
            }
        }
    }
    let (total, available) = crate::capacity::host_memory_mib()?;
    let b = crate::capacity::bound(&fits, sizes, available, crate::capacity::reserve_mib(total))?;
    Some(crate::capacity::MemoryBound { figure: figure.into(), ..b })
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

/// Hand-made fleets for tests here and in the report's crate.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use crate::backend::BackendKind;
    use crate::coldstart::StartResidency;
    use crate::startup::{FleetBoot, StartMode, StartupSample};

    /// Guest `index`'s startup in a UML fleet of 10, ready after `ready_s`, with
    /// `resident` of its 1,000 launch bytes cached.
    pub fn sample(index: usize, mode: StartMode, ready_s: f64, resident: u64) -> StartupSample {
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

    /// A UML fleet of 10 of which `ready` guests said hello (guest i after 1 + i s).
    pub fn boot(mode: StartMode, ready: usize, resident: u64) -> FleetBoot {
        let startups: Vec<StartupSample> =
            (0..ready).map(|i| sample(i, mode, 1.0 + i as f64, resident)).collect();
        FleetBoot {
            backend: BackendKind::Uml,
            n: 10,
            mode,
            residency: startups[0].residency.clone(),
            reach: None,
            startups,
            failures: vec![],
            memory: None,
            teardown_clean: ready,
            teardown_killed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::boot;
    use super::*;

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
            "hostd_kib_per_guest",
            "hostd_fds_per_guest",
            "hostd_cpu_ms_per_launch",
            "own_start",
            "reach",
            "pressure",
        ] {
            assert!(o.remove(k).is_some(), "{k} is not serialised flat");
        }
        let old: BootRow = serde_json::from_value(v).unwrap();
        assert_eq!((old.label(), old.checks.resident_fraction), ("cold", None));
    }

    #[test]
    fn the_memory_bound_needs_two_sizes_and_follows_the_steepest_fit() {
        let sized = |n: usize, mode: StartMode, mib: f64| {
            let mut r = row(&boot(mode, 10, 1000));
            (r.n, r.ready, r.m_used_mib) = (n, n, Some(mib));
            r
        };
        assert!(memory_bound(&[sized(10, StartMode::Hot, 100.0)]).is_none());
        // A terabyte a guest: nothing fits beyond the host's memory.
        let huge = [sized(1, StartMode::Hot, 1e6), sized(2, StartMode::Hot, 2e6)];
        let b = memory_bound(&huge).expect("two sizes and /proc/meminfo");
        assert_eq!((b.largest_n, b.from_sizes.clone()), (0, vec![1, 2]));
        // The cold fit is steeper: it bounds the fleet.
        let rows = [
            sized(10, StartMode::Hot, 100.0),
            sized(20, StartMode::Hot, 200.0),
            sized(10, StartMode::Cold, 100.0),
            sized(20, StartMode::Cold, 300.0),
        ];
        let b = memory_bound(&rows).unwrap();
        assert_eq!((b.per_guest_mib, b.figure.as_str()), (20.0, crate::capacity::HOST_WIDE));
        let expect = ((b.available_mib - b.reserve_mib) / 20.0).floor() as usize;
        assert_eq!(b.largest_n, expect, "{b:?}");
        // With the guests' charges on every row, they are the figure.
        let mut rows = rows;
        for (r, c) in rows.iter_mut().zip([50.0, 100.0, 50.0, 110.0]) {
            r.checks.cross_check_mib = Some(c);
        }
        let b = memory_bound(&rows).unwrap();
        assert_eq!((b.per_guest_mib, b.figure.as_str()), (6.0, crate::capacity::CROSS_CHECK));
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
