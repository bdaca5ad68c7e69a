//! The results side of the coordinator: every host's record (`multihost.json`) and the
//! one results directory merged from the hosts' reports.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use serde::Serialize;

use super::super::clock::Offset;
use super::super::memory::{across, host_words, total_words, AcrossHosts};
use super::super::plan::{self, HostStart};
use super::super::proto::{Booted, GuestReady, Reached, SlicePart, TornDown};
use super::{Options, Outcome, RingSummary};
use crate::backend::BackendKind;
use crate::fleet::{FailureKind, GuestFailure};
use crate::provenance::Provenance;
use crate::results::ResultsDir;
use crate::startup::{FleetBoot, StartMode, StartupSample};
use crate::suite::BenchSample;

/// One host of the run, as recorded in `multihost.json`.
#[derive(Debug, Clone, Serialize)]
pub struct HostRecord {
    pub hostname: String,
    pub node_id: Option<u32>,
    pub node_name: Option<String>,
    pub addr: Ipv4Addr,
    pub cpus: u32,
    pub mem_mib: u64,
    pub images: BTreeMap<String, String>,
    /// Its slice: its part of each group (global indices), and its guests in all.
    pub parts: Vec<SlicePart>,
    pub count: usize,
    /// Its CLOCK_MONOTONIC minus the coordinator's, with the error bound.
    pub clock: Option<Offset>,
    /// Its report, when it made one.
    pub booted: Option<Booted>,
    /// Its start on the coordinator's monotonic clock minus T0's (from its start_mono_ns
    /// and offset), s: a second view of its lateness, good to within the offset's bound.
    pub start_vs_coordinator_s: Option<f64>,
    /// Guests that could not serve the reach check, in words.
    pub serve_failed: Vec<String>,
    /// Its guests' exchanges with a guest on each other host (with `--reach`).
    pub reach: Option<Reached>,
    /// Its teardown report.
    pub teardown: Option<TornDown>,
    /// Why a live host's teardown report is missing (none within its time, a bad one, its
    /// link dropped): what it left behind is unknown.
    pub teardown_error: Option<String>,
    /// Its guests' failures in the ring across hosts, in words.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ring_failed: Vec<String>,
    /// Why its guests are counted lost (the worker disconnected, died or misbehaved).
    pub lost: Option<String>,
}

/// `multihost.json`: the run across hosts.
#[derive(Debug, Clone, Serialize)]
pub struct MultiHost {
    pub backend: BackendKind,
    pub n: usize,
    pub mode: StartMode,
    /// Slurm's job id.
    pub job: Option<String>,
    /// T0 on CLOCK_REALTIME, ns since the epoch.
    pub t0_unix_ns: u64,
    /// max over hosts of (lateness + slowest guest), s.
    pub t_startup_s: Option<f64>,
    pub hosts: Vec<HostRecord>,
    /// The ring across hosts, when measured (its samples are in `samples.jsonl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring: Option<RingSummary>,
    /// The fleet's memory: each host's figure and their sum (none if no host had one).
    pub memory: Option<AcrossHosts>,
}

/// One fleet's run across hosts, merged but not yet written: `multihost.json`'s record, the
/// boot (ready times measured from T0), the ring's samples and the provenance, whose id
/// every sample carries.
pub struct Merged {
    pub multihost: MultiHost,
    pub boot: FleetBoot,
    pub bench: Vec<BenchSample>,
    pub provenance: Provenance,
}

impl Merged {
    /// Makes every sample name `id` as its provenance (a campaign's fleets share one).
    pub(super) fn set_provenance(&mut self, id: &str) {
        for s in &mut self.boot.startups {
            s.provenance = id.to_string();
        }
        for s in &mut self.bench {
            s.provenance = id.to_string();
        }
    }
}

/// The hosts' reports as one fleet's results, with per-host provenance.
pub(super) fn merge(
    o: &Options,
    hosts: Vec<HostRecord>,
    t0_unix_ns: u64,
    job: Option<String>,
    ring: Option<(Vec<BenchSample>, RingSummary)>,
) -> Merged {
    let memory = memory_of(&hosts);
    let mut provenance = provenance(o, &hosts, job.as_deref());
    provenance.notes.extend(memory.as_ref().map(total_words));
    let (bench, ring) = match ring {
        Some((b, s)) => (b, Some(s)),
        None => (Vec::new(), None),
    };
    let g = gather(o, &hosts, &provenance.id());
    let reach = o.reach.then(|| reach_of(&hosts));
    let multihost = MultiHost {
        backend: o.backend(),
        n: o.n(),
        mode: o.mode,
        job,
        t0_unix_ns,
        t_startup_s: plan::t_startup(&g.starts),
        hosts,
        ring,
        memory,
    };
    let boot = FleetBoot {
        backend: o.backend(),
        n: o.n(),
        mode: o.mode,
        startups: g.startups,
        failures: g.failures,
        memory: None,
        teardown_clean: g.clean,
        teardown_killed: g.killed,
        residency: None,
        reach,
    };
    let mut m = Merged { multihost, boot, bench, provenance };
    let id = m.provenance.id();
    m.set_provenance(&id);
    m
}

/// One fleet's results directory: samples, the boot summary and report, and
/// `multihost.json` with every host's provenance.
pub(super) fn write_one(o: &Options, m: Merged) -> Result<Outcome> {
    let mut results = new_dir(&o.results, &o.label)?;
    results.write_json("provenance.json", &m.provenance)?;
    results.write_json("multihost.json", &m.multihost)?;
    append(&mut results, &m)?;
    let summary = crate::bootrun::summarise(m.provenance, vec![crate::bootrun::row(&m.boot)]);
    crate::bootrun::write_outputs(&results, &summary)?;
    crate::report::write(&results.path, false).context("writing the report")?;
    Ok(Outcome { multihost: m.multihost, results: results.path.clone(), boot: m.boot })
}

/// A fresh results directory under `parent`, named by the date, `label` and a run id.
pub(super) fn new_dir(parent: &std::path::Path, label: &str) -> Result<ResultsDir> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    Ok(ResultsDir::create_unique(
        parent,
        &format!("{stamp}-{label}-{}", crate::runstate::new_run_id()),
    )?)
}

/// A fleet's startup and ring samples, appended to `samples.jsonl`.
pub(super) fn append(results: &mut ResultsDir, m: &Merged) -> Result<()> {
    for r in m.boot.records() {
        results.append(&r)?;
    }
    for s in &m.bench {
        results.append(&crate::samples::Record::Bench(s.clone()))?;
    }
    Ok(())
}

/// The run's provenance: the coordinator's images (or the first host's), with a note on
/// how its ready times were measured.
fn provenance(o: &Options, hosts: &[HostRecord], job: Option<&str>) -> Provenance {
    let images = o
        .images
        .clone()
        .unwrap_or_else(|| hosts.first().map(|h| h.images.clone()).unwrap_or_default());
    let mut provenance = Provenance::collect(images);
    provenance.notes.push(format!(
        "multi-host run on {} hosts (Slurm job {}), this host the coordinator: ready times are measured from T0 on each host's own clock plus its start lateness; every host's record is in multihost.json",
        hosts.len(),
        job.unwrap_or("?")
    ));
    provenance.notes.extend(hosts.iter().map(host_note));
    provenance.notes.extend(o.notes.iter().cloned());
    provenance
}

/// Every live host's memory figure and their sum.
fn memory_of(hosts: &[HostRecord]) -> Option<AcrossHosts> {
    across(hosts.iter().map(|h| {
        let m = h.booted.as_ref().filter(|_| h.lost.is_none()).and_then(|b| b.memory.as_ref());
        (h.hostname.as_str(), m)
    }))
}

/// One host's provenance in a line: who it is, what it ran, its clock, its memory, and how
/// it ended.
fn host_note(h: &HostRecord) -> String {
    let node = match (&h.node_name, h.node_id) {
        (Some(n), Some(i)) => format!("Slurm node {n} (#{i}), "),
        _ => String::new(),
    };
    let clock = h.clock.map_or("not measured".into(), |c| {
        format!("{:+.6} s ± {:.0} µs", c.offset_s, c.bound_s * 1e6)
    });
    let ended = match (&h.lost, &h.teardown, &h.teardown_error) {
        (Some(l), _, _) => format!("LOST: {l}"),
        (None, Some(t), _) if t.leftovers.is_empty() => "torn down clean".into(),
        (None, Some(t), _) => format!("{} thing(s) left after teardown", t.leftovers.len()),
        (None, None, e) => {
            format!("teardown not confirmed: {}", e.as_deref().unwrap_or("no report"))
        }
    };
    let memory = match h.booted.as_ref().and_then(|b| b.memory.as_ref()) {
        Some(m) => format!("; {}", host_words(m)),
        None => String::new(),
    };
    format!(
        "host {}: {node}{}, {} CPUs, {} MiB; guests {} ({}); {} image hash(es) reported (those the fleet boots checked equal to the reference); clock offset to the coordinator's {clock}{memory}; {ended}",
        h.hostname,
        h.addr,
        h.cpus,
        h.mem_mib,
        SlicePart::describe(&h.parts),
        h.count,
        h.images.len()
    )
}

/// The hosts' reports as one fleet's samples and failures.
struct Gathered {
    startups: Vec<StartupSample>,
    failures: Vec<GuestFailure>,
    starts: Vec<HostStart>,
    clean: usize,
    killed: usize,
}

/// Every host's guests: ready ones as samples (from T0: its lateness plus their own time),
/// failed ones as failures, and all of a lost host's guests as crashed.
fn gather(o: &Options, hosts: &[HostRecord], pid: &str) -> Gathered {
    let mut g = Gathered {
        startups: Vec::new(),
        failures: Vec::new(),
        starts: Vec::new(),
        clean: 0,
        killed: 0,
    };
    for h in hosts {
        match (&h.booted, &h.lost) {
            (Some(b), None) => {
                for &GuestReady { index, ready_s } in &b.ready {
                    g.startups.push(StartupSample {
                        backend: o.backend(),
                        n: o.n(),
                        mode: o.mode,
                        index,
                        ready_s: b.lateness_s + ready_s,
                        own_s: ready_s,
                        guest_boot_s: None,
                        guest_kernel_s: None,
                        provenance: pid.to_string(),
                        residency: None,
                        image_copies: false,
                    });
                }
                g.failures.extend(b.failed.iter().map(|f| GuestFailure {
                    index: f.index,
                    name: format!("g{}", f.index),
                    kind: f.kind.clone(),
                    error: format!("on host {}: {}", h.hostname, f.error),
                    console_tail: None,
                }));
                g.starts.push(HostStart {
                    lateness_s: b.lateness_s,
                    slowest_s: b.ready.iter().map(|g| g.ready_s).reduce(f64::max),
                });
            }
            _ => g.failures.extend(SlicePart::indices(&h.parts).map(|(index, _)| GuestFailure {
                index,
                name: format!("g{index}"),
                kind: FailureKind::Crashed,
                error: format!(
                    "host {} lost: {}",
                    h.hostname,
                    h.lost.as_deref().unwrap_or("no report")
                ),
                console_tail: None,
            })),
        }
        if let Some(t) = &h.teardown {
            (g.clean, g.killed) = (g.clean + t.clean, g.killed + t.killed);
        }
    }
    g.startups.sort_by_key(|s| s.index);
    g.failures.sort_by_key(|f| f.index);
    g
}

/// What fell short in a finished multi-host run, in words, each naming what it concerns:
/// guests failed or lost, the reach check, and every host whose teardown was not shown
/// clean (no report, or things left behind). Empty: every step done; otherwise the run
/// finished with failures (exit status 3).
pub fn shortfalls(m: &MultiHost, boot: &FleetBoot) -> Vec<String> {
    let mut short = Vec::new();
    let failed = boot.failures.len();
    if failed > 0 || boot.startups.len() != m.n {
        short.push(format!("{failed} of {} guests failed or lost", m.n));
    }
    if let Some(r) = boot.reach.as_ref().filter(|r| !r.all()) {
        short.push(format!("reach across hosts: {}", r.line()));
    }
    if let Some(r) = &m.ring {
        if r.samples == 0 || !r.failures.is_empty() {
            short.push(format!(
                "the ring across hosts: {} samples, {} failure(s){}",
                r.samples,
                r.failures.len(),
                r.failures.first().map_or(String::new(), |f| format!(", first: {f}"))
            ));
        }
    }
    for h in m.hosts.iter().filter(|h| h.lost.is_none()) {
        match (&h.teardown, &h.teardown_error) {
            (_, Some(e)) => short.push(format!("host {}: teardown not confirmed: {e}", h.hostname)),
            (None, None) => short.push(format!("host {}: no teardown report", h.hostname)),
            (Some(t), None) if !t.leftovers.is_empty() => short.push(format!(
                "host {}: {} thing(s) left after teardown",
                h.hostname,
                t.leftovers.len()
            )),
            (Some(_), None) => {}
        }
    }
    short
}

/// The reach check summed over the live hosts, each failure naming its host.
fn reach_of(hosts: &[HostRecord]) -> crate::reach::Reach {
    let mut r = crate::reach::Reach::default();
    for h in hosts.iter().filter(|h| h.lost.is_none()) {
        r.failures.extend(h.serve_failed.iter().map(|f| format!("{}: {f}", h.hostname)));
        if let Some(x) = &h.reach {
            r.checked += x.checked;
            r.reached += x.reached;
            r.across_bridges += x.across_hosts;
            r.failures.extend(x.failures.iter().map(|f| format!("{}: {f}", h.hostname)));
        }
    }
    r
}
