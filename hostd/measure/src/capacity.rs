//! How many guests fit in this host's memory, from the M_used(n) a run has measured so far:
//! `hostd boot` stops before a size that would not fit (instead of driving the host into
//! the OOM killer) and, with `--to-memory-bound`, boots the largest size that does. The
//! bound is the measured line M_used(n) = n·M_VM + M_tool against the memory the kernel
//! says is available now (MemAvailable: free memory plus what it can reclaim), less a reserve
//! for everything else on the host.

use serde::{Deserialize, Serialize};

use crate::stats::LinearFit;

/// The memory bound of a fleet on this host, and what it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryBound {
    /// The largest fleet that fits, guests.
    pub largest_n: usize,
    /// Memory per guest, MiB (the fit's slope, the steeper start mode's).
    pub per_guest_mib: f64,
    /// The fit's intercept (hostd and what a fleet adds once), MiB; 0 when negative.
    pub fixed_mib: f64,
    /// MemAvailable when the bound was taken, MiB.
    pub available_mib: f64,
    /// Kept free for the rest of the host, MiB.
    pub reserve_mib: f64,
    /// The sizes the fit came from.
    pub from_sizes: Vec<usize>,
    /// What was fitted ([`CROSS_CHECK`] or [`HOST_WIDE`]).
    #[serde(default)]
    pub figure: String,
    /// The size refused for not fitting, if the run stopped before one.
    #[serde(default)]
    pub refused_n: Option<usize>,
    /// A lower bound that applied before memory's (hostd's descriptors, the address plan),
    /// in words, and the size it allows.
    #[serde(default)]
    pub capped_by: Option<(String, usize)>,
}

/// Memory kept free for the rest of the host: 5 % of it, at least 1 GiB.
pub fn reserve_mib(total_mib: f64) -> f64 {
    (total_mib * 0.05).max(1024.0)
}

/// The per-guest figure was fitted over the guests' cgroup charges plus hostd's growth.
pub const CROSS_CHECK: &str = "the guests' cgroup charges + hostd's growth";
/// The per-guest figure was fitted over the host-wide M_used.
pub const HOST_WIDE: &str = "host-wide M_used";

/// The host's MemTotal and MemAvailable, MiB.
pub fn host_memory_mib() -> Option<(f64, f64)> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let f = |k| crate::memory::meminfo_field(&m, k).map(|kib| kib as f64 / 1024.0);
    Some((f("MemTotal")?, f("MemAvailable")?))
}

/// The bound for the fits `fits` (one per start mode measured: the steepest counts) with
/// `available_mib` available and `reserve_mib` kept; None without a fit that grows with n.
pub fn bound<'a>(
    fits: impl IntoIterator<Item = &'a LinearFit>,
    from_sizes: Vec<usize>,
    available_mib: f64,
    reserve_mib: f64,
) -> Option<MemoryBound> {
    let fit =
        fits.into_iter().filter(|f| f.slope > 0.0).max_by(|a, b| a.slope.total_cmp(&b.slope))?;
    let fixed_mib = fit.intercept.max(0.0);
    let room = available_mib - reserve_mib - fixed_mib;
    let largest_n = if room > 0.0 { (room / fit.slope).floor() as usize } else { 0 };
    Some(MemoryBound {
        largest_n,
        per_guest_mib: fit.slope,
        fixed_mib,
        available_mib,
        reserve_mib,
        from_sizes,
        figure: HOST_WIDE.into(),
        refused_n: None,
        capped_by: None,
    })
}

impl MemoryBound {
    /// The size to boot: the memory bound, or the lower cap.
    pub fn size(&self) -> usize {
        self.capped_by.as_ref().map_or(self.largest_n, |c| c.1.min(self.largest_n))
    }

    /// The bound in words.
    pub fn line(&self) -> String {
        let sizes = self.from_sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        let head = match self.refused_n {
            Some(n) => format!("stopped before n = {n}, which would not fit: "),
            None => String::new(),
        };
        let cap = match &self.capped_by {
            Some((what, n)) => format!("; {what} allow only {n}, the size booted"),
            None => String::new(),
        };
        format!(
            "{head}at most {} guests fit in memory: {:.0} MiB available − {:.0} MiB reserve − {:.0} MiB fixed, at {:.2} MiB a guest ({} fitted over n = {sizes}){cap}",
            self.largest_n,
            self.available_mib,
            self.reserve_mib,
            self.fixed_mib,
            self.per_guest_mib,
            self.figure
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(slope: f64, intercept: f64) -> LinearFit {
        LinearFit { slope, intercept, residual_std: 0.0, points: 4 }
    }

    #[test]
    fn the_steepest_fit_bounds_the_fleet() {
        let (cold, hot) = (fit(78.0, 200.0), fit(80.0, 100.0));
        let b = bound([&cold, &hot], vec![25, 50], 20_000.0, 1200.0).unwrap();
        // (20000 − 1200 − 100) / 80 = 233.75
        assert_eq!((b.largest_n, b.per_guest_mib, b.fixed_mib), (233, 80.0, 100.0));
        assert!(b.line().starts_with("at most 233 guests fit in memory"), "{}", b.line());
        assert_eq!(b.size(), 233);
        let capped = MemoryBound { capped_by: Some(("hostd's file descriptors".into(), 100)), ..b };
        assert_eq!(capped.size(), 100);
        assert!(
            capped.line().ends_with("hostd's file descriptors allow only 100, the size booted"),
            "{}",
            capped.line()
        );
    }

    #[test]
    fn no_room_is_zero_and_a_flat_fit_is_no_bound() {
        let b = bound([&fit(80.0, -50.0)], vec![25, 50], 1000.0, 1024.0).unwrap();
        assert_eq!((b.largest_n, b.fixed_mib), (0, 0.0));
        assert!(bound([&fit(0.0, 100.0), &fit(-1.0, 0.0)], vec![1, 2], 1e6, 1024.0).is_none());
        assert_eq!(reserve_mib(24_000.0), 1200.0);
        assert_eq!(reserve_mib(8_000.0), 1024.0);
    }
}
