//! The content-addressed store (and the cache, which has the same `blobs/` + `builds/`
//! layout). Every write goes to a temp file in the destination directory, is fsynced and
//! renamed, so a reader never sees half an artifact; manifests are written after the blobs
//! they name, so a manifest never names a missing blob. Temp files left by a killed build
//! are removed by the next one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

use crate::hash::{self, HashWriter};
use crate::manifest::{blob_rel_path, Manifest, Output};

/// Prefix of every temp file and directory; never a valid blob or manifest name.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("no current build of recipe {recipe:?} in {store} (run `imagegen build {recipe}`)")]
    NotBuilt { recipe: String, store: PathBuf },
    #[error("reading {path}: {source}")]
    ReadManifest { path: PathBuf, source: io::Error },
    #[error("manifest {path}: {source}")]
    ParseManifest { path: PathBuf, source: serde_json::Error },
    #[error("recipe {recipe:?} has no output {output:?}")]
    NoSuchOutput { recipe: String, output: String },
    #[error("{recipe}/{output}: blob {path} is missing or has the wrong size")]
    MissingBlob { recipe: String, output: String, path: PathBuf },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("locking {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("listing {path}: {source}")]
    List { path: PathBuf, source: io::Error },
}

/// A store (or cache) directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Holds the store's build lock until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _flock: Flock<File>,
}

impl Store {
    /// Opens an existing store for reading (hostd). Creates nothing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => Ok(Self { root }),
            Ok(_) => Err(StoreError::Open { path: root, source: io::Error::other("not a directory") }),
            Err(source) => Err(StoreError::Open { path: root, source }),
        }
    }

    /// Opens a store for building, creating its directories.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let s = Self { root: root.into() };
        for d in [s.blobs_dir(), s.builds_dir(), s.current_dir(), s.trees_dir()] {
            fs::create_dir_all(&d).map_err(|source| StoreError::Open { path: d, source })?;
        }
        Ok(s)
    }

    /// Opens the cache for building: the store's layout without `current/` and `trees/`.
    pub(crate) fn create_cache(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let s = Self { root: root.into() };
        for d in [s.blobs_dir(), s.builds_dir()] {
            fs::create_dir_all(&d).map_err(|source| StoreError::Open { path: d, source })?;
        }
        Ok(s)
    }

    /// A store handle whose directories may not exist yet (look-ups just miss).
    pub(crate) fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    pub(crate) fn builds_dir(&self) -> PathBuf {
        self.root.join("builds")
    }
    pub(crate) fn current_dir(&self) -> PathBuf {
        self.root.join("current")
    }
    pub(crate) fn trees_dir(&self) -> PathBuf {
        self.root.join("trees")
    }

    /// Where the blob with this sha256 lives (whether or not it exists).
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.blobs_dir().join(sha256)
    }

    /// The manifest of the current build of `recipe`.
    pub fn current(&self, recipe: &str) -> Result<Manifest, StoreError> {
        let path = self.current_dir().join(format!("{recipe}.json"));
        match read_manifest(&path) {
            Err(StoreError::ReadManifest { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotBuilt { recipe: recipe.to_string(), store: self.root.clone() })
            }
            r => r,
        }
    }

    /// The current manifest of every recipe, by recipe name.
    pub fn current_all(&self) -> Result<Vec<Manifest>, StoreError> {
        let mut out = Vec::new();
        for path in list(&self.current_dir())? {
            if path.extension().is_some_and(|e| e == "json") {
                out.push(read_manifest(&path)?);
            }
        }
        out.sort_by(|a, b| a.recipe.cmp(&b.recipe));
        Ok(out)
    }

    /// Absolute path of output `name` of a build, checked to exist with the recorded size
    /// (not re-hashed: see [`Store::verify`]).
    pub fn output_path(&self, m: &Manifest, name: &str) -> Result<PathBuf, StoreError> {
        let o = m
            .output(name)
            .ok_or_else(|| StoreError::NoSuchOutput { recipe: m.recipe.clone(), output: name.to_string() })?;
        let path = self.root.join(&o.path);
        match fs::metadata(&path) {
            Ok(md) if md.is_file() && md.len() == o.size => Ok(path),
            _ => Err(StoreError::MissingBlob { recipe: m.recipe.clone(), output: name.to_string(), path }),
        }
    }

    /// The manifest of the build with this input hash, if it and all its blobs are there.
    pub fn build_manifest(&self, input_hash: &str) -> Option<Manifest> {
        let m = read_manifest(&self.builds_dir().join(format!("{input_hash}.json"))).ok()?;
        let complete = m.input_hash == input_hash
            && m.outputs.values().all(|o| {
                o.path == blob_rel_path(&o.sha256)
                    && fs::metadata(self.blob_path(&o.sha256)).is_ok_and(|md| md.is_file() && md.len() == o.size)
            });
        complete.then_some(m)
    }

    /// Takes the build lock: one build per store at a time. `on_wait` is called (with the
    /// lock file) before blocking when another build holds it.
    pub(crate) fn lock(&self, on_wait: impl FnOnce(&Path)) -> Result<StoreLock, StoreError> {
        let path = self.root.join(".lock");
        let err = |source| StoreError::Lock { path: path.clone(), source };
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(err)?;
        let f = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => return Ok(StoreLock { _flock: flock }),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => f,
            Err((_, e)) => return Err(err(io::Error::from(e))),
        };
        on_wait(&path);
        let flock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| err(io::Error::from(e)))?;
        Ok(StoreLock { _flock: flock })
    }

    /// Removes temp files a killed build left. Call with the lock held: every temp in
    /// blobs/, builds/ and current/ then belongs to a dead build. Temp trees are removed
    /// only when their creating process is gone (hostd makes them without the lock).
    pub(crate) fn clean_temps(&self, _lock: &StoreLock) -> Result<usize, StoreError> {
        let mut n = 0;
        // debs/ and sources/ exist in the cache only: fetched packages and kernel sources.
        let fetched = [self.root.join("debs"), self.root.join("sources")];
        for dir in [self.blobs_dir(), self.builds_dir(), self.current_dir(), self.trees_dir()].into_iter().chain(fetched) {
            let tree = dir == self.trees_dir();
            for p in list(&dir)? {
                let Some(name) = p.file_name().and_then(|n| n.to_str()) else { continue };
                let Some(rest) = name.strip_prefix(TMP_PREFIX) else { continue };
                if tree && temp_owner_alive(rest) {
                    continue;
                }
                let r = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                r.map_err(|source| StoreError::Write { path: p.clone(), source })?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes a blob produced by `f`, hashing it on the way; returns its sha256 and size.
    pub(crate) fn put_blob_with<F>(&self, f: F) -> Result<(String, u64), StoreError>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()>,
    {
        let dir = self.blobs_dir();
        let tmp = dir.join(temp_name("blob"));
        let res = (|| {
            let file = create_temp(&tmp)?;
            let mut w = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
            f(&mut w)?;
            let (buf, sha, len) = w.finish();
            let file = buf.into_inner().map_err(|e| e.into_error())?;
            finish_blob(file, &tmp, &self.blob_path(&sha), &dir)?;
            Ok((sha, len))
        })();
        res.map_err(|source| {
            let _ = fs::remove_file(&tmp);
            StoreError::Write { path: tmp, source }
        })
    }

    pub(crate) fn put_blob_bytes(&self, data: &[u8]) -> Result<(String, u64), StoreError> {
        self.put_blob_with(|w| w.write_all(data))
    }

    pub(crate) fn put_blob_file(&self, src: &Path) -> Result<(String, u64), StoreError> {
        self.put_blob_with(|w| {
            let mut f = File::open(src)?;
            io::copy(&mut f, w).map(|_| ())
        })
    }

    /// Brings blob `sha256` over from `from` (hard link when on the same file system, else
    /// copy), after checking `from`'s copy still has that hash. Ok(false): not there or
    /// corrupt there, so not imported.
    pub(crate) fn import_blob(&self, from: &Store, sha256: &str) -> Result<bool, StoreError> {
        let src = from.blob_path(sha256);
        match hash::sha256_file(&src) {
            Ok((h, _)) if h == sha256 => {}
            _ => return Ok(false),
        }
        let dir = self.blobs_dir();
        let tmp = dir.join(temp_name("import"));
        let res = (|| {
            if fs::hard_link(&src, &tmp).is_err() {
                let _ = fs::remove_file(&tmp);
                let mut out = create_temp(&tmp)?;
                io::copy(&mut File::open(&src)?, &mut out)?;
                finish_blob(out, &tmp, &self.blob_path(sha256), &dir)?;
            } else {
                fs::rename(&tmp, self.blob_path(sha256))?;
                // rename(2) between two links to one inode succeeds without doing anything.
                let _ = fs::remove_file(&tmp);
                sync_dir(&dir)?;
            }
            Ok(())
        })();
        res.map(|()| true).map_err(|source| {
            let _ = fs::remove_file(&tmp);
            StoreError::Write { path: tmp, source }
        })
    }

    /// Records a finished build under `builds/`. Its blobs must already be in this store.
    pub(crate) fn put_build_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        write_json_atomic(&self.builds_dir(), &format!("{}.json", m.input_hash), m)
    }

    /// Points `current/<recipe>.json` at this build (no write when it already does).
    pub(crate) fn set_current(&self, m: &Manifest) -> Result<(), StoreError> {
        if self.current(&m.recipe).is_ok_and(|c| c == *m) {
            return Ok(());
        }
        write_json_atomic(&self.current_dir(), &format!("{}.json", m.recipe), m)
    }

    /// Re-hashes every blob and checks every manifest's outputs against it.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut actual: BTreeMap<String, Result<(String, u64), String>> = BTreeMap::new();
        for p in list(&self.blobs_dir())? {
            let Some(name) = p.file_name().and_then(|n| n.to_str()).map(String::from) else { continue };
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            let r = hash::sha256_file(&p).map_err(|e| e.to_string());
            report.blobs_checked += 1;
            actual.insert(name, r);
        }
        let mut referenced = BTreeMap::new();
        let mut manifests = Vec::new();
        for dir in [self.builds_dir(), self.current_dir()] {
            for p in list(&dir)? {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if name.starts_with(TMP_PREFIX) || !name.ends_with(".json") {
                    continue;
                }
                report.manifests_checked += 1;
                match read_manifest(&p) {
                    Ok(m) => manifests.push(m),
                    Err(e) => report.problems.push(Problem {
                        recipe: None,
                        output: None,
                        path: p.clone(),
                        what: format!("unreadable manifest: {e}"),
                    }),
                }
            }
        }
        for m in &manifests {
            for (name, o) in &m.outputs {
                referenced.insert(o.sha256.clone(), (m.recipe.clone(), name.clone()));
                let path = self.root.join(&o.path);
                let what = if o.path != blob_rel_path(&o.sha256) {
                    Some(format!("recorded path {:?} is not the blob path of its sha256", o.path))
                } else {
                    match actual.get(&o.sha256) {
                        None => Some("missing".to_string()),
                        Some(Err(e)) => Some(format!("unreadable: {e}")),
                        Some(Ok((_, size))) if *size < o.size => {
                            Some(format!("truncated ({size} of {} bytes)", o.size))
                        }
                        Some(Ok((h, size))) if *h != o.sha256 || *size != o.size => {
                            Some(format!("tampered (content sha256 {h}, {size} bytes)"))
                        }
                        Some(Ok(_)) => None,
                    }
                };
                if let Some(what) = what {
                    let p = Problem { recipe: Some(m.recipe.clone()), output: Some(name.clone()), path, what };
                    if !report.problems.contains(&p) {
                        report.problems.push(p);
                    }
                }
            }
        }
        // Corrupt blobs no manifest names (outputs of builds whose manifests are gone).
        for (name, r) in &actual {
            if referenced.contains_key(name) {
                continue;
            }
            let what = match r {
                Err(e) => format!("unreadable: {e}"),
                Ok((h, _)) if h != name => format!("tampered (content sha256 {h})"),
                Ok(_) => continue,
            };
            report.problems.push(Problem { recipe: None, output: None, path: self.blob_path(name), what });
        }
        Ok(report)
    }
}

/// What `imagegen verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub blobs_checked: usize,
    pub manifests_checked: usize,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One bad artifact or manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub recipe: Option<String>,
    pub output: Option<String>,
    pub path: PathBuf,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.recipe, &self.output) {
            (Some(r), Some(o)) => write!(f, "{r}/{o}: {}: {}", self.path.display(), self.what),
            _ => write!(f, "{}: {}", self.path.display(), self.what),
        }
    }
}

pub(crate) fn read_manifest(path: &Path) -> Result<Manifest, StoreError> {
    let text = fs::read(path).map_err(|source| StoreError::ReadManifest { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&text).map_err(|source| StoreError::ParseManifest { path: path.to_path_buf(), source })
}

/// Directory entries (none when the directory does not exist), sorted.
pub(crate) fn list(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => return Err(StoreError::List { path: dir.to_path_buf(), source }),
    };
    let mut v = Vec::new();
    for e in rd {
        v.push(e.map_err(|source| StoreError::List { path: dir.to_path_buf(), source })?.path());
    }
    v.sort();
    Ok(v)
}

/// `.tmp-<pid>-<n>-<tag>`: unique in this process, and says who made it.
pub(crate) fn temp_name(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{TMP_PREFIX}{}-{}-{tag}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Whether the process named in a temp name (after the prefix) still runs.
fn temp_owner_alive(rest: &str) -> bool {
    let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { return false };
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn create_temp(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// fsync, make read-only (and executable for ELF files: the agent and the UML kernel run
/// straight from the store), rename into place, fsync the directory.
fn finish_blob(file: File, tmp: &Path, dst: &Path, dir: &Path) -> io::Result<()> {
    file.sync_all()?;
    let mut magic = [0u8; 4];
    let elf = File::open(tmp).and_then(|mut f| io::Read::read_exact(&mut f, &mut magic)).is_ok() && magic == *b"\x7fELF";
    file.set_permissions(fs::Permissions::from_mode(if elf { 0o555 } else { 0o444 }))?;
    drop(file);
    fs::rename(tmp, dst)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_json_atomic(dir: &Path, name: &str, value: &Manifest) -> Result<(), StoreError> {
    let tmp = dir.join(temp_name("manifest"));
    let res = (|| {
        let mut f = create_temp(&tmp)?;
        let mut text = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
        text.push(b'\n');
        f.write_all(&text)?;
        f.sync_all()?;
        f.set_permissions(fs::Permissions::from_mode(0o444))?;
        drop(f);
        fs::rename(&tmp, dir.join(name))?;
        sync_dir(dir)
    })();
    res.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        StoreError::Write { path: dir.join(name), source }
    })
}

/// Records an output as the manifest names it.
pub(crate) fn output_record(sha256: String, size: u64) -> Output {
    Output { path: blob_rel_path(&sha256), sha256, size }
}
