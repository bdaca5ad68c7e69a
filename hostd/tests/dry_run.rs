//! `hostd run --dry-run` against what the run then does: its step count (the progress bar's
//! N), its guest boots and its time estimate, for a tiny native and ns campaign. The real run
//! needs root and the images (`imagegen build`).

mod support {
    pub mod cli;
    pub mod skip;
}

use support::cli::{hostd, text};

use std::path::Path;

/// Two backends, the CPU only, 2 startup sizes (hot), overhead at 1 and 3, isolation and a
/// ring of 2, one repetition of a tiny workload: seconds to run.
const TINY: &str = "name = \"tiny\"\nbackends = [\"native\", \"ns\"]\nresources = [\"cpu\"]\n\
reps = 1\nwarmup = 0\n[startup]\nsizes = [1, 2]\nmodes = [\"hot\"]\nsettle_s = 0\n\
[overhead]\nsizes = [1, 3]\n[ring]\nguests = 2\n[workloads]\ncpu_rounds = 1000\n";

fn dry_run(camp: &Path, results: &Path, extra: &[&str]) -> String {
    let out = hostd()
        .arg("run")
        .arg(camp)
        .arg("--dry-run")
        .arg("--results")
        .arg(results)
        .args(extra)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    t
}

/// The text after `prefix` on its line.
fn after<'a>(t: &'a str, prefix: &str) -> &'a str {
    let at = t.find(prefix).unwrap_or_else(|| panic!("no {prefix:?} in:\n{t}"));
    t[at + prefix.len()..].lines().next().unwrap()
}

/// Counted by hand from the campaign: per backend, startup fleets of 1 and 2, a CPU fleet
/// grown to 3, isolation's 2 and the ring's 2 guests = 10 guests; a peer for each of the
/// three suite fleets. Steps: 2 startup + 2 sizes × (overhead, linearity) + isolation +
/// ring = 8 per backend.
#[test]
fn dry_run_states_steps_boots_and_an_estimate_from_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let camp = dir.path().join("tiny.toml");
    std::fs::write(&camp, TINY).unwrap();
    let t = dry_run(&camp, &dir.path().join("results"), &[]);
    assert!(t.contains("16 steps in all (the progress bar's N)"), "{t}");
    assert!(t.contains("boots: 20 guests, 6 network peers"), "{t}");
    assert!(after(&t, "estimated time: ").contains("estimate from defaults, not measured"), "{t}");
    assert!(!dir.path().join("results").exists(), "a dry run made the results directory");
}

/// The dry run's boots and steps are those the real run then makes, and a dry run after it
/// prices the estimate with the run's measured costs.
#[test]
fn dry_run_boots_and_steps_match_a_real_run() {
    if !support::skip::unless_root(None, "the real run needs root (namespaces, cgroups)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let camp = dir.path().join("tiny.toml");
    let res = dir.path().join("results");
    std::fs::write(&camp, TINY).unwrap();
    let before = dry_run(&camp, &res, &[]);
    let planned_boots = after(&before, "boots: ").split(" (").next().unwrap().to_string();
    let steps_line = before.lines().find(|l| l.contains(" steps in all")).unwrap();
    let planned_steps: usize = steps_line.split_whitespace().next().unwrap().parse().unwrap();
    let out = hostd().arg("run").arg(&camp).arg("--results").arg(&res).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(after(&t, "hostd: booted "), planned_boots, "{t}");
    let run = std::fs::read_dir(&res).unwrap().next().unwrap().unwrap().path();
    let samples = std::fs::read_to_string(run.join("samples.jsonl")).unwrap();
    let steps = samples
        .lines()
        .filter(|l| {
            l.contains("\"record\":\"step_done\"") || l.contains("\"record\":\"step_failed\"")
        })
        .count();
    assert_eq!(steps, planned_steps, "{samples}");

    // The run's own directory is found (newest of the campaign under --results) and named.
    let again = dry_run(&camp, &res, &[]);
    let line = after(&again, "estimated time: ");
    assert!(line.contains(&format!("measured in {}", run.display())), "{again}");
    // And one given explicitly is used.
    let other =
        dry_run(&camp, &dir.path().join("none"), &["--estimate-from", run.to_str().unwrap()]);
    assert!(after(&other, "estimated time: ").contains("measured in"), "{other}");
}

/// `--dry-run --engine slurm`: the single-host steps' node, then each listed backend's fleet
/// split over the hosts and its ring, with no allocation made (no Slurm needed); outside an allocation `--hosts` is
/// required, and a campaign without the network resource is refused.
#[test]
fn dry_run_across_hosts_prints_each_backends_split_and_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let camp = dir.path().join("mh.toml");
    std::fs::write(&camp, "name = \"mh\"\nbackends = [\"ns\", \"uml\"]\nresources = [\"network\"]\n[ring]\nguests = 5\n")
        .unwrap();
    let run = |extra: &[&str]| {
        hostd()
            .env_remove("SLURM_JOB_ID")
            .env_remove("SLURM_JOB_NUM_NODES")
            .arg("run")
            .arg(&camp)
            .args(["--dry-run", "--engine", "slurm", "--results"])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&["--hosts", "2"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("across 2 Slurm hosts (dry run: no allocation made"), "{t}");
    // 5 guests over 2 hosts: 3 + 2, for each backend in the campaign's order.
    let ns = t.find("== ns: 5 guests").unwrap_or_else(|| panic!("{t}"));
    let uml = t.find("== uml: 5 guests").unwrap_or_else(|| panic!("{t}"));
    assert!(ns < uml, "{t}");
    assert!(
        t[ns..uml].contains("host 1: g0–g2 (ns)") && t[ns..uml].contains("host 2: g3–g4 (ns)"),
        "{t}"
    );
    assert!(
        t[uml..].contains("host 1: g0–g2 (uml)") && t[uml..].contains("host 2: g3–g4 (uml)"),
        "{t}"
    );
    assert!(t.contains("ring of 5 guests: 1 warm-up + 3 counted rounds"), "{t}");
    // First the single-host steps, on one node: the allocation's first, or the one named.
    let single = "== single-host steps: hostd run on node (the allocation's first) as one job step, the campaign without its ring: ";
    let steps = after(&t, single);
    assert!(steps.split(' ').next().unwrap().parse::<usize>().unwrap() > 0, "{t}");
    assert!(t.find(single).unwrap() < ns, "{t}");
    let o = run(&["--hosts", "2", "--suite-host", "n2"]);
    assert!(text(&o).contains("== single-host steps: hostd run on node n2 as"), "{}", text(&o));
    let o = run(&["--hosts", "2", "--suite-host", "n1,n2"]);
    assert!(
        !o.status.success() && text(&o).contains("--suite-host \"n1,n2\": not a Slurm node name"),
        "{}",
        text(&o)
    );
    let o =
        hostd().arg("run").arg(&camp).args(["--dry-run", "--suite-host", "n2"]).output().unwrap();
    assert!(
        !o.status.success() && text(&o).contains("it goes with --engine slurm"),
        "{}",
        text(&o)
    );
    let o = hostd()
        .arg("run")
        .args(["--engine", "slurm", "--hosts", "2", "--resume"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        !o.status.success() && text(&o).contains("--resume with --engine slurm is not built yet"),
        "{}",
        text(&o)
    );
    // Nothing written.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "{t}");
    let o = run(&[]);
    assert!(!o.status.success() && text(&o).contains("needs --hosts K"), "{}", text(&o));
    std::fs::write(&camp, "name = \"mh\"\nbackends = [\"ns\"]\nresources = [\"cpu\"]\n").unwrap();
    let o = run(&["--hosts", "2"]);
    assert!(
        !o.status.success() && text(&o).contains("leaves out the network resource"),
        "{}",
        text(&o)
    );
}
