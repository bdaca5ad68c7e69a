//! A campaign's single-host steps across hosts (`hostd run --engine slurm`): native's
//! baseline, the single-guest microbenchmarks, overhead, linearity, isolation, users'
//! commands, startup sizes and the emulated network's accuracy — all but the ring — run on
//! one node of the allocation by the local campaign runner itself: `hostd run` as one Slurm
//! job step (`srun -N1 -n1 -w NODE`), with the ring left out of its campaign, into a
//! results directory of its own under `--results`. Its records are then merged into the
//! campaign's one results directory, each sample keeping the provenance it was measured
//! under, that provenance naming its part.
//!
//! A job step rather than a worker message: the local runner already records every step
//! durably, a failed step with its reason, and its provenance; a message would have to carry
//! all of it over the link. The price: the node writes under `--results`, which must be on a
//! file system the nodes share, as hostd's binary and the images already must be.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Serialize;

use crate::campaign::Campaign;
use crate::results::ReadError;
use crate::samples::Record;

/// Where and how the single-host steps run.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// The node (`--suite-host`), or None for the allocation's first.
    pub node: Option<String>,
    /// hostd's flags the node's `hostd run` gets too (images, runtimes, accelerator).
    pub args: Vec<OsString>,
}

/// What the node's `hostd run` recorded.
pub struct NodeSuite {
    pub node: String,
    /// How `hostd run` ended there, in words.
    pub exit: String,
    pub records: Vec<Record>,
    /// Its directory (removed when this is dropped).
    pub work: tempfile::TempDir,
}

/// `multihost.json`'s account of the single-host steps.
#[derive(Debug, Clone, Serialize)]
pub struct SingleHost {
    /// The node they ran on (or were to run on).
    pub node: String,
    /// How the node's `hostd run` ended, or why it could not run.
    pub outcome: String,
    /// The records merged from it.
    pub records: usize,
    /// The steps it recorded done and failed.
    pub steps_done: usize,
    pub steps_failed: usize,
}

/// Why the single-host steps could not run or be read.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error(
        "--suite-host {0:?}: not a Slurm node name (1 to 64 letters, digits, '.', '-' or '_')"
    )]
    BadName(String),
    #[error("finding the allocation's nodes: {0:#}")]
    Nodes(anyhow::Error),
    #[error("--suite-host {name}: not a node of this allocation (its nodes: {nodes})")]
    NotAllocated { name: String, nodes: String },
    #[error("making the single-host steps' directory under {dir}: {source}")]
    WorkDir { dir: PathBuf, source: std::io::Error },
    #[error("writing the single-host steps' campaign {path}: {why}")]
    CampaignFile { path: PathBuf, why: String },
    #[error("starting srun for the single-host steps on node {node}: {source}")]
    Srun { node: String, source: std::io::Error },
    #[error("the single-host steps on node {node} recorded nothing (hostd run there {exit}); if it ran, it wrote where this host cannot see: --results ({dir}) must be on a file system every node shares")]
    NothingRecorded { node: String, exit: String, dir: PathBuf },
    #[error("reading the single-host steps' results {dir}: {source}")]
    Read { dir: PathBuf, source: ReadError },
}

/// Checks `--suite-host` as a name before anything is allocated.
pub fn check_name(name: &str) -> Result<(), SuiteError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SuiteError::BadName(name.to_string()))
    }
}

/// The node to run on: the one asked for, if the allocation has it, else its first.
pub fn pick_node(asked: Option<&str>, nodes: &[String]) -> Result<String, SuiteError> {
    let listed = || SuiteError::NotAllocated {
        name: asked.unwrap_or_default().to_string(),
        nodes: nodes.join(", "),
    };
    match asked {
        Some(n) => nodes.iter().find(|m| *m == n).cloned().ok_or_else(listed),
        None => nodes.first().cloned().ok_or_else(listed),
    }
}

/// The allocation's nodes, in Slurm's order.
fn allocation_nodes() -> Result<Vec<String>, SuiteError> {
    let list = std::env::var("SLURM_JOB_NODELIST")
        .map_err(|_| SuiteError::Nodes(anyhow::anyhow!("SLURM_JOB_NODELIST is not set")))?;
    let names =
        super::output("scontrol", &["show", "hostnames", &list]).map_err(SuiteError::Nodes)?;
    Ok(names.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

/// The campaign the node runs: the same, with the ring left out (it is measured across
/// the hosts).
pub fn without_ring(c: &Campaign) -> Campaign {
    let mut c = c.clone();
    c.ring.guests = 0;
    for o in c.overrides.values_mut() {
        o.ring_guests = Some(0);
    }
    c
}

/// Runs the campaign's single-host steps on one node and reads what they recorded. A step
/// failing there is among the records (as on one machine); an error here means the node's
/// run recorded nothing at all.
pub async fn run_on_node(
    o: &SuiteOptions,
    campaign: &Campaign,
    exe: &Path,
    parent: &Path,
) -> Result<NodeSuite, SuiteError> {
    let node = pick_node(o.node.as_deref(), &allocation_nodes()?)?;
    let work = work_dir(parent, &without_ring(campaign))?;
    let file = work.path().join("campaign.toml");
    let results = work.path().join("results");
    eprintln!("hostd: == single-host steps on node {node}: hostd run there as one job step");
    // No -c: Slurm 22.05 then gives the step every CPU the job has on the node (-c would
    // imply --exact), which linearity and isolation need.
    let status = tokio::process::Command::new("srun")
        .args(["-N", "1", "-n", "1", "-w", &node, "--"])
        .arg(exe)
        .arg("run")
        .arg(&file)
        .arg("--results")
        .arg(&results)
        .args(&o.args)
        .stdin(Stdio::null())
        // Its stdout (the report line of a directory merged and removed) joins its progress
        // on stderr: this run's own report line is the one on stdout.
        .stdout(stderr_copy())
        // Ctrl-C reaches srun from the terminal (Slurm ends the step, hostd run there
        // tears down); this only covers the coordinator failing otherwise.
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|source| SuiteError::Srun { node: node.clone(), source })?;
    let exit = match status.code() {
        Some(0) => "finished".to_string(),
        Some(3) => "finished with failed steps (exit 3)".to_string(),
        _ => format!("failed ({status})"),
    };
    let nothing = || SuiteError::NothingRecorded {
        node: node.clone(),
        exit: exit.clone(),
        dir: parent.to_path_buf(),
    };
    let dir = std::fs::read_dir(&results)
        .ok()
        .and_then(|mut d| d.find_map(|e| e.ok().map(|e| e.path()).filter(|p| p.is_dir())))
        .ok_or_else(nothing)?;
    let (records, _) = crate::results::read_records::<Record>(&dir)
        .map_err(|source| SuiteError::Read { dir: dir.clone(), source })?;
    if records.is_empty() {
        return Err(nothing());
    }
    Ok(NodeSuite { node, exit, records, work })
}

/// This process's stderr for a child's stdout (inherited stdout if it cannot be copied).
fn stderr_copy() -> Stdio {
    use std::os::fd::AsFd;
    std::io::stderr().as_fd().try_clone_to_owned().map_or_else(|_| Stdio::inherit(), Stdio::from)
}

/// The node's directory under the results' parent, with its campaign written.
fn work_dir(parent: &Path, c: &Campaign) -> Result<tempfile::TempDir, SuiteError> {
    let dir_err = |source| SuiteError::WorkDir { dir: parent.to_path_buf(), source };
    std::fs::create_dir_all(parent).map_err(dir_err)?;
    let work =
        tempfile::Builder::new().prefix(".single-host-").tempdir_in(parent).map_err(dir_err)?;
    let path = work.path().join("campaign.toml");
    let text = toml::to_string(c)
        .map_err(|e| SuiteError::CampaignFile { path: path.clone(), why: e.to_string() })?;
    std::fs::write(&path, text)
        .map_err(|e| SuiteError::CampaignFile { path: path.clone(), why: e.to_string() })?;
    Ok(work)
}

impl NodeSuite {
    /// Its records for the campaign's results directory: each provenance it measured under
    /// names its part and node, so the report lists the mix as by design.
    pub fn merged_records(&self) -> Vec<Record> {
        let part = format!("the single-host steps on node {}", self.node);
        self.records
            .iter()
            .cloned()
            .map(|mut r| {
                if let Record::Provenance { provenance, .. } = &mut r {
                    provenance.part = Some(part.clone());
                }
                r
            })
            .collect()
    }

    /// Its account for `multihost.json`.
    pub fn summary(&self) -> SingleHost {
        let count = |f: fn(&Record) -> bool| self.records.iter().filter(|r| f(r)).count();
        SingleHost {
            node: self.node.clone(),
            outcome: self.exit.clone(),
            records: self.records.len(),
            steps_done: count(|r| matches!(r, Record::StepDone { .. })),
            steps_failed: count(|r| matches!(r, Record::StepFailed { .. })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<String> {
        ["n1", "n2", "n3"].map(String::from).to_vec()
    }

    #[test]
    fn the_node_is_the_one_asked_for_if_allocated_else_the_first() {
        assert_eq!(pick_node(None, &nodes()).unwrap(), "n1");
        assert_eq!(pick_node(Some("n3"), &nodes()).unwrap(), "n3");
        let e = pick_node(Some("n9"), &nodes()).unwrap_err().to_string();
        assert_eq!(e, "--suite-host n9: not a node of this allocation (its nodes: n1, n2, n3)");
        assert!(pick_node(None, &[]).is_err());
    }

    #[test]
    fn a_node_name_is_checked_before_anything_is_allocated() {
        for ok in ["n1", "node-01.cluster_a"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "n1 n2", "n[1-3]", "n1,n2", &"n".repeat(65)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("--suite-host ") && e.contains("not a Slurm node name"), "{e}");
        }
    }

    #[test]
    fn the_node_runs_the_campaign_without_its_ring_and_nothing_else_changed() {
        let c: Campaign = toml::from_str(
            "name = \"c\"\nbackends = [\"native\", \"ns\", \"uml\"]\n[overrides.uml]\nring_guests = 4\n",
        )
        .unwrap();
        let c = c.quick();
        let n = without_ring(&c);
        assert!(n.plans().iter().all(|p| p.ring_guests == 0), "{:?}", n.plans());
        assert!(c.plans().iter().all(|p| p.ring_guests >= 2));
        assert!(n.check().is_ok());
        let (mut a, mut b) = (n.clone(), c.clone());
        a.ring = b.ring.clone();
        for (x, y) in a.overrides.values_mut().zip(b.overrides.values_mut()) {
            x.ring_guests = y.ring_guests;
        }
        assert_eq!(toml::to_string(&a).unwrap(), toml::to_string(&b).unwrap());
        // The file the node reads back is the same campaign.
        let back: Campaign = toml::from_str(&toml::to_string(&n).unwrap()).unwrap();
        assert_eq!(toml::to_string(&back).unwrap(), toml::to_string(&n).unwrap());
    }

    #[test]
    fn merged_records_name_the_nodes_part_and_keep_each_samples_provenance() {
        let p = crate::provenance::Provenance::collect(Default::default());
        let id = p.id();
        let mut bench: Record = serde_json::from_str(r#"{"record":"bench","backend":"ns","test":"overhead","resource":"cpu","n":1,"rep":0,"guest":0,"instance":0,"value":1.0,"unit":"s","elapsed_s":1.0,"params":"rounds=8"}"#).unwrap();
        bench.tag_provenance(&id);
        let s = NodeSuite {
            node: "n2".into(),
            exit: "finished with failed steps (exit 3)".into(),
            records: vec![
                Record::Provenance { id: id.clone(), provenance: p },
                bench,
                Record::StepDone { key: "ns/overhead/cpu".into() },
                Record::StepFailed { key: "ns/isolation/cpu".into(), error: "x".into() },
            ],
            work: tempfile::tempdir().unwrap(),
        };
        let m = s.merged_records();
        let Record::Provenance { id: pid, provenance } = &m[0] else { panic!("{m:?}") };
        assert_eq!(provenance.part.as_deref(), Some("the single-host steps on node n2"));
        assert_eq!((pid, &provenance.id()), (&id, &id), "the part is not in the id");
        assert_eq!(m[1].provenance_id(), Some(id.as_str()));
        let h = s.summary();
        assert_eq!((h.node.as_str(), h.records, h.steps_done, h.steps_failed), ("n2", 4, 1, 1));
    }
}
