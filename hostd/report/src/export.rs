//! `--export-json`, `--export-csv`, `--export-markdown`: results in the shapes people already
//! script against. The JSON is hyperfine's (`results[]` with `command`, `mean`, `stddev`,
//! `median`, `min`, `max`, `times`), with a `schema_version` and the unit and parameters
//! hyperfine does not need; its JSON Schema is generated from these types
//! (docs/schema/export.schema.json). CSV goes through the `csv` crate (proper quoting).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::boot::BootSummary;
use crate::microbench::BenchRun;
use crate::report::{Report, Stat};
use crate::stats::Summary;

/// Raised when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// One measured quantity (hyperfine: one command).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExportResult {
    /// What was measured, e.g. "uml cold n=10 ready" or "qemu-microvm cpu".
    pub command: String,
    /// Unit of mean, stddev, median, min, max and times (hyperfine's are seconds).
    pub unit: String,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1); null for one sample.
    pub stddev: Option<f64>,
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Every counted measurement, in order; empty where only a summary was kept.
    pub times: Vec<f64>,
    /// How many measurements the summary is over (the length of times, when kept).
    pub count: usize,
    /// Backend, fleet size, mode, workload and the like.
    pub parameters: BTreeMap<String, String>,
}

/// The whole export: hyperfine's top level plus a version and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Export {
    /// This format's version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// The hostd command that measured: bench, boot or report.
    pub source: String,
    /// One entry per measured quantity.
    pub results: Vec<ExportResult>,
}

fn params(kv: &[(&str, String)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn from_summary(
    command: String,
    s: &Summary,
    parameters: BTreeMap<String, String>,
) -> ExportResult {
    ExportResult {
        command,
        unit: s.unit.clone(),
        mean: s.mean,
        stddev: (s.samples.len() > 1).then_some(s.std_dev),
        median: s.median,
        min: s.min,
        max: s.max,
        times: s.samples.clone(),
        count: s.samples.len(),
        parameters,
    }
}

fn from_stat(command: String, s: &Stat, parameters: BTreeMap<String, String>) -> ExportResult {
    ExportResult {
        command,
        unit: s.unit.clone(),
        mean: s.mean,
        stddev: (s.samples > 1).then_some(s.std_dev),
        median: s.median,
        min: s.min,
        max: s.max,
        times: Vec::new(),
        count: s.samples,
        parameters,
    }
}

/// `hostd bench`: one result per benchmark.
pub fn of_bench(run: &BenchRun) -> Export {
    let results = run
        .results
        .iter()
        .map(|r| {
            let p = params(&[
                ("backend", run.backend.to_string()),
                ("bench", r.spec.name().into()),
                ("instances", r.instances.to_string()),
                ("measures", r.measures.clone()),
            ]);
            from_summary(format!("{} {}", run.backend, r.spec.name()), &r.summary, p)
        })
        .collect();
    Export { schema_version: SCHEMA_VERSION, source: "bench".into(), results }
}

/// `hostd boot`: per fleet size and mode, the guests' ready times (T_startup is their
/// maximum), and M_used as a one-sample result where measured.
pub fn of_boot(s: &BootSummary) -> Export {
    let mut results = Vec::new();
    for r in &s.rows {
        let base = [
            ("backend", r.backend.to_string()),
            ("n", r.n.to_string()),
            ("mode", r.mode.name().to_string()),
            ("ready", r.ready.to_string()),
            ("failed", r.failed.to_string()),
        ];
        if let Some(t) = &r.ready_times {
            results.push(from_summary(
                format!("{} {} n={} ready", r.backend, r.mode.name(), r.n),
                t,
                params(&base),
            ));
        }
        if let Some(m) = r.m_used_mib {
            results.push(ExportResult {
                command: format!("{} {} n={} m_used", r.backend, r.mode.name(), r.n),
                unit: "MiB".into(),
                mean: m,
                stddev: None,
                median: m,
                min: m,
                max: m,
                times: vec![m],
                count: 1,
                parameters: params(&base),
            });
        }
    }
    Export { schema_version: SCHEMA_VERSION, source: "boot".into(), results }
}

/// `hostd report`: T_a, every overhead and linearity point, the rings.
pub fn of_report(rep: &Report) -> Export {
    let mut results = Vec::new();
    for (r, s) in &rep.baseline {
        results.push(from_stat(
            format!("native {} T_a", r.name()),
            s,
            params(&[
                ("backend", "native".into()),
                ("resource", r.name().into()),
                ("test", "baseline".into()),
            ]),
        ));
    }
    for (key, ps) in &rep.overhead {
        for p in ps {
            results.push(from_stat(
                format!("{key} overhead n={}", p.n),
                &p.value,
                params(&[
                    ("key", key.clone()),
                    ("test", "overhead".into()),
                    ("n", p.n.to_string()),
                ]),
            ));
        }
    }
    for (key, ps) in &rep.linearity {
        for p in ps {
            results.push(from_stat(
                format!("{key} linearity n={}", p.n),
                &p.value,
                params(&[
                    ("key", key.clone()),
                    ("test", "linearity".into()),
                    ("n", p.n.to_string()),
                ]),
            ));
        }
    }
    for (b, r) in &rep.ring {
        results.push(from_stat(
            format!("{b} ring"),
            &r.bandwidth,
            params(&[
                ("backend", b.to_string()),
                ("test", "ring".into()),
                ("guests", r.guests.to_string()),
            ]),
        ));
    }
    Export { schema_version: SCHEMA_VERSION, source: "report".into(), results }
}

/// The JSON Schema of [`Export`], as committed in docs/schema/export.schema.json.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Export)).expect("a schema is JSON")
}

/// CSV: one row per result (times left out; they are in the JSON).
pub fn csv(e: &Export) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "command",
        "unit",
        "mean",
        "stddev",
        "median",
        "min",
        "max",
        "count",
        "parameters",
    ])?;
    for r in &e.results {
        let p = r.parameters.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        w.write_record([
            r.command.clone(),
            r.unit.clone(),
            r.mean.to_string(),
            r.stddev.map(|x| x.to_string()).unwrap_or_default(),
            r.median.to_string(),
            r.min.to_string(),
            r.max.to_string(),
            r.count.to_string(),
            p,
        ])?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

/// Markdown: hyperfine's table, with the unit per row.
pub fn markdown(e: &Export) -> String {
    let mut m = String::from("| Command | Mean ± σ | Median | Min | Max | Unit | n |\n|:---|---:|---:|---:|---:|:---|---:|\n");
    for r in &e.results {
        let sd = r.stddev.map(|s| format!(" ± {s:.4}")).unwrap_or_default();
        m.push_str(&format!(
            "| `{}` | {:.4}{sd} | {:.4} | {:.4} | {:.4} | {} | {} |\n",
            r.command.replace('|', "\\|").replace('`', "'"),
            r.mean,
            r.median,
            r.min,
            r.max,
            r.unit,
            r.count
        ));
    }
    m
}

/// Where to write each format (clap fills it from --export-*).
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// JSON file (hyperfine's layout).
    pub json: Option<PathBuf>,
    /// CSV file.
    pub csv: Option<PathBuf>,
    /// Markdown table.
    pub markdown: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ExportError {
    #[error("--export-csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Writes a whole file or nothing: a temp file beside it, renamed over it.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ExportError> {
    let err = |source| ExportError::Write { path: path.into(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    std::io::Write::write_all(&mut tmp, data).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Writes every format asked for.
pub fn write(e: &Export, t: &Targets) -> Result<(), ExportError> {
    if let Some(p) = &t.json {
        let mut j = serde_json::to_vec_pretty(e).expect("an export is JSON");
        j.push(b'\n');
        write_atomic(p, &j)?;
    }
    if let Some(p) = &t.csv {
        write_atomic(p, &csv(e)?)?;
    }
    if let Some(p) = &t.markdown {
        write_atomic(p, markdown(e).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export() -> Export {
        let s = Summary::of("x", "s", vec![1.0, 2.0, 4.0]).unwrap();
        Export {
            schema_version: SCHEMA_VERSION,
            source: "bench".into(),
            results: vec![from_summary(
                "uml cpu, \"quoted\"".into(),
                &s,
                params(&[("backend", "uml".into())]),
            )],
        }
    }

    #[test]
    fn hyperfine_keys_and_values() {
        let v = serde_json::to_value(export()).unwrap();
        let r = &v["results"][0];
        for k in ["command", "mean", "stddev", "median", "min", "max", "times"] {
            assert!(r.get(k).is_some(), "no {k}: {r}");
        }
        assert_eq!(r["median"], 2.0);
        assert_eq!(r["times"], serde_json::json!([1.0, 2.0, 4.0]));
        assert!((r["mean"].as_f64().unwrap() - 7.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn csv_quotes_and_markdown_escapes() {
        let e = export();
        let c = String::from_utf8(csv(&e).unwrap()).unwrap();
        assert!(c.lines().nth(1).unwrap().starts_with("\"uml cpu, \"\"quoted\"\"\",s,"), "{c}");
        let mut rdr = csv::Reader::from_reader(c.as_bytes());
        let row = rdr.records().next().unwrap().unwrap();
        assert_eq!(&row[0], "uml cpu, \"quoted\"");
        let m = markdown(&e);
        assert!(m.contains("| `uml cpu, \"quoted\"` | 2.3333 ± 1.5275 | 2.0000 |"), "{m}");
    }

    /// The committed schema is the one the types generate (regenerate with
    /// `VIRTBENCH_WRITE_SCHEMA=1 cargo test -p hostd-report --lib export`).
    #[test]
    fn committed_schema_is_current() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema/export.schema.json");
        let now = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
        if std::env::var_os("VIRTBENCH_WRITE_SCHEMA").is_some() {
            std::fs::write(&path, &now).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == now,
            "{} is stale: regenerate it (see this test's comment)",
            path.display()
        );
    }
}
