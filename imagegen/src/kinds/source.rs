//! A kernel's source tarball, ready to unpack: a file checked against the recipe's pin, or
//! the tarball inside a pinned Debian package (`[source]`), fetched by exact version and
//! taken out into `<cache>/sources/`. What the machine has installed under `/usr/src` is
//! used only as a shortcut, when its sha256 is the pinned one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::debs::{extract_file, Fetcher, Pin};
use crate::build::BuildError;
use crate::hash::{self, HashWriter};
use crate::plan::{KernelSource, PlanError};
use crate::recipe::Recipe;

/// Hashes already taken in this run (a tarball shared by four kernels is hashed once).
pub(crate) type Checked = HashMap<PathBuf, String>;

/// The path of the tarball `r` pins with `sha256`, fetched and checked first when needed.
pub(crate) fn prepare(
    fetcher: Fetcher<'_>,
    r: &Recipe,
    source: &KernelSource,
    sha256: &str,
    checked: &mut Checked,
) -> Result<PathBuf, BuildError> {
    let hash_of = |checked: &mut Checked, p: &Path, field: &str| -> Result<String, BuildError> {
        if let Some(h) = checked.get(p) {
            return Ok(h.clone());
        }
        fetcher.progress.notice(&format!("checking the sha256 of {}", p.display()));
        let (h, _) = hash::sha256_file(p).map_err(|e| PlanError::HashInput {
            file: r.file.clone(),
            field: field.into(),
            path: p.to_path_buf(),
            source: e,
        })?;
        checked.insert(p.to_path_buf(), h.clone());
        Ok(h)
    };
    match source {
        KernelSource::File(p) => {
            let actual = hash_of(checked, p, "source")?;
            if actual != sha256 {
                let e =
                    PlanError::VerifySource { file: r.file.clone(), path: p.clone(), pinned: sha256.into(), actual };
                return Err(e.into());
            }
            Ok(p.clone())
        }
        KernelSource::Deb(d) => {
            let file_name =
                Path::new(&d.path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let dir = fetcher.cache.join("sources");
            let cached = dir.join(format!("{sha256}-{file_name}"));
            if cached.is_file() {
                if hash_of(checked, &cached, "sha256")? == sha256 {
                    return Ok(cached);
                }
                // Damaged: the cache is ours (and locked); take it out again.
                let _ = std::fs::remove_file(&cached);
                checked.remove(&cached);
            }
            // The installed package, when it is the pinned one.
            let installed = PathBuf::from(&d.path);
            if installed.is_file() && hash_of(checked, &installed, "source.path")? == sha256 {
                return Ok(installed);
            }
            let pin = Pin { name: &d.package, version: &d.version, sha256: &d.sha256 };
            let deb = fetcher.fetch(&r.name, &r.file, &pin)?;
            let (taken, actual) = take_out(fetcher, &r.name, &deb, &format!("{}={}", d.package, d.version), &d.path)?;
            if actual != sha256 {
                let _ = std::fs::remove_file(&taken);
                return Err(BuildError::Build {
                    recipe: r.name.clone(),
                    step: format!("taking {} out of {}={}", d.path, d.package, d.version),
                    message: format!("it has sha256 {actual}, the recipe pins {sha256} (field `sha256`)"),
                });
            }
            let cached = taken;
            checked.insert(cached.clone(), actual);
            Ok(cached)
        }
    }
}

/// Takes the tarball `path` out of `deb` (labelled `label` in errors) into
/// `<cache>/sources/<sha256>-<file name>`; returns that path and the sha256.
pub(crate) fn take_out(
    fetcher: Fetcher<'_>,
    recipe: &str,
    deb: &Path,
    label: &str,
    path: &str,
) -> Result<(PathBuf, String), BuildError> {
    let fail = |m: String| BuildError::Build {
        recipe: recipe.to_string(),
        step: format!("taking {path} out of {label}"),
        message: m,
    };
    let file_name = Path::new(path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = fetcher.cache.join("sources");
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(crate::store::TMP_PREFIX)
        .tempfile_in(&dir)
        .map_err(|e| fail(format!("temporary file in {}: {e}", dir.display())))?;
    fetcher.progress.step(recipe, &format!("taking {path} out of {label}"));
    let mut w = HashWriter::new(std::io::BufWriter::new(tmp.as_file()));
    if !extract_file(deb, path, &mut w).map_err(fail)? {
        return Err(fail(format!("{label} has no regular file {path}")));
    }
    let (buf, sha, _) = w.finish();
    buf.into_inner().map_err(|e| fail(e.error().to_string()))?;
    let dst = dir.join(format!("{sha}-{file_name}"));
    tmp.persist(&dst).map_err(|e| fail(format!("moving it to {}: {}", dst.display(), e.error)))?;
    Ok((dst, sha))
}
