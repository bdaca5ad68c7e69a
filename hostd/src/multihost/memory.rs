//! Memory of a fleet across hosts (paper II.B.2: M_used(n) = Σ M_VM + M_tool). Each worker
//! measures its slice as one machine measures a fleet (`hostd-measure`'s `memory.rs`): what
//! its guests' cgroups are charged that counts as used memory, plus its own (hostd's)
//! resident growth over the start — the one-machine `cross_check_kib` — and, beside it, the
//! host's used memory before and after the start. The first is the slice's by construction;
//! the second is host-wide: on emulated hosts sharing one kernel (`scripts/slurm-lab`) it
//! counts every host's guests. The coordinator sums the first over the hosts, per host and
//! in total.

use serde::{Deserialize, Serialize};

use crate::guest::RunningGuest;
use crate::memory;

/// A slice's memory, KiB, measured by its worker once the slice was up (no settle time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceMemory {
    /// Ready guests whose cgroup was read.
    pub guests: usize,
    /// Σ of those guests' cgroup charges that the host's used memory counts (reclaimable
    /// page cache left out): Σ M_VM here.
    pub guests_cgroup_used_kib: u64,
    /// Σ of the PSS of their host processes (shared pages divided among their users).
    pub guests_pss_kib: u64,
    /// The worker's resident growth from just before the start to after it: M_tool's share
    /// on this host (negative if it shrank; counted as 0 in the slice's figure).
    pub hostd_rss_growth_kib: i64,
    /// The worker's PSS once the slice was up.
    pub hostd_pss_kib: u64,
    /// The host's used memory (`memory::used_kib`) just before the start, and once the
    /// slice was up: host-wide, whatever else runs on the host.
    pub host_used_before_kib: u64,
    pub host_used_after_kib: u64,
}

/// Above any host's memory (1 PiB): a figure past it is not a reading.
const MAX_KIB: u64 = 1 << 40;

impl SliceMemory {
    /// The slice's M_used by construction: its guests' cgroup charges plus hostd's growth.
    pub fn slice_kib(&self) -> u64 {
        self.guests_cgroup_used_kib + self.hostd_rss_growth_kib.max(0) as u64
    }

    /// The host-wide used memory's change over the start (all of the host's processes).
    pub fn host_used_delta_kib(&self) -> i64 {
        self.host_used_after_kib as i64 - self.host_used_before_kib as i64
    }

    /// Checks a worker's figures: at most its `ready` guests measured, every figure below
    /// [`MAX_KIB`].
    pub fn validate(&self, ready: usize) -> Result<(), String> {
        if self.guests > ready {
            return Err(format!("memory of {} guests, {ready} ready", self.guests));
        }
        let figures = [
            ("guests_cgroup_used_kib", self.guests_cgroup_used_kib),
            ("guests_pss_kib", self.guests_pss_kib),
            ("hostd_rss_growth_kib", self.hostd_rss_growth_kib.unsigned_abs()),
            ("hostd_pss_kib", self.hostd_pss_kib),
            ("host_used_before_kib", self.host_used_before_kib),
            ("host_used_after_kib", self.host_used_after_kib),
        ];
        match figures.iter().find(|(_, v)| *v > MAX_KIB) {
            Some((what, v)) => Err(format!("memory {what} {v} KiB is not a reading")),
            None => Ok(()),
        }
    }
}

/// What is read just before a slice's start.
#[derive(Debug, Clone, Copy)]
pub struct Before {
    host_used_kib: u64,
    hostd_rss_kib: u64,
}

impl Before {
    /// The host's used memory and hostd's resident size now (None if /proc cannot say).
    pub fn now() -> Option<Before> {
        Some(Before {
            host_used_kib: memory::host_used_kib()?,
            hostd_rss_kib: memory::rss_kib(std::process::id())?,
        })
    }

    /// The slice's memory now that `guests` are up.
    pub fn after<'a>(&self, guests: impl Iterator<Item = &'a RunningGuest>) -> Option<SliceMemory> {
        let me = std::process::id();
        let mut m = SliceMemory {
            guests: 0,
            guests_cgroup_used_kib: 0,
            guests_pss_kib: 0,
            hostd_rss_growth_kib: memory::rss_kib(me)? as i64 - self.hostd_rss_kib as i64,
            hostd_pss_kib: memory::pss_kib(me)?,
            host_used_before_kib: self.host_used_kib,
            host_used_after_kib: 0,
        };
        for g in guests {
            let gm = memory::guest_memory(&g.process);
            if let Some(used) = gm.cgroup_used_kib {
                m.guests += 1;
                m.guests_cgroup_used_kib += used;
                m.guests_pss_kib += gm.pss_kib;
            }
        }
        m.host_used_after_kib = memory::host_used_kib()?;
        Some(m)
    }
}

/// One host's figure in `multihost.json`'s `memory`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostMemory {
    pub host: String,
    pub guests: usize,
    /// Its slice's M_used by construction ([`SliceMemory::slice_kib`]).
    pub slice_kib: u64,
    pub guests_cgroup_used_kib: u64,
    pub hostd_rss_growth_kib: i64,
    /// Host-wide, beside it ([`SliceMemory::host_used_delta_kib`]).
    pub host_used_delta_kib: i64,
}

/// The fleet's memory across hosts: each host's figure and their sum.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcrossHosts {
    pub hosts: Vec<HostMemory>,
    /// Hosts with no figure (lost, or their worker could not read /proc).
    pub missing: Vec<String>,
    /// Σ over `hosts`.
    pub guests: usize,
    pub slice_kib: u64,
    /// `slice_kib / guests`: M_VM with each host's hostd share spread over its guests.
    pub per_guest_kib: Option<f64>,
    /// What the figures are, and what the host-wide ones include.
    pub what: String,
}

/// What the figures are, said beside them.
pub const WHAT: &str = "each host's slice_kib is its guests' cgroup charges counted as used memory plus its worker's resident growth over the start (per host by construction), read once its slice was up; slice_kib in total is their sum. host_used_delta_kib is the host's used memory (/proc/meminfo) after minus before the start: host-wide, so on emulated hosts sharing one kernel and its memory (scripts/slurm-lab) it includes the other hosts' guests";

/// The hosts' figures (name, its report's memory if it has one) and their sum; None if no
/// host has one.
pub fn across<'a>(
    hosts: impl Iterator<Item = (&'a str, Option<&'a SliceMemory>)>,
) -> Option<AcrossHosts> {
    let mut a = AcrossHosts {
        hosts: Vec::new(),
        missing: Vec::new(),
        guests: 0,
        slice_kib: 0,
        per_guest_kib: None,
        what: WHAT.into(),
    };
    for (host, m) in hosts {
        let Some(m) = m else {
            a.missing.push(host.to_string());
            continue;
        };
        a.guests += m.guests;
        a.slice_kib += m.slice_kib();
        a.hosts.push(HostMemory {
            host: host.to_string(),
            guests: m.guests,
            slice_kib: m.slice_kib(),
            guests_cgroup_used_kib: m.guests_cgroup_used_kib,
            hostd_rss_growth_kib: m.hostd_rss_growth_kib,
            host_used_delta_kib: m.host_used_delta_kib(),
        });
    }
    if a.hosts.is_empty() {
        return None;
    }
    a.per_guest_kib = (a.guests > 0).then(|| a.slice_kib as f64 / a.guests as f64);
    Some(a)
}

/// One host's figure in words, for its provenance note.
pub fn host_words(m: &SliceMemory) -> String {
    format!(
        "memory: slice {:.1} MiB ({} guests' cgroups {:.1} MiB + hostd's growth {:.1} MiB), host-wide used {:+.1} MiB",
        mib(m.slice_kib() as f64),
        m.guests,
        mib(m.guests_cgroup_used_kib as f64),
        mib(m.hostd_rss_growth_kib as f64),
        mib(m.host_used_delta_kib() as f64),
    )
}

/// The total in words, for the run's provenance.
pub fn total_words(a: &AcrossHosts) -> String {
    let per = a.per_guest_kib.map_or(String::new(), |p| format!(", {:.2} MiB a guest", mib(p)));
    let missing = if a.missing.is_empty() {
        String::new()
    } else {
        format!("; no figure from {}", a.missing.join(", "))
    };
    format!(
        "memory across hosts: {:.1} MiB for {} guests on {} hosts{per}{missing} ({WHAT})",
        mib(a.slice_kib as f64),
        a.guests,
        a.hosts.len(),
    )
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(guests: usize, cgroups: u64, growth: i64, before: u64, after: u64) -> SliceMemory {
        SliceMemory {
            guests,
            guests_cgroup_used_kib: cgroups,
            guests_pss_kib: cgroups / 2,
            hostd_rss_growth_kib: growth,
            hostd_pss_kib: 9000,
            host_used_before_kib: before,
            host_used_after_kib: after,
        }
    }

    #[test]
    fn hosts_are_summed_and_a_missing_one_named() {
        let (a, b) = (slice(10, 20_000, 3_000, 100, 90_000), slice(5, 10_000, -500, 50, 40));
        let t = across([("n1", Some(&a)), ("n2", None), ("n3", Some(&b))].into_iter()).unwrap();
        assert_eq!(t.hosts.iter().map(|h| h.slice_kib).collect::<Vec<_>>(), [23_000, 10_000]);
        assert_eq!((t.guests, t.slice_kib, t.missing.clone()), (15, 33_000, vec!["n2".into()]));
        assert_eq!(t.per_guest_kib, Some(2200.0));
        assert_eq!(t.hosts[1].host_used_delta_kib, -10);
        assert!(total_words(&t).contains("no figure from n2"), "{}", total_words(&t));
        assert!(
            host_words(&a).starts_with("memory: slice 22.5 MiB (10 guests"),
            "{}",
            host_words(&a)
        );
        assert_eq!(across([("n1", None)].into_iter()), None);
    }

    #[test]
    fn implausible_figures_are_refused_naming_them() {
        let ok = slice(3, 1000, 10, 100, 200);
        assert_eq!(ok.validate(3), Ok(()));
        assert!(ok.validate(2).unwrap_err().contains("3 guests, 2 ready"));
        let bad = SliceMemory { host_used_after_kib: u64::MAX, ..ok.clone() };
        assert!(bad.validate(3).unwrap_err().contains("host_used_after_kib"));
        let bad = SliceMemory { hostd_rss_growth_kib: i64::MIN, ..ok };
        assert!(bad.validate(3).unwrap_err().contains("hostd_rss_growth_kib"));
    }

    #[test]
    fn a_slice_is_measured_around_its_start() {
        let before = Before::now().expect("/proc/meminfo and /proc/self/status");
        let m = before.after(std::iter::empty()).unwrap();
        assert_eq!((m.guests, m.guests_cgroup_used_kib), (0, 0));
        assert!(m.host_used_before_kib > 0 && m.host_used_after_kib > 0 && m.hostd_pss_kib > 0);
        assert_eq!(m.validate(0), Ok(()));
    }
}
