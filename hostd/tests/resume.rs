//! `hostd run --resume` and provenance (issue 11 item 8): a run resumed with other
//! artifacts or another hostd is refused, naming what changed, unless --force-mixed; then
//! the new samples carry the new provenance's id and the report lists both. A small native
//! campaign (seconds). Needs root (drop_caches, cgroups) and the agent (`imagegen build`).

mod support {
    pub mod cli;
    pub mod skip;
}

use support::cli::{hostd, records, text, tiny_campaign};

use std::path::PathBuf;

#[test]
fn resume_refuses_another_provenance_unless_forced_and_tags_samples() {
    if !support::skip::unless_root(Some("native"), "campaigns need root (cgroups, drop_caches)") {
        return;
    }
    let res = tempfile::tempdir().unwrap();
    let file = res.path().join("c.toml");
    std::fs::write(&file, tiny_campaign("resume")).unwrap();
    let out =
        hostd().arg("run").arg(&file).arg("--results").arg(res.path().join("r")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dir: PathBuf =
        std::fs::read_dir(res.path().join("r")).unwrap().next().unwrap().unwrap().path();
    let first = records(&dir);
    let id = first
        .iter()
        .find(|r| r["record"] == "provenance")
        .expect("a fresh run records its provenance")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let measured: Vec<&serde_json::Value> = first
        .iter()
        .filter(|r| ["bench", "startup", "memory"].contains(&r["record"].as_str().unwrap()))
        .collect();
    assert!(!measured.is_empty());
    assert!(
        measured.iter().all(|r| r["provenance"] == id.as_str()),
        "every sample tagged {id}: {measured:?}"
    );

    // Same artifacts and hostd: the resume goes on (nothing left to do) and adds no provenance.
    let out = hostd().arg("run").arg("--resume").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(records(&dir).iter().filter(|r| r["record"] == "provenance").count(), 1);

    // The run "was" measured with another kernel and another hostd version; one step undone.
    let mut p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("provenance.json")).unwrap()).unwrap();
    p["artifacts"]["kernel-pv"] = "0".repeat(64).into();
    p["hostd_version"] = "0.0.1".into();
    std::fs::write(dir.join("provenance.json"), serde_json::to_vec(&p).unwrap()).unwrap();
    let samples = std::fs::read_to_string(dir.join("samples.jsonl")).unwrap();
    let kept: Vec<&str> = samples
        .lines()
        .filter(|l| !(l.contains("\"step_done\"") && l.contains("/overhead/")))
        .collect();
    // As from an older hostd: no provenance record, untagged samples (provenance.json's).
    let tag = format!(",\"provenance\":\"{id}\"");
    let kept: Vec<String> = kept
        .into_iter()
        .filter(|l| !l.contains("\"record\":\"provenance\""))
        .map(|l| l.replace(&tag, ""))
        .collect();
    std::fs::write(dir.join("samples.jsonl"), kept.join("\n") + "\n").unwrap();

    let out = hostd().arg("run").arg("--resume").arg(&dir).output().unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("resuming would mix them"), "{t}");
    assert!(t.contains("artifact kernel-pv: sha256 000000000000… recorded"), "{t}");
    assert!(t.contains("hostd version: \"0.0.1\" recorded"), "{t}");
    assert!(t.contains("--force-mixed"), "{t}");

    let out = hostd().arg("run").arg("--resume").arg(&dir).arg("--force-mixed").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let after = records(&dir);
    let provs: Vec<&serde_json::Value> =
        after.iter().filter(|r| r["record"] == "provenance").collect();
    assert_eq!(provs.len(), 1, "the forced session records its provenance");
    let new_id = provs[0]["id"].as_str().unwrap();
    assert_eq!(new_id, id, "the same build as the first session");
    let benches: Vec<&serde_json::Value> =
        after.iter().filter(|r| r["record"] == "bench").collect();
    assert!(
        benches.len() > measured.iter().filter(|r| r["record"] == "bench").count(),
        "the undone step ran again"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let notes: Vec<&str> =
        report["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert!(notes.iter().any(|n| n.starts_with("this run mixes 2 provenances")), "{notes:#?}");
    assert!(
        notes.iter().any(|n| n.contains("hostd 0.0.1") && n.contains("(provenance.json)")),
        "{notes:#?}"
    );
}
