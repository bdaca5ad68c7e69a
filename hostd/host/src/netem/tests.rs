use std::path::Path;

use super::*;

fn topo(text: &str, n: usize) -> Result<Topology, String> {
    let f: TopologyFile = toml::from_str(text).map_err(|e| e.to_string())?;
    f.resolve(n, Path::new("/nonexistent")).map_err(|e| e.to_string())
}

const TWO_SITES: &str = r#"
link = { rate_mbit = 100 }
[[site]]
name = "a"
guests = 2
[[site]]
name = "b"
guests = 3
link = { delay_ms = 1, jitter_ms = 0.5, distribution = "normal", rate_mbit = 100 }
[matrix]
sites = ["b", "a"]
delay_ms = [[0, 10], [12, 0]]
jitter_ms = [[0, 1], [1, 0]]
rate_mbit = [[0, 50], [40, 0]]
"#;

#[test]
fn hand_made_sites_and_matrix() {
    let t = topo(TWO_SITES, 5).unwrap();
    assert_eq!(t.sites.len(), 2);
    assert_eq!((t.sites[1].first, t.sites[1].count), (2, 3));
    // Rows are in the matrix's order (b, a): a → b is row 1, column 0.
    assert_eq!(t.between(0, 1).delay_ms, 12.0);
    assert_eq!(t.between(1, 0).delay_ms, 10.0);
    assert_eq!(t.between(0, 1).rate_mbit, Some(40.0));
    assert_eq!(t.site_of(4), Some(1));
    assert_eq!(t.site_of(5), None);
    // a's link (0) + a → b (12) + b's link (1).
    assert_eq!(t.one_way_ms(0, 3), Some(13.0));
    assert_eq!(t.one_way_ms(2, 3), Some(2.0));
    assert!(t.describe().contains("a → b: 12ms ±1ms, 40 Mbit/s"), "{}", t.describe());
}

#[test]
fn bad_topologies_are_named() {
    let cases: &[(&str, &str)] = &[
        (
            "[[site]]\nname='a'\nguests=5\n[matrix]\nsites=['a','x']\ndelay_ms=[[0,1],[1,0]]",
            "unknown site \"x\"",
        ),
        (
            "[[site]]\nname='a'\nguests=2\n[[site]]\nname='b'\nguests=3\n[matrix]\nsites=['a','b']\ndelay_ms=[[0,-1],[1,0]]",
            "matrix.delay_ms[0][1] (a → b) = -1: a delay must be ≥ 0",
        ),
        ("link = { delay_ms = -2 }", "link: delay_ms = -2"),
        ("link = { rate_mbit = 0 }", "link: rate_mbit = 0: a rate must be > 0"),
        (
            "[[site]]\nname='a'\nguests=2\n[[site]]\nname='b'\nguests=3\n[matrix]\nsites=['a','b']\ndelay_ms=[[0,1],[1,0]]\nrate_mbit=[[0,0],[5,0]]",
            "matrix.rate_mbit[0][1] (a → b): rate = 0",
        ),
        (
            "[[site]]\nname='a'\nguests=2\n[[site]]\nname='b'\nguests=3\n[matrix]\nsites=['a','b']\ndelay_ms=[[0,1,2],[1,0]]",
            "row 0 has 3 entries for 2 sites: the matrix must be square",
        ),
        (
            "[[site]]\nname='a'\nguests=2\n[[site]]\nname='b'\nguests=3\n[matrix]\nsites=['a','b']\ndelay_ms=[[0,1]]",
            "1 rows for 2 sites",
        ),
        (
            "[[site]]\nname='a'\nguests=2\n[[site]]\nname='b'\nguests=3\n[matrix]\nsites=['a']\ndelay_ms=[[0]]",
            "site \"b\" is missing",
        ),
        (
            "[[site]]\nname='a'\nguests=2\n[[site]]\nname='b'\nguests=3\n[matrix]\nsites=['a','b']\ndelay_ms=[[3,1],[1,0]]",
            "the diagonal must be 0",
        ),
        ("[[site]]\nname='a'\nguests=2\n[[site]]\nname='a'\nguests=3", "site \"a\" is given twice"),
        ("[[site]]\nname='a'\nguests=4", "sites hold 4 guests, the fleet has 5"),
        ("[[site]]\nname='a'\nguests=0", "guests = 0"),
        ("link = { reorder_pct = 5 }", "reorder_pct = 5 needs delay_ms > 0"),
        ("link = { loss_pct = 101 }", "loss_pct = 101: more than 100"),
        ("link = { delay_ms = 1, jitter = 2 }", "unknown field `jitter`"),
        ("[star]\nsites=1\nguests_per_site=5\ndelay_ms=1", "at least 2 sites"),
        ("[star]\nsites=5\nguests_per_site=1\ndelay_ms=-1", "star.delay_ms"),
        ("[star]\nsites=5\nguests_per_site=1\ndelay_ms=1\nrate_mbit=0", "rate = 0"),
        ("matrix_csv = 'x.csv'\n[star]\nsites=5\nguests_per_site=1\ndelay_ms=1", "not several"),
        ("[matrix]\nsites=['a']\ndelay_ms=[[0]]", "[matrix] needs [[site]]"),
    ];
    for (text, want) in cases {
        let e = topo(text, 5).unwrap_err();
        assert!(e.contains(want), "{text:?}: {e:?} lacks {want:?}");
    }
}

#[test]
fn ready_made_star_and_tree() {
    let t = topo("[star]\nsites=3\nguests_per_site=2\ndelay_ms=5\nrate_mbit=10", 6).unwrap();
    assert_eq!(t.sites.len(), 3);
    assert_eq!(t.between(0, 2).delay_ms, 10.0);
    assert_eq!(t.between(1, 1).delay_ms, 0.0);
    assert_eq!(t.one_way_ms(0, 5), Some(10.0));
    let t = topo(
        "[tree]\nsites=2\nclusters_per_site=2\nguests_per_cluster=3\ncluster_delay_ms=0.5\n\
         site_delay_ms=10\ncluster_rate_mbit=1000\nsite_rate_mbit=100",
        12,
    )
    .unwrap();
    assert_eq!(t.sites.len(), 4);
    assert_eq!(t.sites[3].name, "s1c1");
    // Same site, other cluster: up and down the cluster links.
    assert_eq!(t.between(0, 1).delay_ms, 1.0);
    assert_eq!(t.between(0, 1).rate_mbit, Some(1000.0));
    // Other site: also up and down the site links.
    assert_eq!(t.between(0, 2).delay_ms, 21.0);
    assert_eq!(t.between(0, 3).rate_mbit, Some(100.0));
}

#[test]
fn csv_matrix_is_read_and_checked() {
    let dir = std::env::temp_dir().join(format!("vb-netem-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.csv");
    std::fs::write(&good, "# one-way ms\n0, 1.5, 3\n1.5, 0, 4\n3, 4, 0\n").unwrap();
    let f: TopologyFile = toml::from_str("matrix_csv = 'good.csv'").unwrap();
    let t = f.resolve(3, &dir).unwrap();
    assert_eq!(t.sites.len(), 3);
    assert_eq!(t.one_way_ms(1, 2), Some(4.0));
    for (name, text, want) in [
        ("ragged.csv", "0,1,2\n1,0\n2,1,0\n", "row 1 has 2 entries for 3 sites"),
        ("neg.csv", "0,-1\n1,0\n", "row 0, column 1 = -1: a delay must be ≥ 0"),
        ("word.csv", "0,x\n1,0\n", "row 0, column 1: \"x\" is not a number"),
        ("diag.csv", "1,1\n1,0\n", "the diagonal must be 0"),
        ("one.csv", "0\n", "a matrix of at least 2 guests"),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
        let f = TopologyFile { matrix_csv: Some(name.into()), ..Default::default() };
        let e = f.resolve(2, &dir).unwrap_err().to_string();
        assert!(e.contains(want), "{name}: {e:?} lacks {want:?}");
    }
    let f = TopologyFile { matrix_csv: Some("absent.csv".into()), ..Default::default() };
    assert!(f.resolve(2, &dir).unwrap_err().to_string().contains("absent.csv"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cidr_blocks_cover_exactly_a_site() {
    // Guests 0..=5 are 10.211.0.2 ..= 10.211.0.7.
    let b = cidrs(0, 6).unwrap();
    let s: Vec<String> = b.iter().map(|(a, l)| format!("{a}/{l}")).collect();
    assert_eq!(s, ["10.211.0.2/31", "10.211.0.4/30"]);
    assert_eq!(cidrs(3, 1).unwrap(), [(Ipv4Addr::new(10, 211, 0, 5), 32)]);
    assert!(cidrs(0, 0).unwrap().is_empty());
    let total: u64 = cidrs(10, 300).unwrap().iter().map(|(_, l)| 1u64 << (32 - l)).sum();
    assert_eq!(total, 300);
}

#[test]
fn scripts_shape_both_directions_and_classify_on_destination() {
    let t = topo(TWO_SITES, 5).unwrap();
    let (ip, tc) = scripts(&t, &[0, 3]).unwrap();
    assert_eq!(
        ip,
        "link add vbi0 type ifb\nlink set vbi0 up\nlink add vbi3 type ifb\nlink set vbi3 up\n"
    );
    // Guest 0 (site a, rate only): htb both ways, no netem on its own classes.
    assert!(tc.contains("qdisc add dev vbl0 root handle 1: htb default 1\n"), "{tc}");
    assert!(tc.contains("class add dev vbl0 parent 1: classid 1:1 htb rate 100000kbit"), "{tc}");
    assert!(!tc.contains("dev vbl0 parent 1:1 handle 2: netem"), "{tc}");
    assert!(tc.contains("action mirred egress redirect dev vbi0"), "{tc}");
    // Towards site b: min(100, 40) Mbit/s and the matrix's 12 ms ± 1 ms.
    assert!(tc.contains("class add dev vbi0 parent 1:1 classid 1:11 htb rate 40000kbit"), "{tc}");
    assert!(
        tc.contains("qdisc add dev vbi0 parent 1:11 handle 11: netem delay 12000us 1000us"),
        "{tc}"
    );
    // Site b holds guests 2..=4: addresses 10.211.0.4 ..= 10.211.0.6.
    assert!(tc.contains("match ip dst 10.211.0.4/31 flowid 1:11"), "{tc}");
    assert!(tc.contains("match ip dst 10.211.0.6/32 flowid 1:11"), "{tc}");
    // Guest 3 (site b): its own delay on both directions, the matrix to a on top.
    assert!(
        tc.contains("qdisc add dev vbl3 parent 1:1 handle 2: netem delay 1000us 500us distribution normal limit 100000"),
        "{tc}"
    );
    assert!(
        tc.contains("qdisc add dev vbi3 parent 1:2 handle 2: netem delay 1000us 500us"),
        "{tc}"
    );
    // 1 ms + 10 ms, jitters 0.5 and 1 combined.
    assert!(tc.contains("qdisc add dev vbi3 parent 1:10 handle 10: netem delay 11000us 1118us distribution normal"), "{tc}");
    // Unshaped guests get nothing.
    let (ip, tc) = scripts(&Topology::uniform(2, LinkProps::default()), &[0, 1]).unwrap();
    assert!(ip.is_empty() && tc.is_empty(), "{ip}{tc}");
}

#[test]
fn link_props_describe_and_netem_args() {
    let l = LinkProps {
        delay_ms: 10.0,
        jitter_ms: 1.0,
        distribution: Distribution::Pareto,
        rate_mbit: Some(100.0),
        loss_pct: 0.5,
        duplicate_pct: 0.1,
        reorder_pct: 1.0,
    };
    l.check("l").unwrap();
    assert_eq!(
        l.netem_args(None),
        "netem delay 10000us 1000us distribution pareto loss 0.5% duplicate 0.1% reorder 1% limit 100000"
    );
    assert_eq!(
        l.describe(),
        "delay 10ms ±1ms pareto, 100 Mbit/s, loss 0.5%, duplicate 0.1%, reorder 1%"
    );
    assert_eq!(LinkProps::default().describe(), "unshaped");
    assert!(LinkProps { rate_mbit: Some(f64::NAN), ..Default::default() }.check("l").is_err());
}

/// Two namespaces the test makes, joined by a veth pair named like a guest's link (`vbl0`
/// in the "fleet" one, eth0 in the "guest" one): returns (fleet, guest) namespace names.
struct Pair(String, String);

impl Pair {
    fn new(tag: &str) -> Option<Pair> {
        if !nix::unistd::geteuid().is_root() {
            hostd_test_support::skip(None, "network namespaces need root");
            return None;
        }
        let p = Pair(
            format!("vbt-{tag}-f{}", std::process::id()),
            format!("vbt-{tag}-g{}", std::process::id()),
        );
        let ip = |a: &[&str]| crate::netlab::ip(a).unwrap();
        ip(&["netns", "add", &p.0]);
        ip(&["netns", "add", &p.1]);
        ip(&[
            "-n", &p.0, "link", "add", "vbl0", "type", "veth", "peer", "name", "eth0", "netns",
            &p.1,
        ]);
        ip(&["-n", &p.0, "addr", "add", "10.211.0.1/16", "dev", "vbl0"]);
        ip(&["-n", &p.1, "addr", "add", "10.211.0.2/16", "dev", "eth0"]);
        for (n, d) in [(&p.0, "vbl0"), (&p.1, "eth0"), (&p.0, "lo"), (&p.1, "lo")] {
            ip(&["-n", n, "link", "set", d, "up"]);
        }
        Some(p)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = crate::netlab::ip(&["netns", "del", &self.0]);
        let _ = crate::netlab::ip(&["netns", "del", &self.1]);
    }
}

/// Needs root: shaping is applied, shows up in `tc`, is replaced by a second apply, and
/// clear leaves no qdisc, filter or ifb behind.
#[test]
fn apply_replace_and_clear_leave_nothing() {
    let Some(p) = Pair::new("ac") else { return };
    let rate = Topology::uniform(1, LinkProps { rate_mbit: Some(20.0), ..Default::default() });
    apply(&p.0, &rate, &[0]).unwrap();
    let shown = show(&p.0).unwrap();
    assert!(shown.contains("qdisc htb 1: dev vbl0") && shown.contains("dev vbi0"), "{shown}");
    assert!(shown.contains("qdisc ingress ffff: dev vbl0"), "{shown}");
    assert_eq!(guest_indices(&p.0).unwrap(), [0]);
    // Applied again: replaced, not stacked (a second `qdisc add` would fail).
    let rate = Topology::uniform(1, LinkProps { rate_mbit: Some(30.0), ..Default::default() });
    apply(&p.0, &rate, &[0]).unwrap();
    assert!(show(&p.0).unwrap().contains("30Mbit"), "{}", show(&p.0).unwrap());
    clear(&p.0, &[0]).unwrap();
    assert!(leftovers(&p.0, &[0]).unwrap().is_empty());
    let shown = show(&p.0).unwrap();
    assert!(!shown.contains("htb") && !shown.contains("ingress"), "{shown}");
    // Clearing what is already clear is fine.
    clear(&p.0, &[0]).unwrap();
    // Delay needs netem: applied where the kernel has it, refused by name where not. Every
    // netem argument is used, so tc parses them all first (its own parse errors would come
    // before the kernel's "unknown qdisc" and fail this test either way).
    let delay = Topology::uniform(
        1,
        LinkProps {
            delay_ms: 5.0,
            jitter_ms: 1.0,
            distribution: Distribution::Normal,
            rate_mbit: Some(10.0),
            loss_pct: 0.5,
            duplicate_pct: 0.1,
            reorder_pct: 1.0,
        },
    );
    match (netem_supported(&p.0).unwrap(), apply(&p.0, &delay, &[0])) {
        (true, r) => r.unwrap(),
        (false, Err(NetemError::NoNetem)) => {}
        (false, r) => panic!("without netem: {r:?}"),
    }
    clear(&p.0, &[0]).unwrap();
    assert!(leftovers(&p.0, &[0]).unwrap().is_empty());
}

/// Needs root and ping: in a fleet namespace of the test's own with three guest namespaces
/// (sites a = {0, 1}, b = {2}), guest 0's traffic to site b goes through its ifb's class
/// for b, and its traffic within its site through the default class — the kernel classifies
/// on destination as the script says.
#[test]
fn traffic_is_classified_by_destination_site() {
    if !nix::unistd::geteuid().is_root() {
        hostd_test_support::skip(None, "network namespaces need root");
        return;
    }
    if Command::new("ping").arg("-V").output().is_err() {
        hostd_test_support::skip(None, "no ping");
        return;
    }
    let fleet = FleetNet::create(&format!("tcl{}", std::process::id())).unwrap();
    let guests: Vec<String> = (0..3).map(|i| format!("vbt-cl{}-{i}", std::process::id())).collect();
    let r = std::panic::catch_unwind(|| {
        for (i, g) in guests.iter().enumerate() {
            FleetNet::add_netns(g).unwrap();
            fleet.add_veth_to_netns(&netlab::link_name("vbl", i), i, g).unwrap();
            let addr = format!("{}/16", FleetNet::guest_addr(i).unwrap());
            crate::netlab::ip(&["-n", g, "addr", "add", &addr, "dev", "eth0"]).unwrap();
            crate::netlab::ip(&["-n", g, "link", "set", "eth0", "up"]).unwrap();
        }
        let t = topo(
            "[[site]]\nname='a'\nguests=2\n[[site]]\nname='b'\nguests=1\n[matrix]\n\
             sites=['a','b']\ndelay_ms=[[0,0],[0,0]]\nrate_mbit=[[0,10],[10,0]]",
            3,
        )
        .unwrap();
        apply(&fleet.netns, &t, &[0, 1, 2]).unwrap();
        let ping = |to: usize| {
            let out = Command::new("ip")
                .args(["netns", "exec", &guests[0], "ping", "-c", "3", "-i", "0.2", "-W", "2"])
                .arg(FleetNet::guest_addr(to).unwrap().to_string())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        };
        let packets = |class: &str| -> u64 {
            let out =
                run("tc", &["-n", &fleet.netns, "-s", "class", "show", "dev", "vbi0"]).unwrap();
            let mut lines = out.lines();
            while let Some(l) = lines.next() {
                if l.contains(&format!("class htb {class} ")) {
                    let sent = lines.next().unwrap();
                    let w: Vec<&str> = sent.split_whitespace().collect();
                    return w[w.iter().position(|x| *x == "bytes").unwrap() + 1].parse().unwrap();
                }
            }
            panic!("no class {class} in {out}");
        };
        let cross0 = packets("1:11");
        ping(2);
        let (cross1, own1) = (packets("1:11"), packets("1:2"));
        assert!(cross1 >= cross0 + 3, "to site b: class 1:11 {cross0} → {cross1}");
        ping(1);
        let (cross2, own2) = (packets("1:11"), packets("1:2"));
        assert!(own2 >= own1 + 3, "within site a: default class {own1} → {own2}");
        assert_eq!(cross2, cross1, "within-site traffic took the cross-site class");
        clear(&fleet.netns, &[0, 1, 2]).unwrap();
        assert!(leftovers(&fleet.netns, &[0, 1, 2]).unwrap().is_empty());
    });
    for g in &guests {
        let _ = crate::netlab::ip(&["netns", "del", g]);
    }
    fleet.destroy().unwrap();
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}
