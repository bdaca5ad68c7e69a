//! The disk benchmark's data, one copy per guest (the paper's setting: every VM reads its own
//! replicated data set, not one shared file), and the host-side cache kept out of every
//! measured read.
//!
//! - Copies live in `/var/tmp/virtbench/<run>/` (a disk-backed file system: a tmpfs copy
//!   could never leave the page cache, so reading it would measure RAM), are named after the
//!   run (`<run>-g<index>.img`), hold only the bytes a campaign reads, and go with the run
//!   ([`crate::runstate::RunState::cleanup`], which orphan reaping also calls).
//! - Before every measured read hostd evicts the reader's copy from the host page cache
//!   ([`crate::pagecache::evict`]) and records the residency `mincore` then shows, and the
//!   backend's [`cache_policy`], in the sample. Backends whose VMM cannot bypass the host
//!   cache (UML's ubd, Firecracker) thus still read the device, once per measured read;
//!   those with O_DIRECT (native, ns, oci, QEMU with `cache.direct=on`, Xen's qdisk with
//!   `direct-io-safe`) never fill the cache at all.
//! - In the guest, the agent reads with O_DIRECT, so the guest's own page cache is bypassed
//!   as well; the shipped campaigns also read more than a guest's memory.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::backend::BackendKind;
use crate::pagecache::{self, PageCacheError, Residency};

/// Where runs keep their per-guest data disk copies: disk-backed, unlike `/run`.
pub use crate::runstate::DISK_ROOT;

/// How a backend keeps the host's page cache out of a guest's disk read, as recorded in
/// every disk sample. Every backend's copy is also evicted before each measured read.
pub fn cache_policy(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Native => "o_direct",
        BackendKind::Ns | BackendKind::Oci => "o_direct(bind mount)",
        BackendKind::QemuMicrovm | BackendKind::QemuFull => "host-cache-off(cache.direct=on)",
        BackendKind::Xen => "host-cache-off(qdisk direct-io-safe)",
        BackendKind::Uml => "host-cache-evicted(ubd: no O_DIRECT)",
        BackendKind::Firecracker => "host-cache-evicted(firecracker: no O_DIRECT)",
    }
}

/// Whether the host page cache sits between a backend's guest and the disk, so that its
/// figure means a device read only because hostd evicted the copy right before it.
pub fn host_buffered(policy: &str) -> bool {
    policy.starts_with("host-cache-evicted")
}

#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum DataDiskError {
    #[error("data disk {}: {source}", path.display())]
    Source { path: PathBuf, source: io::Error },
    #[error("data disk {} has {have} bytes, the campaign reads {need}", path.display())]
    TooSmall { path: PathBuf, have: u64, need: u64 },
    #[error(
        "{}: on tmpfs or ramfs, whose pages cannot leave the page cache: per-guest data disk copies need a disk-backed file system",
        dir.display()
    )]
    InMemory { dir: PathBuf },
    #[error("data disk copy {}: {source}", path.display())]
    Copy { path: PathBuf, source: io::Error },
    #[error(
        "{}: {free} bytes free, a guest's data disk copy needs {need} (and {RESERVE} to spare): free space, or read less (workloads.disk_mib) or with fewer guests",
        dir.display()
    )]
    NoSpace { dir: PathBuf, free: u64, need: u64 },
    #[error(transparent)]
    PageCache(#[from] PageCacheError),
    #[error("data disk copy {}: reading with O_DIRECT: {source}", path.display())]
    Level { path: PathBuf, source: io::Error },
    #[error("data disk copy {}: nothing read (limit below one {block}-byte block?)", path.display())]
    NothingRead { path: PathBuf, block: usize },
    #[error("data disk copy {}: block size {block} is not a multiple of {align}", path.display())]
    Unaligned { path: PathBuf, block: usize, align: usize },
    #[error("data disk {}: ended after {copied} of {bytes} bytes", path.display())]
    ShortSource { path: PathBuf, copied: u64, bytes: u64 },
}

/// Reads a whole file with O_DIRECT (which bypasses this host's page cache): whatever caches
/// lie below this host's block device — a hypervisor's, when this host is itself a VM, or
/// the drive's — then hold it as they would after any recent read. Measured here: a file
/// not read for an hour came at 660 MB/s, the same file read again at 1.2 GB/s; without
/// this, the backend measured second on a guest's copy (ns after native) read it faster.
pub fn level(path: &Path) -> Result<(), DataDiskError> {
    direct_read(path, 1 << 20, u64::MAX).map(|_| ())
}

/// Reads `path` with O_DIRECT as the disk benchmark does (`dd iflag=direct`): whole blocks
/// of `block` bytes, at most `max_bytes`, and returns the bytes read and the seconds it
/// took. The paired native reference of every non-native disk read ([`crate::suite::paired_read`]).
pub fn timed_read(path: &Path, block: usize, max_bytes: u64) -> Result<(u64, f64), DataDiskError> {
    let t = std::time::Instant::now();
    let n = direct_read(path, block, max_bytes)?;
    let secs = t.elapsed().as_secs_f64();
    if n == 0 {
        return Err(DataDiskError::NothingRead { path: path.into(), block });
    }
    Ok((n, secs.max(f64::MIN_POSITIVE)))
}

/// Reads whole `chunk`-byte blocks of `path` with O_DIRECT up to `limit` bytes; the bytes read.
fn direct_read(path: &Path, chunk: usize, limit: u64) -> Result<u64, DataDiskError> {
    use std::io::Read;
    const ALIGN: usize = 4096;
    let err = |source| DataDiskError::Level { path: path.into(), source };
    // A directory cannot even be opened with O_DIRECT (EINVAL): say what it is instead.
    if !fs::metadata(path).map_err(err)?.is_file() {
        return Err(PageCacheError::NotRegular { path: path.into() }.into());
    }
    if chunk == 0 || chunk % ALIGN != 0 {
        return Err(DataDiskError::Unaligned { path: path.into(), block: chunk, align: ALIGN });
    }
    let mut f =
        OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path).map_err(err)?;
    // O_DIRECT needs an aligned buffer: take the aligned chunk inside a larger one.
    let mut raw = vec![0u8; chunk + ALIGN];
    let off = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
    let buf = &mut raw[off..off + chunk];
    let mut total = 0u64;
    while limit - total >= chunk as u64 {
        match f.read(buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(total)
}

/// Space left free on the copies' file system after a copy, bytes.
const RESERVE: u64 = 1 << 30;

/// A run's per-guest copies of the data disk.
#[derive(Debug)]
pub struct DataDisks {
    source: PathBuf,
    bytes: u64,
    dir: PathBuf,
    run: String,
}

fn in_memory(p: &Path) -> bool {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // nix names no ramfs constant; linux/magic.h's RAMFS_MAGIC.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    statfs(p)
        .is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC || s.filesystem_type() == RAMFS_MAGIC)
}

impl DataDisks {
    /// Copies of the first `bytes` of `source`, made on demand in `dir` (the run's
    /// [`crate::runstate::RunState::disk_dir`], removed with the run).
    pub fn new(source: &Path, bytes: u64, dir: &Path, run: &str) -> Result<Self, DataDiskError> {
        let have = fs::metadata(source)
            .map_err(|e| DataDiskError::Source { path: source.into(), source: e })?
            .len();
        if have < bytes || bytes == 0 {
            return Err(DataDiskError::TooSmall { path: source.into(), have, need: bytes });
        }
        fs::create_dir_all(dir).map_err(|e| DataDiskError::Copy { path: dir.into(), source: e })?;
        if in_memory(dir) {
            let _ = fs::remove_dir(dir);
            return Err(DataDiskError::InMemory { dir: dir.into() });
        }
        Ok(Self { source: source.into(), bytes, dir: dir.into(), run: run.into() })
    }

    /// The copy guest `index` reads.
    pub fn path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("{}-g{index}.img", self.run))
    }

    /// The run's native reference copy: hostd reads it with O_DIRECT right before every
    /// non-native disk read ([`crate::suite::paired_read`]).
    pub fn reference_path(&self) -> PathBuf {
        self.dir.join(format!("{}-native.img", self.run))
    }

    /// The reference copy, made if missing (as [`DataDisks::copy_for`] makes a guest's).
    pub fn reference(&self) -> Result<PathBuf, DataDiskError> {
        self.make(self.reference_path())
    }

    /// Bytes in each copy.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Guest `index`'s copy, made if missing (a copy of the right size from an earlier fleet
    /// of the run is reused: guests only read it), written to disk, read-only for everyone
    /// (container guests read it as their mapped user), and evicted from the page cache.
    pub fn copy_for(&self, index: usize) -> Result<PathBuf, DataDiskError> {
        self.make(self.path(index))
    }

    fn make(&self, dst: PathBuf) -> Result<PathBuf, DataDiskError> {
        let err = |source| DataDiskError::Copy { path: dst.clone(), source };
        if fs::metadata(&dst).is_ok_and(|m| m.is_file() && m.len() == self.bytes) {
            return Ok(dst);
        }
        let free = nix::sys::statvfs::statvfs(&self.dir)
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
            .map_err(|e| err(e.into()))?;
        if free < self.bytes.saturating_add(RESERVE) {
            return Err(DataDiskError::NoSpace { dir: self.dir.clone(), free, need: self.bytes });
        }
        let tmp = dst.with_extension("img.part");
        let _ = fs::remove_file(&tmp);
        let src = File::open(&self.source)
            .map_err(|e| DataDiskError::Source { path: self.source.clone(), source: e })?;
        let copied = (|| {
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .map_err(err)?;
            // copy_file_range underneath: no round trip through hostd's memory.
            let n = io::copy(&mut io::Read::take(&src, self.bytes), &mut out).map_err(err)?;
            if n != self.bytes {
                return Err(DataDiskError::ShortSource {
                    path: self.source.clone(),
                    copied: n,
                    bytes: self.bytes,
                });
            }
            out.sync_all().map_err(err)?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444)).map_err(err)?;
            fs::rename(&tmp, &dst).map_err(err)
        })();
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // Neither the copy just written nor the source stays in memory on its account.
        pagecache::evict(&dst)?;
        let _ = pagecache::evict(&self.source);
        Ok(dst)
    }

    /// Removes every copy (the run's end does it too, through its state).
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// The host-side state of one guest's data disk just before a measured read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPrep {
    /// The guest's index.
    pub guest: usize,
    /// How the backend caches the disk (its cache policy's name).
    pub policy: &'static str,
    /// The guest's copy's page-cache residency after eviction.
    pub residency: Residency,
}

/// Evicts each reader's data disk (`(guest index, host file)`) and measures what stayed
/// resident, right before the read is requested. A guest whose data disk is not a regular
/// host file (a block device named by hand) is refused: its cache cannot be checked.
pub fn before_reads(
    kind: BackendKind,
    readers: &[(usize, &Path)],
) -> Result<Vec<ReadPrep>, DataDiskError> {
    // Level the caches below this host first (every backend's read then meets the same
    // state there), then evict all, then measure: the last eviction's sync cannot refill
    // an earlier file.
    for (_, p) in readers {
        level(p)?;
    }
    for (_, p) in readers {
        pagecache::evict(p)?;
    }
    readers
        .iter()
        .map(|&(guest, p)| {
            Ok(ReadPrep { guest, policy: cache_policy(kind), residency: pagecache::residency(p)? })
        })
        .collect()
}

/// The report's note beside a backend's disk figures where they cannot mean a plain device
/// read: reads through the host page cache (evicted before each read, so they still came
/// from the device, helped by the host's read-ahead), reads that started with data resident,
/// and samples recorded before cache policies existed.
pub fn disk_notes(
    samples: &[crate::suite::BenchSample],
) -> std::collections::BTreeMap<BackendKind, String> {
    use vb_protocol::bench::Resource;
    let mut out = std::collections::BTreeMap::new();
    for kind in BackendKind::ALL {
        let disk: Vec<_> =
            samples.iter().filter(|s| s.backend == kind && s.resource == Resource::Disk).collect();
        if disk.is_empty() {
            continue;
        }
        let mut notes = Vec::new();
        let unknown = disk
            .iter()
            .filter(|s| s.cache_policy.is_empty() || s.resident_before.is_none())
            .count();
        if unknown > 0 {
            notes.push(format!("{unknown} of {} reads carry no cache policy or residency (recorded before hostd checked): they may have read host RAM", disk.len()));
        }
        let warm: Vec<f64> =
            disk.iter().filter_map(|s| s.resident_before).filter(|r| *r > 0.0).collect();
        if !warm.is_empty() {
            let max = warm.iter().cloned().fold(0.0, f64::max);
            notes.push(format!("{} of {} reads started with data in the host page cache (up to {:.0} %): partly RAM reads", warm.len(), disk.len(), max * 100.0));
        }
        if let Some(p) = disk.iter().map(|s| s.cache_policy.as_str()).find(|p| host_buffered(p)) {
            notes.push(format!(
                "{p}: the VMM reads through the host page cache; hostd evicted the data before each read, so it came from the device, but with the host's read-ahead"
            ));
        }
        if !notes.is_empty() {
            out.insert(kind, notes.join("; "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A scratch root on a disk-backed file system (the copies refuse tmpfs).
    fn root() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("vb-datadisk").tempdir_in("/var/tmp").unwrap()
    }

    fn source(dir: &Path, bytes: usize) -> PathBuf {
        let p = dir.join("source.img");
        let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8 + 1).collect();
        File::create(&p).unwrap().write_all(&data).unwrap();
        p
    }

    #[test]
    fn each_guest_gets_its_own_evicted_prefix_copy() {
        let r = root();
        let src = source(r.path(), 3 << 20);
        let d = DataDisks::new(&src, 2 << 20, &r.path().join("r0000abc"), "r0000abc").unwrap();
        let (a, b) = (d.copy_for(0).unwrap(), d.copy_for(1).unwrap());
        assert_ne!(a, b);
        assert_eq!(a.file_name().unwrap(), "r0000abc-g0.img", "named after the run");
        for p in [&a, &b] {
            let m = fs::metadata(p).unwrap();
            assert_eq!(m.len(), 2 << 20);
            assert_eq!(m.permissions().mode() & 0o777, 0o444);
            assert_eq!(
                pagecache::residency(p).unwrap().resident_bytes,
                0,
                "{}: made and evicted",
                p.display()
            );
        }
        let (mut got, mut want) = (Vec::new(), Vec::new());
        File::open(&a).unwrap().read_to_end(&mut got).unwrap();
        File::open(&src).unwrap().take(2 << 20).read_to_end(&mut want).unwrap();
        assert!(got == want, "a copy is the source's first bytes");
        // Separate files, not links: each guest reads its own blocks.
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&a).unwrap()),
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&b).unwrap())
        );
        // Reused, not copied again.
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&a).unwrap());
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(d.copy_for(0).unwrap()).unwrap()),
            ino
        );
        d.remove().unwrap();
        assert!(!a.exists() && !r.path().join("r0000abc").exists());
        d.remove().unwrap();
    }

    #[test]
    fn reads_are_prepared_cold_and_say_their_policy() {
        let r = root();
        let src = source(r.path(), 1 << 20);
        let d = DataDisks::new(&src, 1 << 20, &r.path().join("r0000abd"), "r0000abd").unwrap();
        let (a, b) = (d.copy_for(0).unwrap(), d.copy_for(3).unwrap());
        for p in [&a, &b] {
            File::open(p).unwrap().read_to_end(&mut Vec::new()).unwrap();
            assert!(pagecache::residency(p).unwrap().fraction() > 0.99, "just read");
        }
        let preps = before_reads(BackendKind::Uml, &[(0, a.as_path()), (3, b.as_path())]).unwrap();
        assert_eq!(preps.iter().map(|p| p.guest).collect::<Vec<_>>(), [0, 3]);
        for p in &preps {
            assert_eq!(p.residency.resident_bytes, 0, "{p:?}");
            assert_eq!(p.residency.bytes, 1 << 20);
            assert_eq!(p.policy, "host-cache-evicted(ubd: no O_DIRECT)");
        }
        assert!(host_buffered(preps[0].policy));
        assert!(
            !host_buffered(cache_policy(BackendKind::QemuMicrovm))
                && !host_buffered(cache_policy(BackendKind::Native))
        );
        let e = before_reads(BackendKind::Native, &[(0, r.path())]).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn the_reference_copy_is_read_with_o_direct_and_timed() {
        let r = root();
        let src = source(r.path(), 3 << 20);
        let d = DataDisks::new(&src, 2 << 20, &r.path().join("r0000abf"), "r0000abf").unwrap();
        let refc = d.reference().unwrap();
        assert_eq!(refc.file_name().unwrap(), "r0000abf-native.img");
        assert_ne!(refc, d.path(0), "not a guest's copy");
        assert_eq!(fs::metadata(&refc).unwrap().len(), 2 << 20);
        // Whole blocks only, at most the limit: 2 MiB in 256 KiB blocks, limit 1 MiB + 1.
        let (n, secs) = timed_read(&refc, 256 << 10, (1 << 20) + 1).unwrap();
        assert_eq!(n, 1 << 20);
        assert!(secs > 0.0);
        assert_eq!(timed_read(&refc, 256 << 10, u64::MAX).unwrap().0, 2 << 20);
        assert_eq!(
            pagecache::residency(&refc).unwrap().resident_bytes,
            0,
            "O_DIRECT leaves nothing in the page cache"
        );
        let e = timed_read(&refc, 256 << 10, 1000).unwrap_err().to_string();
        assert!(e.contains("nothing read") && e.contains("r0000abf-native.img"), "{e}");
        let e = timed_read(&refc, 1000, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("block size 1000"), "{e}");
        d.remove().unwrap();
    }

    #[test]
    fn refusals_name_the_problem() {
        let r = root();
        let src = source(r.path(), 4096);
        let e = DataDisks::new(&src, 8192, &r.path().join("x"), "r1").unwrap_err().to_string();
        assert!(e.contains("source.img") && e.contains("4096") && e.contains("8192"), "{e}");
        let e = DataDisks::new(&r.path().join("missing"), 1, &r.path().join("x"), "r1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        // A copy that would not fit is refused before a byte is written (a sparse source
        // larger than any test machine's disk).
        let huge = r.path().join("huge.img");
        File::create(&huge).unwrap().set_len(1 << 43).unwrap();
        let d = DataDisks::new(&huge, 1 << 43, &r.path().join("r0000abe"), "r0000abe").unwrap();
        let e = d.copy_for(0).unwrap_err().to_string();
        assert!(e.contains("bytes free") && e.contains(&(1u64 << 43).to_string()), "{e}");
        assert!(!d.path(0).exists() && !d.path(0).with_extension("img.part").exists());
        if Path::new("/dev/shm").exists() && in_memory(Path::new("/dev/shm")) {
            let dir = Path::new("/dev/shm").join(format!("vb-datadisk-{}", std::process::id()));
            let e = DataDisks::new(&src, 4096, &dir, "r1").unwrap_err().to_string();
            assert!(e.contains("tmpfs") && e.contains("disk-backed"), "{e}");
            assert!(!dir.exists(), "a refused directory is not left behind");
        }
    }

    #[test]
    fn notes_flag_buffered_warm_and_unrecorded_reads() {
        use crate::suite::{BenchSample, Test};
        use vb_protocol::bench::Resource;
        let s = |backend, resource, policy: &str, resident: Option<f64>| BenchSample {
            cache_policy: policy.into(),
            resident_before: resident,
            ..crate::suite::testing::sample(backend, Test::Overhead, resource, 1, 0, 0, 0, 1.0)
        };
        let samples = [
            s(BackendKind::Native, Resource::Disk, "o_direct", Some(0.0)),
            s(BackendKind::Native, Resource::Cpu, "", None),
            s(BackendKind::Uml, Resource::Disk, cache_policy(BackendKind::Uml), Some(0.0)),
            s(
                BackendKind::QemuMicrovm,
                Resource::Disk,
                cache_policy(BackendKind::QemuMicrovm),
                Some(0.25),
            ),
            s(
                BackendKind::QemuMicrovm,
                Resource::Disk,
                cache_policy(BackendKind::QemuMicrovm),
                Some(0.0),
            ),
            s(BackendKind::Ns, Resource::Disk, "", None),
        ];
        let n = disk_notes(&samples);
        assert_eq!(
            n.keys().copied().collect::<Vec<_>>(),
            [BackendKind::Ns, BackendKind::Uml, BackendKind::QemuMicrovm]
        );
        assert!(
            n[&BackendKind::Uml].contains("ubd: no O_DIRECT")
                && n[&BackendKind::Uml].contains("evicted"),
            "{n:?}"
        );
        assert!(
            n[&BackendKind::QemuMicrovm]
                .starts_with("1 of 2 reads started with data in the host page cache (up to 25 %)"),
            "{n:?}"
        );
        assert!(n[&BackendKind::Ns].contains("1 of 1 reads carry no cache policy"), "{n:?}");
    }
}
