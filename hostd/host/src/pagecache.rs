//! What of a file sits in the host's page cache, and pushing it out: the checks behind
//! "cold" startups and disk reads that must come from the device. Residency is what
//! `fincore` (util-linux) reports: `mincore(2)` on a shared read-only mapping of the file.
//! Eviction is `fdatasync` then `posix_fadvise(POSIX_FADV_DONTNEED)`, which drops the
//! file's clean, unmapped pages; pages a running process has mapped (a VMM's own text while
//! other guests run) stay, so callers measure residency after evicting instead of assuming.

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use serde::{Deserialize, Serialize};

/// How much of one file (or of a set of files) was in the page cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Residency {
    /// The file, or for a sum over files the first of them.
    pub path: PathBuf,
    /// Files counted.
    pub files: usize,
    /// Their total length, bytes.
    pub bytes: u64,
    /// Bytes in resident pages (whole pages: up to a page more than `bytes` per file).
    pub resident_bytes: u64,
}

impl Residency {
    /// Resident share, 0..=1; 0 for empty files (nothing to read, nothing cached).
    pub fn fraction(&self) -> f64 {
        if self.bytes == 0 {
            0.0
        } else {
            (self.resident_bytes as f64 / self.bytes as f64).min(1.0)
        }
    }

    /// Adds another file's residency to this sum.
    pub fn add(&mut self, other: &Residency) {
        if self.files == 0 {
            self.path = other.path.clone();
        }
        self.files += other.files;
        self.bytes += other.bytes;
        self.resident_bytes += other.resident_bytes;
    }
}

/// Why a file's residency could not be read or its pages evicted, naming the file.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum PageCacheError {
    #[error("{}: open: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{}: not a regular file", path.display())]
    NotRegular { path: PathBuf },
    #[error("{}: map for mincore: {source}", path.display())]
    Map { path: PathBuf, source: nix::Error },
    #[error("{}: mincore: {source}", path.display())]
    Mincore { path: PathBuf, source: std::io::Error },
    #[error("{}: fdatasync before eviction: {source}", path.display())]
    Sync { path: PathBuf, source: std::io::Error },
    #[error("{}: posix_fadvise(DONTNEED): {source}", path.display())]
    Fadvise { path: PathBuf, source: nix::Error },
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects; _SC_PAGESIZE is always defined on Linux.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}

fn open_regular(path: &Path) -> Result<(File, u64), PageCacheError> {
    let f =
        File::open(path).map_err(|source| PageCacheError::Open { path: path.into(), source })?;
    let meta = f.metadata().map_err(|source| PageCacheError::Open { path: path.into(), source })?;
    if !meta.is_file() {
        return Err(PageCacheError::NotRegular { path: path.into() });
    }
    Ok((f, meta.len()))
}

/// The page-cache residency of one regular file (symlinks followed).
pub fn residency(path: &Path) -> Result<Residency, PageCacheError> {
    let (f, len) = open_regular(path)?;
    let mut r = Residency { path: path.into(), files: 1, bytes: len, resident_bytes: 0 };
    let Some(len_nz) = usize::try_from(len).ok().and_then(NonZeroUsize::new) else {
        return Ok(r);
    };
    let page = page_size();
    // SAFETY: a fresh shared read-only mapping of a file we hold open; nothing reads
    // through it (mincore only asks the kernel about its pages) and it is unmapped below.
    let addr =
        unsafe { mmap(None, len_nz, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, f.as_fd(), 0) }
            .map_err(|source| PageCacheError::Map { path: path.into(), source })?;
    let mut vec = vec![0u8; len_nz.get().div_ceil(page)];
    // SAFETY: addr is page-aligned and maps len bytes; vec has one byte per page of it.
    let rc = unsafe { libc::mincore(addr.as_ptr(), len_nz.get(), vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: the mapping made above, of that length, no longer used.
    let _ = unsafe { munmap(addr, len_nz.get()) };
    if rc != 0 {
        return Err(PageCacheError::Mincore { path: path.into(), source: err });
    }
    let pages = vec.iter().filter(|b| *b & 1 == 1).count() as u64;
    r.resident_bytes = (pages * page as u64).min(len);
    Ok(r)
}

/// The summed residency of several files.
pub fn residency_of(paths: &[PathBuf]) -> Result<Residency, PageCacheError> {
    let mut sum = Residency { path: PathBuf::new(), files: 0, bytes: 0, resident_bytes: 0 };
    for p in paths {
        sum.add(&residency(p)?);
    }
    Ok(sum)
}

/// Pushes one file's clean, unmapped pages out of the page cache, and says what stayed.
pub fn evict(path: &Path) -> Result<Residency, PageCacheError> {
    let (f, _) = open_regular(path)?;
    // Dirty pages cannot be dropped: write them first (a read-only fd may be synced).
    f.sync_data().map_err(|source| PageCacheError::Sync { path: path.into(), source })?;
    // DONTNEED skips pages still under I/O (a read-ahead in flight from a read just before):
    // those land after it returns, so evict again, a few times, until nothing is left.
    let mut left = None;
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
            .map_err(|source| PageCacheError::Fadvise { path: path.into(), source })?;
        let r = residency(path)?;
        if r.resident_bytes == 0 {
            return Ok(r);
        }
        left = Some(r);
    }
    Ok(left.expect("five attempts made"))
}

/// Evicts every file and returns the summed residency left afterwards.
pub fn evict_all(paths: &[PathBuf]) -> Result<Residency, PageCacheError> {
    let mut sum = Residency { path: PathBuf::new(), files: 0, bytes: 0, resident_bytes: 0 };
    for p in paths {
        sum.add(&evict(p)?);
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A file on a disk-backed file system: tmpfs pages cannot leave the cache.
    fn disk_file(bytes: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new().prefix("vb-pagecache").tempdir_in("/var/tmp").unwrap();
        let p = dir.path().join("data");
        let mut f = File::create(&p).unwrap();
        f.write_all(&vec![0x5a; bytes]).unwrap();
        f.sync_all().unwrap();
        (dir, p)
    }

    fn on_tmpfs(p: &Path) -> bool {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
            .unwrap_or(false)
    }

    #[test]
    fn read_makes_resident_and_evict_empties() {
        let (_d, p) = disk_file(4 << 20);
        if on_tmpfs(&p) {
            panic!("{}: the target dir is on tmpfs, which cannot show eviction", p.display());
        }
        let mut buf = Vec::new();
        File::open(&p).unwrap().read_to_end(&mut buf).unwrap();
        let hot = residency(&p).unwrap();
        assert_eq!((hot.files, hot.bytes), (1, 4 << 20));
        assert!(hot.fraction() > 0.99, "just read, {} resident", hot.fraction());
        let cold = evict(&p).unwrap();
        assert_eq!(cold.resident_bytes, 0, "after eviction: {cold:?}");
        assert_eq!(cold.fraction(), 0.0);
    }

    #[test]
    fn sums_and_refusals() {
        let (_d, p) = disk_file(8192);
        let empty = p.with_file_name("empty");
        File::create(&empty).unwrap();
        let s = residency_of(&[p.clone(), empty.clone()]).unwrap();
        assert_eq!((s.files, s.bytes, s.path.clone()), (2, 8192, p.clone()));
        assert_eq!(residency(&empty).unwrap().fraction(), 0.0);
        let dir = p.parent().unwrap();
        assert!(matches!(residency(dir), Err(PageCacheError::NotRegular { .. })));
        let e = residency(&dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("open"), "{e}");
    }
}
