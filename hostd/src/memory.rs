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
    Some(f("MemTotal")?.saturating_sub(f("MemFree")? + f("Buffers").unwrap_or(0) + cache + f("SReclaimable").unwrap_or(0)))
}

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

/// Proportional set size of a process, KiB (shared pages divided among their users).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    meminfo_field(&s, "Pss")
}

/// One guest's memory, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuestMemory {
    /// Charged to its cgroup (anonymous, page cache and shmem it touched), if it has one.
    pub cgroup_kib: Option<u64>,
    /// Sum of the PSS of its host processes.
    pub pss_kib: u64,
    pub processes: usize,
}

pub fn guest_memory(g: &crate::backend::GuestProcess) -> GuestMemory {
    let pids = g.pids();
    GuestMemory {
        cgroup_kib: g.cgroup.as_ref().and_then(|c| c.memory_bytes()).map(|b| b / 1024),
        pss_kib: pids.iter().filter_map(|&p| pss_kib(p)).sum(),
        processes: pids.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn own_pss_is_readable() {
        assert!(pss_kib(std::process::id()).unwrap() > 0);
        assert!(host_used_kib().unwrap() > 0);
    }
}
