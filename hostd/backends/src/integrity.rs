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
use std::sync::Mutex;

/// An artifact's path and what it was checked against.
type Key = (PathBuf, String);

/// Outcomes so far.
static CHECKED: Mutex<Option<HashMap<Key, Result<(), String>>>> = Mutex::new(None);

fn once(
    path: &Path,
    against: &str,
    check: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
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
pub fn check_blob(path: &Path, want: &str) -> Result<(), String> {
    once(path, want, || {
        match imagegen::hash::sha256_file(path) {
        Ok((got, _)) if got == want => Ok(()),
        Ok((got, _)) => Err(format!("{} has sha256 {got}, its manifest says {want}: tampered or damaged (run `imagegen verify`)", path.display())),
        Err(e) => Err(format!("hashing {}: {e}", path.display())),
    }
    })
}

/// The gzip'd newc cpio at `path` names nothing outside its root.
pub fn check_initramfs(path: &Path) -> Result<(), String> {
    once(path, "cpio", || {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut cpio)
            .map_err(|e| format!("{}: not a gzip'd cpio: {e}", path.display()))?;
        imagegen::materialize::check_cpio(&cpio)
            .map(drop)
            .map_err(|e| format!("{}: {e}", path.display()))
    })
}

/// The unpacked tree of blob `sha256` still matches the blob.
pub fn check_tree(store: &imagegen::Store, sha256: &str) -> Result<(), String> {
    once(&store.blob_path(sha256), "tree", || store.check_tree(sha256).map_err(|e| e.to_string()))
}
