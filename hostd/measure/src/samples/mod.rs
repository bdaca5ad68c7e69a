//! The records a run appends to its `samples.jsonl`: raw measurements, one per line, from
//! which every summary and figure can be rebuilt.

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::fleet::GuestFailure;
use crate::startup::{MemorySample, StartMode, StartupSample};
use crate::suite::BenchSample;

pub use crate::results::{Versioned, SCHEMA_VERSION};

/// One line of `samples.jsonl` as written: the format's version, then the record (its kind
/// in `record`). The schema docs/schema/samples.schema.json is generated from this type.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Line {
    /// [`SCHEMA_VERSION`] of the hostd that wrote the line; 0 (absent) before it was written.
    #[serde(default)]
    pub schema_version: u32,
    #[serde(flatten)]
    /// The record.
    pub record: Record,
}

/// The JSON Schema of a [`Resource`] (a protocol type, which does not derive one).
pub fn resource_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = vb_protocol::bench::Resource::ALL.iter().map(|r| r.name()).collect();
    schemars::json_schema!({ "type": "string", "enum": names })
}

/// The JSON Schema of a `samples.jsonl` line, as committed in docs/schema/.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(Line)
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "record", rename_all = "snake_case")]
/// One line of samples.jsonl: a measurement, or a step's, fleet's or backend's outcome.
pub enum Record {
    /// One guest's startup.
    Startup(StartupSample),
    /// A fleet's memory occupation.
    Memory(MemorySample),
    /// A guest that failed to start.
    Failure {
        /// The backend.
        backend: BackendKind,
        /// Its fleet's size.
        n: usize,
        /// Cold or hot.
        mode: StartMode,
        /// How it failed.
        failure: GuestFailure,
    },
    /// Written last for a fleet: marks the measurement complete (a resumed run skips it).
    FleetDone {
        /// The backend.
        backend: BackendKind,
        /// Its size.
        n: usize,
        /// Cold or hot.
        mode: StartMode,
        /// Guests that said hello.
        ready: usize,
        /// Guests that failed.
        failed: usize,
        /// T_startup: the last ready guest's startup, s (None when none was ready).
        t_startup_s: Option<f64>,
    },
    /// One timed benchmark instance of the suite.
    Bench(BenchSample),
    /// A campaign step finished; a resumed campaign skips it.
    StepDone {
        /// The step's key.
        key: String,
    },
    /// A campaign step failed; a resumed campaign retries it.
    StepFailed {
        /// The step's key.
        key: String,
        /// Why it failed.
        error: String,
    },
    /// A backend could not run here, and why.
    BackendUnavailable {
        /// The backend.
        backend: BackendKind,
        /// Why, in words.
        reason: String,
    },
    /// What a backend's probe said when it ran (e.g. the accelerator chosen).
    BackendProbe {
        /// The backend.
        backend: BackendKind,
        /// What the probe said.
        description: String,
        /// Measured inside an emulated host (the Xen lab): its figures include that
        /// machine's cost. Older results said so by a "[emulated host] " prefix on the
        /// description, which the report still reads.
        #[serde(default)]
        emulated: bool,
    },
    /// A guest failed during a measurement step (crashed, hung, panicked, ran out of
    /// memory, broke the protocol) and was taken out of its fleet.
    GuestLost {
        /// The backend.
        backend: BackendKind,
        /// The step the guest was lost in.
        step: String,
        /// How it was lost.
        failure: GuestFailure,
    },
    /// Written when a campaign session starts (a fresh run, or a resume under another
    /// provenance than the last): the samples it measures carry this id.
    Provenance {
        /// The id samples name it by.
        id: String,
        /// The provenance.
        provenance: crate::provenance::Provenance,
    },
    /// One guest's figure in the emulated network's accuracy step.
    Netem(crate::netem_accuracy::AccuracySample),
    /// One run of a user's command used as a workload (`[[workloads.commands]]`): its
    /// time, or why it failed.
    Command(crate::suite::command::CommandSample),
}

/// The longest time any sample may show: a day's deadline with room to spare. A negative,
/// non-finite or longer time is a damaged or forged record, not a measurement.
pub const MAX_SECONDS: f64 = 7.0 * 86_400.0;
/// The highest bandwidth any sample may show, MB/s (10 TB/s: above any memory bus).
pub const MAX_RATE_MBPS: f64 = 1e7;
/// The most memory any sample may show, KiB (1 PiB).
pub const MAX_KIB: u64 = 1 << 40;

/// A number for a message: exponent notation where plain would run to hundreds of digits.
fn num(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1e15 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Why a record cannot be a measurement ([`Record::implausible`]); each names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum Implausible {
    #[error("n = {0}")]
    FleetSize(crate::limits::OutOfRange),
    #[error("{what} = {} s is not a time in 0..={MAX_SECONDS} s", num(*v))]
    Time { what: &'static str, v: f64 },
    #[error("{what} = {v} KiB is more than {MAX_KIB} KiB")]
    Memory { what: &'static str, v: u64 },
    /// More of a file resident than the file holds (mincore counts at most its length).
    #[error("residency: {resident} of {bytes} bytes resident")]
    Residency { resident: u64, bytes: u64 },
    #[error(transparent)]
    Sync(#[from] crate::suite::sync::SyncImplausible),
    #[error("elapsed_s = {} s is not positive", num(*.0))]
    Elapsed(f64),
    #[error("{what} = {} MB/s is not a bandwidth in (0, {MAX_RATE_MBPS}]", num(*v))]
    PairedBandwidth { what: &'static str, v: f64 },
    #[error("value = {} MB/s is not a bandwidth in 0..={MAX_RATE_MBPS} MB/s", num(*.0))]
    Bandwidth(f64),
    #[error("value = {} {unit} is not a latency in 0..={} us", num(*v), MAX_SECONDS * 1e6)]
    Latency { unit: String, v: f64 },
    #[error("unit {0:?} is not one hostd records")]
    Unit(String),
    /// The emulated network's accuracy sample, in its own words.
    #[error("{0}")]
    Netem(String),
    /// A user workload's run, in its own words.
    #[error("{0}")]
    Command(String),
}

fn seconds(what: &'static str, v: f64) -> Result<(), Implausible> {
    if v.is_finite() && (0.0..=MAX_SECONDS).contains(&v) {
        Ok(())
    } else {
        Err(Implausible::Time { what, v })
    }
}

fn kib(what: &'static str, v: u64) -> Result<(), Implausible> {
    if v <= MAX_KIB {
        Ok(())
    } else {
        Err(Implausible::Memory { what, v })
    }
}

fn fleet_size(n: usize) -> Result<(), Implausible> {
    crate::limits::GUESTS.check(n).map(drop).map_err(Implausible::FleetSize)
}

fn startup_implausible(s: &StartupSample) -> Result<(), Implausible> {
    fleet_size(s.n)?;
    seconds("ready_s", s.ready_s)?;
    seconds("own_s", s.own_s)?;
    s.guest_boot_s.map_or(Ok(()), |v| seconds("guest_boot_s", v))?;
    s.guest_kernel_s.map_or(Ok(()), |v| seconds("guest_kernel_s", v))?;
    // A resident share above 1 cannot be measured (mincore counts whole pages of the file's
    // length, clamped to it).
    match &s.residency {
        Some(r) if r.resident_bytes > r.bytes || r.shared_resident_bytes > r.shared_bytes => {
            Err(Implausible::Residency { resident: r.resident_bytes, bytes: r.bytes })
        }
        _ => Ok(()),
    }
}

fn memory_implausible(m: &MemorySample) -> Result<(), Implausible> {
    fleet_size(m.n)?;
    kib("used_before_kib", m.used_before_kib)?;
    kib("used_after_kib", m.used_after_kib)?;
    kib("m_used_kib", m.m_used_kib.unsigned_abs())?;
    kib("hostd_pss_kib", m.hostd_pss_kib)?;
    let c = &m.checks;
    for (what, v) in [
        ("noise_kib", c.noise_kib),
        ("scratch_tmpfs_kib", c.scratch_tmpfs_kib),
        ("cross_check_kib", c.cross_check_kib.map(i64::unsigned_abs)),
    ] {
        v.map_or(Ok(()), |v| kib(what, v))?;
    }
    for &r in &c.m_used_repeats_kib {
        kib("m_used_repeats_kib", r.unsigned_abs())?;
    }
    seconds("settle_s", m.settle_s)?;
    for g in &m.guests {
        kib("guest pss_kib", g.pss_kib)?;
        g.cgroup_kib.map_or(Ok(()), |v| kib("guest cgroup_kib", v))?;
    }
    Ok(())
}

fn bench_implausible(b: &BenchSample) -> Result<(), Implausible> {
    fleet_size(b.n)?;
    crate::suite::sync::plausible(b)?;
    // Every benchmark takes time: the agent refuses a zero or negative one.
    if b.elapsed_s.is_nan() || b.elapsed_s <= 0.0 {
        return Err(Implausible::Elapsed(b.elapsed_s));
    }
    seconds("elapsed_s", b.elapsed_s)?;
    // The paired native read: a positive time and a bandwidth in range.
    for (what, t) in [
        ("paired_native_s", b.paired_native_s),
        ("paired_gap_s", b.paired_gap_s),
        ("paired_native_after_s", b.paired_native_after_s),
    ] {
        t.map_or(Ok(()), |t| seconds(what, t))?;
    }
    for (what, m) in [
        ("paired_native_mbps", b.paired_native_mbps),
        ("paired_native_after_mbps", b.paired_native_after_mbps),
    ] {
        if let Some(v) = m {
            if !(v.is_finite() && v > 0.0 && v <= MAX_RATE_MBPS) {
                return Err(Implausible::PairedBandwidth { what, v });
            }
        }
    }
    let v = b.value;
    match b.unit.as_str() {
        "s" => seconds("value", v),
        "MB/s" if v.is_finite() && (0.0..=MAX_RATE_MBPS).contains(&v) => Ok(()),
        "MB/s" => Err(Implausible::Bandwidth(v)),
        // Latencies: µs per transaction, at most the longest time.
        u if u.starts_with("us") && v.is_finite() && (0.0..=MAX_SECONDS * 1e6).contains(&v) => {
            Ok(())
        }
        u if u.starts_with("us") => Err(Implausible::Latency { unit: u.to_string(), v }),
        u => Err(Implausible::Unit(u.to_string())),
    }
}

/// One place for a fleet's records: every driver (`hostd boot`, a campaign's startup step,
/// the Xen lab) writes a measured fleet as these, in this order.
impl crate::startup::FleetBoot {
    /// Its startups, failures and memory, then its completion ([`Record::FleetDone`]; a
    /// campaign, whose completion is its step's, leaves that one out).
    pub fn records(&self) -> Vec<Record> {
        let (backend, n, mode) = (self.backend, self.n, self.mode);
        let mut out: Vec<Record> = self.startups.iter().cloned().map(Record::Startup).collect();
        out.extend(self.failures.iter().map(|f| Record::Failure {
            backend,
            n,
            mode,
            failure: f.clone(),
        }));
        out.extend(self.memory.clone().map(Record::Memory));
        out.push(Record::FleetDone {
            backend,
            n,
            mode,
            ready: self.startups.len(),
            failed: self.failures.len(),
            t_startup_s: self.t_startup(),
        });
        out
    }
}

impl Record {
    /// The provenance id a measurement carries ("" if untagged); None for other records.
    pub fn provenance_id(&self) -> Option<&str> {
        match self {
            Record::Startup(s) => Some(&s.provenance),
            Record::Memory(m) => Some(&m.provenance),
            Record::Bench(b) => Some(&b.provenance),
            Record::Netem(n) => Some(&n.provenance),
            Record::Command(c) => Some(&c.provenance),
            _ => None,
        }
    }

    /// Tags a measurement with the provenance it came from (other records are unchanged).
    pub fn tag_provenance(&mut self, id: &str) {
        match self {
            Record::Startup(s) => s.provenance = id.to_string(),
            Record::Memory(m) => m.provenance = id.to_string(),
            Record::Bench(b) => b.provenance = id.to_string(),
            Record::Netem(n) => n.provenance = id.to_string(),
            Record::Command(c) => c.provenance = id.to_string(),
            _ => {}
        }
    }

    /// Why this record cannot be a measurement (a negative or non-finite time, a rate or a
    /// memory size beyond any machine, a fleet size outside the fleet limits), or None. Such
    /// records are left out of every report and counted there.
    pub fn implausible(&self) -> Option<Implausible> {
        let r = match self {
            Record::Startup(s) => startup_implausible(s),
            Record::Memory(m) => memory_implausible(m),
            Record::Failure { n, .. } => fleet_size(*n),
            Record::FleetDone { n, t_startup_s, .. } => fleet_size(*n)
                .and_then(|()| t_startup_s.map_or(Ok(()), |v| seconds("t_startup_s", v))),
            Record::Bench(b) => bench_implausible(b),
            Record::StepDone { .. }
            | Record::StepFailed { .. }
            | Record::BackendUnavailable { .. }
            | Record::BackendProbe { .. }
            | Record::GuestLost { .. }
            | Record::Provenance { .. } => Ok(()),
            Record::Netem(n) => n.implausible().map_or(Ok(()), |why| Err(Implausible::Netem(why))),
            Record::Command(c) => {
                c.implausible().map_or(Ok(()), |why| Err(Implausible::Command(why)))
            }
        };
        r.err()
    }
}

/// A record left out of the report, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// 1-based line of samples.jsonl.
    pub line: usize,
    /// Why it was left out.
    pub why: String,
}

/// What a samples file holds, as the report takes it in.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Records that parse and make physical sense, in file order.
    pub records: Vec<Record>,
    /// Lines that are not a record (torn by a kill, too long, from a newer hostd).
    pub unreadable: usize,
    /// Records outside physical sense (see [`Record::implausible`]): how many, and the first
    /// [`Samples::KEEP_REJECTED`] with their reasons.
    pub implausible: usize,
    /// The first rejected records.
    pub rejected: Vec<Rejected>,
}

impl Samples {
    /// How many rejected records are kept with their reasons.
    pub const KEEP_REJECTED: usize = 20;

    /// Takes in a samples file's bytes: every line parsed, every record checked. Holds at
    /// most [`crate::results::MAX_LINE`] bytes of one line at a time.
    pub fn parse<R: std::io::BufRead>(r: R) -> std::io::Result<Samples> {
        use crate::results::{for_each_line, Line, MAX_LINE};
        let mut s = Samples::default();
        let mut n = 0;
        for_each_line(r, MAX_LINE, |l| {
            n += 1;
            let rec = match l {
                Line::Text(t) if t.iter().all(|b| b.is_ascii_whitespace()) => return,
                Line::Text(t) => serde_json::from_slice::<Record>(t),
                Line::TooLong => return s.unreadable += 1,
            };
            match rec {
                Err(_) => s.unreadable += 1,
                Ok(r) => match r.implausible() {
                    None => s.records.push(r),
                    Some(why) => {
                        s.implausible += 1;
                        if s.rejected.len() < Self::KEEP_REJECTED {
                            s.rejected.push(Rejected { line: n, why: why.to_string() });
                        }
                    }
                },
            }
        })?;
        if s.implausible > 0 {
            tracing::warn!(
                "{} sample record(s) outside physical sense left out, e.g. line {}: {}",
                s.implausible,
                s.rejected[0].line,
                s.rejected[0].why
            );
        }
        Ok(s)
    }

    /// Reads `dir`'s samples file (a regular file within the bounds of
    /// [`crate::results::read_records`]; none if it has no samples file).
    pub fn read(dir: &std::path::Path) -> Result<Samples, crate::results::ReadError> {
        crate::results::read_with(dir, |r| Samples::parse(r))
    }
}

#[cfg(test)]
mod tests;
