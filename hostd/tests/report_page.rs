//! The report page as a reader's browser shows it: `hostd report` on a results directory
//! of forged but plausible samples (no guests, no root), index.html loaded in headless
//! Chromium; the first thing after the title is the decision table, each of its figures
//! with the number of measurements it rests on.

mod support {
    pub mod cli;
    pub mod skip;
}

use support::cli::{hostd, rendered_dom};

use std::path::Path;

/// Two repetitions of the CPU benchmark on native and uml (overhead, n = 1), and a startup
/// fleet of two guests on uml.
fn forge_results(dir: &Path) {
    std::fs::create_dir_all(dir.join("figures")).unwrap();
    let mut lines = Vec::new();
    for (backend, values) in [("native", [2.0, 2.1]), ("uml", [2.5, 2.6])] {
        for test in ["overhead", "linearity"] {
            for (rep, v) in values.iter().enumerate() {
                lines.push(serde_json::json!({
                    "schema_version": 1, "record": "bench", "backend": backend, "test": test,
                    "resource": "cpu", "n": 1, "rep": rep, "guest": 0, "instance": 0,
                    "value": v, "unit": "s", "elapsed_s": v, "params": "rounds=200000000",
                    "cpus": 2, "vcpus": 1
                }));
            }
        }
    }
    for i in 0..2 {
        lines.push(serde_json::json!({
            "schema_version": 1, "record": "startup", "backend": "uml", "n": 2, "mode": "cold",
            "index": i, "ready_s": 0.5 + 0.1 * f64::from(i), "own_s": 0.4,
            "guest_boot_s": null, "guest_kernel_s": null
        }));
    }
    lines.push(serde_json::json!({
        "record": "fleet_done", "backend": "uml", "n": 2, "mode": "cold", "ready": 2,
        "failed": 0, "t_startup_s": 0.6
    }));
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("samples.jsonl"), text).unwrap();
}

#[test]
fn the_decision_table_comes_first_in_the_browser() {
    let Ok(chromium) = which("chromium") else {
        support::skip::skip(None, "chromium is not installed (scripts/install-deps)");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("run");
    forge_results(&dir);
    let out = hostd().arg("report").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dom = rendered_dom(&chromium, &dir.join("index.html"), 3000);
    // The page's script ran: this is the DOM the browser built, not the file.
    assert!(dom.contains("data-figures=\""), "chromium did not load the page: {dom:.500}");
    let body = &dom[dom.find("</h1>").expect("a title") + 5..];
    assert!(
        body.trim_start().starts_with("<section id=\"decision\">"),
        "the first element after the title is not the decision table: {:.300}",
        body.trim_start()
    );
    let first_h2 = &body[body.find("<h2>").unwrap()..];
    assert!(
        first_h2.starts_with("<h2>Which system for a large emulation?</h2>"),
        "{first_h2:.200}"
    );
    // Provenance and figures come after it; each figure in it says its n.
    let table = &body[..body.find("</section>").unwrap()];
    assert!(table.contains("uml") && table.contains("<small>2 samples</small>"), "{table}");
    assert!(body.find("<figure").is_none_or(|f| f > table.len()));
}

/// `name` on PATH.
fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()).ok_or(())
}
