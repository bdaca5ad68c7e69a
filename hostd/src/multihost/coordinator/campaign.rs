//! A campaign across hosts (`hostd run --engine slurm`): one fleet per backend the campaign
//! lists, one after another as on one machine, each its own job step of workers in the one
//! allocation with its startup and its ring, all merged into one results directory and one
//! report. A backend not available on some host is left out with a note, as the campaign
//! leaves out a backend whose probe fails on one machine. Before the fleets, the campaign's
//! single-host steps run on one node (`suite.rs`); their records join the same directory.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::merge::{append, new_dir, Merged};
use super::suite::{self, NodeSuite, SingleHost, SuiteError, SuiteOptions};
use super::{MultiHost, Options};
use crate::backend::BackendKind;
use crate::campaign::Campaign;
use crate::samples::Record;
use crate::startup::FleetBoot;

/// What `hostd run --engine slurm` was asked for.
#[derive(Debug, Clone)]
pub struct CampaignOptions {
    /// One fleet per backend, in the campaign's order, each with its ring.
    pub fleets: Vec<Options>,
    /// Parent of the results directory.
    pub results: PathBuf,
    /// What the results directory's name says after its date.
    pub label: String,
    /// Notes for the provenance (what was and was not run across hosts).
    pub notes: Vec<String>,
    /// The campaign (as run: `--quick` applied), stored with the results.
    pub campaign: Campaign,
    /// Its single-host steps and where they run (None: not run).
    pub suite: Option<SuiteOptions>,
    /// The hostd binary the nodes run.
    pub exe: PathBuf,
}

/// A backend some host cannot run (its worker's probe failed there): its fleet is not
/// started.
#[derive(Debug, thiserror::Error)]
#[error("host {host}: backend {backend} is not available there (its probe failed; see the worker's log above)")]
pub struct BackendMissing {
    pub host: String,
    pub backend: BackendKind,
}

/// A backend left out of the campaign across hosts, and why.
#[derive(Debug, Clone, Serialize)]
pub struct LeftOut {
    pub backend: BackendKind,
    pub reason: String,
}

/// `multihost.json` of a campaign: each backend's fleet as `hostd boot --engine slurm`
/// records one, the backends left out, and the fleets that failed as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignRecord {
    pub fleets: Vec<MultiHost>,
    pub unavailable: Vec<LeftOut>,
    pub failed: Vec<LeftOut>,
    /// The single-host steps: the node, how its run ended, what it recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub single_host: Option<SingleHost>,
}

/// What the campaign produced.
pub struct CampaignOutcome {
    pub record: CampaignRecord,
    /// Each fleet's boot, in the order of `record.fleets`.
    pub boots: Vec<FleetBoot>,
    pub results: PathBuf,
}

/// Runs the single-host steps on one node, then every backend's fleet in turn inside the
/// current Slurm allocation, and writes the one results directory. Fails, writing nothing,
/// if no fleet ran at all (the single-host steps' directory is then kept, and said).
pub async fn run_campaign(c: &CampaignOptions) -> Result<CampaignOutcome> {
    let single = match &c.suite {
        Some(s) => Some(suite::run_on_node(s, &c.campaign, &c.exe, &c.results).await),
        None => None,
    };
    if let Some(Err(e)) = &single {
        eprintln!("hostd:    single-host steps not run: {e}");
    }
    let mut done = Vec::new();
    let (mut unavailable, mut failed) = (Vec::new(), Vec::new());
    for o in &c.fleets {
        let backend = o.backend();
        eprintln!("hostd: == {backend}: {} guests across {} hosts", o.n(), o.hosts);
        match super::fleet(o).await {
            Ok(m) => done.push(m),
            Err(e) => {
                let reason = format!("{e:#}");
                eprintln!("hostd:    {backend} left out: {reason}");
                let left = LeftOut { backend, reason };
                match e.downcast_ref::<BackendMissing>() {
                    Some(_) => unavailable.push(left),
                    None => failed.push(left),
                }
            }
        }
    }
    if done.is_empty() {
        let why: Vec<String> = unavailable
            .iter()
            .chain(&failed)
            .map(|l| format!("{}: {}", l.backend, l.reason))
            .collect();
        let kept = match single {
            Some(Ok(s)) => format!(
                " (the single-host steps' results are kept in {})",
                s.work.keep().join("results").display()
            ),
            _ => String::new(),
        };
        bail!("no backend of the campaign ran across hosts: {}{kept}", why.join("; "));
    }
    let record = CampaignRecord { fleets: Vec::new(), unavailable, failed, single_host: None };
    write(c, done, record, single)
}

/// What the single-host steps add to the provenance's notes and `multihost.json`.
fn single_host_account(
    c: &CampaignOptions,
    single: &Option<Result<NodeSuite, SuiteError>>,
) -> (Option<String>, Option<SingleHost>) {
    match single {
        None => (None, None),
        Some(Ok(s)) => {
            let host = s.records.iter().find_map(|r| match r {
                Record::Provenance { provenance, .. } => Some(provenance.host.hostname.clone()),
                _ => None,
            });
            let note = format!(
                "native's baseline, the single-guest microbenchmarks, overhead, linearity, isolation, users' commands and startup sizes measured on host {} (Slurm node {}) by hostd run there as one job step ({}); the ring and each backend's fleet startup span the hosts",
                host.as_deref().unwrap_or("?"),
                s.node,
                s.exit
            );
            (Some(note), Some(s.summary()))
        }
        Some(Err(e)) => {
            let node = c.suite.as_ref().and_then(|s| s.node.clone());
            let node = node.unwrap_or_else(|| "the allocation's first".into());
            let account = SingleHost {
                node,
                outcome: format!("not run: {e}"),
                records: 0,
                steps_done: 0,
                steps_failed: 0,
            };
            (Some(format!("single-host steps not run: {e}")), Some(account))
        }
    }
}

/// One results directory for every fleet: one provenance (every host of every fleet in
/// its notes), `multihost.json`, all samples, the boot summary with a row per backend, and
/// the report.
pub(super) fn write(
    c: &CampaignOptions,
    mut done: Vec<Merged>,
    mut record: CampaignRecord,
    single: Option<Result<NodeSuite, SuiteError>>,
) -> Result<CampaignOutcome> {
    let mut provenance = done[0].provenance.clone();
    provenance.notes = c.notes.clone();
    let hosts = done.iter().map(|m| m.multihost.hosts.len()).max().unwrap_or(0);
    provenance.part =
        Some(format!("each backend's fleet, its startup and its ring, across {hosts} hosts"));
    let (note, account) = single_host_account(c, &single);
    provenance.notes.extend(note);
    record.single_host = account;
    for m in &done {
        let b = m.multihost.backend;
        provenance.notes.extend(m.provenance.notes.iter().map(|n| format!("{b}: {n}")));
    }
    let ran: Vec<&str> = done.iter().map(|m| m.multihost.backend.name()).collect();
    provenance.notes.push(format!("backends run across hosts: {}", ran.join(", ")));
    for l in record.unavailable.iter().chain(&record.failed) {
        provenance.notes.push(format!("{}: not run across hosts: {}", l.backend, l.reason));
    }
    let id = provenance.id();
    let mut results = new_dir(&c.results, &c.label)?;
    results.write_json("provenance.json", &provenance)?;
    results.write("campaign.toml", toml::to_string(&c.campaign)?.as_bytes())?;
    for m in done.iter_mut() {
        m.set_provenance(&id);
        append(&mut results, m)?;
    }
    // Each sample of the node's run keeps its provenance, recorded before it as there.
    if let Some(Ok(s)) = &single {
        for r in s.merged_records() {
            results.append(&r)?;
        }
    }
    for l in &record.unavailable {
        results
            .append(&Record::BackendUnavailable { backend: l.backend, reason: l.reason.clone() })?;
    }
    let rows = done.iter().map(|m| crate::bootrun::row(&m.boot)).collect();
    let summary = crate::bootrun::summarise(provenance, rows);
    let mut boots = Vec::new();
    for m in done {
        record.fleets.push(m.multihost);
        boots.push(m.boot);
    }
    results.write_json("multihost.json", &record)?;
    crate::bootrun::write_outputs(&results, &summary)?;
    crate::report::write(&results.path, false).context("writing the report")?;
    Ok(CampaignOutcome { record, boots, results: results.path.clone() })
}
