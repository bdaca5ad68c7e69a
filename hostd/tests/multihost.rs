//! `hostd boot --engine slurm` in the Slurm lab (issue 17, docs/multihost.md): a lab of 3
//! emulated hosts, each with its CLOCK_MONOTONIC I × 1000 s ahead of the machine's; the
//! coordinator runs on the lab's login node and salloc's the hosts itself. Checks 10 ns
//! guests ready per host, every guest exchanging data with a guest on each other host over
//! the cross-host fleet network (--reach), each host's recovered clock offset within its
//! reported bound of the lab's known offset (the injected-offset test), one complete
//! results directory, and
//! nothing left on any host; then a worker killed while its fleet is up: its guests lost,
//! the others' intact, and its leftovers reaped by the next hostd there; `hostd up --engine
//! slurm` held until `hostd down` (a lost host shown, nothing left), and its daemon killed
//! outright (the allocation given back, nothing left). Needs root, the
//! Slurm packages (scripts/install-deps) and the images (VIRTBENCH_IMAGES).

mod support {
    pub mod cli;
    pub mod skip;
    pub mod slurmlab;
}

use std::process::Command;

use support::slurmlab::*;

#[test]
fn a_fleet_across_three_hosts_with_offsets_recovered_and_nothing_left() {
    let Some((_s, lab)) = serial_lab("b") else { return };
    let res = tempfile::Builder::new().prefix("multihost-").tempdir_in("/var/tmp").unwrap();
    let o = lab.boot(30, res.path(), &["--reach"]).output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "hostd boot --engine slurm: {}\n{out}", o.status);
    let (dir, m) = results_of(res.path());
    assert!(dir.join("boot.json").is_file() && dir.join("samples.jsonl").is_file(), "{out}");
    let hosts = m["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{m}");
    for h in hosts {
        let name = h["hostname"].as_str().unwrap();
        let i: f64 = name.trim_start_matches('n').parse().unwrap();
        assert_eq!(h["count"], 10, "{h}");
        assert_eq!(h["booted"]["ready"].as_array().unwrap().len(), 10, "{name}: {h}");
        assert!(h["lost"].is_null(), "{h}");
        // The lab sets host nI's CLOCK_MONOTONIC I × 1000 s ahead of the login node's.
        let (off, bound) =
            (h["clock"]["offset_s"].as_f64().unwrap(), h["clock"]["bound_s"].as_f64().unwrap());
        assert!(
            (off - 1000.0 * i).abs() <= bound,
            "{name}: offset {off} s ± {bound} s does not contain the lab's {} s",
            1000.0 * i
        );
        assert_eq!(
            h["teardown"]["clean"].as_u64().unwrap() + h["teardown"]["killed"].as_u64().unwrap(),
            10
        );
        assert_eq!(h["teardown"]["leftovers"].as_array().unwrap().len(), 0, "{h}");
        // Each of its 10 guests exchanged data with a guest on each of the 2 other hosts.
        let r = &h["reach"];
        assert_eq!(
            (r["checked"].as_u64(), r["reached"].as_u64(), r["across_hosts"].as_u64()),
            (Some(20), Some(20), Some(20)),
            "{name}: {r}"
        );
        assert!(h["serve_failed"].as_array().unwrap().is_empty(), "{h}");
    }
    // Merged T_startup: the latest host's lateness plus its slowest guest.
    let want = hosts
        .iter()
        .map(|h| {
            let b = &h["booted"];
            let slowest = b["ready"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["ready_s"].as_f64().unwrap())
                .fold(0.0, f64::max);
            b["lateness_s"].as_f64().unwrap() + slowest
        })
        .fold(0.0, f64::max);
    assert!((m["t_startup_s"].as_f64().unwrap() - want).abs() < 1e-9, "{m}");
    assert_memory(&dir, &m, 10);
    lab.assert_clean_of(&runs(&m));
    lab.down_finding_nothing();
}

#[test]
fn an_interrupted_coordinator_leaves_nothing_on_any_host() {
    let Some((_s, lab)) = serial_lab("i") else { return };
    let res = tempfile::Builder::new().prefix("multihost-").tempdir_in("/var/tmp").unwrap();
    let (mut child, mut log, mut err) = held(&lab, res.path(), 9, &["--hold", "20"]);
    let coordinator = coordinators();
    assert_eq!(coordinator.len(), 1, "coordinators: {coordinator:?}\n{log}");
    // The workers' runs (their cgroups are named after them), from each host's run state.
    let runs: Vec<String> = (1..=3)
        .flat_map(|i| {
            lab.host(i, "ls /run/virtbench")
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|r| r != "fleets")
        .collect();
    assert_eq!(runs.len(), 3, "worker runs: {runs:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(coordinator[0] as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    log.push_str(&std::io::read_to_string(&mut err).unwrap());
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(130), "{log}");
    // The workers tear down once their links drop: give them the time that takes.
    let jobs = || String::from_utf8_lossy(&lab_exec(&lab, &["squeue", "-h"]).stdout).into_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while (!workers(None).is_empty() || !jobs().trim().is_empty())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(jobs().trim().is_empty(), "jobs left: {}", jobs());
    lab.assert_clean_of(&runs);
    lab.down_finding_nothing();
}

#[test]
fn a_worker_killed_while_its_fleet_is_up_loses_only_its_guests() {
    let Some((_s, lab)) = serial_lab("k") else { return };
    let res = tempfile::Builder::new().prefix("multihost-").tempdir_in("/var/tmp").unwrap();
    let (mut child, mut log, mut err) = held(&lab, res.path(), 9, &["--hold", "20"]);
    let victims = workers(Some("n2"));
    assert_eq!(victims.len(), 1, "workers on n2: {victims:?}\n{log}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victims[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let rest = std::io::read_to_string(&mut err).unwrap();
    log.push_str(&rest);
    let st = child.wait().unwrap();
    // 3: finished, with failures recorded.
    assert_eq!(st.code(), Some(3), "{log}");
    let (_, m) = results_of(res.path());
    for h in m["hosts"].as_array().unwrap() {
        let name = h["hostname"].as_str().unwrap();
        if name == "n2" {
            assert!(h["lost"].as_str().unwrap().contains("link dropped"), "{h}");
        } else {
            assert!(h["lost"].is_null(), "{h}");
            assert_eq!(h["booted"]["ready"].as_array().unwrap().len(), 3, "{h}");
            assert_eq!(
                h["teardown"]["clean"].as_u64().unwrap()
                    + h["teardown"]["killed"].as_u64().unwrap(),
                3
            );
        }
    }
    let dir = results_of(res.path()).0;
    let samples = std::fs::read_to_string(dir.join("samples.jsonl")).unwrap();
    let lost = samples.lines().filter(|l| l.contains("host n2 lost")).count();
    assert_eq!(lost, 3, "{samples}");
    // The killed worker could not tear down: the next hostd on n2 reaps what it left.
    let res2 = tempfile::Builder::new().prefix("multihost-").tempdir_in("/var/tmp").unwrap();
    let o = lab.boot(3, res2.path(), &[]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("cleaned up after a previous hostd"), "{}", text(&o));
    lab.assert_clean_of(&runs(&m));
    lab.down_finding_nothing();
}

#[test]
fn a_fleet_held_up_across_three_hosts_until_down_shows_a_lost_host_and_leaves_nothing() {
    let Some((_s, lab)) = serial_lab("u") else { return };
    let f = fleet_file("mhup", "backend = \"ns\"\nguests = 9\n");
    let name = f.name.clone();
    let o = up_across(&lab, &f, &["--reach"]);
    let out = text(&o);
    assert!(o.status.success(), "hostd up --engine slurm: {}\n{out}", o.status);
    for i in 1..=3 {
        assert!(out.contains(&format!("host n{i} (")), "host n{i} not in:\n{out}");
    }
    assert_eq!(out.matches("3 of 3 ready").count(), 3, "{out}");
    // Every host's 3 guests ready, each having exchanged data with a guest on each of the
    // 2 other hosts.
    let hosts = hosts_of(&lab, &name);
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    let mut runs = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["hostname"], format!("n{}", i + 1), "{h}");
        assert!(h["lost"].is_null(), "{h}");
        assert_eq!(states(h), ["ready"; 3], "{h}");
        let r = &h["reach"];
        assert_eq!((r["checked"].as_u64(), r["reached"].as_u64()), (Some(6), Some(6)), "{h}");
        assert_eq!(r["across_hosts"].as_u64(), Some(6), "{h}");
        runs.push(h["run"].as_str().unwrap().to_string());
    }
    // Each host keeps its part of the fleet network while the fleet is up.
    for (i, run) in runs.iter().enumerate() {
        let n = lab.host(i as u32 + 1, "ip netns list");
        assert!(n.contains(&format!("vb-{run}")), "n{}: {n}", i + 1);
    }
    // Every guest of every host answers (the agent is the one program their root holds).
    let o = on_login(&lab, &["exec", &name, "--", "/sbin/guest-agent", "--version"]);
    assert!(o.status.success(), "hostd exec: {}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).matches(": exit 0 in ").count(),
        9,
        "{}",
        text(&o)
    );
    // Kill n2's worker: its guests are shown lost, the others stay ready.
    let victims = workers(Some("n2"));
    assert_eq!(victims.len(), 1, "workers on n2: {victims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victims[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let hosts = loop {
        let hosts = hosts_of(&lab, &name);
        if !hosts[1]["lost"].is_null() || std::time::Instant::now() > deadline {
            break hosts;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(hosts[1]["lost"].as_str().unwrap_or("").contains("link dropped"), "{:?}", hosts[1]);
    assert_eq!(states(&hosts[1]), ["lost"; 3], "{:?}", hosts[1]);
    for h in [&hosts[0], &hosts[2]] {
        assert!(h["lost"].is_null(), "{h}");
        assert_eq!(states(h), ["ready"; 3], "{h}");
    }
    let o = on_login(&lab, &["status", &name]);
    assert!(text(&o).contains("host n2 (") && text(&o).contains("LOST"), "{}", text(&o));
    // Exec reaches the 6 guests still up; a guest of the lost host is refused, naming it.
    let o = on_login(&lab, &["exec", &name, "--", "/sbin/guest-agent", "--version"]);
    assert!(o.status.success(), "hostd exec: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(out.matches(": exit 0 in ").count(), 6, "{out}");
    assert!(!out.contains("== g4:"), "{out}");
    let o = on_login(&lab, &["exec", &name, "--guest", "g4", "--", "/sbin/guest-agent", "-V"]);
    assert!(!o.status.success() && text(&o).contains("g4 on host n2 is not ready"), "{}", text(&o));
    // Down: torn down on n1 and n3, the killed worker's leftovers on n2 cleaned up, the
    // allocation given back, the daemon gone.
    lab.down_fleet(&name, &runs);
    let o = on_login(&lab, &["status", &name]);
    assert!(!o.status.success(), "the fleet is still listed: {}", text(&o));
    lab.down_finding_nothing();
}

#[test]
fn a_killed_fleet_daemon_gives_the_nodes_back_and_leaves_nothing_on_any_host() {
    let Some((_s, lab)) = serial_lab("d") else { return };
    let f = fleet_file("mhkd", "backend = \"ns\"\nguests = 6\n");
    let name = f.name.clone();
    let o = up_across(&lab, &f, &[]);
    assert!(o.status.success(), "hostd up --engine slurm: {}", text(&o));
    let o = on_login(&lab, &["status", &name, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let runs: Vec<String> = v[0]["hosts"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["run"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(runs.len(), 3, "{v}");
    let jobs = |l: &Lab| {
        String::from_utf8_lossy(&lab_exec(l, &["squeue", "-h", "-o", "%j"]).stdout).into_owned()
    };
    assert!(jobs(&lab).contains(&format!("vb-up-{name}")), "{}", jobs(&lab));
    // SIGKILL: the daemon cannot tear anything down; its pipe to salloc's command closes,
    // Slurm takes the nodes back and cancels the step, and the workers tear down.
    let daemon = v[0]["daemon_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while (!jobs(&lab).trim().is_empty() || !workers(None).is_empty())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(jobs(&lab).trim().is_empty(), "jobs left: {}", jobs(&lab));
    lab.assert_clean_of(&runs);
    // The daemon's own run state on the login node is an orphan the next hostd reaps.
    let o = on_login(&lab, &["reap"]);
    assert!(o.status.success(), "hostd reap: {}", text(&o));
    let o = on_login(&lab, &["status", &name]);
    assert!(!o.status.success(), "the fleet is still listed: {}", text(&o));
    lab.down_finding_nothing();
}

#[test]
fn a_frozen_worker_is_declared_lost_within_its_bound_and_down_leaves_nothing() {
    let Some((_s, lab)) = serial_lab("f") else { return };
    let f = fleet_file("mhfz", "backend = \"ns\"\nguests = 6\n");
    let name = f.name.clone();
    // A bound of 3 s (beats every 1 s) keeps the test short; the default is 15 s.
    let o = up_across(&lab, &f, &["--lost-after", "3"]);
    assert!(o.status.success(), "hostd up --engine slurm: {}", text(&o));
    let hosts = hosts_of(&lab, &name);
    let runs: Vec<String> = hosts.iter().map(|h| h["run"].as_str().unwrap().into()).collect();
    assert_eq!(runs.len(), 3, "{hosts:?}");
    // Frozen, not dead: its kernel still ACKs, its connection stays open; only the
    // missing heartbeats tell.
    let victims = workers(Some("n2"));
    assert_eq!(victims.len(), 1, "workers on n2: {victims:?}");
    signal(victims[0], nix::sys::signal::Signal::SIGSTOP);
    let stopped = std::time::Instant::now();
    let hosts = loop {
        let hosts = hosts_of(&lab, &name);
        if !hosts[1]["lost"].is_null() || stopped.elapsed().as_secs() > 30 {
            break hosts;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let took = stopped.elapsed();
    eprintln!("n2 frozen → shown lost after {took:?}");
    let lost = hosts[1]["lost"].as_str().unwrap_or("");
    assert!(lost.contains("no heartbeat for 3 s"), "{:?}", hosts[1]);
    // The bound, plus the reader's wake-up (a third of it), plus one status round trip.
    assert!(took.as_secs_f64() < 3.0 + 1.0 + 1.5, "lost after {took:?}");
    assert!(took.as_secs_f64() >= 2.0, "lost after only {took:?}: not the bound");
    assert_eq!(states(&hosts[1]), ["lost"; 2], "{:?}", hosts[1]);
    for h in [&hosts[0], &hosts[2]] {
        assert!(h["lost"].is_null(), "{h}");
        assert_eq!(states(h), ["ready"; 2], "{h}");
    }
    let o = on_login(&lab, &["status", &name]);
    assert!(text(&o).contains("no heartbeat for 3 s"), "{}", text(&o));
    // Thawed, the worker finds its link closed by the coordinator and tears its slice
    // down by itself.
    signal(victims[0], nix::sys::signal::Signal::SIGCONT);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !workers(Some("n2")).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(workers(Some("n2")).is_empty(), "n2's worker did not end once thawed");
    let left = lab.host(2, "ip netns list; ls -A /run/virtbench 2>/dev/null");
    assert!(left.trim().is_empty(), "n2's thawed worker left: {left}");
    lab.down_fleet(&name, &runs);
    lab.down_finding_nothing();
}

#[test]
fn a_frozen_coordinator_has_every_worker_tear_down_by_itself() {
    let Some((_s, lab)) = serial_lab("c") else { return };
    let res = tempfile::Builder::new().prefix("multihost-").tempdir_in("/var/tmp").unwrap();
    let (mut child, mut log, mut err) =
        held(&lab, res.path(), 6, &["--hold", "120", "--lost-after", "3"]);
    let coordinator = coordinators();
    assert_eq!(coordinator.len(), 1, "coordinators: {coordinator:?}\n{log}");
    assert_eq!(workers(None).len(), 3, "{log}");
    // The coordinator frozen: its connections stay open, its heartbeats stop; every
    // worker tears down after the bound and exits.
    signal(coordinator[0], nix::sys::signal::Signal::SIGSTOP);
    let stopped = std::time::Instant::now();
    while !workers(None).is_empty() && stopped.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let took = stopped.elapsed();
    eprintln!("coordinator frozen → every worker gone after {took:?}");
    assert!(workers(None).is_empty(), "workers still running {took:?} after the freeze");
    assert!(took.as_secs_f64() >= 2.0, "workers gone after only {took:?}: not the bound");
    for i in 1..=3 {
        let left = lab.host(i, "ip netns list; ls -A /run/virtbench 2>/dev/null");
        assert!(left.trim().is_empty(), "host n{i} keeps: {left}");
    }
    // Thawed, the coordinator finds every link gone: all hosts lost, exit 3.
    signal(coordinator[0], nix::sys::signal::Signal::SIGCONT);
    log.push_str(&std::io::read_to_string(&mut err).unwrap());
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(3), "{log}");
    let (_, m) = results_of(res.path());
    for h in m["hosts"].as_array().unwrap() {
        assert!(h["lost"].is_string(), "{h}");
    }
    let o = lab_exec(&lab, &["squeue", "-h"]);
    assert!(String::from_utf8_lossy(&o.stdout).trim().is_empty(), "jobs left: {}", text(&o));
    lab.assert_clean_of(&runs(&m));
    lab.down_finding_nothing();
}

#[test]
fn exec_cp_and_commands_reach_the_guests_of_every_host() {
    let Some((_s, lab)) = serial_lab("x") else { return };
    // The guests' root holds only the agent: a static busybox copied in reads files back.
    if !static_busybox_or_skip("to copy into the guests") {
        return;
    }
    // The agent's rootfs holds only the agent: its --version is the program every guest has.
    let f = fleet_file(
        "mhex",
        "backend = \"ns\"\nguests = 6\n\
         commands = [[\"/sbin/guest-agent\", \"--version\"], [\"/no/such/program\"]]\n\
         [limits]\npids = 200\nmemory_mib = 256\n",
    );
    let name = f.name.clone();
    let o = up_across(&lab, &f, &[]);
    let out = text(&o);
    // The second command fails in every guest: exit 3, the fleet up.
    assert_eq!(o.status.code(), Some(3), "hostd up: {out}");
    assert_eq!(out.matches("command `/sbin/guest-agent --version`:").count(), 1, "{out}");
    assert_eq!(out.matches("   stdout| guest-agent ").count(), 6, "{out}");
    for i in 0..6 {
        assert!(out.contains(&format!("== g{i}: exit 0 in ")), "g{i}: {out}");
        let failed = format!(
            "== g{i}: failed: host n{}: guest reported an error: exec \"/no/such/program\"",
            i / 2 + 1
        );
        assert!(out.contains(&failed), "{failed:?} not in: {out}");
    }
    assert!(out.contains("finished with failures"), "{out}");
    let hosts = hosts_of(&lab, &name);
    let runs: Vec<String> = hosts.iter().map(|h| h["run"].as_str().unwrap().to_string()).collect();
    for h in &hosts {
        assert_eq!(states(h), ["ready"; 2], "{h}");
    }
    // The file's [limits] on every host: each guest's cgroup (the lab's hosts share the
    // machine's cgroup tree) has them.
    for (i, run) in runs.iter().enumerate() {
        let (pids, mem) = guest_limits(run);
        assert_eq!(pids, ["200"; 2], "n{}", i + 1);
        assert_eq!(mem, ["268435456"; 2], "n{}: 256 MiB", i + 1);
    }
    // A static busybox (about 2 MB: 8 chunks a guest) and a small file into every guest.
    let hello = f.dir().join("hello.txt");
    let greeting = format!("hello from the login node {}\n", std::process::id());
    std::fs::write(&hello, &greeting).unwrap();
    let o = on_login(&lab, &["cp", &name, "--all", "/bin/busybox", ":/tmp/busybox"]);
    let size = std::fs::metadata("/bin/busybox").unwrap().len();
    let copied = by_guest(&String::from_utf8_lossy(&o.stdout));
    assert!(o.status.success(), "hostd cp: {}", text(&o));
    assert_eq!(copied.len(), 6, "{copied:?}");
    for (g, (said, _)) in &copied {
        assert_eq!(said, &format!("{size} bytes to /tmp/busybox"), "{g}");
    }
    let o = on_login(&lab, &["cp", &name, "--all", hello.to_str().unwrap(), ":/tmp/hello.txt"]);
    assert!(o.status.success(), "hostd cp: {}", text(&o));
    // Read back in every guest, and each guest's CLOCK_BOOTTIME: its host's.
    let before = uptime(&std::fs::read_to_string("/proc/uptime").unwrap());
    let o = on_login(
        &lab,
        &["exec", &name, "--", "/tmp/busybox", "sh", "-c", "cat /tmp/hello.txt /proc/uptime"],
    );
    let after = uptime(&std::fs::read_to_string("/proc/uptime").unwrap());
    assert!(o.status.success(), "hostd exec: {}", text(&o));
    let answers = by_guest(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(answers.len(), 6, "{answers:?}");
    for i in 0..6 {
        let (said, out) = &answers[&format!("g{i}")];
        assert!(said.starts_with("exit 0 in "), "g{i}: {said}");
        let rest = out.strip_prefix(&greeting).unwrap_or_else(|| panic!("g{i}: {out:?}"));
        let host = (i / 2 + 1) as f64;
        let u = uptime(rest) - host * 1000.0;
        assert!(u >= before - 1.0 && u <= after + 1.0, "g{i} (n{host}): uptime {rest:?}");
    }
    // A program missing in one guest: its error, exit 3; the others unaffected.
    let o = on_login(&lab, &["exec", &name, "--guest", "g3", "--", "/no/such/program"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    let want = "== g3: failed: host n2: guest reported an error: exec \"/no/such/program\": ";
    assert!(t.contains(want), "{t}");
    let o = on_login(&lab, &["exec", &name, "--all", "--", "/tmp/busybox", "true"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(by_guest(&String::from_utf8_lossy(&o.stdout)).len(), 6, "{}", text(&o));
    let o = on_login(&lab, &["exec", &name, "--guest", "g9", "--", "/tmp/busybox", "true"]);
    assert!(!o.status.success() && text(&o).contains("no guest named \"g9\""), "{}", text(&o));
    // Out of every guest, each into a directory of its own on the login node.
    let outdir = f.dir().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let o = on_login(&lab, &["cp", &name, "--all", ":/tmp/hello.txt", outdir.to_str().unwrap()]);
    assert!(o.status.success(), "hostd cp out: {}", text(&o));
    for i in 0..6 {
        let got = std::fs::read_to_string(outdir.join(format!("g{i}/hello.txt"))).unwrap();
        assert_eq!(got, greeting, "g{i}");
    }
    // n2's worker killed in the middle of an exec: its guests' answers say it is lost, the
    // other hosts' guests finish theirs.
    let exec = std::thread::spawn({
        let (lab, name) = (lab.0.clone(), name.clone());
        move || {
            Command::new(lab_script())
                .args(["exec", &lab, env!("CARGO_BIN_EXE_hostd"), "exec", &name, "--"])
                .args(["/tmp/busybox", "sleep", "6"])
                .output()
                .unwrap()
        }
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let victims = workers(Some("n2"));
    assert_eq!(victims.len(), 1, "workers on n2: {victims:?}");
    signal(victims[0], nix::sys::signal::Signal::SIGKILL);
    let o = exec.join().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let answers = by_guest(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(answers.len(), 6, "{answers:?}");
    for g in ["g2", "g3"] {
        let said = &answers[g].0;
        assert!(said.starts_with("failed: host n2 is lost: its link dropped"), "{g}: {said}");
    }
    for g in ["g0", "g1", "g4", "g5"] {
        assert!(answers[g].0.starts_with("exit 0 in "), "{g}: {:?}", answers[g]);
    }
    lab.down_fleet(&name, &runs);
    lab.down_finding_nothing();
}
