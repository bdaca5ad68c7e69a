//! End to end on the native backend: the real static agent as a host process.
//! Needs the musl agent (`scripts/build-agent`; `.ci/run` builds it first).

mod support {
    pub mod cli;
}

use std::path::PathBuf;
use std::process::Command as Proc;
use std::time::Duration;

use hostd::backend::BackendKind;
use hostd::channel::AgentConn;
use hostd::microbench::{self, BenchName, BenchOptions};
use vb_protocol::bench::{BenchRequest, BenchSpec, Work};
use vb_protocol::msg::{Command, ReplyBody, Role};

fn agent() -> PathBuf {
    hostd::images::find_agent(None)
        .expect("the static agent must be built first: run scripts/build-agent")
}

fn small_opts(workdir: PathBuf) -> BenchOptions {
    BenchOptions {
        backend: BackendKind::Native,
        images: hostd::images::resolve(Some(&agent())).unwrap(),
        backend_opts: Default::default(),
        benches: vec![
            BenchName::Cpu,
            BenchName::Memory,
            BenchName::Disk,
            BenchName::NetStream,
            BenchName::NetRr,
        ],
        reps: 2,
        warmup: 1,
        instances: 2,
        cpu_rounds: 200_000,
        mem_n: 64,
        mem_passes: 3,
        disk_file: None,
        disk_mib: 4,
        disk_block_kib: 64,
        net_duration_ms: 100,
        net_msg_size: 16384,
        rr_size: 1,
        hello_timeout: Duration::from_secs(10),
        bench_timeout: Duration::from_secs(60),
        workdir,
    }
}

/// A hostd that resolves the images checks every blob's hash, reading the store's data disk
/// through the page cache; a disk benchmark evicting that file meanwhile would find pages
/// coming back and refuse to time the read. Tests that start hostd take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn every_benchmark_runs_small_and_is_summarised() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let run =
        microbench::run(&small_opts(dir.path().to_path_buf()), &mut std::io::sink()).await.unwrap();
    assert_eq!(run.guest.role, Role::Process);
    let names: Vec<_> = run.results.iter().map(|r| r.summary.name.as_str()).collect();
    assert_eq!(names, ["cpu", "memory", "disk", "net_stream", "net_rr"]);
    for r in &run.results {
        // 2 counted repetitions × 2 instances, warm-up excluded.
        assert_eq!(r.summary.samples.len(), 4, "{}", r.summary.name);
        assert!(
            r.summary.min > 0.0
                && r.summary.min <= r.summary.mean
                && r.summary.mean <= r.summary.max
        );
    }
    let units: Vec<_> = run.results.iter().map(|r| r.summary.unit.as_str()).collect();
    assert_eq!(units, ["s", "s", "MB/s", "MB/s", "us/transaction"]);
    assert_eq!(run.provenance.artifacts["agent"].len(), 64);
    let json = serde_json::to_value(&run).unwrap();
    for key in ["name", "unit", "samples", "mean", "std_dev", "min", "max"] {
        assert!(json["results"][0].get(key).is_some(), "JSON result lacks {key}");
    }
    let table = microbench::table(&run);
    assert!(table.contains("agent sha256") && table.contains("net_rr"), "{table}");
}

/// The agent's other transports: it connects to a Unix socket and to a TCP port.
#[tokio::test]
async fn agent_over_unix_and_tcp_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let ul = tokio::net::UnixListener::bind(&sock).unwrap();
    let tl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = format!("tcp:{}", tl.local_addr().unwrap());
    let unix = format!("unix:{}", sock.display());
    let mut kids = Vec::new();
    for ctl in [&unix, &tcp] {
        kids.push(
            tokio::process::Command::new(agent())
                .args(["--ctl", ctl])
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    let (u, _) = ul.accept().await.unwrap();
    let (t, _) = tl.accept().await.unwrap();
    let (ur, uw) = u.into_split();
    let (tr, tw) = t.into_split();
    let (uc, uh) = AgentConn::establish(ur, uw, Duration::from_secs(10)).await.unwrap();
    let (tc, th) = AgentConn::establish(tr, tw, Duration::from_secs(10)).await.unwrap();
    assert_eq!(uh.transport, unix);
    assert_eq!(th.transport, tcp);
    for c in [&uc, &tc] {
        assert!(matches!(
            c.request(Command::Ping, Duration::from_secs(5)).await.unwrap(),
            ReplyBody::Pong { .. }
        ));
        let req = BenchRequest {
            spec: BenchSpec::Memory { n: 16, passes: 2 },
            instances: 1,
            start_at_ns: None,
        };
        let rep = microbench::run_once(c, &req, Duration::from_secs(10)).await.unwrap();
        assert!(matches!(rep.instances[0].work, Work::Memory { checked: true, .. }));
        assert_eq!(
            c.request(Command::Poweroff, Duration::from_secs(5)).await.unwrap(),
            ReplyBody::PoweringOff
        );
    }
    for mut k in kids {
        assert!(tokio::time::timeout(Duration::from_secs(5), k.wait())
            .await
            .unwrap()
            .unwrap()
            .success());
    }
}

/// A guest-side failure is reported as the guest's error, and the agent keeps serving.
#[tokio::test]
async fn guest_errors_are_reported_and_the_agent_survives() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts(dir.path().to_path_buf());
    use hostd::backend::{AnyBackend, Backend, GuestSpec};
    let b = AnyBackend::new(BackendKind::Native, &opts.images, &opts.backend_opts);
    let spec = GuestSpec {
        index: 0,
        name: "g".into(),
        run: "t".into(),
        vcpus: 1,
        mem_mib: 64,
        data_disk: None,
        workdir: dir.path().join("g"),
        net: None,
        cgroup: None,
        limits: Default::default(),
        images: None,
    };
    let mut l = b.launch(&spec).await.unwrap();
    let (conn, _) =
        AgentConn::establish(l.reader, l.writer, Duration::from_secs(10)).await.unwrap();
    let req = BenchRequest {
        spec: BenchSpec::Disk {
            path: "/nonexistent/disk".into(),
            block_size: 4096,
            max_bytes: None,
            direct: true,
        },
        instances: 2,
        start_at_ns: None,
    };
    let e = microbench::run_once(&conn, &req, Duration::from_secs(10)).await.unwrap_err();
    assert!(format!("{e:#}").contains("/nonexistent/disk"), "{e:#}");
    assert!(matches!(
        conn.request(Command::Ping, Duration::from_secs(5)).await.unwrap(),
        ReplyBody::Pong { .. }
    ));
    let _ = conn.request(Command::Poweroff, Duration::from_secs(5)).await;
    b.stop(&mut l.guest, Duration::from_secs(5)).await;
}

fn hostd_bin(args: &[&str]) -> (i32, String) {
    let out = support::cli::hostd().args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_arguments_and_unreachable_agents_fail_clearly() {
    let _serial = SERIAL.blocking_lock();
    let (code, err) = hostd_bin(&["bench", "--backend", "vmware"]);
    assert_eq!(code, 2);
    // clap names the value and lists the backends there are.
    assert!(err.contains("invalid value 'vmware'") && err.contains("qemu-microvm"), "{err}");
    let (code, err) = hostd_bin(&["bench", "--reps", "0"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = hostd_bin(&["bench", "--bench", "cpu", "--agent", "/nonexistent/agent"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/agent"), "{err}");
    // A program that never says hello.
    let (code, err) =
        hostd_bin(&["bench", "--bench", "cpu", "--agent", "/bin/true", "--hello-timeout", "5"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("hostd: error: native backend: guest bench0: the guest's process exited before the ready message"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let silent = dir.path().join("silent-agent");
    std::fs::write(&silent, "#!/bin/sh\nexec sleep 30\n").unwrap();
    Proc::new("chmod").arg("755").arg(&silent).status().unwrap();
    let (code, err) = hostd_bin(&[
        "bench",
        "--bench",
        "cpu",
        "--agent",
        silent.to_str().unwrap(),
        "--hello-timeout",
        "1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no ready message within 1s"), "{err}");
}
