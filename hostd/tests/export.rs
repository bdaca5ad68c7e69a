//! `--export-json/--export-csv/--export-markdown`: `hostd boot` on ns writes the three
//! files, and the JSON validates against the committed schema (docs/schema/).

mod support {
    pub mod cli;
    pub mod skip;
}

use support::cli::hostd;

#[test]
fn boot_exports_validate_against_the_schema() {
    if !support::skip::unless_root(Some("ns"), "ns fleets need root (namespaces, cgroups)") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (json, csv, md) = (d.path().join("a.json"), d.path().join("a.csv"), d.path().join("a.md"));
    let out = hostd()
        .args([
            "boot",
            "--backend",
            "ns",
            "-n",
            "2",
            "--floor-reps",
            "0",
            "--settle",
            "0",
            "--results",
        ])
        .arg(d.path().join("results"))
        .arg("--export-json")
        .arg(&json)
        .arg("--export-csv")
        .arg(&csv)
        .arg("--export-markdown")
        .arg(&md)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/schema/export.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let validator =
        jsonschema::validator_for(&schema).expect("the committed schema is a JSON Schema");
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "a.json does not validate: {errors:?}");
    // Cold and hot, ready times and M_used for n = 2.
    let commands: Vec<&str> =
        doc["results"].as_array().unwrap().iter().map(|r| r["command"].as_str().unwrap()).collect();
    for c in ["ns cold n=2 ready", "ns hot n=2 ready", "ns cold n=2 m_used"] {
        assert!(commands.contains(&c), "{c} missing: {commands:?}");
    }
    let ready = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["command"] == "ns cold n=2 ready")
        .unwrap();
    assert_eq!(ready["times"].as_array().unwrap().len(), 2, "one ready time per guest: {ready}");
    // A damaged document fails the same validator: the check can fail.
    let mut bad = doc.clone();
    bad["results"][0]["mean"] = serde_json::json!("fast");
    assert!(!validator.is_valid(&bad));
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(
        csv.starts_with("command,unit,mean,stddev,median,min,max,count,parameters\n")
            && csv.contains("ns cold n=2 ready,s,"),
        "{csv}"
    );
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.starts_with("| Command | Mean ± σ |") && md.contains("`ns hot n=2 ready`"), "{md}");

    // The run's own records: every samples.jsonl line carries schema_version and validates
    // against docs/schema/samples.schema.json; its JSON files carry schema_version too.
    let samples: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/schema/samples.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let v = jsonschema::validator_for(&samples).expect("the committed schema is a JSON Schema");
    let run = std::fs::read_dir(d.path().join("results")).unwrap().next().unwrap().unwrap().path();
    let lines = std::fs::read_to_string(run.join("samples.jsonl")).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for l in lines.lines() {
        let rec: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(rec["schema_version"], 1, "{l}");
        let errors: Vec<String> = v.iter_errors(&rec).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{l} does not validate: {errors:?}");
        kinds.insert(rec["record"].as_str().unwrap().to_string());
    }
    for k in ["startup", "memory", "fleet_done"] {
        assert!(kinds.contains(k), "no {k} record: {kinds:?}");
    }
    for f in ["report.json", "boot.json", "provenance.json"] {
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join(f)).unwrap()).unwrap();
        assert_eq!(j["schema_version"], 1, "{f}");
    }
}
