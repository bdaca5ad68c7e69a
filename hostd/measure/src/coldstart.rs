//! Cold starts that are checked, not assumed (paper IV.A.1: "cold" means the images come from
//! the disk). Before a cold fleet, every file its launches read — images (kernel, initramfs,
//! rootfs, bundle, agent), the VMM or runtime and its shared libraries, firmware, the data
//! disk — is pushed out of the page cache (`pagecache::evict`) and its residency measured
//! with `mincore`; a start is labelled cold only if none of it was resident.
//!
//! Libraries that running processes have mapped — hostd itself (libc, the dynamic loader,
//! libm, libgcc_s) or any other process that is not an instance of the launch's own programs
//! (libz, libpcre2 of system daemons and compilers) — cannot leave the cache while those
//! processes run, and a freshly booted host has them resident too: they are evicted as far
//! as possible, then counted apart ("shared with running processes"), not against the start.
//! The launch's programs themselves, its images, and libraries mapped only by other instances
//! of its programs (another QEMU) count: a VMM kept warm by another guest is a warm start.
//!
//! Per-guest image copies (the paper's "each VM its own image") are made here: on a
//! disk-backed file system (tmpfs pages cannot be evicted), under the run's disk directory
//! (`RunState::disk_dir`, so orphan reaping removes them), and removed after the fleet.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::{AnyBackend, Backend, Images, LaunchFiles};
use crate::pagecache::{self, PageCacheError};
use crate::startup::StartMode;

/// The page-cache residency of what a fleet's launches read, just before the launches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StartResidency {
    /// Files the start reads, libraries shared with hostd excluded.
    pub files: usize,
    /// Their total length, bytes.
    pub bytes: u64,
    /// Of which in the page cache.
    pub resident_bytes: u64,
    /// Libraries of the launch that running processes (hostd, system processes; not other
    /// instances of the launch's programs) have mapped: resident whatever the start.
    #[serde(default)]
    pub shared_files: usize,
    #[serde(default)]
    /// Their total length, bytes.
    pub shared_bytes: u64,
    #[serde(default)]
    /// Of which in the page cache.
    pub shared_resident_bytes: u64,
    /// The most resident files (up to 5, most resident bytes first), to say why a start
    /// that was asked to be cold was not.
    #[serde(default)]
    pub resident: Vec<(PathBuf, u64)>,
}

impl StartResidency {
    /// Resident share of the start's files, 0..=1.
    pub fn fraction(&self) -> f64 {
        if self.bytes == 0 {
            0.0
        } else {
            (self.resident_bytes as f64 / self.bytes as f64).min(1.0)
        }
    }

    /// Whether nothing the start reads (but hostd's own libraries) was in the page cache.
    pub fn is_cold(&self) -> bool {
        self.files > 0 && self.resident_bytes == 0
    }
}

/// The resident share from which a start counts as hot (whole files read just before it:
/// all of them, but for pages another process's cache drop took in between).
pub const HOT_MIN: f64 = 0.99;

/// What a start is called, from what was measured: "cold" only if nothing it reads was in
/// the page cache, "hot" if (nearly) all of it was, "warm" for anything between, whichever
/// mode was asked for (another process dropping the caches can cool a hot start, another
/// process reading the files can warm a cold one). A cold start recorded before the check
/// existed is "cold?" (unverified); a hot one "hot".
pub fn start_label(mode: StartMode, residency: Option<&StartResidency>) -> &'static str {
    match (mode, residency) {
        (StartMode::Hot, None) => "hot",
        (StartMode::Cold, None) => "cold?",
        (StartMode::Cold, Some(r)) if r.is_cold() => "cold",
        (StartMode::Hot, Some(r)) if r.files > 0 && r.fraction() >= HOT_MIN => "hot",
        (_, Some(_)) => "warm",
    }
}

/// Reads every file a launch reads once, so that a hot start finds them in the page cache.
pub fn warm(read: &ReadSet) -> Result<(), ColdError> {
    for f in &read.files {
        let mut file = std::fs::File::open(f).map_err(io(f))?;
        std::io::copy(&mut file, &mut std::io::sink()).map_err(io(f))?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ColdError {
    #[error("program {0:?} not found (as a path or on PATH)")]
    NoProgram(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cp -a {} {}: {stderr}", src.display(), dst.display())]
    CopyTree { src: PathBuf, dst: PathBuf, stderr: String },
    #[error("{}: {what} cannot be copied (only files, directories and symbolic links)", path.display())]
    Special { path: PathBuf, what: &'static str },
    #[error("per-guest image copies need a disk-backed file system, and {} is tmpfs (its pages cannot leave the page cache)", .0.display())]
    Tmpfs(PathBuf),
    #[error(transparent)]
    PageCache(#[from] PageCacheError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ColdError + '_ {
    move |source| ColdError::Io { path: path.into(), source }
}

/// A program named as a path, or looked up on PATH; canonical.
pub fn resolve_program(name: &str) -> Result<PathBuf, ColdError> {
    let found = if name.contains('/') {
        Some(PathBuf::from(name)).filter(|p| p.is_file())
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
        })
    };
    let p = found.ok_or_else(|| ColdError::NoProgram(name.into()))?;
    std::fs::canonicalize(&p).map_err(io(&p))
}

/// The dynamic loaders `ldd` itself runs with `--list`, for systems without `ldd` (the Xen
/// lab's dom0 has glibc's loader but not libc-bin's ldd script).
const LOADERS: [&str; 2] =
    ["/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"];

/// The shared libraries a dynamic executable loads (its DT_NEEDED entries resolved the way
/// the loader does, with the loader itself), as `ldd` lists them; none for a static one.
pub fn libraries_of(program: &Path) -> Result<Vec<PathBuf>, ColdError> {
    let run = |cmd: &str, pre: &[&str]| {
        std::process::Command::new(cmd)
            .args(pre)
            .arg(program)
            .stdin(std::process::Stdio::null())
            .output()
    };
    let out = match run("ldd", &[]) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match LOADERS.iter().find(|l| Path::new(l).is_file()) {
                Some(loader) => run(loader, &["--list"]).map_err(io(Path::new(loader)))?,
                None => return Err(io(Path::new("ldd"))(e)),
            }
        }
        r => r.map_err(io(Path::new("ldd")))?,
    };
    // ldd (and the loader) fail for static executables ("not a dynamic executable"): no
    // libraries.
    if !out.status.success() {
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect())
}

/// The library paths in `ldd` output: `name => /path (0x…)` and `/loader (0x…)` lines;
/// the vDSO (no file) and unresolved names are skipped.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split(" (0x").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The regular files of a file or directory tree (symbolic links not followed).
pub fn tree_files(root: &Path) -> Result<Vec<PathBuf>, ColdError> {
    let meta = std::fs::symlink_metadata(root).map_err(io(root))?;
    if meta.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out = Vec::new();
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(root)
            .map_err(io(root))?
            .collect::<Result<_, _>>()
            .map_err(io(root))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            out.extend(tree_files(&e.path())?);
        }
    }
    Ok(out)
}

/// The files one launch reads, canonical and without duplicates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadSet {
    /// Everything: images (trees walked), programs, libraries, data files.
    pub files: Vec<PathBuf>,
    /// The programs it executes.
    pub programs: BTreeSet<PathBuf>,
    /// The shared libraries those load.
    pub libraries: BTreeSet<PathBuf>,
}

/// Canonical paths mapped by running processes other than instances of `programs`
/// (hostd's own maps included).
fn mapped_by_others(programs: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // Processes vanish while we look, and kernel threads have no exe: skipped alike.
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| programs.contains(&exe)) {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { continue };
        out.extend(
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .filter(|p| p.starts_with('/'))
                .map(PathBuf::from),
        );
    }
    out
}

/// Every file a launch reads: images (trees walked), programs and their libraries, data
/// files, and `extra` (the data disk).
pub fn files_read(lf: &LaunchFiles, extra: &[PathBuf]) -> Result<ReadSet, ColdError> {
    let mut set = BTreeSet::new();
    for root in lf.images.iter().chain(&lf.data).chain(extra) {
        for f in tree_files(root)? {
            set.insert(std::fs::canonicalize(&f).map_err(io(&f))?);
        }
    }
    let (mut programs, mut libraries) = (BTreeSet::new(), BTreeSet::new());
    for name in &lf.programs {
        let p = resolve_program(name)?;
        libraries.extend(libraries_of(&p)?);
        programs.insert(p);
    }
    set.extend(programs.iter().cloned());
    set.extend(libraries.iter().cloned());
    Ok(ReadSet { files: set.into_iter().collect(), programs, libraries })
}

/// Evicts (when `evict`) and measures the residency of what a launch reads, with the
/// libraries running processes hold counted apart.
pub fn check(read: &ReadSet, evict: bool) -> Result<StartResidency, ColdError> {
    let held = mapped_by_others(&read.programs);
    let (shared, own): (Vec<&PathBuf>, Vec<&PathBuf>) = read.files.iter().partition(|f| {
        read.libraries.contains(*f) && !read.programs.contains(*f) && held.contains(*f)
    });
    let mut r = StartResidency {
        files: own.len(),
        bytes: 0,
        resident_bytes: 0,
        shared_files: shared.len(),
        shared_bytes: 0,
        shared_resident_bytes: 0,
        resident: Vec::new(),
    };
    for f in own {
        let x = if evict { pagecache::evict(f)? } else { pagecache::residency(f)? };
        r.bytes += x.bytes;
        r.resident_bytes += x.resident_bytes;
        if x.resident_bytes > 0 {
            r.resident.push((f.clone(), x.resident_bytes));
        }
    }
    for f in shared {
        // What is not mapped can still go.
        let x = if evict { pagecache::evict(f)? } else { pagecache::residency(f)? };
        r.shared_bytes += x.bytes;
        r.shared_resident_bytes += x.resident_bytes;
    }
    r.resident.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    r.resident.truncate(5);
    Ok(r)
}

/// The files a fleet's launches read (`copies`: the guests' own image copies, if any).
pub fn fleet_files(
    backend: &AnyBackend,
    copies: &[Arc<Images>],
    data_disk: Option<&Path>,
) -> Result<ReadSet, ColdError> {
    let lf =
        if copies.is_empty() { backend.launch_files() } else { backend.fleet_launch_files(copies) };
    files_read(&lf, &data_disk.map(Path::to_path_buf).into_iter().collect::<Vec<_>>())
}

/// One line for a start's residency, e.g. "resident before start: 0.0 % of 12 files
/// (20.3 MiB); 4 libraries shared with hostd (2.4 MiB, resident)".
pub fn describe(r: &StartResidency, name_resident: bool) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut s = format!(
        "resident before start: {:.1} % of {} files ({:.1} MiB)",
        100.0 * r.fraction(),
        r.files,
        mib(r.bytes)
    );
    if r.shared_files > 0 {
        s.push_str(&format!(
            "; {} libraries held by running processes not counted ({:.1} MiB, {:.0} % resident)",
            r.shared_files,
            mib(r.shared_bytes),
            if r.shared_bytes == 0 {
                0.0
            } else {
                100.0 * r.shared_resident_bytes as f64 / r.shared_bytes as f64
            }
        ));
    }
    if name_resident && !r.resident.is_empty() {
        let top: Vec<String> =
            r.resident.iter().map(|(p, b)| format!("{} {:.1} MiB", p.display(), mib(*b))).collect();
        s.push_str(&format!("; resident: {}", top.join(", ")));
    }
    s
}

/// Copies a system image's tree with `cp -a`: a distribution's tree has owners, set-id
/// bits, hard links and extended attributes that [`copy_tree`] does not keep. Then syncs
/// the file system, as dirty pages cannot be evicted before a cold start.
fn copy_system_tree(src: &Path, dst: &Path) -> Result<(), ColdError> {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(src)
        .arg(dst)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io(dst))?;
    if !out.status.success() {
        return Err(ColdError::CopyTree {
            src: src.into(),
            dst: dst.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let dir = std::fs::File::open(dst).map_err(io(dst))?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)).map_err(|e| io(dst)(e.into()))
}

/// Copies `src` (a file or a tree of directories, files and symbolic links) to `dst`.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), ColdError> {
    let meta = std::fs::symlink_metadata(src).map_err(io(src))?;
    let ft = meta.file_type();
    if ft.is_file() {
        std::fs::copy(src, dst).map_err(io(dst))?;
        // Written pages are dirty until synced, and dirty pages cannot be evicted.
        std::fs::File::open(dst).and_then(|f| f.sync_all()).map_err(io(dst))?;
    } else if ft.is_dir() {
        std::fs::create_dir(dst).map_err(io(dst))?;
        for e in std::fs::read_dir(src).map_err(io(src))? {
            let e = e.map_err(io(src))?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        std::fs::set_permissions(dst, meta.permissions()).map_err(io(dst))?;
    } else if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(io(src))?;
        std::os::unix::fs::symlink(target, dst).map_err(io(dst))?;
    } else {
        return Err(ColdError::Special { path: src.into(), what: "a device, socket or FIFO" });
    }
    Ok(())
}

/// The images of `images` a backend reads (its `launch_files`), copied for each of `n`
/// guests into `dir/g<i>/` (a disk-backed directory); the rest of each copy's `Images`
/// is the original's.
pub fn copy_images(
    backend: &AnyBackend,
    images: &Images,
    dir: &Path,
    n: usize,
) -> Result<Vec<Arc<Images>>, ColdError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
    {
        return Err(ColdError::Tmpfs(dir.into()));
    }
    let used: BTreeSet<PathBuf> = backend.launch_files().images.into_iter().collect();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let gdir = dir.join(format!("g{i}"));
        std::fs::create_dir_all(&gdir).map_err(io(&gdir))?;
        let copy = |p: &Path| -> Result<PathBuf, ColdError> {
            if !used.contains(p) {
                return Ok(p.to_path_buf());
            }
            let name = p.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("image"));
            let dst = gdir.join(name);
            copy_tree(p, &dst)?;
            Ok(dst)
        };
        let mut c = images.clone();
        c.agent = copy(&images.agent)?;
        for slot in [&mut c.initramfs, &mut c.rootfs, &mut c.bundle] {
            if let Some(p) = slot.as_mut() {
                *p = copy(p)?;
            }
        }
        for k in [&mut c.kernel_uml, &mut c.kernel_pv].into_iter().flatten() {
            k.path = copy(&k.path)?;
        }
        // A system image: a VM boots its own copy of the ext4 and writes it in place (no
        // overlay: the paper's "each VM its own image"); a container its own copy of the tree.
        if let Some(sys) = c.system.as_mut() {
            let ext4 = copy(&sys.ext4)?;
            sys.private = ext4 != sys.ext4;
            sys.ext4 = ext4;
            if used.contains(&sys.tree) {
                let dst = gdir.join("system-tree");
                copy_system_tree(&sys.tree, &dst)?;
                sys.tree = dst;
            }
        }
        out.push(Arc::new(c));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
