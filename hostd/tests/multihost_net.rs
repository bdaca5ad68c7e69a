//! A fleet across hosts, its network end to end (issue 17): three emulated hosts (network
//! namespaces joined by a bridge in a fabric namespace, 10.250.0.0/24 existing only there),
//! each making its part of one fleet network (`FleetNet::create_on_host`, from a thread
//! inside the host's namespace, so each VXLAN's socket is on that host's underlay) and
//! starting ns guests on it at disjoint global indices (`fleet::start_on`). Every guest
//! exchanges 64 KiB each way with a guest on each other host (`reach::check_to`), an
//! address nobody has is reported unreachable, and after teardown nothing of the fleets is
//! left. Needs root and the images (`VIRTBENCH_IMAGES`, or `imagegen build`).

mod support {
    pub mod skip;
}

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use hostd::backend::{AnyBackend, BackendKind};
use hostd::fleet::{self, Fleet, FleetConfig};
use hostd::netlab::testlab::Hosts;
use hostd::netlab::{self, FleetNet};
use hostd::reach;
use hostd::runstate::RunState;

/// Guests per host.
const PER_HOST: usize = 3;
/// Hosts.
const K: usize = 3;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Host `i`'s part of the fleet network, made from a thread inside its namespace.
fn fleet_net(hosts: &Hosts, i: usize, run: &str, vni: u32) -> Result<FleetNet, netlab::NetError> {
    let plan = hosts.plan(i, vni);
    hosts.on(i, || FleetNet::create_on_host(run, &plan))
}

/// `ip -o link show eth0` inside the network namespace of process `pid`.
fn guest_eth0(pid: u32) -> String {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "ip", "-o", "link", "show", "eth0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_guests_on_three_hosts_reach_a_guest_on_every_other_host_over_vxlan() {
    if !support::skip::unless_root(Some("ns"), "a fleet across hosts needs root (namespaces)") {
        return;
    }
    let images = hostd::images::resolve(None).unwrap();
    let backend = AnyBackend::new(BackendKind::Ns, &images, &Default::default());
    let dir = tempfile::tempdir().unwrap();
    let id = std::process::id();
    let hosts = Hosts::new(&format!("vbmh{id}"), K);
    let vni = 200_000 + id % 1000;
    let runs: Vec<RunState> = (0..K)
        .map(|_| RunState::create_in(dir.path(), "multihost-net-test", None).unwrap())
        .collect();
    let cfg = FleetConfig { n: PER_HOST, mem_mib: 64, ..Default::default() };
    let mut nets = Vec::new();
    let mut fleets: Vec<Fleet> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let net = fleet_net(&hosts, i, &run.run, vni).unwrap();
        nets.push(net.clone());
        let f = fleet::start_on(&backend, run, &cfg, Some(net), PER_HOST * i, |_| {}).await;
        fleets.push(f.unwrap());
    }

    // Everything checked is collected first, asserted after teardown.
    let ready: Vec<usize> = fleets.iter().map(|f| f.guests.len()).collect();
    let indices: Vec<Vec<usize>> =
        fleets.iter().map(|f| f.guests.iter().map(|g| g.spec.index).collect()).collect();
    let mtus: Vec<(u32, String)> = fleets
        .iter()
        .map(|f| {
            let g = &f.guests[0];
            let link = &g.spec.net.as_ref().unwrap().link;
            let host_side = netlab::link_mtu(&f.net.as_ref().unwrap().netns, link).unwrap();
            (host_side, guest_eth0(g.process.pid()))
        })
        .collect();
    let mut served = Vec::new();
    for f in &fleets {
        served.extend(reach::serve(f).await);
    }
    let mut reached = Vec::new();
    for (i, f) in fleets.iter().enumerate() {
        // Each guest to the guest at its place on every other host.
        let targets: Vec<(usize, Ipv4Addr)> = (0..PER_HOST)
            .flat_map(|p| {
                (0..K)
                    .filter(move |&j| j != i)
                    .map(move |j| (p, FleetNet::guest_addr(PER_HOST * j + p).unwrap()))
            })
            .collect();
        reached.push(reach::check_to(f, &targets).await);
    }
    // A guest index no host has: its address answers nobody.
    let nobody = FleetNet::guest_addr(PER_HOST * K + 5).unwrap();
    let missing = reach::check_to(&fleets[0], &[(0, nobody)]).await;
    for f in &fleets {
        reach::unserve(f).await;
    }
    let mut errors = Vec::new();
    for f in fleets {
        errors.extend(f.teardown(&backend, Duration::from_secs(5)).await.errors);
    }

    // What is left: no fleet namespace, nothing of VXLAN in any host's namespace, and the
    // VNI free again on a host (the kernel refuses a second device with a VNI in use, so
    // this shows the first one's device and socket went with its namespace).
    let netns_list = ip(&["netns", "list"]);
    let vxlans: Vec<String> = hosts
        .names
        .iter()
        .map(|h| ip(&["-n", h, "-d", "-o", "link", "show", "type", "vxlan"]))
        .collect();
    let again = RunState::create_in(dir.path(), "multihost-net-test", None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let remade = loop {
        match fleet_net(&hosts, 0, &again.run, vni) {
            Ok(n) => break Ok(n),
            Err(e) if Instant::now() > deadline => break Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    if let Ok(n) = &remade {
        n.destroy().unwrap();
    }
    for n in &nets {
        let _ = n.destroy();
    }
    drop(hosts);

    assert_eq!(ready, vec![PER_HOST; K], "guests ready per host");
    for (i, ix) in indices.iter().enumerate() {
        assert_eq!(ix, &(PER_HOST * i..PER_HOST * (i + 1)).collect::<Vec<_>>());
    }
    for (host_side, eth0) in &mtus {
        assert_eq!(*host_side, 1450, "the guest link carries what the VXLAN does");
        assert!(eth0.contains("mtu 1450"), "the guest's own eth0: {eth0}");
    }
    assert!(served.is_empty(), "{served:?}");
    for (i, r) in reached.iter().enumerate() {
        assert!(r.all(), "host {i}: {}", r.line());
        assert_eq!((r.checked, r.across_bridges), (PER_HOST * (K - 1), PER_HOST * (K - 1)));
    }
    assert_eq!((missing.checked, missing.reached), (1, 0), "{}", missing.line());
    assert!(missing.failures[0].contains(&nobody.to_string()), "{}", missing.line());
    assert!(errors.is_empty(), "teardown: {errors:?}");
    for r in &runs {
        assert!(!netns_list.contains(&FleetNet::name_of(&r.run)), "{netns_list}");
    }
    for (h, v) in hosts_names(id).iter().zip(&vxlans) {
        assert!(v.trim().is_empty(), "VXLAN in host {h}: {v}");
    }
    remade.expect("the same VNI could not be used again on host 0");
    let left = ip(&["netns", "list"]);
    assert!(!left.contains(&format!("vbmh{id}")) && !left.contains(&again.run), "{left}");
}

fn hosts_names(id: u32) -> Vec<String> {
    (0..K).map(|i| format!("vbmh{id}h{i}")).collect()
}
