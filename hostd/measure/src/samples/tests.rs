use super::*;

/// The committed samples schema is the one the types generate (regenerate with
/// `VIRTBENCH_WRITE_SCHEMA=1 cargo test -p hostd-measure --lib samples`).
#[test]
fn committed_schema_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/schema/samples.schema.json");
    let now = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
    if std::env::var_os("VIRTBENCH_WRITE_SCHEMA").is_some() {
        std::fs::write(&path, &now).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == now, "{} is stale: regenerate it (see this test)", path.display());
}

/// Records of every kind, as `ResultsDir::append` writes them, validate against the
/// committed schema and read back; a line without `schema_version` (older results)
/// reads too; a damaged line fails the validator.
#[test]
fn written_records_validate_and_old_ones_read() {
    use crate::guest::{FailureKind, GuestFailure};
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/schema/samples.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let v = jsonschema::validator_for(&committed).expect("a JSON Schema");
    let startup: StartupSample =
        serde_json::from_str(&STARTUP.replace("\"record\":\"startup\",", "")).unwrap();
    let failure = GuestFailure {
        index: 1,
        name: "g1".into(),
        kind: FailureKind::Timeout,
        error: "no hello".into(),
        console_tail: Some("<panic>".into()),
    };
    let mut bench = crate::suite::testing::sample(
        BackendKind::Uml,
        crate::suite::Test::Overhead,
        vb_protocol::bench::Resource::Disk,
        1,
        0,
        0,
        0,
        2.5,
    );
    bench.net_path = Some(crate::netlab::NetPath::VethBridge);
    (bench.paired_native_mbps, bench.paired_native_s, bench.paired_gap_s) =
        (Some(1000.0), Some(0.5), Some(2e-5));
    let records = [
        Record::Startup(startup),
        Record::Failure {
            backend: BackendKind::Ns,
            n: 2,
            mode: StartMode::Cold,
            failure: failure.clone(),
        },
        Record::FleetDone {
            backend: BackendKind::Ns,
            n: 2,
            mode: StartMode::Hot,
            ready: 1,
            failed: 1,
            t_startup_s: Some(0.5),
        },
        Record::Bench(bench),
        Record::StepDone { key: "overhead/uml/cpu".into() },
        Record::StepFailed { key: "ring/uml".into(), error: "boom".into() },
        Record::BackendUnavailable { backend: BackendKind::Xen, reason: "not a Xen host".into() },
        Record::BackendProbe {
            backend: BackendKind::Uml,
            description: "uml 6.1".into(),
            emulated: false,
        },
        Record::GuestLost { backend: BackendKind::Uml, step: "ring".into(), failure },
        Record::Provenance {
            id: "p1".into(),
            provenance: crate::provenance::Provenance::collect(Default::default()),
        },
        Record::Command(crate::suite::command::CommandSample {
            backend: BackendKind::Ns,
            test: crate::suite::Test::Linearity,
            name: "build".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), "exit 3".into()],
            n: 2,
            rep: 0,
            guest: 1,
            elapsed_s: None,
            host_s: 0.02,
            failure: Some("exit status 3".into()),
            cpus: Some(2),
            vcpus: None,
            provenance: "p1".into(),
        }),
    ];
    for r in &records {
        let line = serde_json::to_value(Versioned::new(r)).unwrap();
        assert_eq!(line["schema_version"], SCHEMA_VERSION);
        let errors: Vec<String> = v.iter_errors(&line).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{line} does not validate: {errors:?}");
        let back: Line = serde_json::from_value(line.clone()).unwrap();
        assert_eq!(back.schema_version, SCHEMA_VERSION);
        let mut bad = line;
        bad["record"] = "frobnicated".into();
        assert!(!v.is_valid(&bad), "{bad}");
    }
    // Older results: no schema_version; version 0, same record.
    let old: Line = serde_json::from_str(STARTUP).unwrap();
    assert_eq!(old.schema_version, 0);
    assert!(v.is_valid(&serde_json::from_str::<serde_json::Value>(STARTUP).unwrap()));
    assert_eq!(Samples::parse(STARTUP.as_bytes()).unwrap().records.len(), 1);
}

const STARTUP: &str = r#"{"record":"startup","backend":"native","n":2,"mode":"hot","index":0,"ready_s":0.25,"own_s":0.2,"guest_boot_s":null,"guest_kernel_s":null}"#;

#[test]
fn a_resident_share_above_one_is_implausible() {
    let with = |resident: u64| {
        STARTUP.replace("\"hot\"", "\"cold\"").replace(
            "\"guest_kernel_s\":null",
            &format!("\"guest_kernel_s\":null,\"residency\":{{\"files\":2,\"bytes\":8192,\"resident_bytes\":{resident}}}"),
        )
    };
    let text = format!("{}\n{}\n", with(0), with(8193));
    let s = Samples::parse(text.as_bytes()).unwrap();
    assert_eq!((s.records.len(), s.implausible), (1, 1));
    assert!(s.rejected[0].why.contains("8193 of 8192 bytes resident"), "{:?}", s.rejected[0]);
    let Record::Startup(ok) = &s.records[0] else { panic!("{:?}", s.records[0]) };
    assert_eq!((ok.label(), ok.residency.as_ref().unwrap().shared_files), ("cold", 0));
}

/// A disk sample without the paired native read (older results) reads as unpaired; a
/// paired bandwidth outside physical sense is rejected.
#[test]
fn paired_native_reads_are_optional_and_checked() {
    const OLD: &str = r#"{"record":"bench","backend":"ns","test":"overhead","resource":"disk","n":1,"rep":0,"guest":0,"instance":0,"value":1000.0,"unit":"MB/s","elapsed_s":0.5,"params":"mib=512 block_kib=256","cache_policy":"o_direct(bind mount)","resident_before":0.0}"#;
    let paired = OLD.replace(
        "\"resident_before\":0.0",
        "\"resident_before\":0.0,\"paired_native_mbps\":900.0,\"paired_native_s\":0.55,\"paired_gap_s\":0.00002",
    );
    let text = format!("{OLD}\n{paired}\n{}\n", paired.replace("900.0", "-1.0"));
    let s = Samples::parse(text.as_bytes()).unwrap();
    assert_eq!((s.records.len(), s.implausible), (2, 1));
    assert!(s.rejected[0].why.contains("paired_native_mbps = -1"), "{:?}", s.rejected);
    let [Record::Bench(old), Record::Bench(new)] = &s.records[..] else { panic!() };
    assert_eq!((old.paired_native_mbps, old.paired_gap_s), (None, None));
    assert_eq!((new.paired_native_mbps, new.paired_native_s), (Some(900.0), Some(0.55)));
}

#[test]
fn impossible_samples_are_counted_not_reported() {
    let mut text = String::new();
    for bad in ["-1000000000.0", "1e308", "-0.5"] {
        text.push_str(&STARTUP.replace("0.25", bad));
        text.push('\n');
    }
    text.push_str(STARTUP);
    text.push('\n');
    text.push_str(&STARTUP.replace("\"n\":2", "\"n\":0"));
    text.push('\n');
    let bench = r#"{"record":"bench","backend":"native","test":"overhead","resource":"network","n":1,"rep":0,"guest":0,"instance":0,"value":VALUE,"unit":"MB/s","elapsed_s":1.0,"params":""}"#;
    for v in ["1e12", "120.5"] {
        text.push_str(&bench.replace("VALUE", v));
        text.push('\n');
    }
    text.push_str("{\"record\":\"startup\"\n\n");
    let s = Samples::parse(text.as_bytes()).unwrap();
    assert_eq!((s.records.len(), s.implausible, s.unreadable), (2, 5, 1));
    assert_eq!(s.rejected.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 2, 3, 5, 6]);
    assert!(s.rejected[0].why.contains("ready_s = -1000000000 s"), "{:?}", s.rejected[0]);
    assert!(s.rejected[4].why.contains("MB/s"), "{:?}", s.rejected[4]);
}
