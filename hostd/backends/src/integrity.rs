//! Image integrity: hostd refuses an artifact whose bytes are not the ones its manifest
//! names, before any guest boots it. `imagegen verify` re-hashes a whole store on demand;
//! this checks exactly what a run is about to use, once per hostd process (a campaign
//! resolves its images once; a test binary resolves them many times, hashing each once):
//! - a blob (kernel, initramfs, disk, agent) against its manifest's sha256;
//! - an initramfs's entries: no `..`, no absolute name, no symlink leaving its root;
//! - an unpacked tree (rootfs, OCI bundle) against the blob it was unpacked from, since the
//!   tree is unpacked once and then used as it is.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imagegen::materialize::MaterializeError;

/// Why an artifact is refused. Clone (its sources shared) because outcomes are remembered
/// for the process.
#[derive(Debug, Clone, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum IntegrityError {
    /// The blob's bytes are not the ones its manifest names.
    #[error(
        "{} has sha256 {got}, its manifest says {want}: tampered or damaged (run `imagegen verify`)",
        path.display()
    )]
    Tampered { path: PathBuf, got: String, want: String },
    #[error("hashing {}: {source}", path.display())]
    Hash { path: PathBuf, source: Arc<std::io::Error> },
    #[error("{}: {source}", path.display())]
    Open { path: PathBuf, source: Arc<std::io::Error> },
    #[error("{}: not a gzip'd cpio: {source}", path.display())]
    NotGzip { path: PathBuf, source: Arc<std::io::Error> },
    /// An initramfs entry that names something outside its root (or an unreadable cpio).
    #[error("{}: {source}", path.display())]
    Cpio { path: PathBuf, source: Arc<MaterializeError> },
    /// An unpacked tree that no longer matches its blob.
    #[error(transparent)]
    Tree(Arc<MaterializeError>),
}

/// An artifact's path and what it was checked against.
type Key = (PathBuf, String);

/// Outcomes so far.
static CHECKED: Mutex<Option<HashMap<Key, Result<(), IntegrityError>>>> = Mutex::new(None);

fn once(
    path: &Path,
    against: &str,
    check: impl FnOnce() -> Result<(), IntegrityError>,
) -> Result<(), IntegrityError> {
    let key = (path.to_path_buf(), against.to_string());
    if let Some(r) =
        CHECKED.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).get(&key)
    {
        return r.clone();
    }
    let r = check();
    CHECKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(key, r.clone());
    r
}

/// The blob at `path` has sha256 `want`.
pub fn check_blob(path: &Path, want: &str) -> Result<(), IntegrityError> {
    once(path, want, || match imagegen::hash::sha256_file(path) {
        Ok((got, _)) if got == want => Ok(()),
        Ok((got, _)) => {
            Err(IntegrityError::Tampered { path: path.into(), got, want: want.to_string() })
        }
        Err(e) => Err(IntegrityError::Hash { path: path.into(), source: Arc::new(e) }),
    })
}

/// The gzip'd newc cpio at `path` names nothing outside its root.
pub fn check_initramfs(path: &Path) -> Result<(), IntegrityError> {
    once(path, "cpio", || {
        let f = std::fs::File::open(path)
            .map_err(|e| IntegrityError::Open { path: path.into(), source: Arc::new(e) })?;
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut cpio)
            .map_err(|e| IntegrityError::NotGzip { path: path.into(), source: Arc::new(e) })?;
        imagegen::materialize::check_cpio(&cpio)
            .map(drop)
            .map_err(|e| IntegrityError::Cpio { path: path.into(), source: Arc::new(e) })
    })
}

/// The unpacked tree of blob `sha256` still matches the blob.
pub fn check_tree(store: &imagegen::Store, sha256: &str) -> Result<(), IntegrityError> {
    once(&store.blob_path(sha256), "tree", || {
        store.check_tree(sha256).map_err(|e| IntegrityError::Tree(Arc::new(e)))
    })
}
