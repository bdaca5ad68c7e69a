//! Writing a results directory's report: report.json, report.csv, report.md, the figures and
//! index.html, never over a report that stands on more data.

use std::path::Path;

use super::{build, csv, figures, html_page, Figure, Report};
use crate::plot;
use crate::results::{self, DirError, ReadError};

/// Why `hostd report` (or a run's closing report) wrote nothing, or not everything.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum WriteError {
    /// The results directory or its samples could not be read.
    #[error(transparent)]
    Build(#[from] DirError),
    /// The report already there could not be read.
    #[error("reading the report to be replaced: {0}")]
    Previous(ReadError),
    /// The report already there stands on more data than the samples now hold.
    #[error(
        "{path} holds {had} data points, the samples only {has}: refusing to replace it with less (are the samples missing, \
         cut short or another run's?); pass --force to rebuild it anyway"
    )]
    LessData { path: std::path::PathBuf, had: usize, has: usize },
    /// A file of the report could not be written.
    #[error(transparent)]
    Write(results::SaveError),
    #[error("report.json: {0}")]
    Json(serde_json::Error),
    #[error("report.csv: {0}")]
    Csv(csv::Error),
    #[error("creating {}: {source}", path.display())]
    CreateDir { path: std::path::PathBuf, source: std::io::Error },
    /// A figure could not be drawn.
    #[error("drawing {path}: {source}")]
    Figure { path: std::path::PathBuf, source: crate::plot::PlotError },
}

/// Writes report.json, report.csv, every figure and index.html into the results directory
/// `dir`, rebuilt from its samples. Never into anything but a results directory, and never
/// over a report built from more data than the samples now hold, unless `force`.
pub fn write(dir: &Path, force: bool) -> Result<Report, WriteError> {
    let rep = build(dir)?;
    let previous = dir.join("report.json");
    if !force {
        if let Some(old) = results::read_optional(&previous, results::MAX_FILE_BYTES)
            .map_err(WriteError::Previous)?
        {
            match serde_json::from_slice::<Report>(&old) {
                Ok(old) if rep.data_points() < old.data_points() => {
                    return Err(WriteError::LessData {
                        path: previous,
                        had: old.data_points(),
                        has: rep.data_points(),
                    });
                }
                Ok(_) => {}
                // Not a report this hostd can read (damaged, or another version's): nothing
                // to compare with, and the rebuild is the repair.
                Err(e) => tracing::warn!(
                    "{}: not a readable report ({e}); replacing it",
                    previous.display()
                ),
            }
        }
    }
    // Temp files of a writer killed mid-write go, as when a run resumes.
    results::remove_stale_temps(dir);
    let bad = rep.non_finite();
    if !bad.is_empty() {
        tracing::warn!(
            "{}: figures that are not finite numbers: {}",
            dir.display(),
            bad.join(", ")
        );
    }
    let w = |name: &str, data: &[u8]| results::write_in(dir, name, data).map_err(WriteError::Write);
    let json = serde_json::to_vec_pretty(&crate::results::Versioned::new(&rep));
    w("report.json", &json.map_err(WriteError::Json)?)?;
    w("report.csv", &csv(&rep).map_err(WriteError::Csv)?)?;
    w("report.md", crate::decision::markdown(&crate::decision::decide(&rep)).as_bytes())?;
    let figs = figures(&rep);
    // A run killed right after making its directory has no figures/ yet.
    let fig_dir = dir.join("figures");
    std::fs::create_dir_all(&fig_dir)
        .map_err(|source| WriteError::CreateDir { path: fig_dir.clone(), source })?;
    for (name, f, _) in &figs {
        let p = fig_dir.join(name);
        match f {
            Figure::Line(c) => plot::write(c, &p),
            Figure::Bars(b) => plot::write_bars(b, &p),
        }
        .map_err(|source| WriteError::Figure { path: p.clone(), source })?;
    }
    w("index.html", html_page(&rep, &figs).as_bytes())?;
    Ok(rep)
}
