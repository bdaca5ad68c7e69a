//! Network paths and synchronised starts, end to end: native guests on a veth of their own
//! on the fleet bridge (the guests' path) and on loopback (the second reference), ns guests
//! sharing one stack (the Vserver-like mode), each sample labelled with its path and MTU,
//! and concurrent runs started on one instant with their skew and overlap recorded. Needs
//! root (namespaces, veths, cgroups) and the static agent (`scripts/build-agent`); only
//! loopback and addresses inside the namespaces these tests make are used.

mod support {
    pub mod skip;
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use hostd::backend::{AnyBackend, BackendKind, Images};
use hostd::fleet::{self, FleetConfig};
use hostd::netlab::{NetMode, NetPath};
use hostd::peer::Peer;
use hostd::runstate::RunState;
use hostd::suite::{isolation, linearity, BenchSample, StepPlan, Targets, Workloads};
use vb_protocol::bench::Resource;

const TIMEOUT: Duration = Duration::from_secs(60);

fn root_or_skip(backend: &str, test: &str) -> bool {
    support::skip::unless_root(
        Some(backend),
        &format!("{test} needs root (network namespaces, veths, cgroups)"),
    )
}

fn agent() -> PathBuf {
    hostd::images::find_agent(None)
        .expect("the static agent must be built first: run scripts/build-agent")
}

fn images(rootfs: Option<PathBuf>) -> Images {
    Images { agent: agent(), rootfs, ..Default::default() }
}

fn make_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["sbin", "dev", "proc", "sys", "tmp", "etc", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(agent(), root.join("sbin/guest-agent")).unwrap();
    root
}

fn netns_list() -> String {
    String::from_utf8_lossy(
        &std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout,
    )
    .into_owned()
}

fn workloads() -> Workloads {
    Workloads { net_duration_ms: 200, cpu_rounds: 2_000_000, ..Default::default() }
}

/// Boots `n` guests of `kind` in `mode`, runs the network linearity test (all guests
/// streaming to the peer at once) and, for two guests, the CPU isolation test; returns the
/// samples, after tearing everything down.
async fn measure(
    images: &Images,
    kind: BackendKind,
    mode: NetMode,
    n: usize,
) -> (String, Vec<BenchSample>, Vec<BenchSample>) {
    let run = RunState::create("netsync-test", None).unwrap();
    let backend = AnyBackend::new(kind, images, &Default::default());
    let cfg = FleetConfig { n, net_mode: mode, mem_mib: 64, ..Default::default() };
    let fleet = fleet::start(&backend, &run, &cfg, |_| {}).await.unwrap();
    assert_eq!(fleet.guests.len(), n, "{:?}", fleet.failures);
    let net = fleet.net.clone().unwrap();
    let peer = Peer::start(images, &Default::default(), &run, &net).await.unwrap();
    let addr = if mode == NetMode::Shared {
        (std::net::Ipv4Addr::LOCALHOST, peer.addr.port()).into()
    } else {
        peer.addr
    };
    let targets = Targets { disk: PathBuf::from("/nonexistent"), peer: addr };
    let w = workloads();
    let step = |resource, warmup| StepPlan {
        resource,
        workloads: &w,
        targets: &targets,
        warmup,
        reps: 1,
        timeout: TIMEOUT,
    };
    let net_samples = linearity::measure(&fleet, &step(Resource::Network, 1)).await;
    let cpu = isolation::measure(&fleet, &step(Resource::Cpu, 0)).await;
    if kind == BackendKind::Native && mode == NetMode::Private {
        // Each native guest has a namespace of its own while it runs.
        let list = netns_list();
        assert!(list.contains(&format!("vbn-{}-0", run.run)), "{list}");
    }
    peer.stop().await;
    fleet.teardown(&backend, Duration::from_secs(5)).await;
    run.finish();
    (run.run.clone(), net_samples.unwrap(), cpu.unwrap())
}

fn check_sync(samples: &[BenchSample], instances: usize) {
    for s in samples {
        let y = s.sync.unwrap_or_default();
        println!(
            "{} {:?} {:?} guest {} instance {}: {:.1} {} [{}] skew {:.3} ms ± {:.3}, overlap {:.3}",
            s.backend,
            s.test,
            s.resource,
            s.guest,
            s.instance,
            s.value,
            s.unit,
            s.path_label().unwrap_or_default(),
            y.start_skew_s * 1e3,
            y.clock_err_s * 1e3,
            y.overlap
        );
    }
    assert_eq!(samples.len(), instances);
    for s in samples {
        let y = s.sync.unwrap_or_else(|| panic!("concurrent sample without start sync: {s:?}"));
        // Nobody starts before the instant (the agent waits for it; the host checks it).
        assert!(y.start_skew_s >= -y.clock_err_s - 0.002, "{y:?}");
        assert!((0.0..=1.0).contains(&y.overlap), "{y:?}");
        assert_eq!(y.low_overlap, y.overlap < hostd::suite::sync::MIN_OVERLAP);
    }
    // One run: one overlap for all its instances.
    assert!(samples.windows(2).all(|w| w[0].sync.unwrap().overlap == w[1].sync.unwrap().overlap));
}

#[tokio::test]
async fn native_on_a_veth_of_its_own_and_on_loopback() {
    if !root_or_skip("native", "native network paths") {
        return;
    }
    let images = images(None);
    let (run, veth, cpu) = measure(&images, BackendKind::Native, NetMode::Private, 2).await;
    for s in &veth {
        assert_eq!((s.net_path, s.mtu), (Some(NetPath::VethBridge), Some(1500)), "{s:?}");
        assert!(s.value > 0.0);
    }
    check_sync(&veth, 2);
    // CPU samples carry no path, but their start sync (1 + 2 copies).
    assert!(cpu.iter().all(|s| s.net_path.is_none() && s.mtu.is_none()));
    check_sync(&cpu, 3);
    // The guests' namespaces went with them.
    assert!(!netns_list().contains(&format!("vbn-{run}-")), "{}", netns_list());

    let (_, lo, _) = measure(&images, BackendKind::Native, NetMode::Shared, 2).await;
    for s in &lo {
        assert_eq!((s.net_path, s.mtu), (Some(NetPath::Loopback), Some(65536)), "{s:?}");
    }
    check_sync(&lo, 2);
}

#[tokio::test]
async fn ns_guests_sharing_one_stack() {
    if !root_or_skip("ns", "the ns shared-stack mode") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = images(Some(make_rootfs(dir.path())));
    let (_, shared, _) = measure(&images, BackendKind::Ns, NetMode::Shared, 2).await;
    for s in &shared {
        assert_eq!((s.net_path, s.mtu), (Some(NetPath::HostStack), Some(65536)), "{s:?}");
    }
    check_sync(&shared, 2);
    let (_, private, _) = measure(&images, BackendKind::Ns, NetMode::Private, 2).await;
    for s in &private {
        assert_eq!((s.net_path, s.mtu), (Some(NetPath::VethBridge), Some(1500)), "{s:?}");
    }
}

#[tokio::test]
async fn a_kernel_of_its_own_cannot_share_the_stack() {
    if !root_or_skip("uml", "the shared-stack refusal") {
        return;
    }
    let run = RunState::create("netsync-test", None).unwrap();
    let backend = AnyBackend::new(BackendKind::Uml, &images(None), &Default::default());
    let cfg = FleetConfig { n: 1, net_mode: NetMode::Shared, ..Default::default() };
    let e = fleet::start(&backend, &run, &cfg, |_| {}).await.err().expect("refused");
    assert!(e.to_string().contains("cannot share the fleet's network stack"), "{e}");
    run.finish();
}
