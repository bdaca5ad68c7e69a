//! Mixed fleets across hosts (issue 17, docs/multihost.md "Groups across hosts"): a fleet
//! file of several `[[group]]`s kept up with `hostd up --engine slurm` over the Slurm lab's
//! 3 emulated hosts. Each group is split over the hosts as one group is, guests keep their
//! global indices and addresses, every guest (ns from its namespace, uml through its own
//! kernel) exchanges data with a guest on each other host, status and exec show every
//! guest with its group, and `hostd down` leaves nothing on any host. Needs root, the Slurm
//! packages (scripts/install-deps) and the images (VIRTBENCH_IMAGES) with the UML kernel.

mod support {
    pub mod cli;
    pub mod skip;
    // Shared with tests/multihost.rs, whose boots and results this file does not use.
    #[allow(dead_code)]
    pub mod slurmlab;
}

use support::slurmlab::*;

/// (guest, group) of a host's guests in `hostd status --json`.
fn guests_of(h: &serde_json::Value) -> Vec<(String, String)> {
    let g = h["guests"].as_array().unwrap();
    g.iter()
        .map(|g| (g["name"].as_str().unwrap().into(), g["group"].as_str().unwrap().into()))
        .collect()
}

#[test]
fn a_fleet_of_ns_and_uml_groups_spans_three_hosts_and_down_leaves_nothing() {
    let Some((_s, lab)) = serial_lab("g") else { return };
    let dir = tempfile::Builder::new().prefix("multihost-groups-").tempdir_in("/var/tmp").unwrap();
    let name = format!("mhgr{}", std::process::id() % 1_000_000);
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\n\
             [[group]]\nname = \"cts\"\nbackend = \"ns\"\nguests = 4\n\
             [[group]]\nname = \"vms\"\nbackend = \"uml\"\nguests = 2\nmem_mib = 96\n"
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let o = on_login(&lab, &["up", f, "--engine", "slurm", "--hosts", "3", "--reach"]);
    let out = text(&o);
    assert!(o.status.success(), "hostd up --engine slurm: {}\n{out}", o.status);
    // Each group split as one group is (4 = 2 + 1 + 1, 2 = 1 + 1 + 0), global indices kept.
    assert!(out.contains("host n1 (") && out.contains("guests g0–g1 (cts), g4 (vms)"), "{out}");
    assert!(out.contains("guests g2 (cts), g5 (vms)") && out.contains("guests g3 (cts)"), "{out}");
    let hosts = hosts_of(&lab, &name);
    let want: [&[(&str, &str)]; 3] = [
        &[("g0", "cts"), ("g1", "cts"), ("g4", "vms")],
        &[("g2", "cts"), ("g5", "vms")],
        &[("g3", "cts")],
    ];
    let mut runs = Vec::new();
    for (i, (h, want)) in hosts.iter().zip(want).enumerate() {
        assert_eq!(h["hostname"], format!("n{}", i + 1), "{h}");
        assert!(h["lost"].is_null(), "{h}");
        let want: Vec<(String, String)> =
            want.iter().map(|(g, n)| (g.to_string(), n.to_string())).collect();
        assert_eq!(guests_of(h), want, "{h}");
        assert!(states(h).iter().all(|s| s == "ready"), "{h}");
        for g in h["guests"].as_array().unwrap() {
            let backend = if g["group"] == "vms" { "uml" } else { "ns" };
            assert_eq!(g["backend"], backend, "{g}");
            // The address of its global index, as on one machine (10.211.0.2 + index).
            let index = g["index"].as_u64().unwrap();
            assert_eq!(g["addr"], format!("10.211.0.{}", index + 2), "{g}");
        }
        // Every guest (ns and uml alike) exchanged data with a guest on each other host.
        let r = &h["reach"];
        let asked = 2 * want.len() as u64;
        assert_eq!((r["checked"].as_u64(), r["reached"].as_u64()), (Some(asked), Some(asked)), "{h}");
        assert_eq!(r["across_hosts"].as_u64(), Some(asked), "{h}");
        runs.push(h["run"].as_str().unwrap().to_string());
    }
    // Status lists each guest with its group.
    let o = on_login(&lab, &["status", &name]);
    let status = text(&o);
    assert!(o.status.success(), "{status}");
    for (g, group, host) in [("g1", "cts", "n1"), ("g4", "vms", "n1"), ("g5", "vms", "n2")] {
        let line = status.lines().find(|l| l.starts_with(&format!("{g} "))).unwrap_or("");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.get(1..2), Some(&[group][..]), "{g}: {status}");
        assert!(words.contains(&host), "{g} not on {host}: {status}");
    }
    // Every guest of both groups on every host answers.
    let o = on_login(&lab, &["exec", &name, "--", "/sbin/guest-agent", "--version"]);
    assert!(o.status.success(), "hostd exec: {}", text(&o));
    let answers = by_guest(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(answers.len(), 6, "{answers:?}");
    assert!(answers.values().all(|(said, _)| said.starts_with("exit 0 in ")), "{answers:?}");
    let o = on_login(&lab, &["down", &name]);
    assert!(o.status.success(), "hostd down: {}", text(&o));
    let o = lab_exec(&lab, &["squeue", "-h"]);
    assert!(String::from_utf8_lossy(&o.stdout).trim().is_empty(), "jobs left: {}", text(&o));
    lab.assert_clean_of(&runs);
    lab.down_finding_nothing();
}
