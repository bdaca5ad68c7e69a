//! hostd itself killed (issue 6, faults 5 and 6) and images it must refuse (fault 9):
//! - `hostd up` with 50 guests (ns, then uml), SIGKILLed: the next hostd finds the run's
//!   state, kills every orphan, releases cgroups, namespaces, taps, scratch and UML umid
//!   directories, and says what it cleaned;
//! - `hostd run` killed at random moments, again and again: every results file is a whole
//!   old or new version, the samples lose at most the record being written, and `hostd
//!   report` works on every killed run;
//! - a flipped byte in a stored artifact, an unpacked tree changed after the fact, a tar or
//!   a cpio naming `..`: refused before anything boots.
//!
//! Needs root and the images (scripts/test builds them).

mod support {
    pub mod cli;
    pub mod fault;
    pub mod skip;
}

use support::cli::{fleet_file, guest_pids_in, hostd, hot_boot, reap_lock, serial, text};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::fault::*;

/// A cheap hostd start, which reaps what dead hostds left.
fn next_hostd(dir: &Path) -> String {
    let out =
        hot_boot("native", "1").arg("--no-network").arg("--results").arg(dir).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    t
}

/// `stopped_survive`: whether stopped guests outlive hostd. UML guests share hostd's
/// session; when hostd dies, their process groups are orphaned and the kernel sends a
/// stopped one SIGHUP (and SIGCONT), which ends it. ns guests have sessions of their own.
fn killed_with_guests(backend: &str, n: usize, stopped_survive: bool) {
    let f = fleet_file(
        &format!("k{}", backend.len()),
        &format!("backend = \"{backend}\"\nguests = {n}\nboot_timeout_s = 120\n"),
    );
    let (name, dir) = (f.name.as_str(), &f.dir);
    let t0 = Instant::now();
    let out = hostd().arg("up").arg(&f.path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let up = t0.elapsed();
    let link = Path::new("/run/virtbench/fleets").join(name);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(link.join("state.json")).unwrap()).unwrap();
    let run = state["run"].as_str().unwrap().to_string();
    let _litter = Litter(run.clone());
    let daemon = state["hostd_pid"].as_u64().unwrap() as u32;
    let scratch = PathBuf::from(state["scratch"].as_str().unwrap());
    let pids = guest_pids_in(&text(&hostd().args(["status", name]).output().unwrap()));
    assert_eq!(pids.len(), n, "{backend}: not all guests are up");
    // Every host process of every guest, and what else they hold.
    let mut gone = Gone {
        paths: vec![scratch.clone()],
        netns: vec![format!("vb-{run}")],
        ..Default::default()
    };
    for (i, &p) in pids.iter().enumerate() {
        gone.pids.extend(group_members(p as i32));
        gone.pids.push(p);
        if backend == "uml" {
            assert!(
                scratch.join(format!("g{i}")).join(format!("g{i}")).exists(),
                "uml umid directory of g{i}"
            );
        }
    }
    gone.cgroups = guest_cgroups_of(&run);
    gone.mounts_mentioning = vec![run.clone()];
    assert_eq!(
        gone.cgroups.len() % n,
        0,
        "{backend}: {} groups for {n} guests",
        gone.cgroups.len()
    );
    assert_eq!(
        links_in(&format!("vb-{run}"), "vbl").len(),
        n,
        "{backend}: one tap or veth per guest"
    );
    // Half the guests stopped: they cannot end themselves when their channel closes, so
    // only the next hostd can end them.
    for &p in pids.iter().step_by(2) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p as i32), Signal::SIGSTOP);
    }
    // From the kill to the next hostd's reaping, no other test binary's hostd may start (it
    // would reap this run first).
    let reaping = reap_lock();
    signal(daemon, Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        scratch.exists() && !guest_cgroups_of(&run).is_empty() && !netns_of(&run).is_empty(),
        "{backend}: nothing to recover"
    );
    let stopped_alive = pids.iter().step_by(2).filter(|&&p| alive(p)).count();
    if stopped_survive {
        assert_eq!(stopped_alive, n.div_ceil(2), "{backend}: stopped guests died by themselves");
    }

    let t1 = Instant::now();
    let said = next_hostd(dir.path());
    let recovered = t1.elapsed();
    drop(reaping);
    let line = said
        .lines()
        .find(|l| l.contains(&format!("run {run}")))
        .unwrap_or_else(|| panic!("{backend}: nothing said about {run}: {said}"));
    println!(
        "{backend}: {n} guests up in {:.1} s, {stopped_alive} stopped ones alive after SIGKILL of hostd; the next hostd: {line} ({:.1} s)",
        up.as_secs_f64(),
        recovered.as_secs_f64()
    );
    assert!(line.contains("cleaned up after a previous hostd that did not finish"), "{line}");
    let killed: usize = line
        .split("killed ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|k| k.parse().ok())
        .unwrap();
    assert!(killed >= stopped_alive, "{line}");
    assert!(
        line.contains("1 network namespaces")
            && line.contains("scratch directory")
            && !line.contains("errors"),
        "{line}"
    );
    gone.assert(&format!("{backend} after recovery"));
    assert!(!link.exists(), "the fleet's name link is left");
}

#[test]
fn hostd_killed_with_50_ns_guests_is_cleaned_up_by_the_next_one() {
    let _s = serial();
    if !is_root() {
        return skip("recovery tests need root");
    }
    killed_with_guests("ns", 50, true);
}

#[test]
fn hostd_killed_with_50_uml_guests_is_cleaned_up_by_the_next_one() {
    let _s = serial();
    if !is_root() {
        return skip("recovery tests need root");
    }
    killed_with_guests("uml", 50, false);
}

/// A small xorshift generator: the kill times differ from run to run, and the seed is
/// printed so a failure can be replayed (`VB_KILL_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Checks every file of a (possibly killed) results directory: whole JSON, TOML, CSV,
/// SVG and HTML files; samples whose every line but a torn last one parses. Returns the
/// samples' whole lines.
fn check_results(dir: &Path) -> Vec<u8> {
    let mut samples = Vec::new();
    for p in files(dir) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // a killed writer's temp file, never read as a result
        }
        let data = std::fs::read(&p).unwrap();
        let t = String::from_utf8_lossy(&data);
        let ok = match p.extension().and_then(|e| e.to_str()) {
            Some("json") => serde_json::from_slice::<serde_json::Value>(&data).is_ok(),
            Some("toml") => toml::from_str::<toml::Value>(&t).is_ok(),
            Some("csv") => t.ends_with('\n'),
            Some("svg") => t.trim_end().ends_with("</svg>"),
            Some("html") => t.trim_end().ends_with("</html>"),
            Some("jsonl") => {
                let whole =
                    data.rsplitn(2, |&b| b == b'\n').nth(1).map(|w| w.len() + 1).unwrap_or(0);
                samples = data[..whole].to_vec();
                samples
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .all(|l| serde_json::from_slice::<serde_json::Value>(l).is_ok())
            }
            _ => true,
        };
        assert!(ok, "{} is not whole: {:?}", p.display(), &t[t.len().saturating_sub(200)..]);
    }
    samples
}

fn files(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

const CAMPAIGN: &str = r#"name = "kill"
backends = ["native"]
resources = ["cpu", "network"]
reps = 2
warmup = 0
[guest]
boot_timeout_s = 30
bench_timeout_s = 60
[startup]
sizes = [1, 2]
modes = ["hot"]
settle_s = 0
[overhead]
sizes = [1, 2]
[isolation]
enabled = true
[ring]
guests = 2
[workloads]
cpu_rounds = 300000
net_duration_ms = 50
"#;

#[test]
fn results_survive_hostd_killed_at_random_moments() {
    let _s = serial();
    if !is_root() {
        return skip("recovery tests need root");
    }
    let kills: usize = std::env::var("VB_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed =
        std::env::var("VB_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
                | 1
        });
    println!("kill seed {seed} (VB_KILL_SEED replays it)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let camp = dir.path().join("kill.toml");
    std::fs::write(&camp, CAMPAIGN).unwrap();
    let res = dir.path().join("results");
    // One whole run, for how long a run takes.
    let t0 = Instant::now();
    let full = hostd().arg("run").arg(&camp).arg("--results").arg(&res).output().unwrap();
    assert!(full.status.success(), "{}", text(&full));
    let whole = t0.elapsed();
    println!("a whole run takes {:.1} s", whole.as_secs_f64());

    // Kills alternate between a fresh run and a resumed one (which appends to the samples a
    // kill may have torn), each at a random moment of what it has left to do.
    let mut previous: std::collections::HashMap<PathBuf, Vec<u8>> = Default::default();
    let mut finished = 0;
    for k in 0..kills {
        let unfinished = std::fs::read_dir(&res)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("campaign.toml").exists() && !p.join("index.html").exists())
            .max();
        let mut cmd = hostd();
        let span = match (&unfinished, k % 2) {
            (Some(d), 1) => {
                cmd.arg("run").arg("--resume").arg(d);
                whole / 2
            }
            _ => {
                cmd.arg("run").arg(&camp).arg("--results").arg(&res);
                whole
            }
        };
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let at = span.mul_f64(rng.next());
        std::thread::sleep(at);
        let done_already = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        child.wait().unwrap();
        if done_already {
            finished += 1;
        }
        // Every file whole; the samples only grew (their whole lines are a prefix of the
        // new ones: at most a record being written is lost, and it is cut off, not fused).
        for d in std::fs::read_dir(&res).unwrap().flatten().map(|e| e.path()) {
            let samples = check_results(&d);
            if let Some(before) = previous.get(&d) {
                assert!(
                    samples.starts_with(before),
                    "kill {k} at {at:?}: {} lost whole records",
                    d.display()
                );
            }
            previous.insert(d.clone(), samples);
        }
        print!("{}", if done_already { "+" } else { "." });
        std::io::stdout().flush().unwrap();
    }
    println!();
    // `hostd report` works on every killed run and leaves no temp file behind.
    let dirs: Vec<PathBuf> = std::fs::read_dir(&res).unwrap().flatten().map(|e| e.path()).collect();
    for d in &dirs {
        let out = hostd().arg("report").arg(d).output().unwrap();
        assert!(out.status.success(), "report of {}: {}", d.display(), text(&out));
        check_results(d);
        let temps: Vec<_> = files(d)
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        assert!(temps.is_empty(), "{temps:?}");
    }
    println!("{kills} kills over {} result directories ({finished} runs had finished); every report rebuilt", dirs.len());
    // The killed runs' guests, cgroups and scratch are gone once a hostd has started.
    next_hostd(dir.path());
    for d in &dirs {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        let run = name.rsplit('-').next().unwrap();
        if run.starts_with('r') && run.len() == 8 {
            assert!(
                cgroup_dirs_of(run).is_empty() && netns_of(run).is_empty(),
                "run {run} left resources"
            );
            assert!(!Path::new("/run/virtbench").join(run).exists(), "run {run} left its scratch");
        }
    }
}

/// A store holding `recipes` of the workspace's store: manifests copied, blobs linked
/// (big ones stay where they are), except what a test then changes.
fn store_copy(dir: &Path, recipes: &[&str]) -> PathBuf {
    let real = store();
    let copy = dir.join("store");
    for d in ["blobs/sha256", "current", "builds", "trees"] {
        std::fs::create_dir_all(copy.join(d)).unwrap();
    }
    for r in recipes {
        let m = real.current(r).unwrap();
        std::fs::write(
            copy.join("current").join(format!("{r}.json")),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        for o in m.outputs.values() {
            let dst = copy.join(&o.path);
            // The store reads only regular files of its own (no symlink): a hard link, or a
            // copy across file systems.
            if !dst.exists() && std::fs::hard_link(real.blob_path(&o.sha256), &dst).is_err() {
                std::fs::copy(real.blob_path(&o.sha256), &dst).unwrap();
            }
        }
    }
    copy
}

/// Replaces a blob link of the copy by a real file with `data`, and points `recipe`'s
/// manifest at it, hash and size included (a consistent but malicious store).
fn put_blob(copy: &Path, recipe: &str, output: &str, data: &[u8]) -> String {
    let sha = imagegen::hash::sha256_hex(data);
    std::fs::write(copy.join("blobs/sha256").join(&sha), data).unwrap();
    let p = copy.join("current").join(format!("{recipe}.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    m["outputs"][output] = serde_json::json!({"sha256": sha, "size": data.len(), "path": format!("blobs/sha256/{sha}")});
    std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
    sha
}

/// `hostd boot` on backend with the store at `copy`: must refuse before booting anything.
fn refused(copy: &Path, backend: &str, says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = hot_boot(backend, "1")
        .env("VIRTBENCH_IMAGES", copy)
        .arg("--results")
        .arg(dir.path())
        .output()
        .unwrap();
    let t = text(&out);
    let note =
        t.lines().find(|l| l.contains(says)).unwrap_or_else(|| panic!("no {says:?} in: {t}"));
    println!("{backend}: {}", note.trim());
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains(&format!("backend {backend} unavailable")), "{t}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "something ran: {t}");
}

/// A raw newc archive (names written as given, which imagegen's writer would refuse).
fn raw_cpio(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let pad = |out: &mut Vec<u8>| out.resize(out.len().next_multiple_of(4), 0);
    let trailer: (&str, u32, &[u8]) = ("TRAILER!!!", 0, &[]);
    for (i, (name, mode, data)) in entries.iter().chain(std::iter::once(&trailer)).enumerate() {
        let fields = [
            i as u32 + 1,
            *mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend(b"070701");
        for f in fields {
            out.extend(format!("{f:08x}").as_bytes());
        }
        out.extend(name.as_bytes());
        out.push(0);
        pad(&mut out);
        out.extend(*data);
        pad(&mut out);
    }
    out
}

#[test]
fn tampered_and_unsafe_images_are_refused_before_booting() {
    if !is_root() {
        return skip("image tests boot guests (root)");
    }
    // A flipped byte in a stored initramfs.
    let dir = tempfile::tempdir().unwrap();
    let copy = store_copy(dir.path(), &["agent", "initramfs", "kernel-uml"]);
    let real = store();
    let m = real.current("initramfs").unwrap();
    let blob = copy.join(&m.output("initramfs").unwrap().path);
    let mut data = std::fs::read(&blob).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, &data).unwrap();
    refused(&copy, "uml", "tampered or damaged");

    // An unpacked rootfs tree changed after it was unpacked (its agent replaced).
    let dir = tempfile::tempdir().unwrap();
    let copy = store_copy(dir.path(), &["agent", "rootfs"]);
    let sha = real.current("rootfs").unwrap().output("rootfs").unwrap().sha256.clone();
    let tree = real.materialize_tree(&sha).unwrap();
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&tree)
        .arg(copy.join("trees"))
        .status()
        .unwrap()
        .success());
    std::fs::OpenOptions::new()
        .append(true)
        .open(copy.join("trees").join(&sha).join("sbin/guest-agent"))
        .unwrap()
        .write_all(b"\0")
        .unwrap();
    refused(&copy, "ns", "no longer matches its blob");

    // Rootfs tars naming what lies outside their root.
    for (entries, says) in [
        (vec![("../evil", tar::EntryType::Regular, "", &b"x"[..])], "`..` component"),
        (vec![("/evil", tar::EntryType::Regular, "", &b"x"[..])], "absolute path"),
        (vec![("sbin", tar::EntryType::Symlink, "/usr/sbin", &b""[..])], "points outside the tree"),
        (vec![("etc/passwd", tar::EntryType::Link, "../../etc/passwd", &b""[..])], "hard link"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let copy = store_copy(dir.path(), &["agent", "rootfs"]);
        put_blob(&copy, "rootfs", "rootfs", &imagegen::testing::raw_tar(&entries));
        refused(&copy, "ns", says);
        assert!(
            !dir.path().join("evil").exists() && !copy.join("evil").exists(),
            "written outside the tree"
        );
    }

    // An initramfs naming `..`, or linking out of its root.
    for (entries, says) in [
        (vec![("init", 0o100755, &b"x"[..]), ("../x", 0o100644, &b"x"[..])], "`..` component"),
        (
            vec![("init", 0o100755, &b"x"[..]), ("etc", 0o120777, &b"../../etc"[..])],
            "points outside the tree",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let copy = store_copy(dir.path(), &["agent", "initramfs", "kernel-uml"]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw_cpio(&entries)).unwrap();
        put_blob(&copy, "initramfs", "initramfs", &gz.finish().unwrap());
        refused(&copy, "uml", says);
    }
}
