//! Hostile guests (issue 6, fault 3): the evil agent (recipe `agent-evil`, guest-agent's
//! `evil` feature) sends absurd length prefixes, damaged, malformed and truncated frames,
//! replies with ids never asked, replies after the deadline, and floods its console and
//! its channel. Each such guest is failed alone (a well-behaved neighbour keeps answering),
//! a late reply is never credited to another request, console logs stay within their cap,
//! and hostd's memory stays bounded. Natively, and in UML guests (initramfs-evil). Needs
//! root and the images (scripts/test builds them).

mod support {
    pub mod fault;
    pub mod skip;
}

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hostd::backend::{AnyBackend, Backend, BackendKind, Images, Kernel};
use hostd::console::CONSOLE_CAP;
use hostd::fleet::FailureKind;
use hostd::guest::{boot, RunningGuest};
use support::fault::*;
use vb_protocol::msg::{Command, ReplyBody};

const PING: Duration = Duration::from_secs(2);

async fn pong(g: &RunningGuest) -> bool {
    matches!(g.conn.request(Command::Ping, PING).await, Ok(ReplyBody::Pong { .. }))
}

/// Lets the console-flooding guest `g` write `caps` times the console cap (within `within`),
/// answering pings all along, then checks that what its log kept on disk is within the cap.
async fn assert_flood_capped(g: &RunningGuest, caps: u64, within: Duration, label: &str) {
    let log = g.process.console.as_ref().unwrap();
    let t0 = Instant::now();
    while log.written().0 < caps * CONSOLE_CAP {
        assert!(t0.elapsed() < within, "flood too slow: {:?}", log.written());
        assert!(pong(g).await, "the flooding guest stopped answering");
    }
    let on_disk: u64 =
        log.files().iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    let (written, dropped) = log.written();
    println!("{label}: {written} bytes written, {dropped} rotated away, {on_disk} on disk (cap {CONSOLE_CAP})");
    assert!(on_disk <= CONSOLE_CAP, "{on_disk} bytes of console on disk");
}

/// Boots an evil guest, asks it for a ping, takes it out; returns (failure kind, error).
async fn run_mode(
    backend: &AnyBackend,
    run: &str,
    index: usize,
    dir: &std::path::Path,
) -> (FailureKind, String) {
    let mut g = boot(backend, spec(run, index, dir, None), Duration::from_secs(30)).await.unwrap();
    let gone = Gone {
        paths: vec![g.spec.workdir.clone()],
        cgroups: g.process.cgroup.as_ref().unwrap().dirs.clone(),
        ..Default::default()
    };
    let _ = g.conn.request(Command::Ping, PING).await;
    // Flooders fail on their own schedule; give them a moment to be found out.
    let t0 = Instant::now();
    let trouble = loop {
        if let Some(t) = g.trouble() {
            break t;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "guest {index} misbehaves undetected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let f = g.fail(backend, trouble.0, trouble.1).await;
    gone.assert(&format!("evil guest {index}"));
    (f.kind, f.error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_native_agents_fail_alone_with_bounded_host_memory() {
    if !is_root() {
        return skip("hostile-guest tests need root (cgroups)");
    }
    let dir = tempfile::tempdir().unwrap();
    let run = run_id("hn");
    let _litter = Litter(run.clone());
    let good_backend =
        AnyBackend::new(BackendKind::Native, &native_images(agent()), &Default::default());
    let good = boot(&good_backend, spec(&run, 0, dir.path(), None), Duration::from_secs(10))
        .await
        .unwrap();
    let rss_before = rss_kib();
    let evil = |mode: &str| {
        AnyBackend::new(
            BackendKind::Native,
            &native_images(evil_wrapper(dir.path(), mode)),
            &Default::default(),
        )
    };
    let cases: [(&str, FailureKind, &str); 7] = [
        ("huge-frame", FailureKind::Protocol, "declares 4294967040 payload bytes"),
        ("bad-crc", FailureKind::Protocol, "checksum mismatch"),
        ("bad-json", FailureKind::Protocol, "not a valid message"),
        ("truncated", FailureKind::Protocol, "stream ended inside a frame"),
        ("wrong-id", FailureKind::Timeout, "got no reply within"),
        ("flood-channel", FailureKind::Protocol, "bytes of noise"),
        ("big-frames", FailureKind::Protocol, "replies to no pending request"),
    ];
    for (i, (mode, want, says)) in cases.iter().enumerate() {
        let (kind, error) = run_mode(&evil(mode), &run, i + 1, dir.path()).await;
        println!("{mode:>14}: {kind:?}: {error}");
        assert_eq!(&kind, want, "{mode}: {error}");
        assert!(error.contains(says), "{mode}: {error}");
        assert!(pong(&good).await, "the good guest stopped answering after {mode}");
    }

    // A reply after its request's deadline is stray: the next request gets its own.
    let late = evil("late");
    let mut g =
        boot(&late, spec(&run, 20, dir.path(), None), Duration::from_secs(10)).await.unwrap();
    let e = g.conn.request(Command::Ping, Duration::from_millis(300)).await.unwrap_err();
    assert!(e.to_string().contains("no reply"), "{e}");
    match g.conn.request(Command::Ping, Duration::from_secs(5)).await.unwrap() {
        ReplyBody::Pong { monotonic_ns } => {
            assert_ne!(monotonic_ns, u64::MAX, "the late reply was credited to the next request")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(g.conn.stats.stray_replies.load(Ordering::Relaxed), 1);
    let (kind, error) = g.trouble().expect("a guest that missed a deadline is failed");
    assert_eq!(kind, FailureKind::Timeout);
    let f = g.fail(&late, kind, error).await;
    println!(
        "{:>14}: {:?}: {} (late reply stray, next request answered correctly)",
        "late", f.kind, f.error
    );

    // A console flood: the guest keeps working, its log stays within the cap.
    let flood = evil("flood-console");
    let g = boot(&flood, spec(&run, 21, dir.path(), None), Duration::from_secs(10)).await.unwrap();
    assert_flood_capped(&g, 8, Duration::from_secs(20), " flood-console").await;
    assert!(g.process.console.as_ref().unwrap().tail(200).contains("evil console flood"));
    g.shutdown(&flood, Duration::from_secs(2)).await;

    let rss_after = rss_kib();
    println!("hostd-side RSS: {rss_before} KiB before the hostile guests, {rss_after} KiB after (peak {} KiB)", status_field("VmHWM:"));
    assert!(
        rss_after < rss_before + 64 * 1024,
        "host memory grew by {} KiB",
        rss_after - rss_before
    );
    assert!(pong(&good).await);
    good.shutdown(&good_backend, Duration::from_secs(2)).await;
    assert!(guest_cgroups_of(&run).is_empty(), "{:?}", guest_cgroups_of(&run));
}

/// The same agent as a UML guest's init (initramfs-evil, `vb.evil=MODE` on the kernel
/// command line): a console flood through the VMM stays capped, an absurd frame fails
/// only that guest, an init that never speaks misses its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uml_guests_fail_alone() {
    if !is_root() {
        return skip("hostile-guest tests need root (taps, cgroups)");
    }
    let dir = tempfile::tempdir().unwrap();
    let run = run_id("hu");
    let _litter = Litter(run.clone());
    let base = hostd::images::resolve(None).unwrap();
    let good_backend = AnyBackend::new(BackendKind::Uml, &base, &Default::default());
    let good = boot(&good_backend, spec(&run, 0, dir.path(), None), Duration::from_secs(60))
        .await
        .unwrap();
    let evil = |mode: &str| {
        let k = base.kernel_uml.clone().unwrap();
        let images = Images {
            initramfs: Some(artifact("initramfs-evil", "initramfs")),
            kernel_uml: Some(Kernel { cmdline: format!("{} vb.evil={mode}", k.cmdline), ..k }),
            ..base.clone()
        };
        AnyBackend::new(BackendKind::Uml, &images, &Default::default())
    };
    assert!(evil("mute").probe().await.is_ok(), "a mute init still says hello");

    // Silent: never says hello.
    let t0 = Instant::now();
    let e = boot(&evil("silent"), spec(&run, 1, dir.path(), None), Duration::from_secs(3))
        .await
        .err()
        .unwrap();
    println!("uml silent: {:?} after {:.2} s", e.failure(1).kind, t0.elapsed().as_secs_f64());
    assert_eq!(e.failure(1).kind, FailureKind::Timeout, "{e}");
    assert!(e.failure(1).console_tail.unwrap_or_default().contains("evil-agent: mode Silent"));

    let (kind, error) = run_mode(&evil("huge-frame"), &run, 2, dir.path()).await;
    println!("uml huge-frame: {kind:?}: {error}");
    assert_eq!(kind, FailureKind::Protocol, "{error}");

    let flood = evil("flood-console");
    let g = boot(&flood, spec(&run, 3, dir.path(), None), Duration::from_secs(60)).await.unwrap();
    assert_flood_capped(&g, 4, Duration::from_secs(30), "uml flood-console").await;
    g.shutdown(&flood, Duration::from_secs(5)).await;

    assert!(pong(&good).await, "the good guest stopped answering");
    good.shutdown(&good_backend, Duration::from_secs(5)).await;
    assert!(guest_cgroups_of(&run).is_empty(), "{:?}", guest_cgroups_of(&run));
}
