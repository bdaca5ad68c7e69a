//! `hostd run --dry-run` against what the run then does: its step count (the progress bar's
//! N), its guest boots and its time estimate, for a tiny native and ns campaign. The real run
//! needs root and the images (`imagegen build`).

mod support {
    pub mod skip;
}

use std::path::Path;
use std::process::{Command, Output};

/// Two backends, the CPU only, 2 startup sizes (hot), overhead at 1 and 3, isolation and a
/// ring of 2, one repetition of a tiny workload: seconds to run.
const TINY: &str = "name = \"tiny\"\nbackends = [\"native\", \"ns\"]\nresources = [\"cpu\"]\n\
reps = 1\nwarmup = 0\n[startup]\nsizes = [1, 2]\nmodes = [\"hot\"]\nsettle_s = 0\n\
[overhead]\nsizes = [1, 3]\n[ring]\nguests = 2\n[workloads]\ncpu_rounds = 1000\n";

fn hostd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hostd"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

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
