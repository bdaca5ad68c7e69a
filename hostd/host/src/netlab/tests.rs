use super::testlab::Hosts;
use super::*;

#[test]
fn a_small_fleet_needs_no_more_room_in_the_kernel() {
    // 10 guests need at most the kernel's defaults: nothing is written.
    // Outside the machine's initial namespace the knobs are not there to read, but the
    // kernel's defaults are enough: nothing is said either.
    assert_eq!(kernel_room(10), KernelRoom::Enough);
}

#[test]
fn mtu_from_ip_output() {
    let l = "5: vbl0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master vbbr0 state UP mode DEFAULT";
    assert_eq!(parse_mtu(l), Some(1500));
    assert_eq!(parse_mtu("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue"), Some(65536));
    assert_eq!(parse_mtu("1: lo: <LOOPBACK> qdisc noqueue"), None);
    assert_eq!(serde_json::to_string(&NetPath::VethBridge).unwrap(), "\"veth+bridge\"");
}

#[test]
fn addresses() {
    assert_eq!(FleetNet::guest_addr(0).unwrap(), Ipv4Addr::new(10, 211, 0, 2));
    assert_eq!(FleetNet::guest_addr(300).unwrap(), Ipv4Addr::new(10, 211, 1, 46));
    assert!(FleetNet::guest_addr(70_000).is_err());
    // The last guest sits just below the hosts' range; the next is refused, saying why.
    let last = FleetNet::guest_addr(MAX_GUEST_INDEX).unwrap();
    assert_eq!(last, Ipv4Addr::new(10, 211, 251, 255));
    let e = FleetNet::guest_addr(MAX_GUEST_INDEX + 1).unwrap_err();
    assert!(matches!(e, NetError::TooMany(_)) && e.to_string().contains("kept for"), "{e}");
}

fn plan(slot: u16, hosts: u16) -> HostPlan {
    Hosts::plan_among(hosts.into(), slot.into(), 4242)
}

#[test]
fn each_host_slot_has_its_own_bridge_address_and_mac_outside_the_guests() {
    // Slot 0 is the fleet on one host, unchanged.
    assert_eq!(host_bridge_addr(0).unwrap(), BRIDGE_ADDR);
    assert_eq!(host_bridge_addr(0).unwrap(), Ipv4Addr::new(10, 211, 0, 1));
    assert_eq!(host_bridge_mac(0).unwrap(), BRIDGE_MAC_BYTES);
    assert_eq!(host_bridge_addr(1).unwrap(), Ipv4Addr::new(10, 211, 252, 1));
    assert_eq!(host_bridge_mac(1).unwrap(), [0x02, 0x76, 0x62, 0, 0, 2]);
    assert_eq!(host_bridge_addr(MAX_HOSTS - 1).unwrap(), Ipv4Addr::new(10, 211, 255, 254));
    assert_eq!(host_bridge_mac(MAX_HOSTS - 1).unwrap(), [0x02, 0x76, 0x62, 0, 0x03, 0xff]);
    assert!(matches!(host_bridge_addr(MAX_HOSTS), Err(NetError::Plan(_))));
    assert!(host_bridge_mac(MAX_HOSTS).is_err());
    let mut addrs = std::collections::HashSet::new();
    let mut macs = std::collections::HashSet::new();
    let last_guest = u32::from(FleetNet::guest_addr(MAX_GUEST_INDEX).unwrap());
    for slot in 0..MAX_HOSTS {
        let (a, m) = (host_bridge_addr(slot).unwrap(), host_bridge_mac(slot).unwrap());
        assert!(addrs.insert(a) && macs.insert(m), "slot {slot}: {a} {m:?} taken");
        // Inside the /16, not its network or broadcast address, no guest's.
        let o = a.octets();
        assert_eq!(&o[..2], &BASE, "{a}");
        assert!(a != Ipv4Addr::new(10, 211, 0, 0) && a != Ipv4Addr::new(10, 211, 255, 255));
        assert!(slot == 0 || u32::from(a) > last_guest, "{a}");
        // Locally administered unicast, not a VM guest's 02:76:62:d3:… form.
        assert!(m[0] & 0b11 == 0b10 && m[3] != 0xd3, "{m:?}");
    }
    assert!(!addrs.contains(&FleetNet::guest_addr(0).unwrap()));
}

#[test]
fn host_plans_are_checked_before_anything_is_made() {
    for slot in 0..3 {
        plan(slot, 3).check().unwrap();
    }
    plan(0, 1).check().unwrap();
    let refused = |p: HostPlan, what: &str| {
        let e = p.check().unwrap_err();
        assert!(matches!(e, NetError::Plan(_)) && e.to_string().contains(what), "{e}");
    };
    refused(HostPlan { slot: 3, ..plan(0, 3) }, "slot 3 of 3");
    refused(plan(0, 0), "0 hosts");
    refused(HostPlan { hosts: MAX_HOSTS + 1, ..plan(0, 2) }, "1024 hosts");
    refused(HostPlan { vni: 0, ..plan(0, 2) }, "VNI 0");
    refused(HostPlan { vni: 1 << 24, ..plan(0, 2) }, "VNI 16777216");
    refused(HostPlan { underlay_dev: "".into(), ..plan(0, 2) }, "interface name");
    refused(HostPlan { underlay_dev: "a/b".into(), ..plan(0, 2) }, "interface name");
    refused(HostPlan { underlay_dev: "x".repeat(16), ..plan(0, 2) }, "interface name");
    refused(HostPlan { local: Ipv4Addr::UNSPECIFIED, ..plan(0, 2) }, "local address");
    let mut p = plan(0, 3);
    p.peers.push(Ipv4Addr::new(10, 250, 0, 99));
    refused(p, "3 peers for 3 hosts");
    let mut p = plan(0, 3);
    p.peers[1] = p.peers[0];
    refused(p, "listed twice");
    let mut p = plan(1, 3);
    p.peers[0] = p.local;
    refused(p, "own address");
    let mut p = plan(0, 2);
    p.peers[0] = Ipv4Addr::new(239, 1, 1, 1);
    refused(p, "not a unicast");
    // It travels to workers as JSON and back unchanged.
    let p = plan(2, 3);
    assert_eq!(serde_json::from_str::<HostPlan>(&serde_json::to_string(&p).unwrap()).unwrap(), p);
    // An older FleetNet record (no slot, no MTU) still reads as a one-host fleet.
    let old: FleetNet = serde_json::from_str(r#"{"netns":"vb-x","mode":"private"}"#).unwrap();
    assert_eq!(old, FleetNet::named("vb-x"));
    assert_eq!(old.bridge_addr().unwrap(), BRIDGE_ADDR);
}

/// Needs root: a namespace with a bridge and a tap comes and goes without a trace.
#[test]
fn namespace_bridge_and_tap() {
    if !nix::unistd::geteuid().is_root() {
        hostd_test_support::skip(None, "network namespaces need root");
        return;
    }
    let net = FleetNet::create(&format!("t{}", std::process::id())).unwrap();
    net.add_tap("vbt0", 0).unwrap();
    let out = Command::new("ip")
        .args(["-n", &net.netns, "-o", "link", "show", "master", BRIDGE])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("vbt0"));
    // The bridge keeps its own MAC when ports join.
    let out =
        Command::new("ip").args(["-n", &net.netns, "-o", "link", "show", BRIDGE]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(BRIDGE_MAC),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(link_mtu(&net.netns, "vbt0").unwrap(), 1500);
    assert_eq!(link_mtu(&net.netns, "lo").unwrap(), 65536);
    let e = net.add_tap("vbt0", 0).unwrap_err();
    assert!(e.to_string().contains("tuntap add vbt0"), "{e}");
    net.destroy().unwrap();
    assert!(!net.path().exists());
    net.destroy().unwrap();
}

/// Needs root: a guest past the root bridge's share goes on a leaf bridge joined to the
/// root, and reaches a guest on the root bridge; past the last leaf is refused.
#[test]
fn the_fleet_namespace_and_bridge_are_made_through_netlink() {
    let hex: Vec<String> = BRIDGE_MAC_BYTES.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex.join(":"), BRIDGE_MAC);
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let net = FleetNet::create(&format!("fb{}", std::process::id())).unwrap();
    let show = |args: &[&str]| {
        let out = Command::new("ip").args(["-n", &net.netns]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (bridge, addr, lo) = (
        show(&["-d", "link", "show", BRIDGE]),
        show(&["-4", "addr", "show", BRIDGE]),
        show(&["link", "show", "lo"]),
    );
    net.destroy().unwrap();
    assert!(
        bridge.contains(BRIDGE_MAC) && bridge.contains("bridge") && bridge.contains("UP"),
        "{bridge}"
    );
    assert!(addr.contains(&format!("{BRIDGE_ADDR}/{PREFIX}")), "{addr}");
    assert!(lo.contains("UP"), "{lo}");
    assert!(!net.path().exists(), "the namespace's file is gone");
    net.destroy().unwrap();
}

#[test]
fn guests_beyond_one_bridge_reach_each_other() {
    if !nix::unistd::geteuid().is_root() {
        hostd_test_support::skip(None, "network namespaces need root");
        return;
    }
    assert_eq!(bridge_of(999), BRIDGE);
    assert_eq!(bridge_of(1000), "vbbr1");
    assert_eq!(bridge_of(2500), "vbbr2");
    let id = std::process::id();
    let net = FleetNet::create(&format!("mb{id}")).unwrap();
    let guests = [(0usize, format!("vbmb{id}a")), (1500, format!("vbmb{id}b"))];
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let r = (|| {
        for (i, g) in &guests {
            FleetNet::add_netns(g)?;
            net.add_veth_to_netns(&link_name("vbl", *i), *i, g)?;
            let addr = format!("{}/{PREFIX}", FleetNet::guest_addr(*i)?);
            ip(&["-n", g, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", g, "link", "set", "eth0", "up"])?;
        }
        Ok::<_, NetError>(())
    })();
    let (_, leaf) = run(&["ip", "-n", &net.netns, "-o", "link", "show", "master", "vbbr1"]);
    let (_, root) = run(&["ip", "-n", &net.netns, "-o", "link", "show", "master", BRIDGE]);
    let far = FleetNet::guest_addr(1500).unwrap().to_string();
    let (pinged, _) =
        run(&["ip", "netns", "exec", &guests[0].1, "ping", "-c", "1", "-W", "5", &far]);
    let too_many = net.add_tap("vbt9", PORTS_PER_BRIDGE * (MAX_LEAF_BRIDGES + 1));
    for (_, g) in &guests {
        let _ = ip(&["netns", "del", g]);
    }
    net.destroy().unwrap();
    r.unwrap();
    assert!(leaf.contains("vbl1500") && leaf.contains("vbjl1"), "{leaf}");
    assert!(root.contains("vbl0") && root.contains("vbj1") && !root.contains("vbl1500"));
    assert!(pinged, "guest 0 on the root bridge did not reach guest 1500 on a leaf");
    assert!(matches!(too_many, Err(NetError::TooMany(_))), "{too_many:?}");
}

/// Needs root: three hosts' fleet networks on one VXLAN segment: each bridge with its
/// slot's MAC, address and the VXLAN's MTU, the VXLAN's socket on the host's underlay,
/// one forwarding entry per peer; the bridges reach each other with full-size frames
/// that may not be fragmented; a plan the kernel refuses leaves nothing behind.
#[test]
fn fleet_networks_of_three_hosts_form_one_segment_over_vxlan() {
    if !hostd_test_support::unless_root(None, "network namespaces need root") {
        return;
    }
    let id = std::process::id();
    let hosts = Hosts::new(&format!("vbvx{id}"), 3);
    let vni = 100_000 + id % 1000;
    // The underlay device is found from the host's address, in the host's namespace.
    assert_eq!(hosts.on(1, || HostPlan::underlay_dev_of(Hosts::addr(1))).unwrap(), "eth0");
    let e = hosts.on(1, || HostPlan::underlay_dev_of(Hosts::addr(2))).unwrap_err();
    assert!(e.to_string().contains("addr show to 10.250.0.13"), "{e}");
    let nets: Vec<FleetNet> = (0..3)
        .map(|i| {
            let plan = hosts.plan(i, vni);
            hosts.on(i, || FleetNet::create_on_host(&format!("vx{id}-{i}"), &plan)).unwrap()
        })
        .collect();
    let show = |ns: &str, args: &[&str]| {
        let out = Command::new(args[0]).args(["-n", ns]).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let r = std::panic::catch_unwind(|| {
        for (i, net) in nets.iter().enumerate() {
            assert_eq!((net.slot, net.mtu), (i as u16, Some(1450)));
            let mac = host_bridge_mac(i as u16).unwrap().map(|b| format!("{b:02x}")).join(":");
            let br = show(&net.netns, &["ip", "-d", "link", "show", BRIDGE]);
            assert!(br.contains(&mac) && br.contains("mtu 1450"), "{br}");
            let a = show(&net.netns, &["ip", "-4", "addr", "show", BRIDGE]);
            assert!(a.contains(&format!("{}/16", net.bridge_addr().unwrap())), "{a}");
            let vx = show(&net.netns, &["ip", "-d", "link", "show", VXLAN_DEV]);
            assert!(vx.contains(&format!("master {BRIDGE}")) && vx.contains(",UP"), "{vx}");
            assert!(vx.contains(&format!("vxlan id {vni} local {}", Hosts::addr(i))), "{vx}");
            assert!(vx.contains("dstport 4789") && vx.contains("nolearning"), "{vx}");
            assert!(vx.contains(&format!("link-netns {}", hosts.names[i])), "{vx}");
            let fdb = show(&net.netns, &["bridge", "fdb", "show", "dev", VXLAN_DEV]);
            for j in (0..3).filter(|&j| j != i) {
                let e = format!("00:00:00:00:00:00 dst {} ", Hosts::addr(j));
                let line = fdb.lines().find(|l| l.starts_with(&e));
                assert!(line.is_some_and(|l| l.ends_with("self permanent")), "host {i}: {fdb}");
            }
            // Nothing of the fleet in the host's own namespace.
            let h = show(&hosts.names[i], &["ip", "-o", "link", "show"]);
            assert!(!h.contains("vxlan") && !h.contains(VXLAN_DEV), "{h}");
            for (j, other) in nets.iter().enumerate().filter(|(j, _)| *j != i) {
                let to = other.bridge_addr().unwrap().to_string();
                // 1422 bytes of payload + 28 of headers: a 1450-byte packet, DF set.
                let out = Command::new("ip")
                    .args(["netns", "exec", &net.netns, "ping", "-c", "1", "-W", "5"])
                    .args(["-M", "do", "-s", "1422", &to])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "host {i} → host {j} ({to}): {out:?}");
            }
        }
    });
    for n in &nets {
        n.destroy().unwrap();
    }
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
    // The kernel refuses a device that is not there: nothing is left.
    let bad = HostPlan { underlay_dev: "nosuchdev".into(), ..hosts.plan(0, vni + 1) };
    let run = format!("vx{id}-bad");
    let e = hosts.on(0, || FleetNet::create_on_host(&run, &bad)).unwrap_err();
    assert!(e.to_string().contains("type vxlan") && e.to_string().contains("nosuchdev"), "{e}");
    assert!(!FleetNet::named(FleetNet::name_of(&run)).path().exists());
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.contains(&format!("vb-vx{id}-")), "{list}");
}
