//! Exhaustion (issue 6, fault 8): a full results disk, a low `ulimit -n`, a memory cgroup
//! limit on the guests. hostd stops cleanly with an error that says what ran out, tears the
//! guests down, and keeps what it had recorded intact. Needs root and the images.

mod support {
    pub mod cli;
    pub mod fault;
    pub mod skip;
}

use support::cli::{hot_boot, native_boot, serial, text};

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use hostd::backend::{AnyBackend, BackendKind};
use hostd::cgroup::Limits;
use hostd::fleet::{self, FailureKind, FleetConfig};
use hostd::microbench::run_once;
use hostd::results::{read_records, ResultsDir};
use hostd::runstate::RunState;
use hostd::samples::Record;
use support::fault::*;
use vb_protocol::bench::{BenchRequest, BenchSpec};
use vb_protocol::msg::{Command as Cmd, ReplyBody};

/// The run id in a results directory's name (`…-boot-<backend>-<run>`).
fn run_of(results: &Path) -> String {
    results.file_name().unwrap().to_string_lossy().rsplit('-').next().unwrap().to_string()
}

/// A size-limited tmpfs, unmounted when dropped.
struct SmallFs(std::path::PathBuf);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_results_disk_stops_hostd_cleanly_and_keeps_whole_records() {
    let _s = serial();
    if !is_root() {
        return skip("the full-disk test mounts a tmpfs (root)");
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=256k"),
    )
    .unwrap();
    let _fs = SmallFs(mnt.clone());
    // Leave a few pages: enough for the directory and the first records, not for all.
    let free = nix::sys::statvfs::statvfs(&mnt).unwrap();
    let avail = free.blocks_available() * free.fragment_size();
    std::fs::write(mnt.join("filler"), vec![b'x'; (avail - 16 * 1024) as usize]).unwrap();
    let out =
        native_boot(&["-n", "1,2,3,4,5,6,7,8,9,10", "--modes", "hot", "--floor-reps", "0"], &mnt);
    let t = text(&out);
    println!("{t}");
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("No space left on device"), "{t}");
    let results = std::fs::read_dir(&mnt)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("a results directory");
    // Every record written is whole; the one that did not fit left nothing.
    let samples = std::fs::read(results.join("samples.jsonl")).unwrap_or_default();
    assert!(samples.is_empty() || samples.ends_with(b"\n"), "a torn record was left");
    let (recs, bad) = read_records::<Record>(&results).unwrap();
    println!("kept {} whole records", recs.len());
    assert!(!recs.is_empty() && bad == 0, "{} records, {bad} unreadable", recs.len());
    let temps: Vec<_> = walk(&results)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "temp files left: {temps:?}");
    // The guests were torn down and the run cleaned.
    let run = run_of(&results);
    assert!(cgroup_dirs_of(&run).is_empty(), "{:?}", cgroup_dirs_of(&run));
    assert!(!Path::new("/run/virtbench").join(&run).exists());
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        }
        out.push(e.path());
    }
    out
}

/// hostd under `ulimit -n LIMIT` (soft and hard).
fn with_nofile(mut c: std::process::Command, limit: u64) -> Output {
    // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            let l = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().unwrap()
}

#[test]
fn a_low_descriptor_limit_is_refused_before_any_guest_starts() {
    let _s = serial();
    if !is_root() {
        return skip("the ulimit test boots ns guests (root)");
    }
    let dir = tempfile::tempdir().unwrap();
    let boot = || {
        let mut c = hot_boot("ns", "40");
        c.arg("--results").arg(dir.path());
        c
    };
    let t0 = Instant::now();
    let out = with_nofile(boot(), 128);
    let t = text(&out);
    println!(
        "ulimit -n 128, 40 ns guests ({:.2} s): {}",
        t0.elapsed().as_secs_f64(),
        t.lines().last().unwrap_or_default()
    );
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("file descriptors") && t.contains("ulimit -n") && t.contains("limit of 128"),
        "{t}"
    );
    let results = std::fs::read_dir(dir.path()).unwrap().flatten().next().unwrap().path();
    let run = run_of(&results);
    assert!(cgroup_dirs_of(&run).is_empty() && netns_of(&run).is_empty());
    assert!(!Path::new("/run/virtbench").join(&run).exists());
    // With room for them, the same guests boot.
    let out = with_nofile(boot(), 1024);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("40/40"), "{}", text(&out));
}

/// Guests in memory-limited cgroups: the one whose benchmark needs more than its limit is
/// killed by the kernel's OOM killer; hostd notices at once, records it as out of memory
/// with words saying so, releases it, and the other guest runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_over_its_memory_limit_is_recorded_and_released() {
    if !is_root() {
        return skip("the memory-limit test boots ns guests (root)");
    }
    let dir = tempfile::tempdir().unwrap();
    let images = hostd::images::resolve(None).unwrap();
    let backend = AnyBackend::new(BackendKind::Ns, &images, &Default::default());
    let run = RunState::create_in(dir.path(), "fault-test", None).unwrap();
    let _litter = Litter(run.run.clone());
    let limits = Limits { memory_bytes: Some(48 << 20), ..Default::default() };
    let cfg = FleetConfig { n: 2, limits, ..Default::default() };
    let mut fleet = fleet::start(&backend, &run, &cfg, |_| {}).await.unwrap();
    assert_eq!(fleet.guests.len(), 2, "{:?}", fleet.failures);
    let cg0 = fleet.guests[0].process.cgroup.as_ref().unwrap().dirs.clone();
    // Three 1024×1024 f64 matrices fit; three 2048×2048 ones (96 MiB) do not.
    let fits = BenchRequest {
        spec: BenchSpec::Memory { n: 1024, passes: 1 },
        instances: 1,
        start_at_ns: None,
    };
    run_once(&fleet.guests[1].conn, &fits, Duration::from_secs(60)).await.unwrap();
    let too_big = BenchRequest {
        spec: BenchSpec::Memory { n: 2048, passes: 1 },
        instances: 1,
        start_at_ns: None,
    };
    let t0 = Instant::now();
    let e = run_once(&fleet.guests[0].conn, &too_big, Duration::from_secs(60)).await.unwrap_err();
    println!("over its limit: {e:#} after {:.2} s", t0.elapsed().as_secs_f64());
    let lost = fleet.prune(&backend).await;
    assert_eq!(lost.len(), 1);
    println!("recorded: {}", lost[0]);
    assert_eq!(lost[0].kind, FailureKind::OutOfMemory, "{}", lost[0]);
    assert!(lost[0].error.contains("OOM killer"), "{}", lost[0]);
    Gone { cgroups: cg0, ..Default::default() }.assert("OOM-killed guest");
    assert!(matches!(
        fleet.guests[0].conn.request(Cmd::Ping, Duration::from_secs(5)).await,
        Ok(ReplyBody::Pong { .. })
    ));
    let mut rd = ResultsDir::create(dir.path(), "results").unwrap();
    rd.append(&Record::GuestLost {
        backend: BackendKind::Ns,
        step: "memory".into(),
        failure: lost[0].clone(),
    })
    .unwrap();
    assert_eq!(read_records::<Record>(&rd.path).unwrap().0.len(), 1);
    fleet.teardown(&backend, Duration::from_secs(5)).await;
    run.finish();
}
