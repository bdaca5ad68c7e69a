//! A worker's clock offset, measured NTP-style on its control link: the coordinator reads
//! its CLOCK_MONOTONIC (t1), the worker answers with its own (w), the coordinator reads its
//! clock again (t2). The worker read its clock between t1 and t2, so its offset lies in
//! [w − t2, w − t1]: estimate w − (t1 + t2)/2, error bound (t2 − t1)/2. Of several rounds
//! the one with the smallest round trip has the tightest bound.

use serde::{Deserialize, Serialize};

/// One ping: the coordinator's clock at send and at answer, the worker's in between (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub t1: u64,
    pub worker: u64,
    pub t2: u64,
}

/// A worker's clock relative to the coordinator's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Offset {
    /// Worker clock minus coordinator clock, seconds.
    pub offset_s: f64,
    /// The true offset is within this of `offset_s`, seconds (half the round trip).
    pub bound_s: f64,
    /// Rounds measured.
    pub rounds: usize,
}

/// The estimate from the minimum-round-trip round; None without a usable round (one whose
/// answer came back before it was sent is not).
pub fn estimate(rounds: &[Round]) -> Option<Offset> {
    let best = rounds.iter().filter(|r| r.t2 >= r.t1).min_by_key(|r| r.t2 - r.t1)?;
    // In i128: clocks of different hosts may be thousands of seconds (or boots) apart.
    let mid2 = i128::from(best.t1) + i128::from(best.t2);
    let off2 = 2 * i128::from(best.worker) - mid2;
    Some(Offset {
        offset_s: off2 as f64 / 2e9,
        bound_s: (best.t2 - best.t1) as f64 / 2e9,
        rounds: rounds.len(),
    })
}

/// CLOCK_MONOTONIC now, ns.
pub fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// CLOCK_REALTIME now, ns since the epoch.
pub fn real_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .expect("CLOCK_REALTIME is always readable");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_round_trip_round_gives_offset_and_bound() {
        // A worker 1000 s ahead; the second round is the fastest (2 ms), answered 0.5 ms
        // after the midpoint.
        let s = 1_000_000_000_000u64;
        let rounds = [
            Round { t1: 10_000_000, worker: s + 16_000_000, t2: 30_000_000 },
            Round { t1: 40_000_000, worker: s + 41_500_000, t2: 42_000_000 },
            Round { t1: 50_000_000, worker: s + 52_000_000, t2: 55_000_000 },
        ];
        let o = estimate(&rounds).unwrap();
        assert!((o.offset_s - 1000.0005).abs() < 1e-9, "{o:?}");
        assert!((o.bound_s - 0.001).abs() < 1e-12, "{o:?}");
        assert_eq!(o.rounds, 3);
        // The true offset (1000 s) is within the bound, as it must be whenever the worker's
        // reading fell inside its round.
        assert!((o.offset_s - 1000.0).abs() <= o.bound_s);
    }

    #[test]
    fn a_worker_behind_and_impossible_rounds() {
        let o = estimate(&[Round { t1: 5_000_000_000, worker: 1_000, t2: 5_000_002_000 }]).unwrap();
        assert!((o.offset_s + 5.0).abs() < 1e-5 && o.bound_s == 1e-6, "{o:?}");
        assert_eq!(estimate(&[Round { t1: 5, worker: 1, t2: 4 }]), None);
        assert_eq!(estimate(&[]), None);
    }
}
