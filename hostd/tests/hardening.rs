//! Bad files and absurd values (issue 15, hostd's part): every case ends in an error that
//! names the file, field or flag, or in a correct result, within a bounded time (each hostd
//! runs under a watchdog that kills it, so a regression that hangs fails instead), and
//! nothing recorded is lost. Tests that boot guests need root and the images
//! (VIRTBENCH_IMAGES); the others run anywhere.

mod support {
    pub mod fault;
}

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::fault::*;

/// What a hostd run printed and how it ended.
struct Run {
    status: ExitStatus,
    text: String,
    took: Duration,
}

/// Runs hostd with `args`, killing it (and failing the test) if it is still running after
/// `limit`: a hang is a failure, never a stuck test.
fn hostd_within(limit: Duration, args: &[&std::ffi::OsStr]) -> Run {
    let out = tempfile::tempdir().unwrap();
    let (o, e) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hostd"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
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
    let text = format!("{}{}", std::fs::read_to_string(&o).unwrap(), std::fs::read_to_string(&e).unwrap());
    Run { status, text, took: t0.elapsed() }
}

/// hostd with string arguments, 30 s at most.
fn hostd(args: &[&str]) -> Run {
    let a: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    hostd_within(Duration::from_secs(30), &a)
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
        ("-n", "100000", "100000 guests is not in 1..=1000"),
        ("-n", "0", "0 guests is not in 1..=1000"),
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
        std::fs::write(&file, format!("name = \"hard\"\nbackend = \"native\"\nguests = 1\n{extra}")).unwrap();
        let r = hostd(&["up", p(&file)]);
        assert_eq!(r.status.code(), Some(1), "{extra}: {}", r.text);
        assert!(r.text.contains(&format!("field `{field}`")) && r.text.contains("fleet.toml"), "{extra}: {}", r.text);
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
        assert!(r.text.contains(&format!("field `{field}`")) && r.text.contains("c.toml"), "{body}: {}", r.text);
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
    let backend = AnyBackend::new(BackendKind::Native, &native_images(agent()), &Default::default());
    let huge = Duration::from_secs(1 << 63);
    let g = tokio::time::timeout(Duration::from_secs(60), hostd::guest::boot(&backend, spec(&run, 0, dir.path(), None), huge))
        .await
        .expect("booting with a huge deadline hung")
        .expect("booting with a huge deadline failed");
    g.shutdown(&backend, Duration::from_secs(5)).await;
}
