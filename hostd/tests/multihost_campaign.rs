//! `hostd run --engine slurm` in the Slurm lab (issue 17, docs/multihost.md "The ring across
//! hosts"): a campaign listing ns and uml over 3 emulated hosts runs one fleet per backend,
//! one after another, each ring spanning the hosts with its samples labelled by their path
//! across hosts, all in one results directory and report with every host's provenance, and
//! nothing left on any host. Needs root, the Slurm packages (scripts/install-deps) and the
//! images (VIRTBENCH_IMAGES) with the UML kernel and an agent that sets `vb.mtu=`.

mod support {
    pub mod cli;
    pub mod skip;
    // Shared with tests/multihost.rs, whose held fleets this file does not use.
    #[allow(dead_code)]
    pub mod slurmlab;
}

use std::process::Command;

use support::slurmlab::*;

/// A quick campaign listing ns and uml over 3 hosts: one fleet per backend, one after
/// another, each ring spanning the hosts, all in one report.
#[test]
fn a_quick_campaign_of_ns_and_uml_across_three_hosts_has_each_ring_span_them_in_one_report() {
    let Some((_s, lab)) = serial_lab("r") else { return };
    let res = tempfile::Builder::new().prefix("multihost-").tempdir_in("/var/tmp").unwrap();
    let files = tempfile::Builder::new().prefix("multihost-c-").tempdir_in("/var/tmp").unwrap();
    let campaign = files.path().join("mh.toml");
    std::fs::write(
        &campaign,
        "name = \"mh\"\nbackends = [\"ns\", \"uml\"]\nresources = [\"network\"]\n",
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
    let (dir, m) = results_of(res.path());
    let fleets = m["fleets"].as_array().unwrap();
    let backends: Vec<&str> = fleets.iter().map(|f| f["backend"].as_str().unwrap()).collect();
    assert_eq!(backends, ["ns", "uml"], "{m}");
    assert!(
        m["unavailable"].as_array().unwrap().is_empty() && m["failed"] == serde_json::json!([]),
        "{m}"
    );
    let all = support::cli::records(&dir);
    let mut runs_left = Vec::new();
    for (f, path) in fleets.iter().zip(["veth+bridge+vxlan", "tap+bridge+vxlan"]) {
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
        let bench: Vec<&serde_json::Value> =
            all.iter().filter(|v| v["record"] == "bench" && v["backend"] == backend).collect();
        assert_eq!(bench.len(), 12, "{backend}: {all:?}");
        let mut guests = std::collections::BTreeSet::new();
        for s in &bench {
            assert!(s["test"] == "ring" || s["test"] == "ring_latency", "{s}");
            assert_eq!(s["n"], 3, "{s}");
            // Across hosts: labelled with the path, at the VXLAN's MTU.
            assert_eq!(s["net_path"], path, "{s}");
            assert_eq!(s["mtu"], 1450, "{s}");
            assert!(s["value"].as_f64().unwrap() > 0.0, "{s}");
            guests.insert(s["guest"].as_u64().unwrap());
        }
        assert_eq!(guests.into_iter().collect::<Vec<_>>(), [0, 1, 2], "{backend}");
        // Each fleet's startup: its 3 guests ready.
        let ready =
            all.iter().filter(|v| v["record"] == "startup" && v["backend"] == backend).count();
        assert_eq!(ready, 3, "{backend}: {all:?}");
        runs_left.extend(runs(f));
    }
    // One report: both rings' figures, and every host's provenance.
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    for b in ["ns", "uml"] {
        let ring = &rep["ring"][b];
        assert_eq!(ring["guests"], 3, "{b}: {rep}");
        assert_eq!(ring["bandwidth"]["samples"], 6, "{b}: {ring}");
    }
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    for b in ["ns", "uml"] {
        for i in 1..=3 {
            assert!(
                html.contains(&format!("{b}: host n{i}: Slurm node n{i}")),
                "{b}'s host n{i} not listed"
            );
        }
    }
    assert!(html.contains("backends run across hosts: ns, uml"), "which backends ran");
    assert!(html.contains("veth+bridge+vxlan") && html.contains("tap+bridge+vxlan"), "paths");
    // `hostd report` renders the same directory again.
    let o = Command::new(env!("CARGO_BIN_EXE_hostd")).arg("report").arg(&dir).output().unwrap();
    assert!(o.status.success(), "hostd report: {}", text(&o));
    lab.assert_clean_of(&runs_left);
    lab.down_finding_nothing();
}
