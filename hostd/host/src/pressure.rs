//! Pressure stall information (PSI, `/proc/pressure/{cpu,memory,io}`): for how much of a
//! time window some task was waiting for a CPU, for memory (reclaim, refaults) or for I/O.
//! Read around a fleet's start, it says which resource ran short while the guests booted,
//! which is what explains a startup time that grows faster than the fleet (the kernel's
//! own accounting, not an estimate). Host-wide: in a container these are the machine's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The kernel's cumulative stall counters, microseconds ("some" line of each file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Some task waited for a CPU.
    pub cpu_us: u64,
    /// Some task waited for memory.
    pub memory_us: u64,
    /// Some task waited for I/O.
    pub io_us: u64,
}

/// Share of a window (0–1) in which some task stalled on each resource.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Pressure {
    /// The window, seconds.
    pub window_s: f64,
    /// Waiting for a CPU.
    pub cpu: f64,
    /// Waiting for memory.
    pub memory: f64,
    /// Waiting for I/O.
    pub io: f64,
}

/// The counters now; None where the kernel has no PSI (built without it, or `psi=0`).
pub fn read() -> Option<Totals> {
    let some = |res: &str| {
        std::fs::read_to_string(format!("/proc/pressure/{res}")).ok().and_then(|t| some_total(&t))
    };
    Some(Totals { cpu_us: some("cpu")?, memory_us: some("memory")?, io_us: some("io")? })
}

/// The `total=` of the `some` line of one pressure file.
fn some_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace().find_map(|f| f.strip_prefix("total="))?.parse().ok()
}

impl Totals {
    /// The stall shares between `earlier` and these counters, taken `window` apart.
    pub fn since(&self, earlier: &Totals, window: Duration) -> Pressure {
        let w = window.as_secs_f64();
        let share = |now: u64, then: u64| {
            if w <= 0.0 {
                return 0.0;
            }
            (now.saturating_sub(then) as f64 / 1e6 / w).clamp(0.0, 1.0)
        };
        Pressure {
            window_s: w,
            cpu: share(self.cpu_us, earlier.cpu_us),
            memory: share(self.memory_us, earlier.memory_us),
            io: share(self.io_us, earlier.io_us),
        }
    }
}

impl Pressure {
    /// The resources by name, in a fixed order.
    pub fn by_resource(&self) -> [(&'static str, f64); 3] {
        [("CPU", self.cpu), ("memory", self.memory), ("I/O", self.io)]
    }

    /// "CPU 97 %, memory 0 %, I/O 3 %".
    pub fn line(&self) -> String {
        self.by_resource()
            .iter()
            .map(|(r, v)| format!("{r} {:.0} %", v * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_some_total_is_read_and_full_ignored() {
        let t = "some avg10=0.10 avg60=0.96 avg300=4.53 total=29124027107\n\
                 full avg10=0.00 avg60=0.00 avg300=0.00 total=7\n";
        assert_eq!(some_total(t), Some(29_124_027_107));
        assert_eq!(some_total("full avg10=0.00 total=7\n"), None);
        assert_eq!(some_total("some avg10=0.10 total=x\n"), None);
    }

    #[test]
    fn shares_are_of_the_window_and_bounded() {
        let a = Totals { cpu_us: 1_000_000, memory_us: 0, io_us: 500 };
        let b = Totals { cpu_us: 2_500_000, memory_us: 9_000_000, io_us: 500 };
        let p = b.since(&a, Duration::from_secs(2));
        assert_eq!((p.cpu, p.memory, p.io), (0.75, 1.0, 0.0));
        assert_eq!(a.since(&b, Duration::from_secs(2)).cpu, 0.0, "counters never go back");
        assert_eq!(b.since(&a, Duration::ZERO).cpu, 0.0);
        assert_eq!(p.line(), "CPU 75 %, memory 100 %, I/O 0 %");
    }

    #[test]
    fn this_kernel_has_psi_or_says_none() {
        // Either the three files parse or read() is None: never a half reading.
        let all = ["cpu", "memory", "io"]
            .iter()
            .all(|r| std::path::Path::new(&format!("/proc/pressure/{r}")).exists());
        assert_eq!(read().is_some(), all);
    }
}
