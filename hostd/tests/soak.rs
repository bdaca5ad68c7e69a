//! The soak (issue 6): for `VB_SOAK_MINUTES` (default 10), fleets of ns, native and UML
//! guests are booted again and again with faults injected at random (a guest SIGKILLed,
//! SIGSTOPped past a command deadline, panicked, run out of memory, or hostile; a whole
//! `hostd up` daemon SIGKILLed), every failure recorded in a results file, and after every
//! round the host is checked for anything left behind. It ends by printing guests
//! launched, faults injected, leaks found and results lost, and fails unless the last two
//! are 0. On demand only (`scripts/soak --minutes N`); CI runs the single-fault tests.

mod support {
    pub mod cli;
    pub mod fault;
    pub mod skip;
}

use support::cli::hostd;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hostd::backend::{AnyBackend, BackendKind};
use hostd::cgroup::Limits;
use hostd::fleet::{self, FleetConfig};
use hostd::microbench::run_once;
use hostd::results::{read_records, ResultsDir};
use hostd::runstate::RunState;
use hostd::samples::Record;
use nix::sys::signal::Signal;
use support::fault::*;
use vb_protocol::bench::{BenchRequest, BenchSpec};
use vb_protocol::msg::{Command, FaultKind};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[derive(Default)]
struct Tally {
    launched: usize,
    faults: BTreeMap<&'static str, usize>,
    leaks: Vec<String>,
    written: usize,
}

const FAULTS: [&str; 7] =
    ["sigkill", "sigstop", "panic", "oom", "hostile", "hostd-sigkill", "none"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with scripts/soak --minutes N"]
async fn soak() {
    assert!(is_root(), "the soak needs root");
    let minutes: f64 =
        std::env::var("VB_SOAK_MINUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(10.0);
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1;
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let images = hostd::images::resolve(None).unwrap();
    let evil_modes = [
        "huge-frame",
        "bad-crc",
        "bad-json",
        "truncated",
        "wrong-id",
        "flood-channel",
        "big-frames",
        "silent",
        "late",
    ];
    let mut results = ResultsDir::create(dir.path(), "results").unwrap();
    let mut t = Tally::default();
    let end = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let (fds0, rss0) = (fd_count(), rss_kib());
    let mut rounds = 0;
    println!("soak for {minutes} min, seed {seed}");
    while Instant::now() < end {
        rounds += 1;
        let fault = FAULTS[rng.below(FAULTS.len())];
        *t.faults.entry(fault).or_default() += 1;
        let run = RunState::create_in(dir.path(), "soak", None).unwrap();
        let _litter = Litter(run.run.clone());
        let n = 2 + rng.below(6);
        let (backend, kind) = match fault {
            "hostile" => {
                let mode = evil_modes[rng.below(evil_modes.len())];
                (
                    AnyBackend::new(
                        BackendKind::Native,
                        &native_images(evil_wrapper(dir.path(), mode)),
                        &Default::default(),
                    ),
                    BackendKind::Native,
                )
            }
            "panic" | "sigkill" if rng.below(3) == 0 => {
                (AnyBackend::new(BackendKind::Uml, &images, &Default::default()), BackendKind::Uml)
            }
            _ => (AnyBackend::new(BackendKind::Ns, &images, &Default::default()), BackendKind::Ns),
        };
        if fault == "hostd-sigkill" {
            t.launched += n;
            hostd_sigkill(dir.path(), n, &mut t);
            continue;
        }
        let limits = if fault == "oom" {
            Limits { memory_bytes: Some(48 << 20), ..Default::default() }
        } else {
            Limits::default()
        };
        let cfg = FleetConfig {
            n,
            limits,
            boot_timeout: Duration::from_secs(if fault == "hostile" { 3 } else { 60 }),
            ..Default::default()
        };
        let mut f = fleet::start(&backend, &run, &cfg, |_| {}).await.unwrap();
        t.launched += n;
        if let Some(g) = f.guests.first() {
            let pid = g.process.pid();
            match fault {
                "sigkill" => signal(pid, Signal::SIGKILL),
                "sigstop" => {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        Signal::SIGSTOP,
                    );
                    let _ = g.conn.request(Command::Ping, Duration::from_millis(300)).await;
                }
                "panic" => {
                    let _ = g
                        .conn
                        .request(Command::Fault { kind: FaultKind::Panic }, Duration::from_secs(10))
                        .await;
                }
                "oom" => {
                    let req = BenchRequest {
                        spec: BenchSpec::Memory { n: 2048, passes: 1 },
                        instances: 1,
                        start_at_ns: None,
                    };
                    let _ = run_once(&g.conn, &req, Duration::from_secs(60)).await;
                }
                _ => {
                    let _ = g.conn.request(Command::Ping, Duration::from_millis(500)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Boot failures and the guests taken out now: prune adds these to `failures`.
        f.prune(&backend).await;
        let lost = f.failures.clone();
        for l in &lost {
            results
                .append(&Record::GuestLost {
                    backend: kind,
                    step: format!("soak {rounds} {fault}"),
                    failure: l.clone(),
                })
                .unwrap();
            t.written += 1;
        }
        let teardown = f.teardown(&backend, Duration::from_secs(5)).await;
        for l in teardown.failed {
            results
                .append(&Record::GuestLost {
                    backend: kind,
                    step: format!("soak {rounds} teardown"),
                    failure: l,
                })
                .unwrap();
            t.written += 1;
        }
        check_left(&run.run, &mut t).await;
        run.finish();
        if rounds % 10 == 0 {
            println!(
                "round {rounds}: {} guests, faults {:?}, fds {} (start {fds0}), RSS {} KiB (start {rss0})",
                t.launched,
                t.faults,
                fd_count(),
                rss_kib()
            );
        }
    }
    let (recs, bad) = read_records::<Record>(&results.path).unwrap();
    let lost = t.written.saturating_sub(recs.len()) + bad;
    let fds_grew = fd_count().saturating_sub(fds0);
    if fds_grew > 0 {
        t.leaks.push(format!("{fds_grew} descriptors"));
    }
    println!("guests launched: {}", t.launched);
    println!(
        "faults injected: {} {:?}",
        t.faults.iter().filter(|(k, _)| **k != "none").map(|(_, v)| v).sum::<usize>(),
        t.faults
    );
    println!("leaks found: {} {:?}", t.leaks.len(), t.leaks);
    println!("results lost: {lost} (of {} failure records written)", t.written);
    println!("hostd-side RSS: {rss0} KiB at the start, {} KiB at the end", rss_kib());
    assert!(t.leaks.is_empty() && lost == 0);
}

/// Anything of `run` still on the host a moment after its teardown is a leak.
async fn check_left(run: &str, t: &mut Tally) {
    for _ in 0..40 {
        if guest_cgroups_of(run).is_empty()
            && zombie_children().is_empty()
            && netns_of(run).len() <= 1
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.leaks.push(format!(
        "run {run}: cgroups {:?}, zombies {:?}, netns {:?}",
        guest_cgroups_of(run),
        zombie_children(),
        netns_of(run)
    ));
}

/// A `hostd up` daemon of `n` ns guests, SIGKILLed; the next hostd must leave nothing.
fn hostd_sigkill(dir: &std::path::Path, n: usize, t: &mut Tally) {
    let name = format!("soak{}", std::process::id());
    let file = dir.join("fleet.toml");
    std::fs::write(&file, format!("name = \"{name}\"\nbackend = \"ns\"\nguests = {n}\n")).unwrap();
    let out = hostd().arg("up").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let link = std::path::Path::new("/run/virtbench/fleets").join(&name);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(link.join("state.json")).unwrap()).unwrap();
    let run = state["run"].as_str().unwrap().to_string();
    signal(state["hostd_pid"].as_u64().unwrap() as u32, Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(100));
    for c in hostd::runstate::reap_orphans() {
        if !c.errors.is_empty() {
            t.leaks.push(format!("reaping {c}"));
        }
    }
    if !guest_cgroups_of(&run).is_empty()
        || !netns_of(&run).is_empty()
        || std::path::Path::new("/run/virtbench").join(&run).exists()
    {
        t.leaks.push(format!("killed hostd's run {run} not fully reaped"));
    }
}
