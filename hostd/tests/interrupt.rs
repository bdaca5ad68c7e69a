//! Ctrl-C during `hostd boot`: hostd tears the fleet down, keeps the samples it has, and
//! leaves no process, cgroup, network namespace, tap or scratch directory behind. Needs root
//! and the images (`imagegen build`).

mod support {
    pub mod cli;
    pub mod skip;
}

use support::cli::hostd;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn ctrl_c_during_a_uml_fleet_leaves_nothing_behind() {
    if !support::skip::unless_root(None, "fleets need root") {
        return;
    }
    let res = tempfile::tempdir().unwrap();
    let mut child = hostd()
        .args([
            "boot",
            "--backend",
            "uml",
            "-n",
            "6,12",
            "--modes",
            "hot",
            "--settle",
            "20",
            "--floor-reps",
            "0",
            "--results",
        ])
        .arg(res.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The probe line comes before the first fleet; the settle period keeps the fleet up.
    let start = Instant::now();
    loop {
        let l = rx.recv_timeout(Duration::from_secs(60)).expect("hostd said nothing");
        if l.starts_with("hostd: uml:") {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(4));
    // The run's guests exist now (the first fleet is up and settling).
    let runs: Vec<String> = std::fs::read_dir("/run/virtbench")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.starts_with('r'))
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    // Everything hostd wrote: the reader thread may still be forwarding it after the exit
    // (it ends at end of file; a guest process left holding the pipe must not hang the test).
    let mut lines: Vec<String> = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(10)) {
        lines.push(l);
    }
    assert_eq!(status.code(), Some(130), "{lines:#?}");
    let said = lines
        .iter()
        .find(|l| l.starts_with("hostd: interrupted"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(said.contains("samples recorded so far are in"), "{said}");
    let dir = said.rsplit(' ').next().unwrap();
    let run = dir.rsplit('-').next().unwrap().to_string();
    assert!(runs.contains(&run), "run {run} was not up when interrupted ({runs:?})");
    assert!(start.elapsed() < Duration::from_secs(120));
    // Nothing of the run is left.
    assert!(!Path::new("/run/virtbench").join(&run).exists(), "scratch left behind");
    let netns =
        String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
            .unwrap();
    assert!(!netns.contains(&run), "netns left behind: {netns}");
    for r in hostd::cgroup::run_roots(&run) {
        assert!(!r.exists(), "cgroup {} left behind", r.display());
    }
    let ps =
        String::from_utf8(Command::new("ps").args(["-eo", "stat,args"]).output().unwrap().stdout)
            .unwrap();
    let left: Vec<&str> = ps.lines().filter(|l| l.contains(&run) && !l.starts_with('Z')).collect();
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    // The samples recorded before the interrupt are kept (the first fleet's are not complete
    // yet while it settles, so the file may be empty, but it exists and is readable).
    assert!(Path::new(dir).join("samples.jsonl").exists());
}
