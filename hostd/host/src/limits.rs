//! Every duration, size and count a person can set, with its one valid range. The command
//! line (clap value parsers), campaign files and fleet files all check against these, so a
//! value refused by one is refused by all, and nothing downstream meets a value that wraps
//! (MiB shifted to bytes) or overflows a clock (`Instant + Duration`).
//!
//! Where values do meet clocks and byte counts, [`deadline`] and [`mib_to_bytes`] saturate
//! or refuse instead of panicking or wrapping, whatever a caller passes.

use std::fmt;
use std::time::Duration;

/// A closed range of whole numbers and what they count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The smallest value allowed.
    pub min: u64,
    /// The largest value allowed.
    pub max: u64,
    /// What the number is in, for messages ("MiB", "s", "guests").
    pub unit: &'static str,
}

/// A value outside its [`Limit`]. The caller says which field or flag it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
#[error("{value} {unit} is not in {min}..={max}")]
pub struct OutOfRange {
    pub value: String,
    pub min: u64,
    pub max: u64,
    pub unit: &'static str,
}

impl Limit {
    const fn new(min: u64, max: u64, unit: &'static str) -> Self {
        Self { min, max, unit }
    }

    /// `v` itself when it is in range.
    pub fn check<T: TryInto<u64> + Copy + fmt::Display>(&self, v: T) -> Result<T, OutOfRange> {
        match v.try_into() {
            Ok(x) if (self.min..=self.max).contains(&x) => Ok(v),
            _ => Err(OutOfRange {
                value: v.to_string(),
                min: self.min,
                max: self.max,
                unit: self.unit,
            }),
        }
    }

    /// [`Limit::check`] with the message every file format uses: "field `NAME`: …".
    pub fn field<T: TryInto<u64> + Copy + fmt::Display>(
        &self,
        field: &str,
        v: T,
    ) -> Result<T, String> {
        self.check(v).map_err(|e| format!("field `{field}`: {e}"))
    }

    /// A clap value parser: parses the number, then checks it (clap names the flag).
    pub fn cli<T>(self) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
    where
        T: std::str::FromStr + TryInto<u64> + Copy + fmt::Display,
        T::Err: fmt::Display,
    {
        move |s: &str| {
            let v: T = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
            self.check(v).map_err(|e| e.to_string())
        }
    }
}

impl Limit {
    /// A clap value parser for a duration in whole seconds: a bare number is seconds
    /// (`300`), or a duration with units as humantime reads them (`30s`, `5m`, `1h 30m`);
    /// then checked against the limit, whose unit is seconds.
    pub fn cli_secs(self) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
        move |s: &str| {
            let t = s.trim();
            let secs = match t.parse::<u64>() {
                Ok(v) => v,
                Err(_) => {
                    let d = humantime::parse_duration(t).map_err(|e| {
                        format!(
                            "{s:?}: not a number of seconds nor a duration such as 30s or 5m ({e})"
                        )
                    })?;
                    if d.subsec_nanos() != 0 {
                        return Err(format!("{s:?}: whole seconds only"));
                    }
                    d.as_secs()
                }
            };
            self.check(secs).map_err(|e| e.to_string())
        }
    }
}

/// Guests in one fleet (startup sizes, overhead sizes, ring, fleet files, `hostd boot -n`):
/// what the fleet network's bridges hold (the root and its leaves, `netlab::bridge_of`).
/// Whether the host has the memory and descriptors for them is checked when a fleet starts.
pub const GUESTS: Limit = Limit::new(
    1,
    (crate::netlab::PORTS_PER_BRIDGE * (crate::netlab::MAX_LEAF_BRIDGES + 1)) as u64,
    "guests",
);
/// Guests of one Xen lab (its emulated host gets memory for all of them).
pub const LAB_GUESTS: Limit = Limit::new(1, 64, "guests");
/// Guests launching at once; 0 means all of them.
pub const PARALLELISM: Limit = Limit::new(0, 1000, "guests");
/// Guest memory.
pub const MEM_MIB: Limit = Limit::new(32, 1 << 20, "MiB");
/// vCPUs per guest.
pub const VCPUS: Limit = Limit::new(1, 64, "vCPUs");
/// Launch → ready deadline of one guest (also the agent's hello for `hostd bench`).
pub const BOOT_TIMEOUT_S: Limit = Limit::new(1, 86_400, "s");
/// Deadline of one benchmark request.
pub const BENCH_TIMEOUT_S: Limit = Limit::new(1, 86_400, "s");
/// Deadline of a whole Xen lab (boot plus benchmark).
pub const LAB_TIMEOUT_S: Limit = Limit::new(1, 2 * 86_400, "s");
/// Idle time before memory is read.
pub const SETTLE_S: Limit = Limit::new(0, 3600, "s");
/// Counted repetitions of a measurement.
pub const REPS: Limit = Limit::new(1, 1000, "repetitions");
/// Discarded warm-up runs.
pub const WARMUP: Limit = Limit::new(0, 10, "runs");
/// Pairs of hot starts compared with the backend's floor (0: none).
pub const FLOOR_REPS: Limit = Limit::new(0, 100, "pairs");
/// Bytes a disk benchmark reads, and the size of the file it creates.
pub const DISK_MIB: Limit = Limit::new(1, 1 << 20, "MiB");
/// A per-guest cgroup memory limit (may be below the guest's memory: that is how an
/// out-of-memory guest is provoked).
pub const LIMIT_MEMORY_MIB: Limit = Limit::new(1, 1 << 20, "MiB");
/// A per-guest cgroup process limit (the kernel's PID_MAX_LIMIT).
pub const LIMIT_PIDS: Limit = Limit::new(1, 1 << 22, "processes");
/// A per-guest CPU bandwidth limit, in CPUs: above 0, at most this.
pub const LIMIT_CPUS_MAX: f64 = 1024.0;

/// Raises the soft limit on open descriptors to the hard one, as service managers do for
/// the services they start: a fleet holds a few per guest, and 10,000 guests need more than
/// the usual soft limit (1,024 or 20,000) allows. Returns the limit now in force.
pub fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        return Some(soft);
    }
    Some(hard)
}

/// Checks a per-guest CPU bandwidth limit.
pub fn check_cpus(field: &str, c: f64) -> Result<f64, String> {
    if c > 0.0 && c <= LIMIT_CPUS_MAX {
        Ok(c)
    } else {
        Err(format!("field `{field}`: {c} is not a CPU count in (0, {LIMIT_CPUS_MAX}]"))
    }
}

/// A list of fleet sizes: each in [`GUESTS`], strictly increasing (each size is one fleet,
/// measured once, in order).
pub fn check_sizes(s: &[usize]) -> Result<(), String> {
    if s.is_empty() {
        return Err("needs at least one size".into());
    }
    for &n in s {
        GUESTS.check(n).map_err(|e| format!("size {e}"))?;
    }
    if s.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("sizes must increase, got {s:?}"));
    }
    Ok(())
}

/// MiB as bytes; None where the product would not fit (a shift would silently wrap).
pub fn mib_to_bytes(mib: u64) -> Option<u64> {
    mib.checked_mul(1 << 20)
}

/// Far enough to never arrive, near enough for every clock to represent (tokio uses the
/// same 30 years for a timeout that overflows).
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + d` on tokio's clock, saturating at a far-off instant instead of panicking.
pub fn deadline(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d).unwrap_or_else(|| now + FAR)
}

/// `now + d` on the standard clock, saturating like [`deadline`].
pub fn std_deadline(d: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d).unwrap_or_else(|| now + FAR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        let p = BOOT_TIMEOUT_S.cli_secs();
        assert_eq!(p("300"), Ok(300));
        assert_eq!(p("30s"), Ok(30));
        assert_eq!(p("5m"), Ok(300));
        assert_eq!(p("1h 30m"), Ok(5400));
        assert!(p("1.5s").unwrap_err().contains("whole seconds"));
        assert!(p("0").unwrap_err().contains("not in 1..=86400"));
        assert!(p("2d").unwrap_err().contains("not in"));
        assert!(p("soon").unwrap_err().contains("duration such as 30s"));
        assert_eq!(SETTLE_S.cli_secs()("0s"), Ok(0));
    }

    #[test]
    fn ranges_refuse_zero_huge_and_wrapping_values() {
        assert_eq!(MEM_MIB.check(128u32), Ok(128));
        assert!(MEM_MIB
            .check(0u32)
            .unwrap_err()
            .to_string()
            .contains("0 MiB is not in 32..=1048576"));
        assert!(VCPUS.check(0u32).is_err());
        assert!(GUESTS.check(100_000usize).is_err());
        assert!(BOOT_TIMEOUT_S.check(0u64).is_err());
        assert!(BOOT_TIMEOUT_S.check(1u64 << 63).is_err());
        // 2^44 MiB is 2^64 bytes: it would shift to 0.
        assert!(LIMIT_MEMORY_MIB.check(17_592_186_044_416u64).is_err());
        assert!(LIMIT_PIDS.check(0u64).is_err());
        assert!(PARALLELISM.check(0usize).is_ok());
        assert!(LIMIT_MEMORY_MIB
            .field("limits.memory_mib", 0u64)
            .unwrap_err()
            .starts_with("field `limits.memory_mib`: 0 MiB"));
        assert!(check_cpus("limits.cpus", f64::NAN).is_err());
        assert!(check_cpus("limits.cpus", 0.5).is_ok());
    }

    #[test]
    fn every_limit_in_bytes_fits() {
        for l in [MEM_MIB, DISK_MIB, LIMIT_MEMORY_MIB] {
            assert!(mib_to_bytes(l.max).is_some(), "{l:?}");
        }
        assert_eq!(mib_to_bytes(1 << 44), None);
        assert_eq!(mib_to_bytes(2), Some(2 << 20));
    }

    #[test]
    fn cli_parser_checks_the_range() {
        let p = GUESTS.cli::<usize>();
        assert_eq!(p("10"), Ok(10));
        assert!(p("100000").unwrap_err().contains("100000 guests is not in 1..=25000"));
        assert!(p("-1").is_err());
        assert!(BOOT_TIMEOUT_S.cli::<u64>()("9223372036854775808").is_err());
    }

    #[test]
    fn sizes_are_in_range_and_increasing() {
        assert!(check_sizes(&[1, 10, 50]).is_ok());
        assert!(check_sizes(&[]).is_err());
        assert!(check_sizes(&[0]).is_err());
        assert!(check_sizes(&[1, 25001]).is_err());
        assert!(check_sizes(&[10, 1]).is_err());
    }

    #[tokio::test]
    async fn deadlines_saturate_instead_of_panicking() {
        let huge = Duration::from_secs(1 << 63);
        assert!(deadline(huge) > tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
        assert!(std_deadline(Duration::MAX) > std::time::Instant::now());
        let soon = deadline(Duration::from_millis(10));
        assert!(soon <= tokio::time::Instant::now() + Duration::from_millis(10));
    }
}
