//! `hostd worker` alone, with this test as its coordinator on loopback (no Slurm): a worker
//! whose link drops while its slice is launching stops launching, tears down what started
//! and leaves nothing behind. Needs root and the ns images (agent, rootfs).

mod support {
    pub mod cli;
    pub mod fault;
    pub mod skip;
}

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use hostd::backend::BackendKind;
use hostd::multihost::plan::SlicePart;
use hostd::multihost::proto::{NetPlan, Slice, SliceFleet, ToWorker};
use support::fault::*;

/// Guests in the slice, and how many launch at once: launching all of them takes seconds.
const GUESTS: usize = 200;
const PARALLELISM: usize = 2;

/// The worker's run (`/run/virtbench/<run>/state.json` naming its pid), once it made one.
fn run_of(pid: u32) -> Option<String> {
    for e in std::fs::read_dir(hostd::runstate::RUN_ROOT).ok()?.flatten() {
        let Ok(state) = std::fs::read(e.path().join("state.json")) else { continue };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&state) else { continue };
        if v["hostd_pid"] == pid {
            return v["run"].as_str().map(str::to_string);
        }
    }
    None
}

fn slice() -> ToWorker {
    let part = SlicePart {
        group: "ns".into(),
        backend: BackendKind::Ns,
        first: 0,
        count: GUESTS,
        mem_mib: 64,
        vcpus: 1,
        system: None,
    };
    // A one-host fleet network over loopback: its namespace, bridge, VXLAN and 200 links
    // must go too. The VNI is this process's, so that tests running beside it differ.
    let net = NetPlan { slot: 0, hosts: 1, vni: 1 + std::process::id() % 0xff_fff0, peers: vec![] };
    let t0_unix_ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64;
    ToWorker::Slice(Slice {
        parts: vec![part],
        fleet: SliceFleet {
            parallelism: PARALLELISM,
            boot_timeout_s: 60,
            cold: false,
            net: Some(net),
            limits: Default::default(),
            topology: None,
        },
        t0_unix_ns,
    })
}

/// Waits for `child` to exit within `within`: its stderr.
fn wait_exit(mut child: Child, within: Duration) -> String {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the worker did not exit within {within:?} of its link's loss");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn a_worker_whose_link_drops_while_launching_stops_and_leaves_nothing() {
    if !is_root() {
        return skip("hostd worker's ns slice needs root (namespaces, cgroups, veths)");
    }
    match hostd::images::resolve(None) {
        Ok(i) if i.rootfs.is_some() => {}
        _ => return skip("the ns backend needs the agent and rootfs images (imagegen build)"),
    }
    let _serial = support::cli::serial();
    let _reap = support::cli::reap_lock();
    let mounts = mountinfo();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap().to_string();
    let child = support::cli::hostd()
        .args(["worker", "--connect", &at, "--backend", "ns", "--lost-after", "60"])
        .env("VIRTBENCH_WORKER_TOKEN", "t".repeat(64))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (sock, _) = listener.accept().unwrap();
    let mut hello = String::new();
    BufReader::new(sock.try_clone().unwrap()).read_line(&mut hello).unwrap();
    assert!(hello.contains(r#""msg":"hello""#), "not a hello: {hello:.300}");
    let mut w: &TcpStream = &sock;
    w.write_all(format!("{}\n", serde_json::to_string(&slice()).unwrap()).as_bytes()).unwrap();

    // Some guests launched, far from all of them: the link drops.
    let start = Instant::now();
    let run = loop {
        if let Some(run) = run_of(pid).filter(|r| guest_cgroups_of(r).len() >= 20) {
            break run;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the worker launched no guest");
        std::thread::sleep(Duration::from_millis(20));
    };
    let seen = guest_cgroups_of(&run).len();
    assert!(seen < GUESTS / 2, "{seen} guests already launching: the test came too late");
    sock.shutdown(std::net::Shutdown::Both).unwrap();
    drop(sock);
    let dropped = Instant::now();

    let err = wait_exit(child, Duration::from_secs(60));
    let took = dropped.elapsed();
    let line = err
        .lines()
        .find(|l| l.contains("stopped launching (the coordinator's link"))
        .unwrap_or_else(|| panic!("the worker did not stop launching: {err}"));
    let started: usize = line
        .split(": ")
        .last()
        .and_then(|t| t.split(" of ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"));
    assert!(line.contains(&format!(" of {GUESTS} guests had started")), "{line}");
    assert!(started < GUESTS / 2, "{started} of {GUESTS} started before it stopped: {err}");
    assert!(!err.contains("left after teardown"), "{err}");
    eprintln!("link dropped at {seen} launched; {started} had started; worker gone {took:?} later");
    eprintln!("{err}");
    let scratch = std::path::Path::new(hostd::runstate::RUN_ROOT).join(&run);
    assert_left_nothing(&run, || {
        leftovers(&run, &scratch, &mounts, &[], std::slice::from_ref(&scratch))
    });
}
