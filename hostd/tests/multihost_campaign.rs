//! `hostd run --engine slurm` in the Slurm lab (issue 17, docs/multihost.md "The ring across
//! hosts" and "The single-host steps"): a campaign listing native, ns and uml over 3 emulated
//! hosts runs its single-host steps (native's baseline, overhead, linearity, isolation,
//! startup sizes) by `hostd run` on node n1, then one fleet per backend, one after another,
//! each ring spanning the hosts with its samples labelled by their path across hosts, all in
//! one results directory and report with every host's provenance and the node named, and
//! nothing left on any host; uml's ring (a guest with its own kernel) crosses the hosts at the
//! VXLAN's MTU, which its agent sets (`vb.mtu=`). Needs root, the Slurm packages
//! (scripts/install-deps) and the images (VIRTBENCH_IMAGES) with the UML kernel.

mod support {
    pub mod cli;
    pub mod skip;
    // Shared with tests/multihost.rs, whose held fleets this file does not use.
    #[allow(dead_code)]
    pub mod slurmlab;
}

use std::process::Command;

use support::slurmlab::*;

/// A quick campaign of native, ns and uml, CPU and network, over 3 hosts: the single-host steps
/// on n1, then one fleet per backend with its ring spanning the hosts, all in one report.
#[test]
fn a_quick_campaign_across_three_hosts_has_single_host_steps_on_n1_and_rings_across_them() {
    let Some((_s, lab)) = serial_lab("r") else { return };
    let res = tempfile::Builder::new().prefix("multihost-").tempdir_in("/var/tmp").unwrap();
    let files = tempfile::Builder::new().prefix("multihost-c-").tempdir_in("/var/tmp").unwrap();
    let campaign = files.path().join("mh.toml");
    std::fs::write(
        &campaign,
        "name = \"mh\"\nbackends = [\"native\", \"ns\", \"uml\"]\nresources = [\"cpu\", \"network\"]\n",
    )
    .unwrap();
    let o = Command::new(lab_script())
        .args(["exec", &lab.0, "env"])
        .arg(format!("VIRTBENCH_IMAGES={}", images().display()))
        .arg(env!("CARGO_BIN_EXE_hostd"))
        .arg("run")
        .arg(&campaign)
        .args(["--quick", "--engine", "slurm", "--hosts", "3", "--results"])
        .arg(res.path())
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "hostd run --quick --engine slurm: {}\n{out}", o.status);
    // One directory under --results: the node's own was merged and removed.
    let (dir, m) = results_of(res.path());
    let fleets = m["fleets"].as_array().unwrap();
    let backends: Vec<&str> = fleets.iter().map(|f| f["backend"].as_str().unwrap()).collect();
    assert_eq!(backends, ["native", "ns", "uml"], "{m}");
    assert!(
        m["unavailable"].as_array().unwrap().is_empty() && m["failed"] == serde_json::json!([]),
        "{m}"
    );
    let all = support::cli::records(&dir);
    let (runs_left, ring_ids) = rings_span_the_hosts(fleets, &all);
    single_host_steps_on_n1(&m, &all, &ring_ids);
    one_report_has_every_figure(&dir);
    // `hostd report` renders the same directory again.
    let o = Command::new(env!("CARGO_BIN_EXE_hostd")).arg("report").arg(&dir).output().unwrap();
    assert!(o.status.success(), "hostd report: {}", text(&o));
    lab.assert_clean_of(&runs_left);
    lab.down_finding_nothing();
}

/// Each fleet's ring: 3 guests, one on each host, every sample labelled across hosts; each
/// fleet's 3 guests' startup. Returns the workers' run ids and the ring's provenance ids.
fn rings_span_the_hosts(
    fleets: &[serde_json::Value],
    all: &[serde_json::Value],
) -> (Vec<String>, std::collections::BTreeSet<String>) {
    let mut runs_left = Vec::new();
    let mut ring_ids = std::collections::BTreeSet::new();
    for f in fleets {
        let backend = f["backend"].as_str().unwrap();
        // The quick campaign's ring of 3 guests: one on each host, so every link crosses.
        let r = &f["ring"];
        assert_eq!((r["guests"].as_u64(), r["hosts"].as_u64()), (Some(3), Some(3)), "{f}");
        assert_eq!(r["links_across_hosts"].as_u64(), Some(3), "{f}");
        assert!(r["failures"].as_array().unwrap().is_empty(), "{r}");
        // 3 guests × 2 counted repetitions × (bandwidth, latency).
        assert_eq!(r["samples"].as_u64(), Some(12), "{r}");
        let hosts: Vec<&str> = f["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["hostname"].as_str().unwrap())
            .collect();
        assert_eq!(hosts, ["n1", "n2", "n3"], "{f}");
        let ring: Vec<&serde_json::Value> = all
            .iter()
            .filter(|v| v["record"] == "bench" && v["backend"] == backend)
            .filter(|v| v["test"] == "ring" || v["test"] == "ring_latency")
            .collect();
        assert_eq!(ring.len(), 12, "{backend}: {all:?}");
        let mut guests = std::collections::BTreeSet::new();
        for s in &ring {
            assert_eq!(s["n"], 3, "{s}");
            // Across hosts: labelled with the path (a VM's link is a tap), at the VXLAN's MTU.
            let link = if backend == "uml" { "tap" } else { "veth" };
            assert_eq!(s["net_path"], format!("{link}+bridge+vxlan"), "{s}");
            assert_eq!(s["mtu"], 1450, "{s}");
            assert!(s["value"].as_f64().unwrap() > 0.0, "{s}");
            guests.insert(s["guest"].as_u64().unwrap());
            ring_ids.insert(s["provenance"].as_str().unwrap().to_string());
        }
        assert_eq!(guests.into_iter().collect::<Vec<_>>(), [0, 1, 2], "{backend}");
        // Each fleet's startup: its 3 guests ready (the node's startup sizes are 1 and 2).
        let ready = all
            .iter()
            .filter(|v| v["record"] == "startup" && v["backend"] == backend && v["n"] == 3)
            .count();
        assert_eq!(ready, 3, "{backend}: {all:?}");
        runs_left.extend(runs(f));
    }
    (runs_left, ring_ids)
}

/// The single-host steps: run on n1, measured under a provenance of their own naming its
/// part; the ring's under the coordinator's.
fn single_host_steps_on_n1(
    m: &serde_json::Value,
    all: &[serde_json::Value],
    ring_ids: &std::collections::BTreeSet<String>,
) {
    let single = &m["single_host"];
    assert_eq!(single["node"], "n1", "{m}");
    assert_eq!(single["steps_failed"], 0, "{single}");
    assert!(single["steps_done"].as_u64().unwrap() > 0, "{single}");
    let node_prov: Vec<&serde_json::Value> = all
        .iter()
        .filter(|v| v["record"] == "provenance" && v["provenance"]["host"]["hostname"] == "n1")
        .collect();
    assert_eq!(node_prov.len(), 1, "{all:?}");
    let node_id = node_prov[0]["id"].as_str().unwrap();
    assert_eq!(node_prov[0]["provenance"]["part"], "the single-host steps on node n1");
    assert_eq!(ring_ids.len(), 1, "{ring_ids:?}");
    assert!(!ring_ids.contains(node_id), "the ring's provenance is the coordinator's");
    let steps =
        [("native", "overhead"), ("ns", "overhead"), ("ns", "linearity"), ("uml", "overhead")];
    for (backend, test) in steps {
        let n = all
            .iter()
            .filter(|v| v["record"] == "bench" && v["backend"] == backend && v["test"] == test)
            .filter(|v| v["resource"] == "cpu")
            .inspect(|v| assert_eq!(v["provenance"], node_id, "{v}"))
            .count();
        assert!(n > 0, "no {backend} {test} cpu samples: {all:?}");
    }
}

/// One report: the single-host figures and both rings, every host's provenance, the node.
fn one_report_has_every_figure(dir: &std::path::Path) {
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    for key in ["overhead", "linearity"] {
        assert!(rep[key]["ns/cpu"].as_array().is_some_and(|p| !p.is_empty()), "{key}: {rep}");
    }
    for b in ["native", "ns", "uml"] {
        let ring = &rep["ring"][b];
        assert_eq!(ring["guests"], 3, "{b}: {rep}");
        assert_eq!(ring["bandwidth"]["samples"], 6, "{b}: {ring}");
    }
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    for b in ["native", "ns", "uml"] {
        for i in 1..=3 {
            assert!(
                html.contains(&format!("{b}: host n{i}: Slurm node n{i}")),
                "{b}'s host n{i} not listed"
            );
        }
    }
    assert!(html.contains("measured on host n1 (Slurm node n1)"), "the node named");
    assert!(html.contains("2 provenances by design"), "the mix labelled as by design");
    assert!(!html.contains("force-mixed"), "the mix called a forced resume");
    assert!(html.contains("backends run across hosts: native, ns, uml"), "which backends ran");
}
