//! The report of a run, rebuilt from its stored samples alone: summary JSON/CSV, one SVG per
//! paper figure (Fig. 1 startup; 2–5 overhead; 6–9 linearity; 10–13 isolation; 14 ring) plus
//! memory occupation, and an HTML page showing them with the tables and the host.

use maud::{html, Markup, PreEscaped, DOCTYPE};
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::Resource;

use crate::backend::BackendKind;
use crate::boot::BootSummary;
use crate::bootreport;
use crate::fleet::GuestFailure;
use crate::plot::{self, Bars, Chart, Point, Series};
use crate::provenance::Provenance;
use crate::results::{self, DirError, ReadError};
use crate::samples::{Record, Rejected, Samples};
use crate::startup::StartMode;
use crate::suite::isolation::{self, Policy};
use crate::suite::{linearity, overhead, ring, BenchSample, Test};

// Moved below the suite modules, which compute it; still `report::Stat` to readers.
pub use crate::stats::Stat;

pub use crate::suite::isolation::IsolationResult;
pub use crate::suite::linearity::LinearityPoint;
pub use crate::suite::overhead::OverheadPoint;
pub use crate::suite::ring::RingResult;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub provenance: Option<Provenance>,
    pub cores: usize,
    pub startup: BootSummary,
    /// T_a per resource (the native backend at n = 1).
    pub baseline: BTreeMap<Resource, Stat>,
    pub overhead: BTreeMap<String, Vec<OverheadPoint>>,
    pub linearity: BTreeMap<String, Vec<LinearityPoint>>,
    pub isolation: BTreeMap<String, IsolationResult>,
    pub ring: BTreeMap<BackendKind, RingResult>,
    pub unavailable: BTreeMap<BackendKind, String>,
    pub probes: BTreeMap<BackendKind, String>,
    /// Backends measured inside an emulated host (the Xen lab).
    #[serde(default)]
    pub emulated: std::collections::BTreeSet<BackendKind>,
    /// The CPU workload each of those ran ([`Workloads::params`](crate::suite::Workloads::params)):
    /// a Xen lab run on its own has a smaller one than campaigns, stated beside its figures.
    #[serde(default)]
    pub emulated_cpu: BTreeMap<BackendKind, String>,
    /// Steps that failed and were not later completed: key → error.
    pub failed_steps: BTreeMap<String, String>,
    pub failures: Vec<(BackendKind, usize, StartMode, GuestFailure)>,
    /// Guests that failed during a measurement step: (backend, step, failure).
    #[serde(default)]
    pub lost: Vec<(BackendKind, String, GuestFailure)>,
    /// Lines of samples.jsonl that could not be read (a record torn by a kill).
    pub unreadable_records: usize,
    /// Records of samples.jsonl left out as outside physical sense (a negative, non-finite
    /// or impossibly long time, a bandwidth beyond any machine), and the first few of them.
    #[serde(default)]
    pub implausible_records: usize,
    #[serde(default)]
    pub rejected: Vec<Rejected>,
    /// Per backend, why its disk figures are not (only) device reads ([`crate::datadisk::disk_notes`]).
    #[serde(default)]
    pub disk_notes: BTreeMap<BackendKind, String>,
    /// Per backend, its disk reads against the native read taken right before each
    /// ([`overhead::paired`]); empty for results older than the pairing.
    #[serde(default)]
    pub paired_disk: BTreeMap<BackendKind, Vec<overhead::PairedPoint>>,
    /// How far native's own disk read speed moved over the run ([`overhead::native_drift`]).
    #[serde(default)]
    pub native_drift: Option<overhead::Drift>,
    /// Network paths and MTUs, start skew and overlap ([`crate::suite::conditions`]).
    #[serde(default)]
    pub conditions: crate::suite::conditions::Conditions,
    /// Figures (backend/resource) whose samples did not record the CPUs their guests had
    /// (results older than that record): the host's CPU count (`cores`) stood in.
    #[serde(default)]
    pub cpus_assumed: Vec<String>,
    /// Where the run departs from the paper's method ([`crate::fidelity::report_notes`]).
    #[serde(default)]
    pub notes: Vec<String>,
    /// The emulated network's accuracy ([`crate::netem_report`]).
    #[serde(default)]
    pub netem: Vec<crate::netem_report::Row>,
}

impl Report {
    /// How much was measured: every sample and failure behind the report's figures. A
    /// report rebuilt from the same samples has as many; samples only grow, so a rebuild
    /// with fewer means the samples were lost, cut or swapped.
    pub fn data_points(&self) -> usize {
        let stat = |s: &Stat| s.samples;
        let rows: usize = self
            .startup
            .rows
            .iter()
            .map(|r| r.ready + r.failed + usize::from(r.m_used_mib.is_some()))
            .sum();
        let overhead: usize = self.overhead.values().flatten().map(|p| stat(&p.value)).sum();
        let linearity: usize = self.linearity.values().flatten().map(|p| stat(&p.value)).sum();
        let ring: usize = self
            .ring
            .values()
            .map(|r| stat(&r.bandwidth) + r.latency.as_ref().map_or(0, stat))
            .sum();
        rows + overhead
            + linearity
            + self.isolation.len()
            + ring
            + self.failures.len()
            + self.lost.len()
            + self.probes.len()
            + self.unavailable.len()
    }

    /// Every figure of the report that is not a finite number, named: none may be, whatever
    /// the samples held.
    pub fn non_finite(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let mut f = |what: &dyn Fn() -> String, v: f64| {
            if !v.is_finite() {
                bad.push(format!("{} = {v}", what()));
            }
        };
        fn stat(what: &str, s: &Stat, f: &mut dyn FnMut(&dyn Fn() -> String, f64)) {
            let [lo, hi] = s.ci95.unwrap_or([s.mean; 2]);
            for (k, v) in [
                ("mean", s.mean),
                ("std_dev", s.std_dev),
                ("min", s.min),
                ("max", s.max),
                ("median", s.median),
                ("ci95 low", lo),
                ("ci95 high", hi),
            ] {
                f(&|| format!("{what} {k}"), v);
            }
        }
        for r in &self.startup.rows {
            let at = format!("startup {} n={} {}", r.backend, r.n, r.mode.name());
            for (k, v) in [
                ("T_startup", r.t_startup_s),
                ("M_used", r.m_used_mib),
                ("cgroup/guest", r.per_guest_cgroup_mib),
                ("PSS/guest", r.per_guest_pss_mib),
            ] {
                if let Some(v) = v {
                    f(&|| format!("{at} {k}"), v);
                }
            }
            for (k, s) in [("ready time", &r.ready_times), ("guest boot", &r.guest_boot)] {
                if let Some(s) = s {
                    for (m, v) in
                        [("mean", s.mean), ("std_dev", s.std_dev), ("min", s.min), ("max", s.max)]
                    {
                        f(&|| format!("{at} {k} {m}"), v);
                    }
                }
            }
        }
        for (k, fit) in &self.startup.memory_fit {
            for (m, v) in
                [("slope", fit.slope), ("intercept", fit.intercept), ("residual", fit.residual_std)]
            {
                f(&|| format!("memory fit {k} {m}"), v);
            }
        }
        for (r, s) in &self.baseline {
            stat(&format!("baseline {}", r.name()), s, &mut f);
        }
        for (k, pts) in &self.overhead {
            for p in pts {
                stat(&format!("overhead {k} n={}", p.n), &p.value, &mut f);
                if let Some(o) = p.overhead {
                    f(&|| format!("overhead {k} n={} O_v", p.n), o);
                }
            }
        }
        for (k, pts) in &self.linearity {
            for p in pts {
                stat(&format!("linearity {k} n={}", p.n), &p.value, &mut f);
                f(&|| format!("linearity {k} n={} worst", p.n), p.worst);
                if let Some(r) = p.reference {
                    f(&|| format!("linearity {k} n={} reference", p.n), r);
                }
            }
        }
        for (k, i) in &self.isolation {
            for (m, v) in [
                ("guest1", i.guest1),
                ("guest2 a", i.guest2[0]),
                ("guest2 b", i.guest2[1]),
                ("capacity", i.capacity),
            ] {
                f(&|| format!("isolation {k} {m}"), v);
            }
        }
        for (b, r) in &self.ring {
            stat(&format!("ring {b} bandwidth"), &r.bandwidth, &mut f);
            if let Some(l) = &r.latency {
                stat(&format!("ring {b} latency"), l, &mut f);
            }
        }
        bad
    }
}

fn key(b: BackendKind, r: Resource) -> String {
    format!("{b}/{}", r.name())
}

/// Builds the report from a results directory's stored samples. Refuses anything but a
/// results directory, and reads its files only within bounds ([`results::read_with`]).
pub fn build(dir: &Path) -> Result<Report, DirError> {
    results::check_dir(dir)?;
    let samples = Samples::read(dir)?;
    let provenance = results::read_optional(&dir.join("provenance.json"), results::MAX_FILE_BYTES)?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let notes = crate::fidelity::report_notes(dir, &samples.records, provenance.as_ref());
    Ok(Report { notes, ..build_from(samples, provenance) })
}

/// Builds the report from samples already taken in (the fuzz target feeds it arbitrary
/// ones). Without a provenance the host's own stands in. Every formula is in the module of
/// its paper section (`suite::*::analyse`, `startup::analyse`); this only sorts the samples
/// out and assembles.
pub fn build_from(samples: Samples, provenance: Option<Provenance>) -> Report {
    let Samples { records, unreadable, implausible, rejected } = samples;
    // The host's CPUs, for samples that did not record their guests' own. A forged
    // provenance's CPU count must not make a capacity of 0 (every model divides).
    let cores = provenance
        .as_ref()
        .map(|p| p.host.cpus as usize)
        .unwrap_or_else(crate::suite::host_cores)
        .clamp(1, 1 << 16);

    let sorted = Sorted::from(records);
    // Second references (native on loopback, …) leave the figures' series.
    let (bench, conditions) = crate::suite::conditions::split(sorted.bench);
    let startup = crate::startup::analyse(
        provenance.clone().unwrap_or_else(|| Provenance::collect(Default::default())),
        sorted.startups,
        sorted.memory,
        sorted.failures.clone(),
    );

    let Suite { baseline, overhead, linearity, isolation: isolation_res, cpus_assumed } =
        Suite::analyse(&bench, cores);
    let disk_notes = crate::datadisk::disk_notes(&bench);
    let (paired_disk, native_drift) = paired_disk(&bench);
    let ring_res = ring_results(&bench);
    let emulated_cpu = emulated_cpu(&bench, &sorted.emulated);
    Report {
        provenance,
        cores,
        startup,
        baseline,
        overhead,
        linearity,
        isolation: isolation_res,
        ring: ring_res,
        unavailable: sorted.unavailable,
        probes: sorted.probes,
        emulated: sorted.emulated,
        emulated_cpu,
        failed_steps: sorted.failed_steps,
        failures: sorted.failures,
        lost: sorted.lost,
        disk_notes,
        paired_disk,
        native_drift,
        notes: Vec::new(),
        unreadable_records: unreadable,
        implausible_records: implausible,
        rejected,
        conditions,
        cpus_assumed,
        netem: crate::netem_report::analyse(&sorted.netem),
    }
}

/// Each backend's disk reads against their adjacent native reads, and native's drift over
/// the run. A backend's samples of the workload it last ran (as [`Suite`] picks them).
fn paired_disk(
    bench: &[BenchSample],
) -> (BTreeMap<BackendKind, Vec<overhead::PairedPoint>>, Option<overhead::Drift>) {
    let disk: Vec<&BenchSample> = bench.iter().filter(|s| s.resource == Resource::Disk).collect();
    let mut out = BTreeMap::new();
    for b in BackendKind::ALL {
        let mine: Vec<&BenchSample> = disk.iter().copied().filter(|s| s.backend == b).collect();
        let Some(params) = mine.iter().max_by_key(|s| s.n).map(|s| s.params.clone()) else {
            continue;
        };
        let same: Vec<&BenchSample> = mine.into_iter().filter(|s| s.params == params).collect();
        let pts = overhead::paired(&same);
        if !pts.is_empty() {
            out.insert(b, pts);
        }
    }
    (out, overhead::native_drift(&disk))
}

/// The records of a run, sorted out by kind; failed steps that later completed are gone.
#[derive(Default)]
struct Sorted {
    startups: Vec<crate::startup::StartupSample>,
    memory: Vec<crate::startup::MemorySample>,
    bench: Vec<BenchSample>,
    unavailable: BTreeMap<BackendKind, String>,
    probes: BTreeMap<BackendKind, String>,
    emulated: std::collections::BTreeSet<BackendKind>,
    failed_steps: BTreeMap<String, String>,
    failures: Vec<(BackendKind, usize, StartMode, GuestFailure)>,
    lost: Vec<(BackendKind, String, GuestFailure)>,
    netem: Vec<crate::netem_accuracy::AccuracySample>,
}

impl Sorted {
    fn from(records: Vec<Record>) -> Sorted {
        let mut o = Sorted::default();
        for r in records {
            match r {
                Record::Startup(s) => o.startups.push(s),
                Record::Memory(m) => o.memory.push(m),
                Record::Failure { backend, n, mode, failure } => {
                    o.failures.push((backend, n, mode, failure))
                }
                Record::FleetDone { .. } | Record::Provenance { .. } => {}
                Record::Bench(b) => o.bench.push(b),
                Record::StepDone { key } => {
                    o.failed_steps.remove(&key);
                }
                Record::StepFailed { key, error } => {
                    o.failed_steps.insert(key, error);
                }
                Record::BackendUnavailable { backend, reason } => {
                    o.unavailable.insert(backend, reason);
                }
                Record::BackendProbe { backend, description, emulated } => {
                    o.unavailable.remove(&backend);
                    // Older results marked an emulated host by a prefix on the description.
                    let (old, description) = match description.strip_prefix(OLD_EMULATED_PREFIX) {
                        Some(rest) => (true, rest.to_string()),
                        None => (false, description),
                    };
                    if emulated || old {
                        o.emulated.insert(backend);
                    }
                    o.probes.insert(backend, description);
                }
                Record::Netem(n) => o.netem.push(n),
                Record::GuestLost { backend, step, failure } => {
                    o.lost.push((backend, step, failure))
                }
            }
        }
        o
    }
}

/// The suite's figures (paper II.A) per backend and resource, from its samples.
struct Suite {
    /// T_a per resource (the native backend at n = 1).
    baseline: BTreeMap<Resource, Stat>,
    overhead: BTreeMap<String, Vec<OverheadPoint>>,
    linearity: BTreeMap<String, Vec<LinearityPoint>>,
    isolation: BTreeMap<String, IsolationResult>,
    cpus_assumed: Vec<String>,
}

impl Suite {
    fn analyse(bench: &[BenchSample], cores: usize) -> Suite {
        let select =
            |test: Test, b: BackendKind, r: Resource, n: Option<usize>| -> Vec<&BenchSample> {
                bench
                    .iter()
                    .filter(|s| {
                        s.test == test
                            && s.backend == b
                            && s.resource == r
                            && n.is_none_or(|n| s.n == n)
                    })
                    .collect()
            };
        let backends: Vec<BackendKind> = {
            let mut v: Vec<BackendKind> = bench.iter().map(|s| s.backend).collect();
            v.sort();
            v.dedup();
            v
        };
        // T_a: the native backend at n = 1, per resource and workload (a backend with other
        // workloads is compared with a host baseline of the same workload).
        let ta_of = |r: Resource, params: &str| -> Option<Stat> {
            let v: Vec<&BenchSample> = select(Test::Overhead, BackendKind::Native, r, Some(1))
                .into_iter()
                .filter(|s| s.params == params)
                .collect();
            overhead::baseline(&v)
        };
        // The workload each backend ran a resource with: its overhead samples at the largest n
        // (extra host baselines only have n = 1).
        let params_of = |b: BackendKind, r: Resource| -> Option<String> {
            select(Test::Overhead, b, r, None).iter().max_by_key(|s| s.n).map(|s| s.params.clone())
        };
        let mut baseline = BTreeMap::new();
        for r in Resource::ALL {
            if let Some(s) = params_of(BackendKind::Native, r).and_then(|p| ta_of(r, &p)) {
                baseline.insert(r, s);
            }
        }
        let mut overhead = BTreeMap::new();
        let mut linearity = BTreeMap::new();
        let mut isolation_res = BTreeMap::new();
        let mut cpus_assumed = Vec::new();
        for &b in &backends {
            for r in Resource::ALL {
                let params = params_of(b, r);
                let ta = params.as_deref().and_then(|p| ta_of(r, p)).map(|s| s.mean);
                let same = |s: &&BenchSample| params.as_ref().is_none_or(|p| &s.params == p);
                let of = |test: Test| -> Vec<&BenchSample> {
                    select(test, b, r, None).into_iter().filter(same).collect()
                };
                let pts = overhead::analyse(&of(Test::Overhead), ta);
                let t_av = pts.iter().find(|p| p.n == 1).map(|p| p.value.mean);
                if !pts.is_empty() {
                    overhead.insert(key(b, r), pts);
                }
                let pts = linearity::analyse(&of(Test::Linearity), ta, t_av, cores);
                // Only CPU and memory capacities count CPUs; a shared device's is 1 whatever the host.
                let counts_cpus = matches!(r, Resource::Cpu | Resource::Memory);
                let assumed =
                    counts_cpus && pts.iter().any(|p| p.cpus.is_some_and(|c| !c.recorded));
                if !pts.is_empty() {
                    linearity.insert(key(b, r), pts);
                }
                let iso =
                    t_av.and_then(|alone| isolation::analyse(&of(Test::Isolation), alone, cores));
                let assumed = assumed
                    || (counts_cpus
                        && iso.as_ref().is_some_and(|i| i.cpus.is_some_and(|c| !c.recorded)));
                if let Some(i) = iso {
                    isolation_res.insert(key(b, r), i);
                }
                if assumed {
                    cpus_assumed.push(key(b, r));
                }
            }
        }
        Suite { baseline, overhead, linearity, isolation: isolation_res, cpus_assumed }
    }
}

/// Ring bandwidth and latency per backend.
fn ring_results(bench: &[BenchSample]) -> BTreeMap<BackendKind, RingResult> {
    let backends: std::collections::BTreeSet<BackendKind> =
        bench.iter().map(|s| s.backend).collect();
    let mut out = BTreeMap::new();
    for b in backends {
        let v: Vec<&BenchSample> = bench
            .iter()
            .filter(|s| s.backend == b && matches!(s.test, Test::Ring | Test::RingLatency))
            .collect();
        if let Some(r) = ring::analyse(&v) {
            out.insert(b, r);
        }
    }
    out
}

const RES: [(Resource, &str); 4] = [
    (Resource::Cpu, "CPU"),
    (Resource::Memory, "Memory"),
    (Resource::Disk, "Disk"),
    (Resource::Network, "Network"),
];

fn y_label(r: Resource, what: &str) -> String {
    match r {
        Resource::Network => format!("{what} bandwidth (MB/s)"),
        _ => format!("{what} execution time (s)"),
    }
}

/// A figure the report shows.
pub enum Figure {
    Line(Chart),
    Bars(Bars),
}

/// "5" or "3–40": the range of sample counts behind a figure's points.
fn count_range(counts: impl Iterator<Item = usize>) -> String {
    let (lo, hi) = counts.fold((usize::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)));
    match (lo, hi) {
        (usize::MAX, _) => "no".into(),
        (lo, hi) if lo == hi => lo.to_string(),
        (lo, hi) => format!("{lo}–{hi}"),
    }
}

/// What a figure's error bars are, for its caption.
const CI_BARS: &str = "error bars: 95 % confidence interval of the mean (Student t, n − 1 degrees of freedom; none where a point has one sample)";

/// (file name, the figure, its caption) for every figure the report shows. The caption says
/// what the points and bars are and how many samples each stands on.
pub fn figures(rep: &Report) -> Vec<(String, Figure, String)> {
    let mut out = Vec::new();
    for (name, chart) in bootreport::charts(&rep.startup) {
        let (file, caption) = if name == "startup.svg" {
            ("fig01_startup.svg", "T_startup(n) = the last ready guest's time, host clock; one fleet per point (n guests), so no error bars.")
        } else {
            ("fig_memory.svg", "M_used(n) of one booted, idle fleet per point: no error bars; the fit n·M_VM + M_tool is in the table above.")
        };
        out.push((file.to_string(), Figure::Line(chart), caption.to_string()));
    }
    let ci = |s: &Stat| s.ci_half();
    fn backends_of<T>(m: &BTreeMap<String, T>, r: Resource) -> Vec<BackendKind> {
        BackendKind::ALL.into_iter().filter(|b| m.contains_key(&key(*b, r))).collect()
    }
    for (i, (r, label)) in RES.iter().enumerate() {
        let mut series: Vec<Series> = backends_of(&rep.overhead, *r)
            .into_iter()
            .map(|b| Series {
                name: b.to_string(),
                points: rep.overhead[&key(b, *r)]
                    .iter()
                    .map(|p| Point { x: p.n as f64, y: p.value.mean, err: ci(&p.value) })
                    .collect(),
                reference: false,
                ..Default::default()
            })
            .collect();
        let counts = count_range(
            rep.overhead
                .iter()
                .filter(|(k, _)| k.ends_with(&format!("/{}", r.name())))
                .flat_map(|(_, p)| p.iter().map(|p| p.value.samples)),
        );
        if let (Some(ta), Some(maxn)) =
            (rep.baseline.get(r), rep.overhead.values().flatten().map(|p| p.n).max())
        {
            series.push(Series {
                name: "host T_a (native, n=1)".into(),
                points: vec![
                    Point { x: 1.0, y: ta.mean, err: None },
                    Point { x: maxn.max(2) as f64, y: ta.mean, err: None },
                ],
                reference: true,
                ..Default::default()
            });
        }
        out.push((
            format!("fig{:02}_overhead_{}.svg", 2 + i, r.name()),
            Figure::Line(Chart {
                title: format!("{label} overhead: one busy guest among n (paper Fig. {})", 2 + i),
                x_label: "guests running, n (n − 1 idle)".into(),
                y_label: y_label(*r, "T_avn:"),
                series,
                log_y: false,
            }),
            format!("Points: mean T_avn of the busy guest over the counted repetitions; {CI_BARS}; n = {counts} repetitions per point. Dashed: the host's T_a."),
        ));
    }
    for (i, (r, label)) in RES.iter().enumerate() {
        let mut series = Vec::new();
        for b in backends_of(&rep.linearity, *r) {
            let pts = &rep.linearity[&key(b, *r)];
            series.push(Series {
                name: format!("{b} mean ± 95 % CI"),
                points: pts
                    .iter()
                    .map(|p| Point { x: p.n as f64, y: p.value.mean, err: ci(&p.value) })
                    .collect(),
                reference: false,
                ..Default::default()
            });
            // The paper uses one reference (Vserver's) except for disk, where each tool has its own.
            if b == BackendKind::Native || *r == Resource::Disk {
                let refs: Vec<Point> = pts
                    .iter()
                    .filter_map(|p| Some(Point { x: p.n as f64, y: p.reference?, err: None }))
                    .collect();
                if !refs.is_empty() {
                    series.push(Series {
                        name: format!("{b} reference"),
                        points: refs,
                        reference: true,
                        ..Default::default()
                    });
                }
            }
        }
        let lin = || {
            rep.linearity
                .iter()
                .filter(|(k, _)| k.ends_with(&format!("/{}", r.name())))
                .flat_map(|(_, p)| p.iter())
        };
        let counts = count_range(lin().map(|p| p.value.samples));
        let cpus = count_range(lin().filter_map(|p| p.cpus.map(|c| c.count)));
        out.push((
            format!("fig{:02}_linearity_{}.svg", 6 + i, r.name()),
            Figure::Line(Chart {
                title: format!("{label} linearity: n busy guests (paper Fig. {})", 6 + i),
                x_label: "guests running the benchmark together, n".into(),
                y_label: y_label(*r, "per-guest"),
                series,
                log_y: *r == Resource::Disk || *r == Resource::Network,
            }),
            format!(
                "Points: mean over all n guests and the counted repetitions; {CI_BARS}; n = {counts} samples (guests × repetitions) per point. \
                 Dashed: the reference {}, {}.",
                if *r == Resource::Network { "B_av / max(1, n/capacity)" } else { "O_v + T_a·max(1, n/capacity)" },
                if matches!(r, Resource::Cpu | Resource::Memory) {
                    format!("capacity = the {cpus} CPU(s) the guests had")
                } else {
                    "capacity 1 (one shared device or path)".to_string()
                }
            ),
        ));
    }
    for (i, (r, label)) in RES.iter().enumerate() {
        let bs: Vec<BackendKind> = BackendKind::ALL
            .into_iter()
            .filter(|b| rep.isolation.contains_key(&key(*b, *r)))
            .collect();
        let get = |f: &dyn Fn(&IsolationResult) -> f64| -> Vec<Option<f64>> {
            bs.iter().map(|b| Some(f(&rep.isolation[&key(*b, *r)]))).collect()
        };
        let none = vec![None; bs.len()];
        let what =
            if *r == Resource::Network { "bandwidth ÷ alone" } else { "time ÷ time alone" };
        out.push((
            format!("fig{:02}_isolation_{}.svg", 10 + i, r.name()),
            Figure::Bars(Bars {
                title: format!("{label} performance isolation: 1 copy in guest 1, 2 in guest 2 (paper Fig. {})", 10 + i),
                y_label: what.into(),
                categories: bs.iter().map(|b| b.to_string()).collect(),
                series: vec![
                    ("guest 1, copy".into(), get(&|x| x.guest1), none.clone()),
                    ("guest 2, copy a".into(), get(&|x| x.guest2[0]), none.clone()),
                    ("guest 2, copy b".into(), get(&|x| x.guest2[1]), none.clone()),
                ],
                marks: vec![
                    ("per-VM model: guest 1".into(), get(&|x| x.per_vm.guest1)),
                    ("per-VM model: guest 2".into(), get(&|x| x.per_vm.guest2)),
                    ("per-process model: guest 1".into(), get(&|x| x.per_process.guest1)),
                    ("per-process model: guest 2".into(), get(&|x| x.per_process.guest2)),
                ],
            }),
            format!(
                "Bars: each copy's mean over the counted repetitions ({} per copy), divided by the same backend's mean T_av1: a ratio of means, so no error bars. \
                 Marks: the models' predictions for the CPUs each guest could use (min(vCPUs, CPUs of its cpuset); see the table).",
                count_range(bs.iter().filter_map(|b| rep.isolation[&key(*b, *r)].samples_per_copy))
            ),
        ));
    }
    let bs: Vec<BackendKind> = rep.ring.keys().copied().collect();
    out.push((
        "fig14_ring.svg".into(),
        Figure::Bars(Bars {
            title: "Inter-guest bandwidth, ring of guests streaming to their neighbour (paper Fig. 14)".into(),
            y_label: "per-guest bandwidth (MB/s)".into(),
            categories: bs.iter().map(|b| format!("{b} ({})", rep.ring[b].guests)).collect(),
            series: vec![(
                "mean ± 95 % CI".into(),
                bs.iter().map(|b| Some(rep.ring[b].bandwidth.mean)).collect(),
                bs.iter().map(|b| rep.ring[b].bandwidth.ci_half()).collect(),
            )],
            marks: vec![],
        }),
        format!(
            "Bars: mean per-guest bandwidth over all guests of the ring and the counted repetitions; {CI_BARS}; n = {} samples (guests × repetitions) per bar.",
            count_range(rep.ring.values().map(|r| r.bandwidth.samples))
        ),
    ));
    mark_emulated(rep, &mut out);
    out
}

/// What a figure shows of a backend measured inside an emulated host (the Xen lab).
pub const EMULATED_MARK: &str = " (emulated host)";

/// How results written before [`Record::BackendProbe`]'s `emulated` field marked it.
const OLD_EMULATED_PREFIX: &str = "[emulated host] ";

/// Per emulated backend, the CPU workloads its samples ran (distinct, in order).
fn emulated_cpu(
    bench: &[BenchSample],
    emulated: &std::collections::BTreeSet<BackendKind>,
) -> BTreeMap<BackendKind, String> {
    let mut out: BTreeMap<BackendKind, Vec<String>> = BTreeMap::new();
    for s in bench.iter().filter(|s| s.resource == Resource::Cpu && emulated.contains(&s.backend)) {
        let v = out.entry(s.backend).or_default();
        if !v.contains(&s.params) {
            v.push(s.params.clone());
        }
    }
    out.into_iter().map(|(b, v)| (b, v.join(", "))).collect()
}

/// A CPU workload (`rounds=…`) and how it stands to the default campaigns and `hostd bench`
/// run, so a figure of another size (the Xen lab's own) says so.
pub fn cpu_workload_note(params: &str) -> String {
    let default = crate::suite::Workloads::default().params(Resource::Cpu);
    if params == default {
        format!("{params}, the default of campaigns and `hostd bench`")
    } else {
        format!("{params}, not the {default} campaigns and `hostd bench` run by default")
    }
}

/// Labels every curve and bar of a backend whose probe says it ran inside an emulated host,
/// so no figure passes those numbers off as a real host's; a CPU figure also states that
/// backend's CPU workload (the Xen lab's own size may differ from the other curves').
fn mark_emulated(rep: &Report, figs: &mut [(String, Figure, String)]) {
    let emulated: Vec<String> = rep.emulated.iter().map(|b| b.to_string()).collect();
    let mark = |name: &mut String| {
        if let Some(b) = emulated.iter().find(|b| name == *b || name.starts_with(&format!("{b} ")))
        {
            name.insert_str(b.len(), EMULATED_MARK);
        }
    };
    for (file, f, caption) in figs.iter_mut() {
        let names: Vec<&String> = match f {
            Figure::Line(c) => c.series.iter().map(|s| &s.name).collect(),
            Figure::Bars(b) => b.categories.iter().collect(),
        };
        if file.contains("_cpu") {
            for (b, params) in &rep.emulated_cpu {
                let b = b.to_string();
                if names.iter().any(|n| *n == &b || n.starts_with(&format!("{b} "))) {
                    caption.push_str(&format!(
                        " {b}{EMULATED_MARK}: CPU workload {}.",
                        cpu_workload_note(params)
                    ));
                }
            }
        }
        match f {
            Figure::Line(c) => c.series.iter_mut().for_each(|s| mark(&mut s.name)),
            Figure::Bars(b) => b.categories.iter_mut().for_each(&mark),
        }
    }
}

/// Why `hostd report` (or a run's closing report) wrote nothing, or not everything.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Build(#[from] DirError),
    #[error("reading the report to be replaced: {0}")]
    Previous(ReadError),
    #[error(
        "{path} holds {had} data points, the samples only {has}: refusing to replace it with less (are the samples missing, \
         cut short or another run's?); pass --force to rebuild it anyway"
    )]
    LessData { path: std::path::PathBuf, had: usize, has: usize },
    #[error("{0}")]
    Write(std::io::Error),
    #[error("drawing {path}: {message}")]
    Figure { path: std::path::PathBuf, message: String },
}

/// Writes report.json, report.csv, every figure and index.html into the results directory
/// `dir`, rebuilt from its samples. Never into anything but a results directory, and never
/// over a report built from more data than the samples now hold, unless `force`.
pub fn write(dir: &Path, force: bool) -> Result<Report, WriteError> {
    let rep = build(dir)?;
    let previous = dir.join("report.json");
    if !force {
        if let Some(old) = results::read_optional(&previous, results::MAX_FILE_BYTES)
            .map_err(WriteError::Previous)?
        {
            match serde_json::from_slice::<Report>(&old) {
                Ok(old) if rep.data_points() < old.data_points() => {
                    return Err(WriteError::LessData {
                        path: previous,
                        had: old.data_points(),
                        has: rep.data_points(),
                    });
                }
                Ok(_) => {}
                // Not a report this hostd can read (damaged, or another version's): nothing
                // to compare with, and the rebuild is the repair.
                Err(e) => tracing::warn!(
                    "{}: not a readable report ({e}); replacing it",
                    previous.display()
                ),
            }
        }
    }
    // Temp files of a writer killed mid-write go, as when a run resumes.
    results::remove_stale_temps(dir);
    let bad = rep.non_finite();
    if !bad.is_empty() {
        tracing::warn!(
            "{}: figures that are not finite numbers: {}",
            dir.display(),
            bad.join(", ")
        );
    }
    let w = |name: &str, data: &[u8]| results::write_in(dir, name, data).map_err(WriteError::Write);
    let json = serde_json::to_vec_pretty(&crate::results::Versioned::new(&rep));
    w("report.json", &json.map_err(|e| WriteError::Write(e.into()))?)?;
    w(
        "report.csv",
        &csv(&rep)
            .map_err(|e| WriteError::Write(std::io::Error::other(format!("report.csv: {e}"))))?,
    )?;
    w("report.md", crate::decision::markdown(&crate::decision::decide(&rep)).as_bytes())?;
    let figs = figures(&rep);
    // A run killed right after making its directory has no figures/ yet.
    let fig_dir = dir.join("figures");
    std::fs::create_dir_all(&fig_dir).map_err(|e| {
        WriteError::Write(std::io::Error::new(
            e.kind(),
            format!("creating {}: {e}", fig_dir.display()),
        ))
    })?;
    for (name, f, _) in &figs {
        let p = fig_dir.join(name);
        match f {
            Figure::Line(c) => plot::write(c, &p),
            Figure::Bars(b) => plot::write_bars(b, &p),
        }
        .map_err(|message| WriteError::Figure { path: p.clone(), message })?;
    }
    w("index.html", html_page(&rep, &figs).as_bytes())?;
    Ok(rep)
}

/// Long-format CSV of every summarised point.
fn csv(rep: &Report) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "section",
        "backend",
        "resource",
        "n",
        "metric",
        "mean",
        "std_dev",
        "min",
        "max",
        "samples",
        "unit",
        "median",
        "ci95_low",
        "ci95_high",
    ])?;
    let f = |v: f64| v.to_string();
    let ci = |c: Option<[f64; 2]>| c.map(|[lo, hi]| [f(lo), f(hi)]).unwrap_or_default();
    // One row: a point's Stat, or a bare value where there is no spread.
    let stat_row =
        |section: &str, b: &str, res: &str, n: usize, metric: &str, v: &Stat| -> Vec<String> {
            let [lo, hi] = ci(v.ci95);
            vec![
                section.into(),
                b.into(),
                res.into(),
                n.to_string(),
                metric.into(),
                f(v.mean),
                f(v.std_dev),
                f(v.min),
                f(v.max),
                v.samples.to_string(),
                v.unit.clone(),
                f(v.median),
                lo,
                hi,
            ]
        };
    let bare = |section: &str,
                b: &str,
                res: &str,
                n: usize,
                metric: &str,
                v: f64,
                min_max: Option<(f64, f64)>,
                samples: &str,
                unit: &str|
     -> Vec<String> {
        let (mn, mx) = min_max.map(|(a, b)| (f(a), f(b))).unwrap_or_default();
        vec![
            section.into(),
            b.into(),
            res.into(),
            n.to_string(),
            metric.into(),
            f(v),
            String::new(),
            mn,
            mx,
            samples.into(),
            unit.into(),
            String::new(),
            String::new(),
            String::new(),
        ]
    };
    for r in &rep.startup.rows {
        if let Some(s) = &r.ready_times {
            let [lo, hi] = ci(s.ci95);
            let b = r.backend.to_string();
            w.write_record([
                format!("startup_{}", r.mode.name()),
                b,
                String::new(),
                r.n.to_string(),
                "ready_time".into(),
                f(s.mean),
                f(s.std_dev),
                f(s.min),
                f(s.max),
                s.samples.len().to_string(),
                "s".into(),
                f(s.median),
                lo,
                hi,
            ])?;
        }
        if let Some(m) = r.m_used_mib {
            w.write_record(bare(
                &format!("memory_{}", r.mode.name()),
                &r.backend.to_string(),
                "",
                r.n,
                "m_used",
                m,
                None,
                "1",
                "MiB",
            ))?;
        }
    }
    for (section, map) in [("overhead", &rep.overhead)] {
        for (k, pts) in map {
            let (b, res) = k.split_once('/').unwrap_or((k, ""));
            for p in pts {
                w.write_record(stat_row(section, b, res, p.n, "value", &p.value))?;
            }
        }
    }
    for (k, pts) in &rep.linearity {
        let (b, res) = k.split_once('/').unwrap_or((k, ""));
        for p in pts {
            w.write_record(stat_row("linearity", b, res, p.n, "value", &p.value))?;
        }
    }
    for (k, i) in &rep.isolation {
        let (b, res) = k.split_once('/').unwrap_or((k, ""));
        w.write_record(bare(
            "isolation",
            b,
            res,
            2,
            "guest1_relative",
            i.guest1,
            None,
            "",
            "ratio",
        ))?;
        let g2 = (
            (i.guest2[0] + i.guest2[1]) / 2.0,
            Some((i.guest2[0].min(i.guest2[1]), i.guest2[0].max(i.guest2[1]))),
        );
        w.write_record(bare("isolation", b, res, 2, "guest2_relative", g2.0, g2.1, "", "ratio"))?;
    }
    for (b, r) in &rep.ring {
        w.write_record(stat_row(
            "ring",
            &b.to_string(),
            "network",
            r.guests,
            "bandwidth",
            &r.bandwidth,
        ))?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

/// "12.3 [11.9, 12.7]": a mean and its 95 % confidence interval (the mean alone for one sample).
fn with_ci(s: &Stat, p: usize) -> String {
    match s.ci95 {
        Some([lo, hi]) => format!("{:.p$} [{lo:.p$}, {hi:.p$}]", s.mean),
        None => format!("{:.p$} (1 sample)", s.mean),
    }
}

const CSS: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}.bad{color:#a00}";
/// Counts the figures the browser could load (the report test reads it in headless Chromium).
const FIGURES_LOADED_JS: &str = "window.addEventListener('load',()=>{const i=[...document.images];document.body.dataset.figures=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});";

/// An optional number with `p` decimals, "–" when missing.
fn opt(v: Option<f64>, p: usize) -> String {
    v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "–".into())
}

/// The page `index.html`: the decision table first, then the figures, provenance last.
/// A maud template: every interpolated string is escaped.
pub fn html_page(rep: &Report, figs: &[(String, Figure, String)]) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "virtbench report" }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "virtbench report" }
                // The answer first; where it came from last.
                (crate::decision::html(&crate::decision::decide(rep)))
                p {
                    "Host CPUs: " (rep.cores) ". References and isolation models use the CPUs the guests had (their cpuset, recorded with every sample) and each guest's vCPUs. \
                     Every figure's points are means over the repetitions recorded in " code { "samples.jsonl" } "; error bars are 95" (PreEscaped("&nbsp;")) "% confidence intervals of the mean \
                     (Student t with n − 1 degrees of freedom); medians and intervals of every point are in " code { "report.json" } " and " code { "report.csv" } "."
                }
                @if !rep.cpus_assumed.is_empty() {
                    p.bad {
                        "These figures' samples did not record the CPUs their guests had (results older than that record): their references and models assume the host's "
                        (rep.cores) " CPUs, which is wrong if the guests were pinned (guest.pin_one_core): " (rep.cpus_assumed.join(", ")) "."
                    }
                }
                (crate::fidelity::notes_html(&rep.notes))
                (backends_html(rep))
                (startup_html(rep))
                (overhead_html(rep))
                (isolation_html(rep))
                (ring_html(rep))
                (crate::suite::conditions::html(&rep.conditions))
                (PreEscaped(crate::netem_report::html(&rep.netem)))
                h2 { "Figures" }
                @for (name, f, caption) in figs {
                    @let title = match f { Figure::Line(c) => &c.title, Figure::Bars(b) => &b.title };
                    figure {
                        img src=(format!("figures/{name}")) alt=(title);
                        figcaption {
                            b { (title) "." } " " (caption.trim())
                            @if name.ends_with("_disk.svg") {
                                @for (b, n) in &rep.disk_notes { br; "† " (b) ": " (n) }
                            }
                        }
                    }
                }
                (records_html(rep))
                @if let Some(p) = &rep.provenance {
                    h2 { "Host and provenance" }
                    ul { @for l in p.lines() { li { (l) } } }
                }
                script { (PreEscaped(FIGURES_LOADED_JS)) }
            }
        }
    };
    page.into_string() + "\n"
}

/// The backends measured and those that could not run, with why.
fn backends_html(rep: &Report) -> Markup {
    html! {
        @if !rep.probes.is_empty() || !rep.unavailable.is_empty() {
            h2 { "Backends" }
            table {
                tr { th { "backend" } th { "status" } }
                @for (b, d) in &rep.probes {
                    tr {
                        td { (b) @if rep.emulated.contains(b) { (EMULATED_MARK) } }
                        td style="text-align:left" { (d) }
                    }
                }
                @for (b, d) in &rep.unavailable {
                    tr { td { (b) } td.bad style="text-align:left" { "unavailable: " (d) } }
                }
            }
        }
        @if !rep.failed_steps.is_empty() {
            h2 { "Failed steps" }
            ul { @for (k, e) in &rep.failed_steps { li.bad { b { (k) } ": " (e) } } }
        }
        @if !rep.lost.is_empty() {
            h2 { "Guests lost during measurements" }
            ul {
                @for (b, step, f) in &rep.lost {
                    li.bad {
                        b { (b) " " (f.name) } " (" (step) "): " (format!("{:?}", f.kind)) ": " (f.error)
                        @if let Some(t) = &f.console_tail { pre { (t) } }
                    }
                }
            }
        }
    }
}

/// Paper II.B: the startup and memory table, its notes and the memory fit.
fn startup_html(rep: &Report) -> Markup {
    // M_used is host-wide (the paper's method): memory another process frees during the
    // measurement makes it fall, even below zero. Said next to the table, not hidden.
    let negative: Vec<String> = rep
        .startup
        .rows
        .iter()
        .filter(|r| r.m_used_mib.is_some_and(|m| m < 0.0))
        .map(|r| format!("{} n={} {}", r.backend, r.n, r.mode.name()))
        .collect();
    html! {
        h2 { "Concurrent startup and memory occupation (paper II.B, Fig. 1)" }
        table {
            tr {
                th { "backend" } th { "n" } th { "mode" } th { "ready" } th { "T_startup (s)" }
                th { "ready time mean ± sd (s)" } th { "guest boot (s)" } th { "M_used (MiB)" }
                th { "cgroup / guest (MiB)" } th { "PSS / guest (MiB)" }
            }
            @for r in &rep.startup.rows {
                @let emulated = rep.emulated.contains(&r.backend);
                tr {
                    td { (r.backend) @if emulated { (EMULATED_MARK) } }
                    td { (r.n) }
                    // The verified label (cold, warm, hot) and the resident share before the start.
                    td {
                        @match r.checks.resident_fraction {
                            Some(f) => { (r.label()) " (" (format!("{:.1}", 100.0 * f)) " % resident)" }
                            None => { (r.label()) }
                        }
                    }
                    td { (r.ready) "/" (r.n) }
                    // Over the guests that came up: marked partial, never bare.
                    td {
                        (opt(r.t_startup_s, 3))
                        @if r.partial() && r.t_startup_s.is_some() { " (partial: " (r.ready) " of " (r.n) ")" }
                    }
                    td {
                        @match &r.ready_times {
                            Some(s) => { (format!("{:.3} ± {:.3}", s.mean, s.std_dev)) }
                            None => { "–" }
                        }
                    }
                    td { (opt(r.guest_boot.as_ref().map(|g| g.mean), 3)) }
                    td {
                        @match (r.m_used_mib, r.checks.m_used_noise_mib, r.checks.m_used_disagrees) {
                            (Some(m), Some(b), false) => { (format!("{m:.1} ± {b:.1}")) }
                            (Some(m), Some(b), true) => {
                                (format!("{m:.1} ± {b:.1}")) " (guests' cgroups + hostd: " (opt(r.checks.cross_check_mib, 1)) ")"
                            }
                            (m, _, _) => { (opt(m, 1)) }
                        }
                    }
                    td { (opt(r.per_guest_cgroup_mib, 2)) }
                    td { (opt(r.per_guest_pss_mib, 2)) }
                }
            }
        }
        @if !negative.is_empty() {
            p.bad {
                "M_used below zero for " (negative.join(", ")) ": the host's used memory fell during the measurement (another process freed memory), so those rows and the fit through them understate the guests' memory; rerun on a quiet host."
            }
        }
        (crate::bootreport::startup_notes_html(&rep.startup))
        @for (mode, f) in &rep.startup.memory_fit {
            p {
                "Fit (" (mode) "): " (format!("M_used(n) = {:.2} MiB × n + {:.1} MiB (M_VM, M_tool; residual {:.2} MiB over {} sizes).", f.slope, f.intercept, f.residual_std, f.points))
            }
        }
    }
}

/// Paper II.A.1: T_a on the host and O_v per backend and resource at n = 1.
fn overhead_html(rep: &Report) -> Markup {
    let shown: Vec<Resource> =
        RES.iter().map(|(r, _)| *r).filter(|r| rep.baseline.contains_key(r)).collect();
    html! {
        @if !rep.baseline.is_empty() {
            h2 { "Overhead O_v = T_av − T_a (paper II.A.1)" }
            table {
                tr {
                    th { "backend" }
                    @for (r, l) in RES {
                        @if rep.baseline.contains_key(&r) {
                            th { (l) " (" (if r == Resource::Network { "MB/s lost" } else { "s" }) ")" }
                        }
                    }
                }
                tr {
                    td { "T_a (host)" }
                    @for (r, _) in RES {
                        @if let Some(s) = rep.baseline.get(&r) { td { (format!("{:.4}", s.mean)) " " (s.unit) } }
                    }
                }
                @for b in BackendKind::ALL {
                    @if RES.iter().any(|(r, _)| rep.overhead.contains_key(&key(b, *r))) {
                        tr {
                            td { (b) }
                            @for r in &shown {
                                @let v = rep.overhead.get(&key(b, *r)).and_then(|p| p.iter().find(|p| p.n == 1)).and_then(|p| p.overhead);
                                td {
                                    (opt(v, 4))
                                    @if *r == Resource::Disk && rep.disk_notes.contains_key(&b) { " †" }
                                }
                            }
                        }
                    }
                }
            }
            @for (b, n) in &rep.disk_notes { p { "† " (b) " disk: " (n) } }
        }
        (paired_disk_html(rep))
    }
}

/// A backend reading one disk alone faster than this × the adjacent native read is flagged:
/// no virtualization layer reads a device faster than the host (issue 11 allows 10 %).
const FASTER_THAN_NATIVE: f64 = 1.10;

/// Disk reads against the native read taken right before each (the figures above compare
/// with native's T_a, measured minutes apart).
fn paired_disk_html(rep: &Report) -> Markup {
    let ta = rep.baseline.get(&Resource::Disk);
    html! {
        @if !rep.paired_disk.is_empty() || rep.native_drift.is_some() {
            h3 { "Disk against the adjacent native read" }
            p {
                "A shared or virtual disk's speed drifts over a run (other I/O on the host or below it), so a backend's reads, taken minutes after native's, can look faster or slower than native for that reason alone. \
                 Right before every disk read of a backend other than native, hostd reads the run's native reference copy with O_DIRECT (same size and block size) and records it in the sample; \
                 each read is divided here by that adjacent native read. The figures above (and Figures 4, 8, 12) keep the paper's T_a; the decision table's disk overhead uses the paired time ratio where the samples have one. \
                 A linearity or isolation run's native read is one reader alone: with n readers sharing the disk each one's ratio is expected near 1/n of the speed (n times the time)."
            }
            @if let Some(d) = &rep.native_drift {
                p {
                    (format!(
                        "Native O_DIRECT reads over the run ({} reads: the native backend's own and every paired one): {:.0} to {:.0} MB/s, median {:.0}; they moved by {:.0} % of the median.",
                        d.reads, d.min_mbps, d.max_mbps, d.median_mbps, d.spread * 100.0
                    ))
                }
            }
            @if !rep.paired_disk.is_empty() {
                table {
                    tr {
                        th { "backend" } th { "test" } th { "n" } th { "reads" }
                        th { "speed ÷ adjacent native (mean of the reads before and after), median (min–max)" }
                        th { "time ÷ adjacent native, mean ± 95 % CI" }
                        th { "unpaired speed: T_a ÷ T_avn (means)" }
                        th { "longest gap (ms)" }
                        th title="the largest |after − before| ÷ mean of the two native reads around one backend read" { "widest bracket" }
                    }
                    @for (b, pts) in &rep.paired_disk {
                        @for p in pts {
                            @let unpaired = (p.test == Test::Overhead).then(|| rep.overhead.get(&key(*b, Resource::Disk)).and_then(|v| v.iter().find(|q| q.n == p.n))).flatten();
                            tr {
                                td { (b) } td { (format!("{:?}", p.test).to_lowercase()) } td { (p.n) } td { (p.speed.samples) }
                                @let fast = p.test == Test::Overhead && p.speed.median > FASTER_THAN_NATIVE;
                                td class=[fast.then_some("bad")] title=[fast.then_some("faster than the adjacent native read by more than 10 %: not the disk's drift")] {
                                    (format!("{:.2} ({:.2}–{:.2})", p.speed.median, p.speed.min, p.speed.max))
                                    @if fast { " !" }
                                }
                                td { (format!("{:.2}", p.time.mean)) (p.time.ci_half().map(|h| format!(" ± {h:.2}")).unwrap_or_default()) }
                                td {
                                    @match (unpaired, ta) {
                                        (Some(q), Some(ta)) if q.value.mean > 0.0 => (format!("{:.2}", ta.mean / q.value.mean)),
                                        _ => "–",
                                    }
                                }
                                td { (format!("{:.2}", p.max_gap_s * 1e3)) }
                                td { (p.max_bracket.map(|b| format!("{:.0} %", b * 100.0)).unwrap_or_else(|| "–".into())) }
                            }
                        }
                    }
                }
                @if rep.paired_disk.values().flatten().any(|p| p.test == Test::Overhead && p.speed.median > FASTER_THAN_NATIVE) {
                    p.bad { "! A backend read the disk alone more than 10 % faster than the native read right before it (median): not the disk's drift; the † notes above may say why (read-ahead through the host page cache)." }
                }
            }
        }
    }
}

/// Paper II.A.3: each pair's relative times against both models.
fn isolation_html(rep: &Report) -> Markup {
    html! {
        @if !rep.isolation.is_empty() {
            h2 { "Performance isolation (paper II.A.3)" }
            p {
                "Relative to one copy alone in one guest. Model predictions for the capacity the guests had (the CPUs of their cpuset for CPU and memory, 1 for a shared disk or network path) \
                 and what each guest could use of it (min(vCPUs, CPUs) for CPU and memory); see docs/methodology.md for why the paper's T_a1 = 2T_a, T_a2 = 3T_a/2 is not one model's prediction."
            }
            table {
                tr {
                    th { "backend / resource" } th { "guest 1" } th { "guest 2 (copies)" } th { "per-VM model" }
                    th { "per-process model" } th { "closer to" } th { "capacity" } th { "usable by guest 1, 2" }
                }
                @for (k, i) in &rep.isolation {
                    tr {
                        td { (k) }
                        td { (format!("{:.2}", i.guest1)) }
                        td { (format!("{:.2}, {:.2}", i.guest2[0], i.guest2[1])) }
                        td { (format!("{:.2} / {:.2}", i.per_vm.guest1, i.per_vm.guest2)) }
                        td { (format!("{:.2} / {:.2}", i.per_process.guest1, i.per_process.guest2)) }
                        td { (match i.closest { Policy::PerVm => "per-VM", Policy::PerProcess => "per-process" }) }
                        td { (i.capacity) @if rep.cpus_assumed.contains(k) { " (host CPUs assumed)" } }
                        td { (i.guest_cpus.map(|[a, b]| format!("{a}, {b}")).unwrap_or_else(|| "–".into())) }
                    }
                }
            }
        }
    }
}

/// Paper II.A.4: bandwidth and latency per guest on the ring.
fn ring_html(rep: &Report) -> Markup {
    html! {
        @if !rep.ring.is_empty() {
            h2 { "Communication between guests (paper II.A.4, Fig. 14)" }
            table {
                tr {
                    th { "backend" } th { "guests" } th { "bandwidth per guest (MB/s): mean [95 % CI]" } th { "median" }
                    th { "min–max" } th { "samples" } th { "latency (µs): mean [95 % CI]" }
                }
                @for (b, r) in &rep.ring {
                    tr {
                        td { (b) }
                        td { (r.guests) }
                        td { (with_ci(&r.bandwidth, 1)) }
                        td { (format!("{:.1}", r.bandwidth.median)) }
                        td { (format!("{:.1}–{:.1}", r.bandwidth.min, r.bandwidth.max)) }
                        td { (r.bandwidth.samples) }
                        td { (r.latency.as_ref().map(|l| with_ci(l, 1)).unwrap_or_else(|| "–".into())) }
                    }
                }
            }
        }
    }
}

/// What of samples.jsonl could not be read or was left out.
fn records_html(rep: &Report) -> Markup {
    html! {
        @if rep.unreadable_records > 0 {
            p.bad { (rep.unreadable_records) " record(s) in samples.jsonl could not be read (a run killed while writing)." }
        }
        @if rep.implausible_records > 0 {
            p.bad { (rep.implausible_records) " record(s) in samples.jsonl left out as outside physical sense (a damaged or edited samples file):" }
            ul {
                @for r in &rep.rejected { li.bad { "line " (r.line) ": " (r.why) } }
                @if rep.rejected.len() < rep.implausible_records {
                    li { "… and " (rep.implausible_records - rep.rejected.len()) " more" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::testing::sample;

    /// An emulated host is a typed field of the probe record; results written before it
    /// existed said so by a prefix on the description, and still read as emulated.
    #[test]
    fn emulated_host_from_the_field_and_from_older_results() {
        let old = r#"{"record":"backend_probe","backend":"xen","description":"[emulated host] Xen 4.17"}"#;
        let new = Record::BackendProbe {
            backend: BackendKind::Uml,
            description: "UML 6.12".into(),
            emulated: true,
        };
        let plain = r#"{"record":"backend_probe","backend":"ns","description":"namespaces"}"#;
        let records = vec![
            serde_json::from_str(old).unwrap(),
            serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap(),
            serde_json::from_str(plain).unwrap(),
        ];
        let rep = build_from(
            Samples { records, unreadable: 0, implausible: 0, rejected: Vec::new() },
            None,
        );
        let want: std::collections::BTreeSet<_> = [BackendKind::Xen, BackendKind::Uml].into();
        assert_eq!(rep.emulated, want);
        assert_eq!(rep.probes[&BackendKind::Xen], "Xen 4.17");
        assert_eq!(rep.probes[&BackendKind::Ns], "namespaces");
    }

    /// A Xen lab run on its own measures the CPU with its own smaller workload: the CPU
    /// figure its curve is on says which, against the campaigns' default; other figures
    /// and backends say nothing of it.
    #[test]
    fn emulated_backends_cpu_workload_is_stated_beside_its_figure() {
        let probe = Record::BackendProbe {
            backend: BackendKind::Xen,
            description: "Xen 4.17".into(),
            emulated: true,
        };
        let mut records = vec![probe];
        for (b, params) in
            [(BackendKind::Xen, "rounds=5000000"), (BackendKind::Native, "rounds=200000000")]
        {
            for g in 0..2 {
                let mut s = sample(b, Test::Linearity, Resource::Cpu, 2, 0, g, 0, 1.0);
                s.params = params.into();
                records.push(Record::Bench(s));
            }
        }
        let rep = build_from(
            Samples { records, unreadable: 0, implausible: 0, rejected: Vec::new() },
            None,
        );
        assert_eq!(rep.emulated_cpu.len(), 1);
        let figs = figures(&rep);
        let cap = |f: &str| figs.iter().find(|(n, _, _)| n == f).map(|(_, _, c)| c.clone());
        let lin = cap("fig06_linearity_cpu.svg").expect("the CPU linearity figure");
        assert!(
            lin.ends_with(" xen (emulated host): CPU workload rounds=5000000, not the rounds=200000000 campaigns and `hostd bench` run by default."),
            "{lin}"
        );
        assert!(figs.iter().filter(|(_, _, c)| c.contains("CPU workload")).count() == 1);
        assert_eq!(
            cpu_workload_note("rounds=200000000"),
            "rounds=200000000, the default of campaigns and `hostd bench`"
        );
    }

    /// Host T_a = 2 s, uml T_av = 2.5 s (both two repetitions), and two uml guests busy
    /// together taking 5 s, with `cpus` recorded per sample.
    fn samples(cpus: Option<usize>) -> Samples {
        let mut v = vec![
            sample(BackendKind::Native, Test::Overhead, Resource::Cpu, 1, 0, 0, 0, 1.9),
            sample(BackendKind::Native, Test::Overhead, Resource::Cpu, 1, 1, 0, 0, 2.1),
            sample(BackendKind::Uml, Test::Overhead, Resource::Cpu, 1, 0, 0, 0, 2.4),
            sample(BackendKind::Uml, Test::Overhead, Resource::Cpu, 1, 1, 0, 0, 2.6),
        ];
        for rep in 0..2 {
            for g in 0..2 {
                v.push(sample(BackendKind::Uml, Test::Linearity, Resource::Cpu, 2, rep, g, 0, 5.0));
            }
        }
        for s in &mut v {
            s.cpus = cpus;
        }
        Samples {
            records: v.into_iter().map(Record::Bench).collect(),
            unreadable: 0,
            implausible: 0,
            rejected: vec![],
        }
    }

    fn four_cpu_host() -> Provenance {
        let mut p = Provenance::collect(Default::default());
        p.host.cpus = 4;
        p
    }

    #[test]
    fn references_use_the_guests_cpus_not_the_hosts() {
        // Pinned to one CPU on a 4-CPU host: O_v + T_a·n = 0.5 + 2·2.
        let rep = build_from(samples(Some(1)), Some(four_cpu_host()));
        let p = &rep.linearity["uml/cpu"][0];
        assert!((p.reference.unwrap() - 4.5).abs() < 1e-9, "{p:?}");
        assert!(rep.cpus_assumed.is_empty());
        assert!((rep.overhead["uml/cpu"][0].overhead.unwrap() - 0.5).abs() < 1e-9);
        // Older samples without the record: the provenance's 4 CPUs stand in, and the
        // report says so.
        let rep = build_from(samples(None), Some(four_cpu_host()));
        assert!((rep.linearity["uml/cpu"][0].reference.unwrap() - 2.5).abs() < 1e-9);
        assert_eq!(rep.cpus_assumed, ["uml/cpu"]);
        let figs = figures(&rep);
        assert!(html_page(&rep, &figs).contains("did not record the CPUs their guests had"));
    }

    #[test]
    fn captions_say_what_the_bars_are_and_n() {
        let rep = build_from(samples(Some(2)), Some(four_cpu_host()));
        let figs = figures(&rep);
        let cap = |name: &str| figs.iter().find(|f| f.0 == name).map(|f| f.2.clone()).unwrap();
        assert!(
            cap("fig02_overhead_cpu.svg").contains("95 % confidence interval of the mean")
                && cap("fig02_overhead_cpu.svg").contains("n = 2 repetitions")
        );
        assert!(
            cap("fig06_linearity_cpu.svg").contains("n = 4 samples")
                && cap("fig06_linearity_cpu.svg").contains("the 2 CPU(s) the guests had")
        );
        // The bars are the interval's half-width: 2.5 ± t(0.975, 1)·0.1414/√2 = 2.5 ± 1.2706.
        let Figure::Line(c) = &figs.iter().find(|f| f.0 == "fig02_overhead_cpu.svg").unwrap().1
        else {
            panic!("a line chart")
        };
        let err = c.series[0].points[0].err.unwrap();
        assert!((err - 1.270620).abs() < 1e-5, "{err}");
        let h = html_page(&rep, &figs);
        assert!(
            h.contains("<figcaption><b>CPU overhead")
                && h.contains("95&nbsp;% confidence intervals")
        );
        // Every point's median and interval reach the CSV.
        let csv = String::from_utf8(csv(&rep).unwrap()).unwrap();
        let row: Vec<f64> = csv
            .lines()
            .find(|l| l.starts_with("overhead,uml,cpu,1,"))
            .unwrap()
            .split(',')
            .skip(11)
            .map(|x| x.parse().unwrap())
            .collect();
        assert!(
            row[0] == 2.5 && (row[1] - 1.229380).abs() < 1e-5 && (row[2] - 3.770620).abs() < 1e-5,
            "{row:?}"
        );
    }
}
