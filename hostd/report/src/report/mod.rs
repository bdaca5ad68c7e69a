//! The report of a run, rebuilt from its stored samples alone: summary JSON/CSV, one SVG per
//! paper figure (Fig. 1 startup; 2–5 overhead; 6–9 linearity; 10–13 isolation; 14 ring) plus
//! memory occupation, and an HTML page showing them with the tables and the host.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::Resource;

use crate::backend::BackendKind;
use crate::boot::BootSummary;
use crate::bootreport;
use crate::fleet::GuestFailure;
use crate::plot::{Bars, Chart, Point, Series};
use crate::provenance::Provenance;
use crate::results::{self, DirError};
use crate::samples::{Record, Rejected, Samples};
use crate::startup::StartMode;
use crate::suite::isolation::{self, Policy};
use crate::suite::{linearity, overhead, ring, BenchSample, Test};

// Moved below the suite modules, which compute it; still `report::Stat` to readers.
pub use crate::stats::Stat;

pub use crate::suite::command::CommandResult;
pub use crate::suite::isolation::IsolationResult;
pub use crate::suite::linearity::LinearityPoint;
pub use crate::suite::overhead::OverheadPoint;
pub use crate::suite::ring::RingResult;

/// A run's report: every section's points, rebuilt from the samples ([`build`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// What the run measured with, if it recorded it.
    pub provenance: Option<Provenance>,
    /// The host's CPU count the models use.
    pub cores: usize,
    /// Startup and memory (paper II.B).
    pub startup: BootSummary,
    /// T_a per resource (the native backend at n = 1).
    pub baseline: BTreeMap<Resource, Stat>,
    /// Overhead against n, per `backend/resource`.
    pub overhead: BTreeMap<String, Vec<OverheadPoint>>,
    /// Linearity against n, per `backend/resource`.
    pub linearity: BTreeMap<String, Vec<LinearityPoint>>,
    /// Isolation, per backend and resource.
    pub isolation: BTreeMap<String, IsolationResult>,
    /// Ring bandwidth and latency, per backend.
    pub ring: BTreeMap<BackendKind, RingResult>,
    /// Backends that could not run here, and why.
    pub unavailable: BTreeMap<BackendKind, String>,
    /// Each backend's probe description.
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
    /// Guests that failed: backend, fleet size, start mode and why.
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
    /// The first records left out as implausible, and why.
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
    /// Users' commands timed as workloads, per backend and workload
    /// ([`crate::suite::command::analyse`]); empty in reports older than them.
    #[serde(default)]
    pub commands: Vec<CommandResult>,
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
        let commands: usize = self.commands.iter().map(|c| c.runs).sum();
        rows + overhead
            + commands
            + linearity
            + self.isolation.len()
            + ring
            + self.failures.len()
            + self.lost.len()
            + self.probes.len()
            + self.unavailable.len()
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
        commands: crate::suite::command::analyse(&sorted.commands, cores),
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
    commands: Vec<crate::suite::command::CommandSample>,
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
                Record::Command(c) => o.commands.push(c),
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

mod figures;
mod finite;
mod html;
mod summary_csv;
#[cfg(test)]
mod tests;
mod write;

use self::figures::*;
pub use self::figures::{cpu_workload_note, figures, memory_caveat, Figure, EMULATED_MARK};
pub use self::html::html_page;
use self::summary_csv::*;
pub use self::write::{write, WriteError};
