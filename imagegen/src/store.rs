//! The content-addressed store (and the cache, which has the same `blobs/` + `builds/`
//! layout). Every write goes to a temp file in the destination directory, is fsynced and
//! renamed, so a reader never sees half an artifact; manifests are written after the blobs
//! they name, so a manifest never names a missing blob. Temp files left by a killed build
//! are removed by the next one.
//!
//! What the store reads it opens only if it is a regular file in the store's own
//! directories: symlinks are never followed and FIFOs or devices never opened (a blob
//! symlinked to /dev/zero or a FIFO in blobs/ would otherwise hang a reader), and every
//! manifest is checked to name its blobs by `blobs/sha256/<sha256>` before anything uses
//! it, so a manifest cannot make imagegen or hostd read, print or advise deleting a file
//! outside the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

use crate::hash::{self, is_sha256_hex, HashWriter};
use crate::manifest::{blob_rel_path, Manifest, Output};
use crate::recipe::valid_name;

/// Prefix of every temp file and directory; never a valid blob or manifest name.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// Largest manifest read: real ones are a few KiB (the recipe text is the bulk).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not an imagegen store: it has no {missing}/ (`imagegen build` makes a store)")]
    NotAStore { path: PathBuf, missing: &'static str },
    #[error("{recipe:?} is not a recipe name (lower-case letters, digits, - and _)")]
    RecipeName { recipe: String },
    #[error("no current build of recipe {recipe:?} in {store} (run `imagegen build {recipe}`)")]
    NotBuilt { recipe: String, store: PathBuf },
    #[error("reading {path}: {source}")]
    ReadManifest { path: PathBuf, source: io::Error },
    #[error("manifest {path}: {source}")]
    ParseManifest { path: PathBuf, source: serde_json::Error },
    #[error("manifest {path}: {problem}")]
    CheckManifest { path: PathBuf, problem: String },
    #[error("recipe {recipe:?} has no output {output:?}")]
    NoSuchOutput { recipe: String, output: String },
    #[error("{recipe}/{output}: {problem}")]
    OutputRecord { recipe: String, output: String, problem: String },
    /// `output` is `recipe/output` (one field: BuildError, which carries this, stays small).
    #[error("{output}: blob {path}: {problem}")]
    Blob { output: String, path: PathBuf, problem: String },
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

/// Holds the store's build lock (exclusive) until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _flock: Flock<File>,
}

/// Holds the store's lock shared (readers: verify, list) until dropped: no build runs
/// meanwhile, so a reader never sees a build's blobs without its manifests or the reverse.
#[derive(Debug)]
pub struct ReadLock {
    _flock: Flock<File>,
}

/// Directories every store has (`Store::create` makes them); the cache has the first two.
const LAYOUT: [&str; 3] = ["blobs/sha256", "builds", "current"];

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

    /// The manifest of the current build of `recipe`, checked (see [`check_manifest`]) and
    /// checked to be `recipe`'s.
    pub fn current(&self, recipe: &str) -> Result<Manifest, StoreError> {
        // The name becomes a file name: "../x" must not reach outside current/.
        if !valid_name(recipe) {
            return Err(StoreError::RecipeName { recipe: recipe.to_string() });
        }
        let path = self.current_dir().join(format!("{recipe}.json"));
        let m = match read_manifest(&path) {
            Err(StoreError::ReadManifest { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotBuilt { recipe: recipe.to_string(), store: self.root.clone() })
            }
            r => r?,
        };
        if m.recipe != recipe {
            return Err(StoreError::CheckManifest {
                path,
                problem: format!("it is the manifest of recipe {:?}, not {recipe:?}", m.recipe),
            });
        }
        Ok(m)
    }

    /// The current manifest of every recipe, by recipe name; the first bad entry of
    /// `current/` is an error (see [`Store::current_checked`] for all that can be read).
    pub fn current_all(&self) -> Result<Vec<Manifest>, StoreError> {
        let (good, bad) = self.current_checked()?;
        match bad.into_iter().next() {
            Some(p) => Err(StoreError::CheckManifest { path: p.path, problem: p.what }),
            None => Ok(good),
        }
    }

    /// The current manifest of every recipe that reads and checks, by recipe name, and a
    /// problem for every other entry of `current/` (temp files of a running build aside).
    pub fn current_checked(&self) -> Result<(Vec<Manifest>, Vec<Problem>), StoreError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for entry in scan_manifests(&self.current_dir(), Place::Current)? {
            match entry {
                Scanned::Manifest { manifest, .. } => good.push(*manifest),
                Scanned::Bad { problem, .. } => bad.push(problem),
            }
        }
        good.sort_by(|a, b| a.recipe.cmp(&b.recipe));
        Ok((good, bad))
    }

    /// Absolute path of output `name` of a build: its recorded path checked to be
    /// `blobs/sha256/<its sha256>`, the blob checked to be a regular file (not a symlink)
    /// of the recorded size (not re-hashed: see [`Store::verify`]).
    pub fn output_path(&self, m: &Manifest, name: &str) -> Result<PathBuf, StoreError> {
        let o = m
            .output(name)
            .ok_or_else(|| StoreError::NoSuchOutput { recipe: m.recipe.clone(), output: name.to_string() })?;
        if let Err(problem) = check_output(name, o) {
            return Err(StoreError::OutputRecord { recipe: m.recipe.clone(), output: name.to_string(), problem });
        }
        let path = self.blob_path(&o.sha256);
        let problem = match fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_file() && md.len() == o.size => return Ok(path),
            Ok(md) if md.file_type().is_file() => format!("{} bytes, its manifest records {}", md.len(), o.size),
            Ok(md) => not_regular(md.file_type()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => "missing".to_string(),
            Err(e) => e.to_string(),
        };
        Err(StoreError::Blob { output: format!("{}/{name}", m.recipe), path, problem })
    }

    /// The manifest of the build with this input hash, if it and all its blobs are there.
    pub fn build_manifest(&self, input_hash: &str) -> Option<Manifest> {
        if !is_sha256_hex(input_hash) {
            return None;
        }
        let m = read_manifest(&self.builds_dir().join(format!("{input_hash}.json"))).ok()?;
        let complete = m.input_hash == input_hash && m.outputs.keys().all(|name| self.output_path(&m, name).is_ok());
        complete.then_some(m)
    }

    /// Takes the build lock: one build per store at a time, and no reader
    /// ([`Store::lock_shared`]) meanwhile. `on_wait` is called (with the lock file) before
    /// blocking when another imagegen holds it.
    pub(crate) fn lock(&self, on_wait: impl FnOnce(&Path)) -> Result<StoreLock, StoreError> {
        let path = self.root.join(".lock");
        let f = open_lock_file(&path, true)?;
        take_flock(f, &path, FlockArg::LockExclusiveNonblock, FlockArg::LockExclusive, on_wait)
            .map(|flock| StoreLock { _flock: flock })
    }

    /// Takes the store's lock shared, for reading the store as a whole: waits while a
    /// build runs (calling `on_wait` with the lock file first), runs beside other readers.
    /// A directory without the store's layout is refused before anything is created in it.
    pub fn lock_shared(&self, on_wait: impl FnOnce(&Path)) -> Result<ReadLock, StoreError> {
        self.check_layout()?;
        let path = self.root.join(".lock");
        let f = open_lock_file(&path, false)?;
        take_flock(f, &path, FlockArg::LockSharedNonblock, FlockArg::LockShared, on_wait)
            .map(|flock| ReadLock { _flock: flock })
    }

    /// The store's directories exist: an empty or unrelated directory is not a store.
    pub fn check_layout(&self) -> Result<(), StoreError> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::Open { path: self.root.clone(), source: io::Error::other("not a directory") })
            }
            Err(source) => return Err(StoreError::Open { path: self.root.clone(), source }),
        }
        for missing in LAYOUT {
            if !fs::metadata(self.root.join(missing)).is_ok_and(|m| m.is_dir()) {
                return Err(StoreError::NotAStore { path: self.root.clone(), missing });
            }
        }
        Ok(())
    }

    /// The bytes of blob `sha256` (a regular file of the store, never a symlink's target).
    pub(crate) fn read_blob(&self, sha256: &str) -> io::Result<Vec<u8>> {
        if !is_sha256_hex(sha256) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{sha256:?} is not a sha256")));
        }
        let (mut f, len) = open_regular(&self.blob_path(sha256))?;
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        f.read_to_end(&mut data)?;
        Ok(data)
    }

    /// Removes temp files a killed build left. Call with the lock held: every temp in
    /// blobs/, builds/ and current/ then belongs to a dead build. Temp trees are removed
    /// only when their creating process is gone (hostd makes them without the lock).
    pub(crate) fn clean_temps(&self, _lock: &StoreLock) -> Result<usize, StoreError> {
        let mut n = 0;
        // debs/ and sources/ exist in the cache only: fetched packages and kernel sources.
        let fetched = [self.root.join("debs"), self.root.join("sources")];
        for dir in
            [self.blobs_dir(), self.builds_dir(), self.current_dir(), self.trees_dir()].into_iter().chain(fetched)
        {
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
        if !is_sha256_hex(sha256) {
            return Ok(false);
        }
        let src = from.blob_path(sha256);
        match open_regular(&src).and_then(|(f, _)| hash::sha256_reader(f)) {
            Ok((h, _)) if h == sha256 => {}
            _ => return Ok(false),
        }
        let dir = self.blobs_dir();
        let tmp = dir.join(temp_name("import"));
        let res = (|| {
            if fs::hard_link(&src, &tmp).is_err() {
                let _ = fs::remove_file(&tmp);
                let mut out = create_temp(&tmp)?;
                io::copy(&mut open_regular(&src)?.0, &mut out)?;
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

    /// Checks the whole store, with the shared lock held so no build is halfway: every
    /// manifest (readable, its outputs named by `blobs/sha256/<sha256>`, under the name of
    /// its input hash or recipe), every current manifest against its build record, every
    /// blob re-hashed against its name and the manifests naming it. Blobs no manifest names
    /// are notes, not problems. Every path in the report is inside the store.
    pub fn verify(&self, _lock: &ReadLock) -> Result<VerifyReport, StoreError> {
        self.check_layout()?;
        let mut report = VerifyReport::default();
        // Manifests before blobs: a build writes a manifest after its blobs, so even a
        // reader without the lock (or a store on a file system where flock is advisory to
        // others) never lists a manifest whose blobs it then misses.
        let mut named: BTreeSet<String> = BTreeSet::new();
        let mut scan = |dir: PathBuf, place: Place, report: &mut VerifyReport| {
            let mut good: BTreeMap<String, (PathBuf, Manifest)> = BTreeMap::new();
            let mut bad: BTreeSet<String> = BTreeSet::new();
            let entries = scan_manifests(&dir, place).unwrap_or_else(|e| {
                vec![Scanned::Bad { stem: None, named: vec![], problem: Problem::file(dir.clone(), e.to_string()) }]
            });
            for entry in entries {
                match entry {
                    Scanned::Manifest { stem, path, manifest } => {
                        report.manifests_checked += 1;
                        named.extend(manifest.outputs.values().map(|o| o.sha256.clone()));
                        good.insert(stem, (path, *manifest));
                    }
                    Scanned::Bad { stem, named: n, problem } => {
                        report.manifests_checked += usize::from(stem.is_some());
                        named.extend(n);
                        bad.extend(stem);
                        report.problem(problem);
                    }
                }
            }
            (good, bad)
        };
        let (builds, bad_builds) = scan(self.builds_dir(), Place::Builds, &mut report);
        let (current, bad_current) = scan(self.current_dir(), Place::Current, &mut report);

        // The current pointer of each recipe is a copy of its build record.
        for (recipe, (cpath, cm)) in &current {
            let bpath = self.builds_dir().join(format!("{}.json", cm.input_hash));
            match builds.get(&cm.input_hash) {
                None if bad_builds.contains(&cm.input_hash) => {} // reported above
                None => report
                    .problem(Problem::file(cpath.clone(), format!("its build record {} is missing", bpath.display()))),
                Some((_, bm)) if bm != cm => {
                    // Which of the two was changed cannot be told: both go, the build redoes them.
                    report.problem(Problem::file(
                        cpath.clone(),
                        format!("differs from its build record {}", bpath.display()),
                    ));
                    report.problem(Problem::file(
                        bpath.clone(),
                        format!("differs from {}, the current manifest of {recipe}", cpath.display()),
                    ));
                }
                Some(_) => {}
            }
        }
        // A build of a recipe without a current pointer: the pointer was deleted (a build
        // writes it right after the record, and pointers of removed recipes are kept). The
        // record is what to delete: the next build restores both if the recipe still exists,
        // and if it does not, its blobs are left as orphans.
        for (bpath, bm) in builds.values() {
            if !current.contains_key(&bm.recipe) && !bad_current.contains(&bm.recipe) {
                let cpath = self.current_dir().join(format!("{}.json", bm.recipe));
                report.problem(Problem::file(
                    bpath.clone(),
                    format!("a build of {}, whose current manifest {} is missing", bm.recipe, cpath.display()),
                ));
            }
        }

        let mut actual: BTreeMap<String, Result<(String, u64), String>> = BTreeMap::new();
        match list(&self.blobs_dir()) {
            Err(e) => report.problem(Problem::file(self.blobs_dir(), e.to_string())),
            Ok(entries) => {
                for p in entries {
                    let name = match p.file_name().and_then(|n| n.to_str()) {
                        Some(n) if n.starts_with(TMP_PREFIX) => continue,
                        Some(n) if is_sha256_hex(n) => n.to_string(),
                        _ => {
                            report.problem(Problem::file(p, "not a blob: blobs are named by their sha256".into()));
                            continue;
                        }
                    };
                    report.blobs_checked += 1;
                    let r = open_regular(&p).and_then(|(f, _)| hash::sha256_reader(f)).map_err(|e| e.to_string());
                    actual.insert(name, r);
                }
            }
        }

        for m in builds.values().chain(current.values()).map(|(_, m)| m) {
            for (name, o) in &m.outputs {
                let what = match actual.get(&o.sha256) {
                    None => "missing".to_string(),
                    Some(Err(e)) => e.clone(),
                    Some(Ok((h, size))) if *h == o.sha256 && *size == o.size => continue,
                    Some(Ok((h, size))) if *h == o.sha256 => {
                        format!("the blob is intact ({size} bytes) but its manifest records {} bytes", o.size)
                    }
                    Some(Ok((_, size))) if *size < o.size => format!("truncated ({size} of {} bytes)", o.size),
                    Some(Ok((h, size))) => format!("tampered (content sha256 {h}, {size} bytes)"),
                };
                report.problem(Problem {
                    recipe: Some(m.recipe.clone()),
                    output: Some(name.clone()),
                    path: self.blob_path(&o.sha256),
                    what,
                });
            }
        }
        // Blobs no manifest names: outputs of builds whose manifests are gone.
        for (name, r) in &actual {
            if named.contains(name) {
                continue;
            }
            let path = self.blob_path(name);
            match r {
                Err(e) => report.problem(Problem::file(path, e.clone())),
                Ok((h, _)) if h != name => {
                    report.problem(Problem::file(path, format!("tampered (content sha256 {h})")))
                }
                Ok((_, size)) => {
                    report.orphan_bytes += size;
                    report.notes.push(Problem::file(path, format!("orphan: no manifest names it ({size} bytes)")));
                }
            }
        }
        debug_assert!(report.problems.iter().chain(&report.notes).all(|p| p.path.starts_with(&self.root)));
        Ok(report)
    }
}

/// What `imagegen verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub blobs_checked: usize,
    pub manifests_checked: usize,
    /// Damage: each names a file inside the store that is wrong, missing or not what the
    /// store keeps there.
    pub problems: Vec<Problem>,
    /// Not damage: blobs no manifest names (orphans).
    pub notes: Vec<Problem>,
    /// Bytes of the orphan blobs.
    pub orphan_bytes: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, p: Problem) {
        if !self.problems.contains(&p) {
            self.problems.push(p);
        }
    }
}

/// One bad artifact or manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub recipe: Option<String>,
    pub output: Option<String>,
    /// Always inside the store: what to remove (or what is missing).
    pub path: PathBuf,
    pub what: String,
}

impl Problem {
    fn file(path: PathBuf, what: String) -> Self {
        Problem { recipe: None, output: None, path, what }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.recipe, &self.output) {
            (Some(r), Some(o)) => write!(f, "{r}/{o}: {}: {}", self.path.display(), self.what),
            _ => write!(f, "{}: {}", self.path.display(), self.what),
        }
    }
}

/// Which manifest directory: its file names are input hashes or recipe names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Builds,
    Current,
}

/// One entry of a manifest directory.
enum Scanned {
    Manifest {
        stem: String,
        path: PathBuf,
        // Boxed: a manifest is several times the size of the other variant.
        manifest: Box<Manifest>,
    },
    /// `stem`: the name it was under when it looked like a manifest file; `named`: the blobs
    /// it names, when it parsed (they are not orphans).
    Bad { stem: Option<String>, named: Vec<String>, problem: Problem },
}

/// Reads every entry of a manifest directory (none when it does not exist), temp files
/// of a running or killed build aside; an entry that is not a good manifest is reported,
/// not an error.
fn scan_manifests(dir: &Path, place: Place) -> Result<Vec<Scanned>, StoreError> {
    let mut out = Vec::new();
    for path in list(dir)? {
        let bad = |stem: Option<&str>, named: Vec<String>, what: String| Scanned::Bad {
            stem: stem.map(String::from),
            named,
            problem: Problem::file(path.clone(), what),
        };
        let stem = match path.file_name().and_then(|n| n.to_str()) {
            Some(n) if n.starts_with(TMP_PREFIX) => continue,
            Some(n) => n.strip_suffix(".json"),
            None => None,
        };
        let Some(stem) = stem else {
            out.push(bad(None, vec![], "not a manifest: only <name>.json files belong here".into()));
            continue;
        };
        let m = match read_manifest_unchecked(&path) {
            Ok(m) => m,
            Err(e) => {
                out.push(bad(Some(stem), vec![], unreadable(&e)));
                continue;
            }
        };
        let named = m.outputs.values().map(|o| o.sha256.clone()).filter(|s| is_sha256_hex(s)).collect();
        if let Err(problem) = check_manifest(&m) {
            out.push(bad(Some(stem), named, problem));
            continue;
        }
        let (own, field) = match place {
            Place::Builds => (&m.input_hash, "input hash"),
            Place::Current => (&m.recipe, "recipe"),
        };
        if own != stem {
            out.push(bad(Some(stem), named, format!("its {field} is {own:?}, its file name says {stem:?}")));
            continue;
        }
        out.push(Scanned::Manifest { stem: stem.to_string(), path, manifest: Box::new(m) });
    }
    Ok(out)
}

fn unreadable(e: &StoreError) -> String {
    match e {
        StoreError::ReadManifest { source, .. } => format!("unreadable manifest: {source}"),
        StoreError::ParseManifest { source, .. } => format!("unreadable manifest: {source}"),
        other => other.to_string(),
    }
}

/// Why a manifest must not be used, if it must not: a recipe name or input hash that
/// would not be a file name of the store, or an output recorded at another path than
/// `blobs/sha256/<its sha256>` (which could name any file: `../../../../etc/passwd`).
pub fn check_manifest(m: &Manifest) -> Result<(), String> {
    if !valid_name(&m.recipe) {
        return Err(format!("recipe {:?} is not a recipe name", m.recipe));
    }
    if !is_sha256_hex(&m.input_hash) {
        return Err(format!("input hash {:?} is not 64 lower-case hex digits", m.input_hash));
    }
    for (name, o) in &m.outputs {
        check_output(name, o)?;
    }
    Ok(())
}

fn check_output(name: &str, o: &Output) -> Result<(), String> {
    if !is_sha256_hex(&o.sha256) {
        return Err(format!("output {name:?}: sha256 {:?} is not 64 lower-case hex digits", o.sha256));
    }
    if o.path != blob_rel_path(&o.sha256) {
        return Err(format!("output {name:?}: recorded path {:?} is not blobs/sha256/<its sha256>", o.path));
    }
    Ok(())
}

/// A manifest file, read (only if it is a regular file of sensible size) and checked.
pub(crate) fn read_manifest(path: &Path) -> Result<Manifest, StoreError> {
    let m = read_manifest_unchecked(path)?;
    check_manifest(&m).map_err(|problem| StoreError::CheckManifest { path: path.to_path_buf(), problem })?;
    Ok(m)
}

fn read_manifest_unchecked(path: &Path) -> Result<Manifest, StoreError> {
    let err = |source| StoreError::ReadManifest { path: path.to_path_buf(), source };
    let (f, len) = open_regular(path).map_err(err)?;
    if len > MAX_MANIFEST_BYTES {
        return Err(err(io::Error::other(format!("{len} bytes: larger than any manifest ({MAX_MANIFEST_BYTES})"))));
    }
    let mut text = Vec::new();
    f.take(MAX_MANIFEST_BYTES).read_to_end(&mut text).map_err(err)?;
    serde_json::from_slice(&text).map_err(|source| StoreError::ParseManifest { path: path.to_path_buf(), source })
}

/// Opens `path` for reading if it is a regular file, without following a symlink
/// (O_NOFOLLOW) or waiting on a FIFO (O_NONBLOCK): a symlink to /dev/zero or to a file
/// outside the store, a FIFO or a device is refused with what it is. Returns the file and
/// its size.
pub(crate) fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    // lstat first, so a device or FIFO is not even opened (opening some has effects);
    // fstat after, so what was opened is still that regular file.
    let before = fs::symlink_metadata(path)?;
    if !before.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, not_regular(before.file_type())));
    }
    let f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    let md = f.metadata()?;
    if !md.file_type().is_file() || (md.dev(), md.ino()) != (before.dev(), before.ino()) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "replaced while being opened"));
    }
    Ok((f, md.len()))
}

/// "a symlink, not a regular file …" for a file type that is not a regular file.
fn not_regular(t: fs::FileType) -> String {
    format!("{}, not a regular file (the store holds regular files only and follows no symlink)", file_type_name(t))
}

/// What a file that is not a regular file is, for messages ("a FIFO", "a symlink", …).
pub fn file_type_name(t: fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_file() {
        "a regular file"
    } else {
        "of an unknown type"
    }
}

/// Opens (creating it if need be) the lock file: a regular file, never through a symlink,
/// never waiting on a FIFO. Readers open it read-only, so a store they cannot write is
/// still verifiable once a build has made the file.
fn open_lock_file(path: &Path, write: bool) -> Result<File, StoreError> {
    let err = |source| StoreError::Lock { path: path.to_path_buf(), source };
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let open = |write: bool| {
        let mut o = OpenOptions::new();
        o.custom_flags(flags);
        if write {
            o.read(true).write(true).create(true).truncate(false).mode(0o644);
        } else {
            o.read(true);
        }
        o.open(path)
    };
    let f = match open(write) {
        Err(e) if !write && e.kind() == io::ErrorKind::NotFound => open(true),
        r => r,
    }
    .map_err(err)?;
    let md = f.metadata().map_err(err)?;
    if !md.file_type().is_file() {
        return Err(err(io::Error::other(not_regular(md.file_type()))));
    }
    Ok(f)
}

/// flock: try without blocking; when another process holds it, tell `on_wait`, then wait.
fn take_flock(
    f: File,
    path: &Path,
    try_arg: FlockArg,
    wait_arg: FlockArg,
    on_wait: impl FnOnce(&Path),
) -> Result<Flock<File>, StoreError> {
    let err = |e: nix::errno::Errno| StoreError::Lock { path: path.to_path_buf(), source: io::Error::from(e) };
    let f = match Flock::lock(f, try_arg) {
        Ok(flock) => return Ok(flock),
        Err((f, nix::errno::Errno::EWOULDBLOCK)) => f,
        Err((_, e)) => return Err(err(e)),
    };
    on_wait(path);
    Flock::lock(f, wait_arg).map_err(|(_, e)| err(e))
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
    let elf =
        File::open(tmp).and_then(|mut f| io::Read::read_exact(&mut f, &mut magic)).is_ok() && magic == *b"\x7fELF";
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
