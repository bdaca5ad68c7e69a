use super::*;
use crate::multihost::proto::{self, TornDown};
use tokio::io::AsyncWriteExt;

/// What the coordinator makes of a connection that sends `line` first.
async fn first_line(line: Vec<u8>) -> Result<Worker, (bool, String)> {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(at).await.unwrap();
        let _ = c.write_all(&line).await;
        // Kept open until the coordinator has judged the line.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (s, _) = l.accept().await.unwrap();
    let r = hello_of(s, "secret", Duration::from_secs(15)).await;
    client.abort();
    // (refused, why)
    r.map_err(|e| match e {
        HelloError::Refused(e) => (true, e.to_string()),
        HelloError::Invalid(e) => (false, e.to_string()),
    })
}

fn hello(token: &str, hostname: &str) -> Vec<u8> {
    let h = Hello {
        token: token.into(),
        hostname: hostname.into(),
        node_id: None,
        node_name: None,
        cpus: 1,
        mem_mib: 100,
        backends: vec![BackendKind::Ns],
        images: BTreeMap::new(),
        addr: Ipv4Addr::LOCALHOST,
    };
    let mut v = serde_json::to_vec(&FromWorker::Hello(h)).unwrap();
    v.push(b'\n');
    v
}

#[tokio::test]
async fn hostile_hellos_are_refused_with_the_worker_and_the_reason() {
    assert_eq!(first_line(hello("secret", "n1")).await.ok().unwrap().name(), "n1");
    // Not ours: refused, the run goes on.
    let (refused, e) = first_line(hello("guess", "n1")).await.err().unwrap();
    assert!(refused && e.contains("127.0.0.1") && e.contains("wrong token"), "{e}");
    let pong = b"{\"msg\":\"pong\",\"seq\":0,\"mono_ns\":1}\n".to_vec();
    let (refused, e) = first_line(pong).await.err().unwrap();
    assert!(refused && e.contains("not a hello"), "{e}");
    let (refused, e) = first_line(b"not json\n".to_vec()).await.err().unwrap();
    assert!(refused && e.contains("not a message"), "{e}");
    let mut long = vec![b'x'; proto::MAX_LINE + 1];
    long.push(b'\n');
    let (refused, e) = first_line(long).await.err().unwrap();
    assert!(refused && e.contains("longer than"), "{e}");
    // Ours (it has the token) but breaking the rules: the run stops, naming it.
    let (refused, e) = first_line(hello("secret", "n1\u{1b}[2J")).await.err().unwrap();
    assert!(!refused && e.contains("127.0.0.1") && e.contains("bad hello"), "{e}");
    assert!(e.contains("hostname"), "{e}");
}

fn hashes(entries: &[(&str, char)]) -> BTreeMap<String, String> {
    entries.iter().map(|(k, c)| (k.to_string(), c.to_string().repeat(64))).collect()
}

fn group(backend: BackendKind, system: Option<&str>) -> plan::FleetGroup {
    let mut g = plan::FleetGroup::only(backend, 3, 64, 1).remove(0);
    g.system = system.map(|s| (s.to_string(), Default::default()));
    g
}

#[test]
fn only_the_images_the_fleet_boots_are_compared() {
    let ns = images::booted(&[group(BackendKind::Ns, None)]);
    let own = hashes(&[("agent", 'a'), ("rootfs", 'r'), ("rootfs (recipe)", 's')]);
    // A kernel no ns guest boots: one host has it, another has another build of it.
    let mut extra = own.clone();
    extra.insert("kernel-pv".into(), "k".repeat(64));
    extra.insert("kernel-pv (recipe)".into(), "l".repeat(64));
    assert_eq!(same_images(&extra, &own, "n1", &ns), Ok(()));
    let mut own_k = own.clone();
    own_k.insert("kernel-pv".into(), "m".repeat(64));
    assert_eq!(same_images(&extra, &own_k, "n1", &ns), Ok(()));
    // The same kernel is compared, and named, once a group boots it.
    let vms =
        images::booted(&[group(BackendKind::Ns, None), group(BackendKind::QemuMicrovm, None)]);
    let e = same_images(&extra, &own_k, "n2", &vms).unwrap_err();
    assert!(e.contains("host n2: image kernel-pv is sha256 kkk"), "{e}");
    let e = same_images(&extra, &own, "n2", &vms).unwrap_err();
    assert!(e.contains("host n2 has an image kernel-pv") && e.contains("reference lacks"), "{e}");
}

#[test]
fn differing_used_images_name_the_host_and_image() {
    let used = images::booted(&[group(BackendKind::Ns, None)]);
    let own = hashes(&[("agent", 'a'), ("rootfs", 'r')]);
    let mut h = own.clone();
    assert!(same_images(&h, &own, "n1", &used).is_ok());
    h.insert("agent".into(), "b".repeat(64));
    let e = same_images(&h, &own, "n2", &used).unwrap_err();
    assert!(e.contains("host n2: image agent is sha256 bbb"), "{e}");
    h.remove("agent");
    let e = same_images(&h, &own, "n3", &used).unwrap_err();
    assert!(e.contains("host n3 has no image agent"), "{e}");
    // A UML fleet boots the initramfs and UML's kernel, not the rootfs.
    let uml = images::booted(&[group(BackendKind::Uml, None)]);
    let own = hashes(&[("kernel-uml", 'u'), ("initramfs", 'i'), ("rootfs", 'r')]);
    let h = hashes(&[("kernel-uml", 'u'), ("initramfs", 'j'), ("rootfs", 'q')]);
    let e = same_images(&h, &own, "n4", &uml).unwrap_err();
    assert!(e.contains("host n4: image initramfs is sha256 jjj"), "{e}");
}

#[test]
fn a_host_without_the_fleets_system_image_is_named() {
    // The reference holds the system's hashes (the coordinator's store, or the first
    // host's); a worker that could not resolve the system reports none of them.
    let used = images::booted(&[group(BackendKind::Ns, Some("debian"))]);
    let mut own = hashes(&[("agent", 'a'), ("rootfs", 'r')]);
    for part in ["rootfs.ext4", "tree", "recipe"] {
        own.insert(format!("system debian ({part})"), "d".repeat(64));
    }
    // Another system, or another rootfs, is not the fleet's (its ns guests boot debian).
    let mut lacking = hashes(&[("agent", 'a'), ("rootfs", 'q')]);
    lacking.insert("system alpine (tree)".into(), "f".repeat(64));
    let e = same_images(&lacking, &own, "n3", &used).unwrap_err();
    assert!(e.contains("host n3 has no image system debian ("), "{e}");
    // Another build of it (its tree differs): named with both hashes.
    let mut other = own.clone();
    other.insert("system debian (tree)".into(), "e".repeat(64));
    let e = same_images(&other, &own, "n2", &used).unwrap_err();
    assert!(e.contains("host n2: image system debian (tree) is sha256 eee"), "{e}");
    assert_eq!(same_images(&own, &own, "n1", &used), Ok(()));
}

fn part(group: &str, backend: BackendKind, first: usize, count: usize) -> SlicePart {
    SlicePart { group: group.into(), backend, first, count, mem_mib: 64, vcpus: 1, system: None }
}

/// A host of a finished run whose 2 guests (from `first`) are ready and torn down clean.
fn host(name: &str, first: usize) -> HostRecord {
    HostRecord {
        hostname: name.into(),
        node_id: None,
        node_name: None,
        addr: Ipv4Addr::LOCALHOST,
        cpus: 1,
        mem_mib: 100,
        images: BTreeMap::new(),
        parts: vec![part("ns", BackendKind::Ns, first, 2)],
        count: 2,
        clock: None,
        booted: None,
        start_vs_coordinator_s: None,
        serve_failed: Vec::new(),
        reach: None,
        teardown: Some(TornDown { clean: 2, killed: 0, leftovers: Vec::new() }),
        teardown_error: None,
        ring_failed: Vec::new(),
        lost: None,
    }
}

fn finished(hosts: Vec<HostRecord>) -> (MultiHost, FleetBoot) {
    let n = hosts.iter().map(|h| h.count).sum();
    let startups = (0..n)
        .map(|index| crate::startup::StartupSample {
            backend: BackendKind::Ns,
            n,
            mode: StartMode::Hot,
            index,
            ready_s: 0.1,
            own_s: 0.1,
            guest_boot_s: None,
            guest_kernel_s: None,
            provenance: String::new(),
            residency: None,
            image_copies: false,
        })
        .collect();
    let m = MultiHost {
        backend: BackendKind::Ns,
        n,
        mode: StartMode::Hot,
        job: None,
        t0_unix_ns: 0,
        t_startup_s: Some(0.1),
        hosts,
        ring: None,
        memory: None,
    };
    let boot = FleetBoot {
        backend: BackendKind::Ns,
        n,
        mode: StartMode::Hot,
        startups,
        failures: Vec::new(),
        memory: None,
        teardown_clean: n,
        teardown_killed: 0,
        residency: None,
        reach: None,
    };
    (m, boot)
}

#[test]
fn a_missed_or_unclean_teardown_is_a_failure_naming_the_host() {
    let (m, boot) = finished(vec![host("n1", 0), host("n2", 2)]);
    assert!(shortfalls(&m, &boot).is_empty());
    // No teardown report within its time: exit 3, naming n2 and why.
    let mut h2 = host("n2", 2);
    h2.teardown = None;
    h2.teardown_error = Some("no teardown report within 60.2s".into());
    let (m, boot) = finished(vec![host("n1", 0), h2]);
    let s = shortfalls(&m, &boot);
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].contains("host n2") && s[0].contains("no teardown report within"), "{s:?}");
    // Neither a report nor a reason (never asked): still a failure.
    let mut h1 = host("n1", 0);
    h1.teardown = None;
    let (m, boot) = finished(vec![h1, host("n2", 2)]);
    assert_eq!(shortfalls(&m, &boot), ["host n1: no teardown report"]);
    // A report of leftovers.
    let mut h1 = host("n1", 0);
    h1.teardown.as_mut().unwrap().leftovers.push("netns vb-x".into());
    let (m, boot) = finished(vec![h1, host("n2", 2)]);
    assert_eq!(shortfalls(&m, &boot), ["host n1: 1 thing(s) left after teardown"]);
    // A lost host is counted by its guests, not again by its (never asked) teardown.
    let mut h2 = host("n2", 2);
    (h2.teardown, h2.lost) = (None, Some("link dropped".into()));
    let (m, mut boot) = finished(vec![host("n1", 0), h2]);
    boot.startups.truncate(2);
    boot.failures = (2..4)
        .map(|index| crate::fleet::GuestFailure {
            index,
            name: format!("g{index}"),
            kind: crate::fleet::FailureKind::Crashed,
            error: "host n2 lost: link dropped".into(),
            console_tail: None,
        })
        .collect();
    assert_eq!(shortfalls(&m, &boot), ["2 of 4 guests failed or lost"]);
}

#[test]
fn a_held_hosts_guests_are_ready_failed_or_lost_from_its_record() {
    use super::{status_of, GuestState};
    use crate::multihost::proto::{Booted, GuestLost, GuestReady};
    let mut r = super::HostRecord {
        node_id: Some(1),
        node_name: Some("n2".into()),
        addr: "10.250.0.12".parse().unwrap(),
        cpus: 2,
        mem_mib: 1024,
        // A mixed fleet's slice: g3-g4 of group a, g5 of group b.
        parts: vec![part("a", BackendKind::Ns, 3, 2), part("b", BackendKind::Uml, 5, 1)],
        count: 3,
        booted: Some(Booted {
            run: "r1".into(),
            lateness_s: 0.001,
            start_mono_ns: 1,
            ready: vec![
                GuestReady { index: 3, ready_s: 0.2 },
                GuestReady { index: 5, ready_s: 0.3 },
            ],
            failed: vec![GuestLost {
                index: 4,
                kind: crate::fleet::FailureKind::Timeout,
                error: "no hello".into(),
            }],
            memory: None,
        }),
        teardown: None,
        ..host("n2", 3)
    };
    let s = status_of(&r, true);
    let states: Vec<_> = s.guests.iter().map(|g| (g.name.as_str(), g.state)).collect();
    assert_eq!(
        states,
        [("g3", GuestState::Ready), ("g4", GuestState::Failed), ("g5", GuestState::Ready)]
    );
    let groups: Vec<_> = s.guests.iter().map(|g| (g.group.as_str(), g.backend)).collect();
    assert_eq!(groups, [("a", BackendKind::Ns), ("a", BackendKind::Ns), ("b", BackendKind::Uml)]);
    assert_eq!(s.guests[0].addr.as_deref(), Some("10.211.0.5"));
    assert_eq!(s.guests[2].ready_after_s, Some(0.3));
    assert_eq!(s.run.as_deref(), Some("r1"));
    assert!(status_of(&r, false).guests.iter().all(|g| g.addr.is_none()));
    // Its worker's link dropped: the ready guests are lost, the failed one stays failed.
    r.lost = Some("its link dropped while its fleet was up: closed".into());
    let s = status_of(&r, true);
    let states: Vec<_> = s.guests.iter().map(|g| g.state).collect();
    assert_eq!(states, [GuestState::Lost, GuestState::Failed, GuestState::Lost]);
    assert!(s.guests[0].error.as_deref().unwrap().contains("host n2 lost: its link dropped"));
    // A host lost before reporting: every guest of its slice is lost.
    r.booted = None;
    let s = status_of(&r, true);
    assert!(s.guests.iter().all(|g| g.state == GuestState::Lost), "{s:?}");
    assert_eq!(s.guests.len(), 3);
}

/// The startup report's bound grows with the slice: a host starting 5000 guests, whose
/// launches follow one another, is not held to a single guest's boot timeout.
#[test]
fn the_startup_bound_grows_with_the_slice() {
    let boot = Duration::from_secs(300);
    assert_eq!(startup_within(boot, 0), Duration::from_secs(365));
    assert_eq!(startup_within(boot, 5000), Duration::from_secs(615));
    assert!(startup_within(boot, 10) < startup_within(boot, 11));
}

/// A campaign's one results directory: the fleets' samples under the coordinator's
/// provenance, the node's under its own naming its part, the node named, the mix by design.
#[test]
fn the_node_s_single_host_steps_join_the_one_results_directory_with_their_provenance() {
    use crate::samples::Record;
    let (multihost, boot) = finished(vec![host("n1", 0), host("n2", 2)]);
    let provenance = crate::provenance::Provenance::collect(Default::default());
    let merged = Merged { multihost, boot, bench: Vec::new(), provenance };
    let mut node = crate::provenance::Provenance::collect(Default::default());
    node.host.hostname = "n1".into();
    let node_id = node.id();
    let mut bench: Record = serde_json::from_str(r#"{"record":"bench","backend":"ns","test":"overhead","resource":"cpu","n":1,"rep":0,"guest":0,"instance":0,"value":1.0,"unit":"s","elapsed_s":1.0,"params":"rounds=8"}"#).unwrap();
    bench.tag_provenance(&node_id);
    let parent = tempfile::tempdir().unwrap();
    let suite = suite::NodeSuite {
        node: "n1".into(),
        exit: "finished".into(),
        records: vec![
            Record::Provenance { id: node_id.clone(), provenance: node },
            bench,
            Record::StepDone { key: "ns/overhead/cpu".into() },
        ],
        work: tempfile::tempdir_in(parent.path()).unwrap(),
    };
    let c = CampaignOptions {
        fleets: Vec::new(),
        results: parent.path().to_path_buf(),
        label: "run-slurm-t".into(),
        notes: vec!["campaign t across 2 hosts".into()],
        campaign: crate::campaign::Campaign::default_campaign(),
        suite: Some(SuiteOptions { node: None, args: Vec::new() }),
        exe: "hostd".into(),
    };
    let record = CampaignRecord {
        fleets: Vec::new(),
        unavailable: Vec::new(),
        failed: Vec::new(),
        single_host: None,
    };
    let out = campaign::write(&c, vec![merged], record, Some(Ok(suite))).unwrap();
    let dirs: Vec<_> = std::fs::read_dir(parent.path()).unwrap().flatten().collect();
    assert_eq!(dirs.len(), 1, "the node's directory is removed: {dirs:?}");
    let (records, _) = crate::results::read_records::<Record>(&out.results).unwrap();
    let ids: Vec<Option<&str>> = records.iter().map(|r| r.provenance_id()).collect();
    assert_eq!(ids.iter().filter(|i| **i == Some(node_id.as_str())).count(), 1, "{ids:?}");
    let own: crate::provenance::Provenance =
        serde_json::from_slice(&std::fs::read(out.results.join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(ids.iter().filter(|i| **i == Some(own.id().as_str())).count(), 4, "{ids:?}");
    assert!(own.part.is_some_and(|p| p.contains("across 2 hosts")));
    assert!(records.iter().any(|r| matches!(r, Record::Provenance { provenance, .. }
        if provenance.part.as_deref() == Some("the single-host steps on node n1"))));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.results.join("multihost.json")).unwrap())
            .unwrap();
    assert_eq!(m["single_host"]["node"], "n1", "{m}");
    assert_eq!(
        (m["single_host"]["records"].as_u64(), m["single_host"]["steps_done"].as_u64()),
        (Some(3), Some(1))
    );
    assert!(out.results.join("campaign.toml").is_file());
    let html = std::fs::read_to_string(out.results.join("index.html")).unwrap();
    assert!(html.contains("measured on host n1 (Slurm node n1)"), "the node named");
    assert!(html.contains("2 provenances by design"), "the mix by design");
    assert!(!html.contains("force-mixed"), "not a forced resume");
}
