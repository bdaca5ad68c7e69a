//! Fleet commands end to end on the native backend (needs root for cgroups and
//! drop_caches, and the static agent from scripts/build-agent).

mod support {
    pub mod cli;
    pub mod fault;
    pub mod skip;
}

use support::cli::{fleet_file, guest_pids_in, native_boot, run_hostd, serial, text};
use support::fault::alive;

use std::path::Path;
use std::time::Duration;

fn root() -> bool {
    support::skip::unless_root(Some("native"), "fleets need root (cgroups, drop_caches)")
}

#[test]
fn boot_records_samples_summary_and_figures() {
    let _serial = serial();
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = native_boot(&["-n", "1,3"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("agent sha256") || table.contains("# host:"), "{table}");
    assert_eq!(table.lines().filter(|l| l.starts_with("native ")).count(), 4, "{table}");
    let run = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    for f in [
        "samples.jsonl",
        "boot.json",
        "boot.csv",
        "report.json",
        "report.csv",
        "report.md",
        "index.html",
        "provenance.json",
        "figures/startup.svg",
        "figures/memory.svg",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let samples = std::fs::read_to_string(run.join("samples.jsonl")).unwrap();
    // 1 + 3 guests, cold and hot.
    assert_eq!(samples.lines().filter(|l| l.contains("\"record\":\"startup\"")).count(), 8);
    assert_eq!(samples.lines().filter(|l| l.contains("\"record\":\"fleet_done\"")).count(), 4);
    let csv = std::fs::read_to_string(run.join("boot.csv")).unwrap();
    assert!(csv.starts_with("backend,n,mode,ready,failed,t_startup_s"));
    assert!(csv.contains("native,3,hot,3,0,"), "{csv}");
}

/// With per-guest image copies, a cold start is labelled cold only because nothing it
/// reads was resident (each guest's agent copy evicted and checked), and a hot start is
/// never labelled cold; the copies are gone afterwards.
#[test]
fn cold_starts_are_verified_and_hot_ones_not_labelled_cold() {
    let _serial = serial();
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = native_boot(&["-n", "2", "--floor-reps", "0", "--image-copies"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |label: &str| {
        table
            .lines()
            .find(|l| l.starts_with("native ") && l.split_whitespace().nth(2) == Some(label))
            .map(str::to_string)
    };
    let cold = row("cold").unwrap_or_else(|| panic!("no verified cold row: {table}"));
    assert_eq!(cold.split_whitespace().nth(3), Some("0.0"), "{cold}");
    assert!(row("hot").is_some() && row("warm").is_none(), "{table}");
    let run = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    let samples = std::fs::read_to_string(run.join("samples.jsonl")).unwrap();
    let startups: Vec<hostd::startup::StartupSample> = samples
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["record"] == "startup")
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    assert_eq!(startups.len(), 4, "{samples}");
    for s in &startups {
        let r = s.residency.as_ref().expect("every startup sample records its residency");
        assert!(s.image_copies, "{s:?}");
        // Two agent copies (the agent is a static binary: no libraries).
        assert_eq!(r.files, 2, "{r:?}");
        match s.mode {
            hostd::startup::StartMode::Cold => {
                assert_eq!((r.resident_bytes, r.fraction(), s.label()), (0, 0.0, "cold"), "{r:?}");
            }
            hostd::startup::StartMode::Hot => {
                assert!(
                    r.fraction() >= hostd::coldstart::HOT_MIN,
                    "a hot start reads its files first: {r:?}"
                );
                assert_eq!(s.label(), "hot");
            }
        }
    }
    let run_id = run.file_name().unwrap().to_string_lossy().rsplit('-').next().unwrap().to_string();
    assert!(
        !Path::new(hostd::runstate::DISK_ROOT).join(&run_id).exists(),
        "image copies of {run_id} left behind"
    );
}

#[test]
fn bad_fleet_files_fail_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.toml");
    std::fs::write(&p, "name = \"x\"\nbackend = \"native\"\nguests = 2\nmemory = 5\n").unwrap();
    let out = run_hostd(&["up", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("f.toml") && t.contains("memory"), "{t}");
    let out = run_hostd(&["boot", "--backend", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn up_status_down_and_recovery_after_sigkill() {
    let _serial = serial();
    if !root() {
        return;
    }
    let f = fleet_file("t", "backend = \"native\"\nguests = 3\nnetwork = false\n");
    let (name, p) = (f.name.as_str(), f.path.to_str().unwrap());
    let out = run_hostd(&["up", p]);
    assert!(out.status.success(), "{}", text(&out));
    let st = run_hostd(&["status", name]);
    let t = text(&st);
    assert!(st.status.success() && t.contains(&format!("fleet {name}")), "{t}");
    let guest_pids = guest_pids_in(&t);
    assert_eq!(guest_pids.len(), 3, "{t}");
    assert!(guest_pids.iter().all(|&p| alive(p)));
    // The same status as JSON, for scripts.
    let js = run_hostd(&["status", name, "--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&js.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&js)));
    assert_eq!(v[0]["name"], name, "{v}");
    assert_eq!(v[0]["backend"], "native", "{v}");
    let json_pids: Vec<u32> = v[0]["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["host_pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(json_pids, guest_pids, "{v}");
    // A second fleet of the same name is refused.
    assert!(!run_hostd(&["up", p]).status.success());
    let down = run_hostd(&["down", name]);
    assert!(down.status.success(), "{}", text(&down));
    std::thread::sleep(Duration::from_millis(200));
    assert!(guest_pids.iter().all(|&p| !alive(p)), "guests survived down");
    assert!(!text(&run_hostd(&["status"])).contains(name));

    // Now kill the daemon outright: the next hostd releases what it left behind.
    let out = run_hostd(&["up", p]);
    assert!(out.status.success(), "{}", text(&out));
    let link = Path::new("/run/virtbench/fleets").join(name);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(link.join("state.json")).unwrap()).unwrap();
    let daemon = state["hostd_pid"].as_u64().unwrap() as u32;
    let scratch = state["scratch"].as_str().unwrap().to_string();
    let roots: Vec<String> = state["cgroup_roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let t = text(&run_hostd(&["status", name]));
    let guest_pids = guest_pids_in(&t);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The agents exit by themselves when their channel closes; their cgroups, state and
    // scratch files remain until a later hostd releases them.
    assert!(Path::new(&scratch).exists() && roots.iter().any(|r| Path::new(r).exists()));
    let dir2 = tempfile::tempdir().unwrap();
    let out = native_boot(&["-n", "1", "--modes", "hot"], dir2.path());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let run_id = state["run"].as_str().unwrap();
    assert!(
        t.contains(&format!("cleaned up after a previous hostd that did not finish: run {run_id}")),
        "{t}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(guest_pids.iter().all(|&p| !alive(p)), "orphans survived recovery");
    assert!(!Path::new(&scratch).exists(), "scratch left behind");
    for r in roots {
        assert!(!Path::new(&r).exists(), "cgroup {r} left behind");
    }
    let _ = std::fs::remove_file(link);
}
