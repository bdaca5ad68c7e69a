//! Bad files and absurd values (issue 15, hostd's part): every case ends in an error that
//! names the file, field or flag, or in a correct result, within a bounded time (each hostd
//! runs under a watchdog that kills it, so a regression that hangs fails instead), and
//! nothing recorded is lost. Tests that boot guests need root and the images
//! (VIRTBENCH_IMAGES); the others run anywhere.

mod support {
    pub mod cli;
    pub mod fault;
    pub mod skip;
}

use support::cli::{self, serial, tiny_campaign, HOSTD};

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::fault::*;

/// What a hostd run printed and how it ended.
struct Run {
    status: ExitStatus,
    text: String,
    /// hostd's peak resident memory, from /usr/bin/time (its own child: a process spawned
    /// straight from this big test process would count this one's pages too).
    max_rss_kib: u64,
}

/// Runs hostd with `args` (and `env` added), killing it (and failing the test) if it is
/// still running after `limit`: a hang is a failure, never a stuck test.
fn hostd_env(limit: Duration, args: &[&OsStr], env: &[(&str, &OsStr)]) -> Run {
    let argv: Vec<&OsStr> =
        std::iter::once(OsStr::new(HOSTD)).chain(args.iter().copied()).collect();
    run_within(limit, &argv, env)
}

/// Runs `argv` (a hostd, or a wrapper that execs one) under the watchdog.
fn run_within(limit: Duration, argv: &[&OsStr], env: &[(&str, &OsStr)]) -> Run {
    let args = argv;
    let out = tempfile::tempdir().unwrap();
    let (o, e, m) = (out.path().join("stdout"), out.path().join("stderr"), out.path().join("rss"));
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-o").arg(&m).args(["-f", "%M"]);
    cmd.args(argv)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap());
    // Its own process group: the watchdog kills hostd and time together.
    cmd.process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("/usr/bin/time (Debian package time)");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            panic!(
                "hostd {:?} still running after {limit:?}: killed; it printed:\n{}{}",
                args,
                std::fs::read_to_string(&o).unwrap_or_default(),
                std::fs::read_to_string(&e).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text =
        format!("{}{}", std::fs::read_to_string(&o).unwrap(), std::fs::read_to_string(&e).unwrap());
    // time says "Command exited with non-zero status N" before the figure: the last line.
    let rss = std::fs::read_to_string(&m).unwrap();
    let max_rss_kib = rss
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("time's output: {rss:?}"));
    Run { status, text, max_rss_kib }
}

/// hostd with string arguments, 30 s at most.
fn hostd(args: &[&str]) -> Run {
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    hostd_env(Duration::from_secs(30), &a, &[])
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

// ---- Limits: one range for the command line, campaigns and fleet files (items 5, 8) ----

#[test]
fn absurd_boot_values_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("results");
    for (flag, value, says) in [
        ("-n", "100000", "100000 guests is not in 1..=25000"),
        ("-n", "0", "0 guests is not in 1..=25000"),
        ("--mem-mib", "0", "0 MiB is not in 32..=1048576"),
        ("--vcpus", "0", "0 vCPUs is not in 1..=64"),
        ("--boot-timeout", "0", "0 s is not in 1..=86400"),
        // 2^63 - 1 s: `Instant::now() + deadline` would panic.
        ("--boot-timeout", "9223372036854775807", "9223372036854775807 s is not in 1..=86400"),
        ("--settle", "18446744073709551615", "is not in 0..=3600"),
        ("--parallelism", "100000", "100000 guests is not in 0..=1000"),
    ] {
        let r = hostd(&["boot", "--backend", "native", flag, value, "--results", p(&res)]);
        assert_eq!(r.status.code(), Some(2), "{flag} {value}: {}", r.text);
        let flag_name = if flag == "-n" { "--sizes" } else { flag };
        assert!(r.text.contains(flag_name) && r.text.contains(says), "{flag} {value}: {}", r.text);
        assert!(!res.exists(), "{flag} {value}: a results directory was made");
    }
    let r = hostd(&["boot", "--backend", "native", "-n", "10,1", "--results", p(&res)]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(r.text.contains("--sizes: sizes must increase"), "{}", r.text);
    // A memory bound is fitted over the sizes given: one is not a line.
    let r = hostd(&[
        "boot",
        "--backend",
        "native",
        "-n",
        "10",
        "--to-memory-bound",
        "--results",
        p(&res),
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(r.text.contains("--to-memory-bound") && r.text.contains("at least two"), "{}", r.text);
    assert!(!res.exists(), "a results directory was made");
    let r = hostd(&["bench", "--bench-timeout", "9223372036854775807"]);
    assert_eq!(r.status.code(), Some(2), "{}", r.text);
    assert!(r.text.contains("--bench-timeout"), "{}", r.text);
    let r = hostd(&["xen-lab", "--guests", "1000"]);
    assert_eq!(r.status.code(), Some(2), "{}", r.text);
    assert!(r.text.contains("--guests") && r.text.contains("1..=64"), "{}", r.text);
}

#[test]
fn absurd_fleet_file_values_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    for (extra, field) in [
        // 2^44 MiB: `m << 20` made it a 0-byte limit.
        ("[limits]\nmemory_mib = 17592186044416\n", "limits.memory_mib"),
        ("[limits]\nmemory_mib = 0\n", "limits.memory_mib"),
        ("[limits]\npids = 0\n", "limits.pids"),
        ("boot_timeout_s = 9223372036854775807\n", "boot_timeout_s"),
        ("mem_mib = 0\n", "mem_mib"),
        ("vcpus = 0\n", "vcpus"),
    ] {
        std::fs::write(
            &file,
            format!("name = \"hard\"\nbackend = \"native\"\nguests = 1\n{extra}"),
        )
        .unwrap();
        let r = hostd(&["up", p(&file)]);
        assert_eq!(r.status.code(), Some(1), "{extra}: {}", r.text);
        assert!(
            r.text.contains(&format!("field `{field}`")) && r.text.contains("fleet.toml"),
            "{extra}: {}",
            r.text
        );
    }
}

#[test]
fn absurd_campaign_values_are_refused_before_anything_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("results");
    let camp = dir.path().join("c.toml");
    for (body, field) in [
        ("[guest]\nboot_timeout_s = 9223372036854775807\n", "guest.boot_timeout_s"),
        ("[guest]\nvcpus = 0\n", "guest.vcpus"),
        ("[workloads]\ndisk_mib = 17592186044416\n", "workloads.disk_mib"),
        ("[startup]\nsizes = [1, 100000]\n", "startup.sizes"),
    ] {
        std::fs::write(&camp, body).unwrap();
        let r = hostd(&["run", p(&camp), "--results", p(&res)]);
        assert_eq!(r.status.code(), Some(1), "{body}: {}", r.text);
        assert!(
            r.text.contains(&format!("field `{field}`")) && r.text.contains("c.toml"),
            "{body}: {}",
            r.text
        );
        assert!(!res.exists(), "{body}: a results directory was made");
    }
}

/// A deadline no clock can represent (2^63 s) reaches `Instant + Duration` in the library
/// (which the validators keep callers from): the guest boots instead of hostd panicking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_pow_63_s_boot_deadline_boots_instead_of_panicking() {
    if !is_root() {
        return skip("booting a native guest needs root (cgroups)");
    }
    use hostd::backend::{AnyBackend, BackendKind};
    let dir = tempfile::tempdir().unwrap();
    let run = run_id("hd");
    let _litter = Litter(run.clone());
    let backend =
        AnyBackend::new(BackendKind::Native, &native_images(agent()), &Default::default());
    let huge = Duration::from_secs(1 << 63);
    let g = tokio::time::timeout(
        Duration::from_secs(60),
        hostd::guest::boot(&backend, spec(&run, 0, dir.path(), None), huge),
    )
    .await
    .expect("booting with a huge deadline hung")
    .expect("booting with a huge deadline failed");
    g.shutdown(&backend, Duration::from_secs(5)).await;
}

// ---- Results directories: bounded, regular files only (item 2) ----

/// A results directory whose samples are `samples` (written as given), with a fixed
/// provenance (without one the report takes this host's, dated now, and two rebuilds
/// seconds apart would differ).
fn results_dir(base: &Path, name: &str, samples: &[u8]) -> PathBuf {
    let d = base.join(name);
    std::fs::create_dir_all(d.join("figures")).unwrap();
    std::fs::write(d.join("samples.jsonl"), samples).unwrap();
    let provenance = hostd::provenance::Provenance {
        artifacts: Default::default(),
        host: hostd::provenance::HostInfo {
            hostname: "test".into(),
            kernel: "6.1".into(),
            cpu_model: "test".into(),
            cpus: 2,
            mem_total_kib: 1 << 20,
            llc: None,
        },
        git_revision: "test".into(),
        hostd_version: "0".into(),
        date: "2026-12-01T00:00:00Z".into(),
        notes: Vec::new(),
        part: None,
    };
    std::fs::write(d.join("provenance.json"), serde_json::to_vec(&provenance).unwrap()).unwrap();
    d
}

/// A few records of a small native run: startup and memory of 1 and 2 guests, CPU overhead
/// samples, a probe.
fn good_samples() -> Vec<u8> {
    let mut s = String::from(
        "{\"record\":\"backend_probe\",\"backend\":\"native\",\"description\":\"agent /x\"}\n",
    );
    for n in [1usize, 2] {
        for i in 0..n {
            s += &format!(
                "{{\"record\":\"startup\",\"backend\":\"native\",\"n\":{n},\"mode\":\"hot\",\"index\":{i},\"ready_s\":0.0{},\"own_s\":0.01,\"guest_boot_s\":null,\"guest_kernel_s\":null}}\n",
                3 + i
            );
        }
        s += &format!(
            "{{\"record\":\"memory\",\"backend\":\"native\",\"n\":{n},\"mode\":\"hot\",\"ready\":{n},\"used_before_kib\":1000000,\"used_after_kib\":{},\"m_used_kib\":{},\"settle_s\":0.0,\"guests\":[],\"hostd_pss_kib\":9000}}\n",
            1_000_000 + 2000 * n,
            2000 * n
        );
    }
    for rep in 0..3 {
        s += &format!(
            "{{\"record\":\"bench\",\"backend\":\"native\",\"test\":\"overhead\",\"resource\":\"cpu\",\"n\":1,\"rep\":{rep},\"guest\":0,\"instance\":0,\"value\":0.5{rep},\"unit\":\"s\",\"elapsed_s\":0.5{rep},\"params\":\"rounds=300000\"}}\n"
        );
    }
    s.into_bytes()
}

#[test]
fn a_fifo_as_samples_is_refused_not_waited_on() {
    let base = tempfile::tempdir().unwrap();
    let d = results_dir(base.path(), "run", b"");
    std::fs::remove_file(d.join("samples.jsonl")).unwrap();
    nix::unistd::mkfifo(&d.join("samples.jsonl"), nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap();
    for args in
        [vec!["report", p(&d)], vec!["compare", p(&d), p(&d)], vec!["run", "--resume", p(&d)]]
    {
        let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let r = hostd_env(Duration::from_secs(10), &a, &[]);
        assert_eq!(r.status.code(), Some(1), "{args:?}: {}", r.text);
        assert!(
            r.text.contains("samples.jsonl is a FIFO, not a regular file"),
            "{args:?}: {}",
            r.text
        );
    }
    assert!(!d.join("report.json").exists());
}

#[test]
fn dev_zero_as_samples_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let d = results_dir(base.path(), "run", b"");
    std::fs::remove_file(d.join("samples.jsonl")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.join("samples.jsonl")).unwrap();
    let r = hostd(&["report", p(&d)]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(
        r.text.contains("samples.jsonl is a character device, not a regular file"),
        "{}",
        r.text
    );
    assert!(r.max_rss_kib < 100 << 10, "peak RSS {} KiB", r.max_rss_kib);
}

#[test]
fn a_huge_line_is_counted_in_bounded_memory_and_a_huge_file_refused() {
    let base = tempfile::tempdir().unwrap();
    let d = results_dir(base.path(), "run", &good_samples());
    // 200 MiB of zero bytes and no newline after the good records (sparse: no disk used):
    // the old reader held it whole ("memory allocation of … bytes failed" for more).
    let f = std::fs::OpenOptions::new().append(true).open(d.join("samples.jsonl")).unwrap();
    f.set_len(f.metadata().unwrap().len() + (200 << 20)).unwrap();
    let r = hostd_env(Duration::from_secs(60), &[OsStr::new("report"), d.as_os_str()], &[]);
    assert!(r.status.success(), "{}", r.text);
    assert!(r.text.contains("1 unreadable line(s)"), "{}", r.text);
    assert!(r.max_rss_kib < 100 << 10, "peak RSS {} KiB for a 200 MiB line", r.max_rss_kib);
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap();
    assert_eq!(rep["unreadable_records"], 1);
    assert_eq!(
        rep["startup"]["rows"].as_array().unwrap().len(),
        2,
        "the good records before it count"
    );
    // Past the file bound (256 MiB): refused, naming the file and the bound.
    f.set_len(300 << 20).unwrap();
    let r = hostd(&["report", p(&d), "--force"]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(
        r.text.contains("samples.jsonl has 314572800 bytes, more than the 268435456"),
        "{}",
        r.text
    );
}

// ---- `hostd report` never destroys a report, never writes outside a results directory
// (item 4), names the directory it cannot use (item 10) ----

/// Every report file of `d`, with its bytes.
fn report_files(d: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = ["report.json", "report.csv", "index.html"]
        .iter()
        .map(|f| (d.join(f), std::fs::read(d.join(f)).unwrap()))
        .collect();
    for e in std::fs::read_dir(d.join("figures")).unwrap() {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        v.push((p, data));
    }
    v.sort();
    v
}

#[test]
fn empty_cut_or_missing_samples_never_replace_a_good_report() {
    let base = tempfile::tempdir().unwrap();
    let good = good_samples();
    let d = results_dir(base.path(), "run", &good);
    let r = hostd(&["report", p(&d)]);
    assert!(r.status.success(), "{}", r.text);
    let before = report_files(&d);
    assert!(before.len() >= 10, "{} report files", before.len());
    let had: serde_json::Value = serde_json::from_slice(
        &before[before.iter().position(|(p, _)| p.ends_with("report.json")).unwrap()].1,
    )
    .unwrap();
    assert_eq!(had["startup"]["rows"].as_array().unwrap().len(), 2);

    // Empty, then cut to its first half: refused, every file as it was.
    let half =
        good.split_inclusive(|&b| b == b'\n').take(4).flatten().copied().collect::<Vec<u8>>();
    for (what, samples) in [("empty", Vec::new()), ("cut", half)] {
        std::fs::write(d.join("samples.jsonl"), &samples).unwrap();
        let r = hostd(&["report", p(&d)]);
        assert_eq!(r.status.code(), Some(1), "{what}: {}", r.text);
        assert!(
            r.text.contains("report.json holds")
                && r.text.contains("refusing to replace it with less")
                && r.text.contains("--force"),
            "{what}: {}",
            r.text
        );
        assert!(report_files(&d) == before, "{what} samples changed the report");
    }
    // Missing: not a results directory any more, and nothing is created in it.
    std::fs::remove_file(d.join("samples.jsonl")).unwrap();
    let r = hostd(&["report", p(&d)]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(
        r.text.contains(&format!(
            "{} is not a results directory: it has no samples.jsonl",
            d.display()
        )),
        "{}",
        r.text
    );
    assert!(!d.join("samples.jsonl").exists(), "report created samples.jsonl");
    assert!(report_files(&d) == before);

    // The same samples again: the same report (rebuilding is always allowed), and a killed
    // writer's temp file gone.
    std::fs::write(d.join("samples.jsonl"), &good).unwrap();
    std::fs::write(d.join("figures/.fig14_ring.svg.tmp-999999999"), b"<sv").unwrap();
    let r = hostd(&["report", p(&d)]);
    assert!(r.status.success(), "{}", r.text);
    assert!(report_files(&d) == before, "a rebuild from the same samples differs");
    // Asked for explicitly, less data does replace it.
    std::fs::write(d.join("samples.jsonl"), b"").unwrap();
    let r = hostd(&["report", p(&d), "--force"]);
    assert!(r.status.success(), "{}", r.text);
    let now: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap();
    assert!(now["startup"]["rows"].as_array().unwrap().is_empty());
}

#[test]
fn report_writes_nothing_into_a_directory_that_is_not_a_results_directory() {
    let base = tempfile::tempdir().unwrap();
    let plain = base.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("notes.txt"), b"mine").unwrap();
    let r = hostd(&["report", p(&plain)]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(
        r.text.contains(&format!("{} is not a results directory", plain.display())),
        "{}",
        r.text
    );
    let left: Vec<_> = std::fs::read_dir(&plain).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["notes.txt"], "report wrote into a plain directory");
    let r = hostd(&["report", p(&plain.join("notes.txt"))]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(r.text.contains("notes.txt is not a directory"), "{}", r.text);
}

#[test]
fn report_on_a_missing_or_read_only_directory_names_it() {
    let base = tempfile::tempdir().unwrap();
    let missing = base.path().join("gone");
    let r = hostd(&["report", p(&missing)]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(
        r.text.contains(&format!("results directory {} does not exist", missing.display())),
        "{}",
        r.text
    );

    let d = results_dir(base.path(), "ro", &good_samples());
    let r = if is_root() {
        // Root ignores permission bits: a read-only bind mount, in a mount namespace of its
        // own so nothing outlives the test.
        let script = "mount -o bind,ro \"$1\" \"$1\" && exec \"$0\" report \"$1\"";
        let argv: Vec<&OsStr> =
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, HOSTD, p(&d)]
                .into_iter()
                .map(OsStr::new)
                .collect();
        run_within(Duration::from_secs(30), &argv, &[])
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555)).unwrap();
        hostd(&["report", p(&d)])
    };
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    let says = if is_root() { "Read-only file system" } else { "Permission denied" };
    assert!(
        r.text.contains(&format!("writing {}", d.join("report.json").display()))
            && r.text.contains(says),
        "{}",
        r.text
    );
    assert!(!d.join("report.json").exists());
}

// ---- Garbage in: impossible samples counted, not averaged; compare on bad dirs (item 9) ----

#[test]
fn impossible_samples_are_left_out_and_counted_in_the_report() {
    let base = tempfile::tempdir().unwrap();
    let mut samples = good_samples();
    let startup = |n: usize, ready: &str| {
        format!("{{\"record\":\"startup\",\"backend\":\"native\",\"n\":{n},\"mode\":\"hot\",\"index\":0,\"ready_s\":{ready},\"own_s\":0.01,\"guest_boot_s\":null,\"guest_kernel_s\":null}}\n")
    };
    let bench = |value: &str, unit: &str, elapsed: &str| {
        format!("{{\"record\":\"bench\",\"backend\":\"native\",\"test\":\"overhead\",\"resource\":\"cpu\",\"n\":1,\"rep\":9,\"guest\":0,\"instance\":0,\"value\":{value},\"unit\":\"{unit}\",\"elapsed_s\":{elapsed},\"params\":\"rounds=300000\"}}\n")
    };
    for l in [
        startup(1, "-1000000000.0"),
        startup(2, "1e308"),
        bench("1e12", "MB/s", "1.0"),
        bench("0.5", "s", "0.0"),
        bench("-3", "s", "-3"),
    ] {
        samples.extend_from_slice(l.as_bytes());
    }
    let d = results_dir(base.path(), "run", &samples);
    let r = hostd(&["report", p(&d)]);
    assert!(r.status.success(), "{}", r.text);
    assert!(r.text.contains("5 record(s) left out as outside physical sense"), "{}", r.text);
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap();
    assert_eq!(rep["implausible_records"], 5);
    let lines: Vec<u64> =
        rep["rejected"].as_array().unwrap().iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [10, 11, 12, 13, 14]);
    assert!(
        rep["rejected"][1]["why"].as_str().unwrap().contains("ready_s = 1e308 s"),
        "{}",
        rep["rejected"]
    );
    // The good samples' figures, untouched by the bad ones.
    let rows = rep["startup"]["rows"].as_array().unwrap();
    assert_eq!(
        (rows[0]["t_startup_s"].as_f64(), rows[1]["t_startup_s"].as_f64()),
        (Some(0.03), Some(0.04))
    );
    assert_eq!(rep["overhead"]["native/cpu"][0]["value"]["samples"], 3);
    let html = std::fs::read_to_string(d.join("index.html")).unwrap();
    assert!(
        html.contains("5 record(s) in samples.jsonl left out as outside physical sense"),
        "{html}"
    );
    assert!(html.contains("line 10: ready_s = -1000000000 s"), "{html}");
    for f in ["index.html", "report.csv"] {
        let t = std::fs::read_to_string(d.join(f)).unwrap();
        assert!(
            !t.contains("NaN") && !t.contains("inf") && !t.contains("-1000000000 s<"),
            "{f} shows an impossible figure"
        );
    }
}

#[test]
fn compare_on_missing_or_unrelated_directories_is_an_error_naming_them() {
    let base = tempfile::tempdir().unwrap();
    let good = results_dir(base.path(), "good", &good_samples());
    let missing = base.path().join("missing");
    let unrelated = base.path().join("unrelated");
    std::fs::create_dir(&unrelated).unwrap();
    for (a, b, says) in [
        (&good, &missing, format!("results directory {} does not exist", missing.display())),
        (&missing, &good, format!("results directory {} does not exist", missing.display())),
        (&unrelated, &good, format!("{} is not a results directory", unrelated.display())),
    ] {
        let r = hostd(&["compare", p(a), p(b)]);
        assert_eq!(r.status.code(), Some(1), "{}", r.text);
        assert!(r.text.contains(&says), "{}", r.text);
    }
    assert_eq!(std::fs::read_dir(&unrelated).unwrap().count(), 0);
    let r = hostd(&["compare", p(&good), p(&good)]);
    assert!(r.status.success(), "{}", r.text);
    assert!(
        r.text.contains("startup native n=1 hot T_startup") && r.text.contains("1.000"),
        "{}",
        r.text
    );
}

// ---- `hostd run`: no debris, no collisions (item 6) ----

#[test]
fn a_run_that_fails_after_validation_leaves_no_directory() {
    let _s = serial();
    let base = tempfile::tempdir().unwrap();
    let res = base.path().join("results");
    let camp = base.path().join("tiny.toml");
    std::fs::write(&camp, tiny_campaign("tiny")).unwrap();
    // Failing before anything runs: no agent.
    let r = hostd(&[
        "run",
        p(&camp),
        "--agent",
        p(&base.path().join("no-agent")),
        "--results",
        p(&res),
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(r.text.contains("no-agent does not exist"), "{}", r.text);
    assert!(
        !res.exists() || std::fs::read_dir(&res).unwrap().count() == 0,
        "left: {:?}",
        std::fs::read_dir(&res).map(|d| d.count())
    );
    if !is_root() {
        return skip("failing a run after its directory is made needs root (run state, cgroups)");
    }
    // Failing after its directory is made, before any sample: a disk benchmark without the
    // data disk image (an empty image store).
    std::fs::write(
        &camp,
        tiny_campaign("tiny").replace("resources = [\"cpu\"]", "resources = [\"disk\"]"),
    )
    .unwrap();
    let empty = base.path().join("no-images");
    std::fs::create_dir(&empty).unwrap();
    let agent = agent();
    let args: Vec<&OsStr> = ["run", p(&camp), "--agent", p(&agent), "--results", p(&res)]
        .into_iter()
        .map(OsStr::new)
        .collect();
    let r = hostd_env(Duration::from_secs(60), &args, &[("VIRTBENCH_IMAGES", empty.as_os_str())]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(
        r.text.contains("the disk benchmark needs the data disk image")
            && r.text.contains("the run recorded nothing"),
        "{}",
        r.text
    );
    let left: Vec<_> = std::fs::read_dir(&res).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn two_runs_started_in_the_same_second_get_a_directory_each() {
    let _s = serial();
    if !is_root() {
        return skip("campaigns need root (cgroups, namespaces)");
    }
    let base = tempfile::tempdir().unwrap();
    let res = base.path().join("results");
    let camp = base.path().join("tiny.toml");
    std::fs::write(&camp, tiny_campaign("tiny")).unwrap();
    let agent = agent();
    let runs: Vec<Run> = (0..2)
        .map(|_| {
            let (camp, res, agent) = (camp.clone(), res.clone(), agent.clone());
            std::thread::spawn(move || {
                let args: Vec<&OsStr> =
                    ["run", p(&camp), "--agent", p(&agent), "--results", p(&res)]
                        .into_iter()
                        .map(OsStr::new)
                        .collect();
                hostd_env(Duration::from_secs(180), &args, &[])
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let mut dirs = Vec::new();
    for r in &runs {
        assert!(r.status.success(), "{}", r.text);
        let line = r
            .text
            .lines()
            .find(|l| l.starts_with("hostd: campaign tiny → "))
            .unwrap_or_else(|| panic!("{}", r.text));
        dirs.push(PathBuf::from(line.trim_start_matches("hostd: campaign tiny → ")));
    }
    assert_ne!(dirs[0], dirs[1]);
    let stamp = |d: &Path| d.file_name().unwrap().to_string_lossy()[..19].to_string();
    println!(
        "{} and {} (same second: {})",
        dirs[0].display(),
        dirs[1].display(),
        stamp(&dirs[0]) == stamp(&dirs[1])
    );
    let mut found: Vec<PathBuf> =
        std::fs::read_dir(&res).unwrap().map(|e| e.unwrap().path()).collect();
    found.sort();
    dirs.sort();
    assert_eq!(found, dirs, "exactly the two runs' directories, no pending one");
    for d in &dirs {
        let rep: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap();
        assert_eq!(rep["startup"]["rows"][0]["ready"], 1, "{}", d.display());
        assert!(d.join("campaign.toml").is_file());
    }
}

#[test]
fn resume_with_an_invalid_stored_campaign_names_the_file() {
    let base = tempfile::tempdir().unwrap();
    let d = results_dir(base.path(), "run", &good_samples());
    std::fs::write(d.join("campaign.toml"), "name = \"no spaces allowed\"\n").unwrap();
    let r = hostd(&["run", "--resume", p(&d)]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(
        r.text.contains(&format!("{}: field `name`", d.join("campaign.toml").display())),
        "{}",
        r.text
    );
    std::fs::remove_file(d.join("campaign.toml")).unwrap();
    let r = hostd(&["run", "--resume", p(&d)]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    assert!(
        r.text.contains(&format!(
            "{} is not a campaign results directory: it has no campaign.toml",
            d.display()
        )),
        "{}",
        r.text
    );
    let r = hostd(&["run", "--resume", p(&base.path().join("gone"))]);
    assert!(r.text.contains("gone does not exist"), "{}", r.text);
}

// ---- Conventions: exit codes that say whether work failed; warnings that print (issue 14) ----

/// A boot in which the guest never comes up finished with failures: exit 3, saying which.
#[test]
fn a_boot_whose_guest_does_not_come_up_exits_3() {
    if !is_root() {
        return skip("booting a native guest needs root (cgroups)");
    }
    let dir = tempfile::tempdir().unwrap();
    let args =
        ["boot", "--backend", "native", "-n", "1", "--modes", "hot", "--agent", "/bin/false"];
    let a: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--settle", "0", "--floor-reps", "0", "--results", p(dir.path())])
        .collect();
    let r = hostd_env(Duration::from_secs(120), &a.iter().map(OsStr::new).collect::<Vec<_>>(), &[]);
    assert_eq!(r.status.code(), Some(3), "{}", r.text);
    assert!(r.text.contains("finished with failures: n=1 hot: 0 of 1 ready"), "{}", r.text);
    // An error is 1, not 2: an unknown backend stops before anything runs.
    let r = hostd(&["boot", "--backend", "floppy", "--results", p(dir.path())]);
    assert_eq!(r.status.code(), Some(2), "clap's usage error: {}", r.text);
    let r = hostd(&["compare", "/nonexistent/a", "/nonexistent/b"]);
    assert_eq!(r.status.code(), Some(1), "{}", r.text);
    let help = hostd(&["--help"]);
    for part in [
        "Exit status: 0 every step done; 1 stopped by an error",
        "2 bad command line; 3 finished, but some",
    ] {
        assert!(help.text.contains(part), "{part:?} not in {}", help.text);
    }
}

/// tracing's warnings reach stderr (default level warn; RUST_LOG and -v/-q choose another).
#[test]
fn warnings_are_printed_unless_quieted() {
    let base = tempfile::tempdir().unwrap();
    let mut samples = good_samples();
    samples.extend_from_slice(b"{\"record\":\"startup\",\"backend\":\"native\",\"n\":1,\"mode\":\"hot\",\"index\":0,\"ready_s\":-5.0,\"own_s\":0.01,\"guest_boot_s\":null,\"guest_kernel_s\":null}\n");
    let d = results_dir(base.path(), "run", &samples);
    let warning = "sample record(s) outside physical sense left out";
    let dir = p(&d).to_string();
    let report = |extra: &[&str], env: &[(&str, &OsStr)]| {
        let mut v: Vec<&OsStr> = extra.iter().map(|s| OsStr::new(*s)).collect();
        v.extend(["report", "--force", dir.as_str()].into_iter().map(OsStr::new));
        hostd_env(Duration::from_secs(30), &v, env)
    };
    let r = report(&[], &[("RUST_LOG", OsStr::new(""))]);
    assert!(r.status.success(), "{}", r.text);
    assert!(
        r.text.contains("WARN") && r.text.contains(warning),
        "no warning by default: {}",
        r.text
    );
    let r = report(&["-q"], &[]);
    assert!(r.status.success() && !r.text.contains(warning), "-q: {}", r.text);
    let r = report(&[], &[("RUST_LOG", OsStr::new("error"))]);
    assert!(r.status.success() && !r.text.contains(warning), "RUST_LOG=error: {}", r.text);
    let r = report(&["-v"], &[("RUST_LOG", OsStr::new("error"))]);
    assert!(r.text.contains(warning), "-v wins over RUST_LOG: {}", r.text);
}

/// A teardown that fails is not silent: with RUST_LOG=warn hostd prints tracing's warning
/// naming the guest and what could not be released, and the command fails (exit 1). The
/// failure is forced by mounting a tmpfs inside the guest's work directory while its fleet
/// settles, so removing the directory fails with EBUSY.
#[test]
fn a_forced_teardown_failure_is_warned_about() {
    if !is_root() {
        return skip("booting a native guest needs root (cgroups); mounting needs root");
    }
    let res = tempfile::tempdir().unwrap();
    let child = cli::hostd()
        .args(["boot", "--backend", "native", "-n", "1", "--modes", "hot", "--settle", "15"])
        .args(["--floor-reps", "0", "--results"])
        .arg(res.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The run's scratch directory is the one whose state.json names this hostd.
    let pid = child.id();
    let t0 = Instant::now();
    let mut pinned = Vec::new();
    while pinned.is_empty() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(rd) = std::fs::read_dir(hostd::runstate::RUN_ROOT) else { continue };
        for run in rd.flatten() {
            let state = std::fs::read_to_string(run.path().join("state.json")).unwrap_or_default();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&state) else { continue };
            if v["hostd_pid"] != pid {
                continue;
            }
            // A guest's work directory appears once it is launched: pin a mount in it.
            for g in std::fs::read_dir(run.path()).unwrap().flatten() {
                if g.file_type().unwrap().is_dir() {
                    let m = g.path().join("pinned");
                    if std::fs::create_dir(&m).is_ok()
                        && Command::new("mount")
                            .args(["-t", "tmpfs", "none"])
                            .arg(&m)
                            .status()
                            .unwrap()
                            .success()
                    {
                        pinned.push(m);
                    }
                }
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    for m in &pinned {
        let _ = Command::new("umount").arg(m).status();
        if let Some(run) = m.parent().and_then(|g| g.parent()) {
            let _ = std::fs::remove_dir_all(run);
        }
    }
    assert!(!pinned.is_empty(), "no guest work directory to pin: {text}");
    assert!(
        text.contains("WARN") && text.contains("teardown:"),
        "no warning of the failed teardown: {text}"
    );
    assert_eq!(out.status.code(), Some(1), "a failed teardown is an error: {text}");
}
