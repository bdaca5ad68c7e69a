//! `hostd run` end to end: the --quick campaign on every backend (in two halves at once, one
//! killed and resumed), with its report rendered in headless Chromium; bad campaign files; a backend that cannot run. Needs
//! root, the images (`imagegen build`) and chromium (scripts/install-deps).

mod support {
    pub mod cli;
    pub mod skip;
}

use support::cli::{assert_campaign_refused, hostd, reap_lock, records, rendered_dom, text};

use nix::fcntl::Flock;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn root() -> bool {
    support::skip::unless_root(None, "campaigns need root (namespaces, cgroups, drop_caches)")
}

/// Runs `c` to the end (stdout and stderr piped), as `Command::output`, and drops `reaping`
/// once hostd has said which campaign it runs (it has reaped dead runs by then): whether it
/// exited 0, and its stdout then its stderr.
fn output_releasing(c: &mut Command, reaping: Option<Flock<File>>) -> (bool, String) {
    let mut reaping = reaping;
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let mut err = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("hostd: campaign ") {
            reaping = None;
        }
        err.push_str(&line);
        err.push('\n');
    }
    drop(reaping);
    let ok = child.wait().unwrap().success();
    (ok, format!("{}{err}", out.join().unwrap().unwrap()))
}

fn only_dir(parent: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> =
        std::fs::read_dir(parent).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// Loads the page in headless Chromium and returns what its script found: "loaded/total"
/// images.
fn figures_loaded(index: &Path) -> String {
    let dom = rendered_dom(Path::new("chromium"), index, 5000);
    let at = dom
        .find("data-figures=\"")
        .unwrap_or_else(|| panic!("the page's script did not run: {}", &dom[..dom.len().min(500)]));
    dom[at + 14..].split('"').next().unwrap().to_string()
}

/// What both halves of the quick campaign check of a finished run in `dir`: the backends
/// measured (`measured`, sorted; `curves` those drawn in the overhead, linearity, isolation
/// and ring figures), no failed step, every disk read from the disk with the run's copies gone,
/// every figure rendered, and the report rebuilt from the samples alone, identically.
fn finished_report_is_whole(dir: &Path, run: &str, measured: &[&str], curves: &[&str]) {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let mut probes: Vec<&str> =
        report["probes"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
    probes.sort();
    assert_eq!(probes, measured);
    assert!(report["failed_steps"].as_object().unwrap().is_empty(), "{}", report["failed_steps"]);
    // Every disk read came from the disk: each sample names its backend's cache policy and
    // found none of its guest's data in the host page cache; the run's copies are gone.
    let disk: Vec<serde_json::Value> = records(dir)
        .into_iter()
        .filter(|r| r["record"] == "bench" && r["resource"] == "disk")
        .collect();
    assert!(!disk.is_empty(), "no disk samples");
    for r in &disk {
        assert!(r["cache_policy"].as_str().is_some_and(|p| !p.is_empty()), "{r}");
        assert_eq!(r["resident_before"].as_f64(), Some(0.0), "{r}");
    }
    assert!(
        !Path::new(hostd::datadisk::DISK_ROOT).join(run).exists(),
        "the run's data disk copies are left"
    );
    // Every paper figure, each with the campaign's backends where the figure has curves.
    let figs: Vec<String> = std::fs::read_dir(dir.join("figures"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(figs.len(), 15, "{figs:?}");
    for f in [
        "fig02_overhead_cpu.svg",
        "fig07_linearity_memory.svg",
        "fig12_isolation_disk.svg",
        "fig14_ring.svg",
    ] {
        let svg = std::fs::read_to_string(dir.join("figures").join(f)).unwrap();
        for b in curves {
            assert!(svg.contains(b), "{f} lacks {b}");
        }
    }
    let index = std::fs::read_to_string(dir.join("index.html")).unwrap();
    for s in [
        "T_startup",
        "M_used",
        "Overhead",
        "Performance isolation",
        "Communication between guests",
        "sha256",
    ] {
        assert!(index.contains(s), "index.html lacks {s}");
    }
    assert_eq!(figures_loaded(&dir.join("index.html")), "15/15");
    let before = std::fs::read(dir.join("report.csv")).unwrap();
    std::fs::remove_dir_all(dir.join("figures")).unwrap();
    std::fs::create_dir(dir.join("figures")).unwrap();
    let again = hostd().arg("report").arg(dir).output().unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(std::fs::read(dir.join("report.csv")).unwrap(), before);
    assert_eq!(figures_loaded(&dir.join("index.html")), "15/15");
    let cmp = hostd().arg("compare").arg(dir).arg(dir).output().unwrap();
    let c = text(&cmp);
    let last = curves.last().unwrap();
    assert!(
        cmp.status.success() && c.contains(&format!("ring {last}")) && c.contains("1.000"),
        "{c}"
    );
}

/// The quick campaign on every backend, in two halves that run at once (this binary's two
/// test threads: the campaign test is the long end of scripts/test, and one campaign keeps
/// only one core busy for most of its time). This half: the native-speed backends, the Xen
/// lab and firecracker (which cannot run here), killed in the middle of the ns section and
/// resumed to the end: the resume skips every finished step and the finished campaign's
/// report is whole. Killing and resuming this campaign rather than a third, smaller one proves
/// the same about resuming without paying for another campaign.
#[test]
fn quick_campaign_killed_resumed_renders_its_report() {
    if !root() {
        return;
    }
    let res = tempfile::tempdir().unwrap();
    let camp = res.path().join("killed.toml");
    std::fs::write(
        &camp,
        r#"name = "killed"
backends = ["native", "firecracker", "ns", "oci", "uml", "xen"]
"#,
    )
    .unwrap();
    let results = res.path().join("results");
    let t0 = Instant::now();
    // Until hostd has reaped dead runs (it says which campaign it runs after that): see
    // reap_lock.
    let mut reaping = Some(reap_lock());
    let mut child = hostd()
        .arg("run")
        .arg(&camp)
        .args(["--quick", "--results"])
        .arg(&results)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it in the middle of the ns section.
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("hostd: campaign ") {
            reaping = None;
        }
        seen.push(line.clone());
        if line.contains("startup n=2 hot") && seen.iter().any(|l| l == "== ns") {
            break;
        }
    }
    // Held from the kill to the resume's reaping: no test binary's hostd that waits for it
    // reaps this run's leftovers meanwhile.
    reaping.get_or_insert_with(reap_lock);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        seen.iter().any(|l| l.contains("unavailable: firecracker binary not found")),
        "{seen:#?}"
    );
    let dir = only_dir(&results);
    let done_before: Vec<String> = records(&dir)
        .iter()
        .filter(|r| r["record"] == "step_done")
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    assert!(done_before.iter().any(|k| k.starts_with("native/overhead")), "{done_before:?}");
    assert!(done_before.iter().any(|k| k.starts_with("ns/startup")), "{done_before:?}");
    assert!(!done_before.iter().any(|k| k.starts_with("ns/overhead")), "{done_before:?}");

    let killed = dir.file_name().unwrap().to_str().unwrap().rsplit('-').next().unwrap().to_string();

    let (ok, log) = output_releasing(hostd().arg("run").arg("--resume").arg(&dir), reaping);
    assert!(ok, "{log}");
    eprintln!("quick campaign, killed and resumed, took {:.0} s", t0.elapsed().as_secs_f64());
    assert!(log.contains(&format!("resuming: {} steps already done", done_before.len())), "{log}");
    // Reaped, by the resume or by a hostd another test started meanwhile (the reaper's
    // own message is tests/recovery.rs's to check): the killed run's scratch, namespace and
    // cgroups (with the ns guests it had up) are gone.
    assert!(!Path::new(hostd::runstate::RUN_ROOT).join(&killed).exists(), "{killed}: {log}");
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_else(|_| Vec::new());
    assert!(!netns.iter().any(|n| hostd::runstate::owns_netns(&killed, n)), "{netns:?}");
    for r in hostd::cgroup::run_roots(&killed) {
        assert!(!r.exists(), "{} left: {log}", r.display());
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in records(&dir).iter().filter(|r| r["record"] == "step_done") {
        *count.entry(r["key"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert!(count.values().all(|&c| c == 1), "a finished step ran again: {count:?}");
    assert!(count.keys().any(|k| k.starts_with("ns/ring")), "{count:?}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert!(
        report["unavailable"]["firecracker"].as_str().unwrap().contains("firecracker"),
        "{}",
        report["unavailable"]
    );
    // Not a Xen host: xen ran in the Xen lab, and says so wherever its figures appear.
    assert!(
        report["probes"]["xen"].as_str().unwrap().starts_with("Xen 4.17")
            && report["emulated"].as_array().unwrap().iter().any(|b| b == "xen"),
        "{} {}",
        report["probes"]["xen"],
        report["emulated"]
    );
    let xen_rows = report["startup"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["backend"] == "xen")
        .count();
    assert_eq!(xen_rows, 1, "cold startup at n = 1 in the lab (--quick: one lab)");
    for f in ["fig01_startup.svg", "fig_memory.svg", "fig06_linearity_cpu.svg"] {
        let svg = std::fs::read_to_string(dir.join("figures").join(f)).unwrap();
        assert!(svg.contains("xen (emulated host)"), "{f} lacks the lab's xen curve");
    }
    assert!(
        dir.join("xen-lab").read_dir().unwrap().count() == 1,
        "the lab's own results, kept with the campaign"
    );
    assert!(std::fs::read_to_string(dir.join("index.html"))
        .unwrap()
        .contains("unavailable: firecracker binary not found"));
    finished_report_is_whole(
        &dir,
        &killed,
        &["native", "ns", "oci", "uml", "xen"],
        &["native", "ns", "oci", "uml"],
    );
}

/// The other half of the quick campaign (see above), beside it: the QEMU backends, run
/// to the end, with a report as whole as the first half's.
#[test]
fn quick_campaign_of_the_qemu_backends_renders_its_report() {
    if !root() {
        return;
    }
    let res = tempfile::tempdir().unwrap();
    let camp = res.path().join("qemu.toml");
    std::fs::write(
        &camp,
        r#"name = "qemu"
backends = ["native", "qemu-microvm", "qemu-full"]
"#,
    )
    .unwrap();
    let results = res.path().join("results");
    let t0 = Instant::now();
    let (ok, log) = output_releasing(
        hostd().arg("run").arg(&camp).args(["--quick", "--results"]).arg(&results),
        Some(reap_lock()),
    );
    assert!(ok, "{log}");
    eprintln!("quick campaign of the QEMU backends took {:.0} s", t0.elapsed().as_secs_f64());
    let dir = only_dir(&results);
    let run = dir.file_name().unwrap().to_str().unwrap().rsplit('-').next().unwrap().to_string();
    finished_report_is_whole(
        &dir,
        &run,
        &["native", "qemu-full", "qemu-microvm"],
        &["native", "qemu-full", "qemu-microvm"],
    );
}

#[test]
fn bad_campaign_files_are_rejected_before_anything_boots() {
    let dir = tempfile::tempdir().unwrap();
    for (body, field) in [
        ("reps = 3\nfrobnicate = true\n", "frobnicate"),
        ("backends = [\"native\", \"vmware\"]\n", "backends"),
        ("[overhead]\nsizes = [5, 1]\n", "overhead.sizes"),
        ("[workloads]\nmem_n = 0\n", "workloads"),
        ("[overrides.uml]\nring_guests = 1\n", "overrides.uml.ring_guests"),
    ] {
        assert_campaign_refused(dir.path(), body, field);
    }
}

/// The shipped paper campaign loads, passes the host checks here (its memory fleets fit)
/// and says where it departs from the paper; nothing boots.
#[test]
fn paper_campaign_dry_run_passes_its_checks() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    if kib < 23 << 20 {
        support::skip::skip(
            None,
            "paper.toml's memory fleets are sized for a 24 GiB host; this one has less",
        );
        return;
    }
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("campaigns/paper.toml");
    let out = hostd().arg("run").arg(&file).arg("--dry-run").output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("campaign paper: checks passed on this host"), "{t}");
    assert!(
        t.contains("overhead/linearity [1, 2, 5, 10, 20, 50, 100]") && t.contains("ring 10"),
        "{t}"
    );
    assert!(!t.contains("ring of"), "every backend's ring has the paper's 10 guests: {t}");
}
