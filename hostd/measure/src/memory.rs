//! Memory occupation (paper II.B.2): M_used(n) = Σ M_VM[1..n] + M_tool. The host's used
//! memory is read before the fleet starts and again when all n guests are booted and idle;
//! each guest's own share comes from its cgroup and from the PSS of its processes; a
//! least-squares line over several n gives M_VM (slope) and M_tool (intercept).

use serde::{Deserialize, Serialize};

/// A `Key:   123 kB` field of /proc/meminfo, in KiB.
pub fn meminfo_field(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Memory in use, KiB: everything but free memory and reclaimable file cache. Unlike
/// free(1)'s "used" it keeps shared memory (tmpfs, memfd), because VMMs back guest RAM with
/// it (UML's physical memory file lives in /dev/shm).
///   used = MemTotal − MemFree − Buffers − (Cached − Shmem) − SReclaimable
pub fn used_kib(meminfo: &str) -> Option<u64> {
    let f = |k| meminfo_field(meminfo, k);
    let cache = f("Cached")?.saturating_sub(f("Shmem").unwrap_or(0));
    Some(f("MemTotal")?.saturating_sub(
        f("MemFree")? + f("Buffers").unwrap_or(0) + cache + f("SReclaimable").unwrap_or(0),
    ))
}

/// The host's used memory now ([`used_kib`] of /proc/meminfo), KiB.
pub fn host_used_kib() -> Option<u64> {
    used_kib(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// The median of `k` readings `gap` apart: one reading catches other processes' transient
/// allocations; the median of several does less often.
pub async fn host_used_kib_median(k: usize, gap: std::time::Duration) -> Option<u64> {
    let mut v = Vec::with_capacity(k);
    for i in 0..k.max(1) {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        v.push(host_used_kib()?);
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

/// `k` readings of the host's used memory, `gap` apart (`k` ≥ 1).
pub async fn host_used_readings(k: usize, gap: std::time::Duration) -> Option<Vec<u64>> {
    let mut v = Vec::with_capacity(k);
    for i in 0..k.max(1) {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        v.push(host_used_kib()?);
    }
    Some(v)
}

/// Largest minus smallest reading.
pub fn range(v: &[u64]) -> u64 {
    v.iter().max().zip(v.iter().min()).map_or(0, |(a, b)| a - b)
}

/// The middle reading (the upper of the two middle ones for an even count).
pub fn median(v: &[u64]) -> Option<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// How far M_used can be off from host noise alone, KiB: the larger range of the two
/// windows of readings (before the fleet, with no fleet: the host's own drift; after it,
/// with the fleet idle). A difference of medians of two such windows moves by at most that
/// much when nothing but the noise changed.
pub fn noise_bound_kib(before: &[u64], after: &[u64]) -> u64 {
    range(before).max(range(after))
}

/// M_used repeated: each reading after the fleet minus the median of the noise floor.
pub fn repeats_kib(before: &[u64], after: &[u64]) -> Vec<i64> {
    let Some(base) = median(before) else { return Vec::new() };
    after.iter().map(|&a| a as i64 - base as i64).collect()
}

/// Whether the host-wide figure and the per-guest sum differ by more than the noise bound
/// (then both are reported).
pub fn disagree(m_used_kib: i64, cross_kib: i64, bound_kib: u64) -> bool {
    m_used_kib.abs_diff(cross_kib) > bound_kib
}

/// Resident set size of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    meminfo_field(&s, "VmRSS")
}

/// How many descriptors process `pid` has open (its /proc/PID/fd entries); None if it is
/// gone or not readable.
pub fn fds_of(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count() as u64)
}

/// hostd's own open descriptors (without the one reading the directory).
pub fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count().saturating_sub(1) as u64)
}

/// CPU time (user + system) hostd's threads have used so far, seconds (children excluded:
/// guests are not hostd).
pub fn own_cpu_s() -> Option<f64> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let t = |v: nix::sys::time::TimeVal| v.tv_sec() as f64 + v.tv_usec() as f64 / 1e6;
    Some(t(u.user_time()) + t(u.system_time()))
}

/// Memory the files under `dir` hold, KiB, if `dir` is on tmpfs (there it is shmem, part of
/// the host's used memory); None on a disk-backed file system (page cache, not counted).
pub fn tmpfs_usage_kib(dir: &std::path::Path) -> Option<u64> {
    let fs = nix::sys::statfs::statfs(dir).ok()?;
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return None;
    }
    fn walk(p: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
        let own = m.blocks() * 512 / 1024;
        if !m.is_dir() {
            return own;
        }
        own + std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
            .unwrap_or(0)
    }
    Some(walk(dir))
}

/// Proportional set size of a process, KiB (shared pages divided among their users).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    meminfo_field(&s, "Pss")
}

/// One guest's memory, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GuestMemory {
    /// Charged to its cgroup (anonymous, page cache and shmem it touched), if it has one.
    pub cgroup_kib: Option<u64>,
    /// Of which what the host's used memory counts (reclaimable page cache left out).
    #[serde(default)]
    pub cgroup_used_kib: Option<u64>,
    /// Sum of the PSS of its host processes.
    pub pss_kib: u64,
    /// How many host processes it has.
    pub processes: usize,
}

/// One guest's memory now: its cgroup's charge and its processes' PSS.
pub fn guest_memory(g: &crate::backend::GuestProcess) -> GuestMemory {
    let pids = g.pids();
    GuestMemory {
        cgroup_kib: g.cgroup.as_ref().and_then(|c| c.memory_bytes()).map(|b| b / 1024),
        cgroup_used_kib: g.cgroup.as_ref().and_then(|c| c.used_memory_bytes()).map(|b| b / 1024),
        pss_kib: pids.iter().filter_map(|&p| pss_kib(p)).sum(),
        processes: pids.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_counted_per_process() {
        // A child given /dev/null on 0–2, plus whatever this process holds without
        // close-on-exec (cargo's jobserver pipe, for one): counted here with fcntl.
        let inherited = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&fd| {
                // SAFETY: F_GETFD only reads the flags of a descriptor number (-1 if closed).
                let f = unsafe { libc::fcntl(fd, libc::F_GETFD) };
                fd > 2 && f >= 0 && f & libc::FD_CLOEXEC == 0
            })
            .count() as u64;
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The exec may not have happened yet: until it has, the pre-exec child still holds
        // the spawn's status pipe.
        let mut n = None;
        for _ in 0..200 {
            n = fds_of(c.id());
            if n == Some(3 + inherited) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        c.kill().unwrap();
        c.wait().unwrap();
        assert_eq!(n, Some(3 + inherited));
        assert_eq!(fds_of(c.id()), None, "a reaped child has no descriptors to count");
        assert!(open_fds().unwrap() >= 3 && own_cpu_s().unwrap() >= 0.0);
    }

    const M: &str = "MemTotal:       1000000 kB\nMemFree:         500000 kB\nBuffers:          10000 kB\nCached:          200000 kB\nShmem:            50000 kB\nSReclaimable:     20000 kB\n";

    #[test]
    fn parses_meminfo() {
        assert_eq!(meminfo_field(M, "MemTotal"), Some(1_000_000));
        assert_eq!(meminfo_field(M, "Mem"), None);
    }

    #[test]
    fn used_counts_shmem_but_not_cache() {
        // 1000000 − 500000 − 10000 − (200000 − 50000) − 20000
        assert_eq!(used_kib(M), Some(320_000));
    }

    #[test]
    fn noise_bound_and_repeats() {
        // Floor drifts by 300 KiB, the idle fleet's readings by 120: the bound is 300.
        let before = [10_000, 10_300, 10_100, 10_200, 10_050];
        let after = [60_100, 60_000, 60_120, 60_050, 60_010];
        assert_eq!(range(&before), 300);
        assert_eq!(median(&before), Some(10_100));
        assert_eq!(noise_bound_kib(&before, &after), 300);
        assert_eq!(repeats_kib(&before, &after), vec![50_000, 49_900, 50_020, 49_950, 49_910]);
        assert_eq!(repeats_kib(&[], &after), Vec::<i64>::new());
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[4, 1, 3, 2]), Some(3));
    }

    #[test]
    fn cross_check_disagreement_is_beyond_the_bound() {
        assert!(!disagree(50_000, 50_300, 300));
        assert!(disagree(50_000, 50_301, 300));
        assert!(disagree(-2_000, 40_000, 1_000));
        assert!(!disagree(-200, 100, 300));
    }

    #[test]
    fn tmpfs_usage_only_on_tmpfs() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        std::fs::write(shm.path().join("log"), vec![1u8; 64 << 10]).unwrap();
        assert!(tmpfs_usage_kib(shm.path()).unwrap() >= 64);
        let disk = tempfile::tempdir_in("/var/tmp").unwrap();
        assert_eq!(tmpfs_usage_kib(disk.path()), None);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn own_pss_is_readable() {
        assert!(pss_kib(std::process::id()).unwrap() > 0);
        assert!(host_used_kib().unwrap() > 0);
    }
}
