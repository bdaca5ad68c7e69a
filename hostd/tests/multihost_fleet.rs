//! Fleet files across hosts (issue 17, docs/multihost.md "Fleet files across hosts"), kept
//! up with `hostd up --engine slurm` over the Slurm lab's 3 emulated hosts:
//! - several `[[group]]`s: each group is split over the hosts as one group is, guests keep
//!   their global indices and addresses, every guest (ns from its namespace, uml through
//!   its own kernel) exchanges data with a guest on each other host, status and exec show
//!   every guest with its group, and `hostd down` leaves nothing on any host;
//! - `[net]`: each host shapes its own guests' links from the one global plan (the qdiscs
//!   and classes checked on every host); with netem in the kernel, a 10 ms link per guest
//!   gives a cross-host ping of at least 40 ms; without it, a delay is refused naming
//!   netem and nothing is left.
//!
//! - `system = NAME`: every host checked to hold the same system image (ext4, tree and
//!   recipe hashes), and every ns guest on every host running the image's tree.
//!
//! Needs root, the Slurm packages (scripts/install-deps) and the images (VIRTBENCH_IMAGES)
//! with the UML kernel.

mod support {
    pub mod cli;
    pub mod skip;
    pub mod system;
    // Shared with tests/multihost.rs, whose boots and results this file does not use.
    #[allow(dead_code)]
    pub mod slurmlab;
}

use std::process::{Command, Output};

use support::slurmlab::*;

/// (guest, group) of a host's guests in `hostd status --json`.
fn guests_of(h: &serde_json::Value) -> Vec<(String, String)> {
    let g = h["guests"].as_array().unwrap();
    g.iter()
        .map(|g| (g["name"].as_str().unwrap().into(), g["group"].as_str().unwrap().into()))
        .collect()
}

#[test]
fn a_fleet_of_ns_and_uml_groups_spans_three_hosts_and_down_leaves_nothing() {
    let Some((_s, lab)) = serial_lab("g") else { return };
    let f = fleet_file(
        "mhgr",
        "[[group]]\nname = \"cts\"\nbackend = \"ns\"\nguests = 4\n\
         [[group]]\nname = \"vms\"\nbackend = \"uml\"\nguests = 2\nmem_mib = 96\n",
    );
    let name = f.name.clone();
    let o = up_across(&lab, &f, &["--reach"]);
    let out = text(&o);
    assert!(o.status.success(), "hostd up --engine slurm: {}\n{out}", o.status);
    // Each group split as one group is (4 = 2 + 1 + 1, 2 = 1 + 1 + 0), global indices kept.
    assert!(out.contains("host n1 (") && out.contains("guests g0–g1 (cts), g4 (vms)"), "{out}");
    assert!(out.contains("guests g2 (cts), g5 (vms)") && out.contains("guests g3 (cts)"), "{out}");
    let hosts = hosts_of(&lab, &name);
    let want: [&[(&str, &str)]; 3] = [
        &[("g0", "cts"), ("g1", "cts"), ("g4", "vms")],
        &[("g2", "cts"), ("g5", "vms")],
        &[("g3", "cts")],
    ];
    let mut runs = Vec::new();
    for (i, (h, want)) in hosts.iter().zip(want).enumerate() {
        assert_eq!(h["hostname"], format!("n{}", i + 1), "{h}");
        assert!(h["lost"].is_null(), "{h}");
        let want: Vec<(String, String)> =
            want.iter().map(|(g, n)| (g.to_string(), n.to_string())).collect();
        assert_eq!(guests_of(h), want, "{h}");
        assert!(states(h).iter().all(|s| s == "ready"), "{h}");
        for g in h["guests"].as_array().unwrap() {
            let backend = if g["group"] == "vms" { "uml" } else { "ns" };
            assert_eq!(g["backend"], backend, "{g}");
            // The address of its global index, as on one machine (10.211.0.2 + index).
            let index = g["index"].as_u64().unwrap();
            assert_eq!(g["addr"], format!("10.211.0.{}", index + 2), "{g}");
        }
        // Every guest (ns and uml alike) exchanged data with a guest on each other host.
        let r = &h["reach"];
        let asked = 2 * want.len() as u64;
        assert_eq!(
            (r["checked"].as_u64(), r["reached"].as_u64()),
            (Some(asked), Some(asked)),
            "{h}"
        );
        assert_eq!(r["across_hosts"].as_u64(), Some(asked), "{h}");
        runs.push(h["run"].as_str().unwrap().to_string());
    }
    // Status lists each guest with its group.
    let o = on_login(&lab, &["status", &name]);
    let status = text(&o);
    assert!(o.status.success(), "{status}");
    for (g, group, host) in [("g1", "cts", "n1"), ("g4", "vms", "n1"), ("g5", "vms", "n2")] {
        let line = status.lines().find(|l| l.starts_with(&format!("{g} "))).unwrap_or("");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.get(1..2), Some(&[group][..]), "{g}: {status}");
        assert!(words.contains(&host), "{g} not on {host}: {status}");
    }
    // Every guest of both groups on every host answers: the agent is the one program in
    // both images (the ns rootfs's /sbin/guest-agent, the VMs' initramfs's /init).
    for (g, agent) in
        (0..6).map(|i| (format!("g{i}"), if i < 4 { "/sbin/guest-agent" } else { "/init" }))
    {
        let o = on_login(&lab, &["exec", &name, "--guest", &g, "--", agent, "--version"]);
        let answers = by_guest(&String::from_utf8_lossy(&o.stdout));
        assert!(o.status.success(), "hostd exec --guest {g}: {}", text(&o));
        let (said, out) = &answers[&g];
        assert!(
            said.starts_with("exit 0 in ") && out.starts_with("guest-agent "),
            "{g}: {answers:?}"
        );
    }
    lab.down_fleet(&name, &runs);
    lab.down_finding_nothing();
}

/// Guests with a kernel of their own on different hosts: their NICs get the VXLAN's MTU
/// (1450) from the agent (`vb.mtu=`), so full-size frames between two of them pass. At
/// 1500 both ends' TCP would pick segments of 1460 bytes, which the bridge drops before
/// the VXLAN port: only a uml-to-uml exchange shows it (an ns guest's MSS would hide it).
#[test]
fn uml_guests_on_three_hosts_get_the_vxlan_mtu_and_exchange_with_each_other() {
    let Some((_s, lab)) = serial_lab("m") else { return };
    if !static_busybox_or_skip("to read the MTU inside the guests") {
        return;
    }
    let f = fleet_file("mhmtu", "backend = \"uml\"\nguests = 3\nmem_mib = 96\n");
    let name = f.name.clone();
    let o = up_across(&lab, &f, &["--reach"]);
    let out = text(&o);
    assert!(o.status.success(), "hostd up --engine slurm: {}\n{out}", o.status);
    let hosts = hosts_of(&lab, &name);
    let mut runs = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        // One uml guest a host: each one's two exchanges (64 KiB each way) are with the
        // uml guests of the two other hosts.
        assert_eq!(guests_of(h), [(format!("g{i}"), "uml".to_string())], "{h}");
        let r = &h["reach"];
        assert_eq!((r["checked"].as_u64(), r["reached"].as_u64()), (Some(2), Some(2)), "{h}");
        runs.push(h["run"].as_str().unwrap().to_string());
    }
    let o = on_login(&lab, &["cp", &name, "--all", "/bin/busybox", ":/tmp/busybox"]);
    assert!(o.status.success(), "hostd cp: {}", text(&o));
    let o =
        on_login(&lab, &["exec", &name, "--", "/tmp/busybox", "cat", "/sys/class/net/eth0/mtu"]);
    assert!(o.status.success(), "hostd exec: {}", text(&o));
    let answers = by_guest(&String::from_utf8_lossy(&o.stdout));
    for g in ["g0", "g1", "g2"] {
        let (said, mtu) = &answers[g];
        assert!(said.starts_with("exit 0 in "), "{g}: {answers:?}");
        assert_eq!(mtu.trim(), "1450", "{g}'s eth0 inside its own kernel: {answers:?}");
    }
    lab.down_fleet(&name, &runs);
    lab.down_finding_nothing();
}

/// Whether this kernel has netem: tried on a veth in a namespace of the test's own.
fn has_netem() -> bool {
    let ns = format!("vbmhnetem{}", std::process::id());
    let sh =
        |cmd: &str| Command::new("sh").args(["-c", cmd]).output().is_ok_and(|o| o.status.success());
    assert!(sh(&format!("ip netns add {ns}")), "ip netns add {ns}");
    let ok = sh(&format!(
        "ip -n {ns} link add a type veth peer name b && \
         ip netns exec {ns} tc qdisc add dev a root netem delay 1ms"
    ));
    assert!(sh(&format!("ip netns del {ns}")), "ip netns del {ns}");
    ok
}

/// `hostd up FILE --engine slurm --hosts 3` of a fleet of 6 ns guests and `net`.
fn up_with_net(lab: &Lab, dir: &std::path::Path, name: &str, guests: usize, net: &str) -> Output {
    let file = dir.join(format!("{name}.toml"));
    let text = format!("name = \"{name}\"\nbackend = \"ns\"\nguests = {guests}\n{net}");
    std::fs::write(&file, text).unwrap();
    on_login(lab, &["up", file.to_str().unwrap(), "--engine", "slurm", "--hosts", "3"])
}

#[test]
fn each_host_shapes_its_own_guests_links_from_the_one_net_plan() {
    let Some((_s, lab)) = serial_lab("n") else { return };
    let dir = tempfile::Builder::new().prefix("multihost-net-").tempdir_in("/var/tmp").unwrap();
    let name = format!("mhnt{}", std::process::id() % 1_000_000);
    // Sites across hosts: a = g0–g2 (n1: g0, g1; n2: g2), b = g3–g5 (n2: g3; n3: g4, g5).
    let net = "[net]\nlink = { rate_mbit = 100 }\n\
               [[net.site]]\nname = \"a\"\nguests = 3\n\
               [[net.site]]\nname = \"b\"\nguests = 3\n\
               [net.matrix]\nsites = [\"a\", \"b\"]\ndelay_ms = [[0, 0], [0, 0]]\n\
               rate_mbit = [[0, 50], [50, 0]]\n";
    let o = up_with_net(&lab, dir.path(), &name, 6, net);
    assert!(o.status.success(), "hostd up: {}", text(&o));
    let hosts = hosts_of(&lab, &name);
    let mut runs = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let run = h["run"].as_str().unwrap().to_string();
        let mine: Vec<u64> =
            h["guests"].as_array().unwrap().iter().map(|g| g["index"].as_u64().unwrap()).collect();
        // An ifb for each of its own guests (their traffic out, classified by site), none
        // for another host's.
        let ifbs = lab.host(i as u32 + 1, &format!("ip -n vb-{run} -o link show type ifb"));
        let mut found: Vec<u64> = ifbs
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter_map(|n| n.split('@').next()?.strip_prefix("vbi")?.parse().ok())
            .collect();
        found.sort_unstable();
        assert_eq!(found, mine, "n{}: {ifbs}", i + 1);
        for g in &mine {
            // Into the guest: its own 100 Mbit/s; out of it: 100 to its own site, the
            // matrix's 50 to the other site (wherever its guests run).
            let to = lab.host(i as u32 + 1, &format!("tc -n vb-{run} class show dev vbl{g}"));
            assert!(to.contains("rate 100Mbit"), "n{} g{g}: {to}", i + 1);
            let from = lab.host(i as u32 + 1, &format!("tc -n vb-{run} class show dev vbi{g}"));
            assert!(
                from.contains("rate 100Mbit") && from.contains("rate 50Mbit"),
                "n{} g{g}: {from}",
                i + 1
            );
        }
        runs.push(run);
    }
    // Changing it later is not done across hosts: refused, saying so.
    let o = on_login(&lab, &["net", &name, "show"]);
    assert!(!o.status.success() && text(&o).contains("runs across hosts"), "{}", text(&o));
    lab.down_fleet(&name, &runs);
    // A delay: netem's. Measured where the kernel has it; refused, naming it, where not.
    let name = format!("mhdl{}", std::process::id() % 1_000_000);
    let o = up_with_net(&lab, dir.path(), &name, 3, "[net]\nlink = { delay_ms = 10 }\n");
    if has_netem() {
        assert!(o.status.success(), "hostd up: {}", text(&o));
        rtt_across_hosts_is_at_least(&lab, &name, 40.0);
        let runs: Vec<String> =
            hosts_of(&lab, &name).iter().map(|h| h["run"].as_str().unwrap().to_string()).collect();
        lab.down_fleet(&name, &runs);
    } else {
        let t = text(&o);
        assert!(!o.status.success(), "a delay applied without netem: {t}");
        assert!(t.contains("no netem qdisc") && t.contains("[net]"), "{t}");
        println!("refused as it should be: {t}");
        support::skip::skip(None, "no netem in this kernel: the cross-host RTT was not measured");
        // The failed daemon gives its allocation back as it exits, after `up` returned.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
        loop {
            let o = lab_exec(&lab, &["squeue", "-h"]);
            let jobs = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if jobs.is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "jobs left: {jobs}");
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        lab.assert_clean();
    }
    lab.down_finding_nothing();
}

/// g0 (on n1) pings g1 (on n2) with a static busybox copied in: every round trip takes at
/// least `ms` (each guest's 10 ms link, both ways, plus the VXLAN).
fn rtt_across_hosts_is_at_least(lab: &Lab, name: &str, ms: f64) {
    let o = on_login(lab, &["cp", name, "/bin/busybox", "g0:/tmp/busybox"]);
    assert!(o.status.success(), "hostd cp: {}", text(&o));
    let o = on_login(
        lab,
        &["exec", name, "--guest", "g0", "--", "/tmp/busybox", "ping", "-c", "5", "10.211.0.3"],
    );
    let out = text(&o);
    assert!(o.status.success(), "ping: {out}");
    // "round-trip min/avg/max = 40.512/41.003/41.870 ms"
    let min: f64 = out
        .lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no round-trip times in: {out}"));
    assert!(min >= ms, "min RTT {min} ms < {ms} ms: {out}");
}

/// The test system (support/system.rs), built into the store the lab's hosts use.
const SYSTEM: &str = "hostd-mh-test-system";

#[test]
fn a_fleet_of_a_system_image_boots_it_on_every_host() {
    if let Some(why) = support::system::unusable() {
        support::skip::skip(None, &why);
        return;
    }
    let Some((_s, lab)) = serial_lab("s") else { return };
    let scratch = support::system::scratch("vb-mh-system");
    let tree = scratch.path().join(SYSTEM);
    support::system::make_tree(&tree, true).unwrap();
    let recipe =
        format!("kind = \"rootfs-import\"\npath = \"{}\"\nheadroom_mib = 8\n", tree.display());
    // Built in the store the lab's hosts share (this test's VIRTBENCH_IMAGES, or the
    // workspace's, as `images()` and imagegen both default to).
    support::system::build(scratch.path(), &[(SYSTEM, recipe)]).unwrap();
    let name = format!("mhsy{}", std::process::id() % 1_000_000);
    let file = scratch.path().join("fleet.toml");
    let fleet = format!("name = \"{name}\"\nbackend = \"ns\"\nguests = 3\nsystem = \"{SYSTEM}\"\n");
    std::fs::write(&file, fleet).unwrap();
    let o = on_login(&lab, &["up", file.to_str().unwrap(), "--engine", "slurm", "--hosts", "3"]);
    assert!(o.status.success(), "hostd up: {}", text(&o));
    let hosts = hosts_of(&lab, &name);
    let runs: Vec<String> = hosts.iter().map(|h| h["run"].as_str().unwrap().to_string()).collect();
    for h in &hosts {
        assert_eq!(states(h), ["ready"], "{h}");
    }
    // Every guest, one a host, runs in the image's tree: its busybox and os-release.
    let o = on_login(&lab, &["exec", &name, "--", "/bin/busybox", "cat", "/etc/os-release"]);
    assert!(o.status.success(), "hostd exec: {}", text(&o));
    let answers = by_guest(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(answers.len(), 3, "{answers:?}");
    for (g, (said, out)) in &answers {
        assert!(
            said.starts_with("exit 0 in ") && out.contains(support::system::OS),
            "{g}: {said} {out}"
        );
    }
    lab.down_fleet(&name, &runs);
    // A system the store does not have: refused before any host is asked, naming it.
    let file = scratch.path().join("missing.toml");
    let fleet =
        format!("name = \"{name}\"\nbackend = \"ns\"\nguests = 3\nsystem = \"no-such-system\"\n");
    std::fs::write(&file, fleet).unwrap();
    let o = on_login(&lab, &["up", file.to_str().unwrap(), "--engine", "slurm", "--hosts", "3"]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("no-such-system"), "{t}");
    lab.assert_clean();
    lab.down_finding_nothing();
}
