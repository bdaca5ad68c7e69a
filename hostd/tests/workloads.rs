//! A user's command as a campaign workload (`[[workloads.commands]]`): a tiny campaign with
//! commands on native, ns, uml and qemu-microvm (TCG here: about 20 s), the report showing
//! them beside the microbenchmarks, a failing and a missing command recorded as failed runs
//! with their reason, and the dry run listing them. The default guest image holds nothing
//! but the agent, so the guests boot the test system the campaign names (`guest.system`:
//! this host's static busybox, `hostd-test-system`, as tests/rootdisk.rs builds it) and
//! native runs the same /bin/busybox on the host. Needs root and the images.

mod support {
    pub mod cli;
    pub mod skip;
    pub mod system;
}

use std::path::{Path, PathBuf};

use support::cli::{assert_campaign_refused, hostd, hostd_tcg, serial, text};

const SYSTEM: &str = "hostd-test-system";

/// A shell loop long enough to be timed, short enough for TCG-free guests.
const SPIN: &str = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done";

fn campaign(backends: &str) -> String {
    format!(
        "name = \"userwl\"\n\
         backends = [{backends}]\n\
         resources = [\"cpu\"]\n\
         reps = 2\n\
         warmup = 0\n\
         [guest]\nsystem = \"{SYSTEM}\"\n\
         [startup]\nsizes = [1]\nmodes = [\"hot\"]\nsettle_s = 0\n\
         [overhead]\nsizes = [1, 2]\n\
         [isolation]\nenabled = false\n\
         [ring]\nguests = 0\n\
         [network]\nnative_loopback = false\n\
         [workloads]\ncpu_rounds = 2000000\n\
         [[workloads.commands]]\nname = \"spin\"\nargv = [\"/bin/busybox\", \"sh\", \"-c\", \"{SPIN}\"]\ntimeout_s = 120\n\
         [[workloads.commands]]\nname = \"broken\"\nargv = [\"/bin/busybox\", \"sh\", \"-c\", \"echo it broke >&2; exit 3\"]\ntimeout_s = 30\n\
         [[workloads.commands]]\nname = \"missing\"\nargv = [\"/no/such/program\"]\ntimeout_s = 30\n"
    )
}

fn only_dir(parent: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> =
        std::fs::read_dir(parent).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// Builds the test system into hostd's store if it is not there (as tests/rootdisk.rs does).
fn test_system() -> Result<(), String> {
    let scratch = support::system::scratch("vb-workloads-test");
    let tree = scratch.path().join(SYSTEM);
    support::system::make_tree(&tree, true).map_err(|e| format!("{}: {e}", tree.display()))?;
    let recipe =
        format!("kind = \"rootfs-import\"\npath = \"{}\"\nheadroom_mib = 8\n", tree.display());
    support::system::build(scratch.path(), &[(SYSTEM, recipe)])
}

#[test]
fn dry_run_lists_user_workloads_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, campaign("\"native\", \"ns\"")).unwrap();
    let out = hostd().arg("run").arg(&p).arg("--dry-run").output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains(&format!("user workload spin: /bin/busybox sh -c '{SPIN}' (timeout 120 s)"))
            && t.contains("in guests of native, ns"),
        "{t}"
    );
    assert!(t.contains("user workload missing: /no/such/program"), "{t}");
    assert!(t.contains(&format!("guests boot the system image {SYSTEM} (init: agent")), "{t}");
    for (body, field) in [
        ("[[workloads.commands]]\nname = \"x\"\nargv = []\n", "workloads.commands[0].argv"),
        ("[[workloads.commands]]\nname = \"Bad Name\"\nargv = [\"true\"]\n", "workloads.commands[0].name"),
        (
            "[[workloads.commands]]\nname = \"x\"\nargv = [\"true\"]\n[[workloads.commands]]\nname = \"x\"\nargv = [\"true\"]\n",
            "workloads.commands[1].name",
        ),
        ("[[workloads.commands]]\nname = \"x\"\nargv = [\"true\"]\ntimeout_s = 100000\n", "workloads.commands[0].timeout_s"),
        ("[guest]\ninit = \"image\"\n", "guest.init"),
        ("[guest]\nsystem = \"no-such-system-recipe\"\n", "guest.system"),
    ] {
        assert_campaign_refused(dir.path(), body, field);
    }
}

#[test]
fn user_command_is_measured_natively_and_in_guests_beside_the_microbenchmarks() {
    let _s = serial();
    if !support::skip::unless_root(None, "campaigns need root (namespaces, cgroups)") {
        return;
    }
    if let Some(why) = support::system::unusable() {
        support::skip::skip(None, &why);
        return;
    }
    test_system().unwrap_or_else(|e| panic!("building {SYSTEM}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let camp = dir.path().join("c.toml");
    std::fs::write(&camp, campaign("\"native\", \"ns\", \"uml\", \"qemu-microvm\"")).unwrap();
    let res = dir.path().join("results");
    let t0 = std::time::Instant::now();
    // The campaign names the system its guests boot (`guest.system`).
    let out = hostd_tcg().arg("run").arg(&camp).arg("--results").arg(&res).output().unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    eprintln!("the campaign took {:.0} s", t0.elapsed().as_secs_f64());
    let run = only_dir(&res);

    // The samples: every run recorded, the command line with it; failures with their reason.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(run.join("samples.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let runs = |backend: &str, name: &str| -> Vec<&serde_json::Value> {
        records
            .iter()
            .filter(|r| r["record"] == "command" && r["backend"] == backend && r["name"] == name)
            .collect()
    };
    for b in ["native", "ns", "uml", "qemu-microvm"] {
        let spin = runs(b, "spin");
        // reps 2 × (overhead at n = 1 and 2: one guest; linearity: n guests) = 2 × (1+1+1+2).
        assert_eq!(spin.len(), 10, "{b}: {spin:#?}");
        for s in &spin {
            assert!(s["elapsed_s"].as_f64().is_some_and(|t| t > 0.0), "{b}: {s}");
            assert!(s.get("failure").is_none(), "{b}: {s}");
            assert_eq!(s["argv"][3], SPIN);
        }
        let broken = runs(b, "broken");
        assert_eq!(broken.len(), 10, "{b}");
        for s in &broken {
            assert!(s["elapsed_s"].is_null(), "{b}: a failed run has no time: {s}");
            let why = s["failure"].as_str().unwrap();
            assert!(why.contains("exit status 3") && why.contains("it broke"), "{b}: {why}");
        }
        let missing = runs(b, "missing");
        assert_eq!(missing.len(), 10, "{b}");
        let why = missing[0]["failure"].as_str().unwrap();
        assert!(why.contains("/no/such/program"), "{b}: {why}");
    }
    // Failed runs are samples, not failed steps.
    assert!(!records.iter().any(|r| r["record"] == "step_failed"), "{log}");

    // The report: O_vn against native's T_a, linearity with its reference, failures counted.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    let result = |backend: &str, name: &str| -> serde_json::Value {
        report["commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["backend"] == backend && c["name"] == name)
            .unwrap_or_else(|| panic!("no {backend}/{name} in {}", report["commands"]))
            .clone()
    };
    for b in ["ns", "uml", "qemu-microvm"] {
        let spin = result(b, "spin");
        assert!(spin["baseline"]["mean"].as_f64().unwrap() > 0.0, "{spin}");
        assert_eq!(spin["overhead"].as_array().unwrap().len(), 2, "{spin}");
        assert!(spin["overhead"][0]["overhead"].as_f64().is_some(), "{spin}");
        assert_eq!(spin["linearity"][1]["n"], 2, "{spin}");
        assert!(spin["linearity"][1]["reference"].as_f64().is_some(), "{spin}");
        assert_eq!((spin["runs"].as_u64(), spin["failed"].as_u64()), (Some(10), Some(0)));
        let broken = result(b, "broken");
        assert_eq!((broken["runs"].as_u64(), broken["failed"].as_u64()), (Some(10), Some(10)));
        assert!(broken["overhead"].as_array().unwrap().is_empty(), "{broken}");
    }
    // The page shows them after the microbenchmarks' overhead table, with the command line.
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    let micro = html.find("Overhead O_v = T_av − T_a").expect("the microbenchmarks' overhead");
    let user = html.find("User workloads").expect("the user workloads' section");
    assert!(micro < user && user < html.find("<h2>Figures").unwrap(), "out of place");
    assert!(html.contains("spin on uml") && html.contains("i=0; while [ $i -lt 20000 ]"));
    assert!(html.contains("exit status 3; stderr ends: it broke"));
    // Its figures, as the microbenchmarks' Figs. 2–9; none for a command that never ran.
    for f in ["user_spin_overhead.svg", "user_spin_linearity.svg"] {
        assert!(run.join("figures").join(f).is_file() && html.contains(&format!("figures/{f}")));
    }
    assert!(!run.join("figures/user_broken_overhead.svg").exists());
    let csv = std::fs::read_to_string(run.join("report.csv")).unwrap();
    assert!(csv.lines().any(|l| l.starts_with("overhead,ns,command:spin,1,value,")), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("overhead,ns,cpu,1,value,")), "{csv}");
}
