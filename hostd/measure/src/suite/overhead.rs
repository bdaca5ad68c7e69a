//! Overhead (paper II.A.1): T_avn is the benchmark's time in one guest while n − 1 other
//! guests idle; O_vn = T_avn − T_a against the host's T_a, and O_v = O_v1. T_a itself is
//! the native backend's n = 1 measurement (the agent as a plain host process).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::{BenchRequest, Resource};

use super::step::Step;
use super::{guest_spec, suite_metric, BenchSample, StepPlan, Test};
use crate::backend::BackendKind;
use crate::fleet::Fleet;
use crate::stats::Stat;

/// Runs the benchmark of `resource` in the fleet's first guest only, `warmup` discarded
/// runs then `reps` counted ones, with every other guest of the fleet idle.
pub async fn measure(fleet: &Fleet, p: &StepPlan<'_>) -> Result<Vec<BenchSample>, String> {
    let StepPlan { resource, workloads: w, targets: t, warmup, reps, timeout } = *p;
    let g = fleet.guests.first().ok_or("no ready guest")?;
    let req = BenchRequest {
        spec: guest_spec(resource, w, fleet.backend, g, t),
        instances: 1,
        start_at_ns: None,
    };
    let mut step = Step::new(fleet, Test::Overhead, resource, w, timeout);
    let mut out = Vec::new();
    // The trusted reads' paired time ratios, and how many reads were counted.
    let (mut ratios, mut counted) = (Vec::new(), 0);
    let mut i = 0;
    // Only paired reads (a non-native disk read with the reference copy) repeat.
    let mut paired_step = false;
    while i < warmup + reps || (paired_step && more_disk_reads(&ratios, counted, reps)) {
        let mut run = step.run(&[(g, req.clone())], &[g]).await?;
        paired_step |= run.paired();
        let r = run.answers.remove(0)?;
        if i >= warmup {
            let s = step.samples(&run, fleet.guests.len(), i - warmup, g.spec.index, &r);
            let trusted = s.iter().filter(|s| trusted(s));
            ratios.extend(trusted.filter_map(|s| reference(s).map(|(_, t)| s.elapsed_s / t)));
            counted += 1;
            out.extend(s);
        }
        i += 1;
    }
    Ok(super::place(out, fleet))
}

/// A paired disk read's time ratio is known to within this share of itself (95 % CI half
/// width ÷ mean) before the overhead step stops reading.
pub const DISK_RATIO_PRECISION: f64 = 0.05;

/// The widest disagreement of the two native reads around a backend read (|after − before|
/// ÷ their mean) for which that read's ratio is trusted. Wider, the disk changed speed while
/// the backend read (swings of 2× within seconds happen on this shared disk), so neither
/// native read tells what the backend's read competed with; such a read is recorded but
/// left out of the paired ratios, and the report counts it.
pub const BRACKET_TRUST: f64 = 0.20;

/// Whether a disk sample's ratio is trusted: its bracket agrees within [`BRACKET_TRUST`]
/// (reads without the second native read, older results, are taken as they are).
pub fn trusted(s: &BenchSample) -> bool {
    bracket(s).is_none_or(|b| b <= BRACKET_TRUST)
}

/// The most counted reads a paired overhead disk step takes ([`more_disk_reads`]).
pub fn disk_read_cap(reps: u32) -> u32 {
    reps.saturating_mul(4).max(8)
}

/// Whether the overhead step reads the disk again after `counted` counted reads, `ratios`
/// being the paired time ratios of the trusted ones (empty for native and other resources,
/// which the caller never repeats): until `reps` reads are trusted and their mean ratio is known to
/// [`DISK_RATIO_PRECISION`], up to four times `reps` reads in all (at least 8). One read's
/// ratio on a shared disk ranges widely (0.3–1.9 measured here), so a fixed two or three
/// reads could not say whether a backend is within 10 % of native.
pub fn more_disk_reads(ratios: &[f64], counted: usize, reps: u32) -> bool {
    let cap = disk_read_cap(reps) as usize;
    if counted < reps as usize || counted >= cap {
        return false;
    }
    if ratios.len() < reps as usize {
        return true;
    }
    match Stat::of(ratios, "×").and_then(|s| Some((s.ci_half()?, s.mean))) {
        Some((h, m)) => m > 0.0 && h / m > DISK_RATIO_PRECISION,
        None => ratios.len() < 2,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
/// One fleet size's overhead figure.
pub struct OverheadPoint {
    /// Fleet size.
    pub n: usize,
    /// T_avn (or the bandwidth for network).
    pub value: Stat,
    /// O_vn = T_avn − T_a (for network: B_a − B_avn, the bandwidth lost).
    pub overhead: Option<f64>,
}

/// T_a: the host's figure, from the native backend's n = 1 overhead samples of one workload.
pub fn baseline(samples: &[&BenchSample]) -> Option<Stat> {
    let unit = samples.first().map(|s| suite_metric(s).1)?;
    Stat::of(&samples.iter().map(|s| suite_metric(s).0).collect::<Vec<_>>(), unit)
}

/// One backend's overhead points for one resource and workload (`samples`: its overhead
/// samples), per n: T_avn over every counted repetition and O_vn = T_avn − T_a against the
/// host's mean `ta` (for the network, where more is better, B_a − B_avn).
pub fn analyse(samples: &[&BenchSample], ta: Option<f64>) -> Vec<OverheadPoint> {
    let mut by_n: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for s in samples {
        by_n.entry(s.n).or_default().push(suite_metric(s).0);
    }
    let Some((_, unit, higher)) = samples.first().map(|s| suite_metric(s)) else {
        return Vec::new();
    };
    by_n.into_iter()
        .filter_map(|(n, v)| {
            let value = Stat::of(&v, unit)?;
            let overhead = ta.map(|ta| if higher { ta - value.mean } else { value.mean - ta });
            Some(OverheadPoint { n, value, overhead })
        })
        .collect()
}

/// A backend's disk reads of one test and fleet size against the native reads paired with
/// them ([`super::paired_read`]): each read is divided by the native read taken right before
/// it, so the disk's drift over the run (other I/O on a shared or virtual disk) cancels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairedPoint {
    /// The test.
    pub test: Test,
    /// Fleet size.
    pub n: usize,
    /// Per read: its MB/s ÷ the adjacent native read's (1 = native speed, above 1 faster).
    pub speed: Stat,
    /// Per read: its time ÷ the adjacent native read's for the same bytes (the decision
    /// table's disk overhead when present).
    pub time: Stat,
    /// The longest time from the end of a native read to the backend read paired with it, s.
    pub max_gap_s: f64,
    /// Reads left out of `speed` and `time` because their bracket disagreed by more than
    /// [`BRACKET_TRUST`] (all are kept if none agreed, and this counts them).
    #[serde(default)]
    pub untrusted: usize,
    /// Reads bracketed by a native read on each side: the largest disagreement of the two,
    /// |after − before| ÷ their mean (how far the disk moved around one read). None when no
    /// read has the second native read (results older than the bracket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bracket: Option<f64>,
}

/// The native reference of one backend read, MB/s and s: the mean of the native reads on
/// either side of it where both were taken, else the one before; None if absent or absurd.
pub fn reference(s: &BenchSample) -> Option<(f64, f64)> {
    let ok = |x: Option<f64>| x.filter(|x| x.is_finite() && *x > 0.0);
    let (m, t) = (ok(s.paired_native_mbps)?, ok(s.paired_native_s)?);
    match (ok(s.paired_native_after_mbps), ok(s.paired_native_after_s)) {
        (Some(m2), Some(t2)) => Some(((m + m2) / 2.0, (t + t2) / 2.0)),
        _ => Some((m, t)),
    }
}

/// |after − before| ÷ their mean for a read bracketed by two native reads.
fn bracket(s: &BenchSample) -> Option<f64> {
    let (a, b) = (s.paired_native_mbps?, s.paired_native_after_mbps?);
    (a > 0.0 && b > 0.0).then(|| (b - a).abs() / ((a + b) / 2.0))
}

/// The paired ratios of one backend's disk samples (any test), per test and n; samples
/// without a paired native read (native's own, older results) are left out.
pub fn paired(samples: &[&BenchSample]) -> Vec<PairedPoint> {
    // Per test and n: each read with its reference (MB/s, s).
    type Refd<'a> = (&'a BenchSample, (f64, f64));
    let mut by: BTreeMap<(Test, usize), Vec<Refd>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.resource == Resource::Disk) {
        if let Some(r) = reference(s).filter(|_| s.value > 0.0 && s.elapsed_s > 0.0) {
            by.entry((s.test, s.n)).or_default().push((s, r));
        }
    }
    by.into_iter()
        .filter_map(|((test, n), all)| {
            let ok: Vec<Refd> = all.iter().filter(|(s, _)| trusted(s)).copied().collect();
            let untrusted = all.len() - ok.len();
            let ss = if ok.is_empty() { &all } else { &ok };
            let speed: Vec<f64> = ss.iter().map(|(s, (m, _))| s.value / m).collect();
            let time: Vec<f64> = ss.iter().map(|(s, (_, t))| s.elapsed_s / t).collect();
            let max_gap_s = ss.iter().filter_map(|(s, _)| s.paired_gap_s).fold(0.0, f64::max);
            let max_bracket = all
                .iter()
                .filter_map(|(s, _)| bracket(s))
                .fold(None, |m: Option<f64>, b| Some(m.map_or(b, |m| m.max(b))));
            Some(PairedPoint {
                test,
                n,
                speed: Stat::of(&speed, "×")?,
                time: Stat::of(&time, "×")?,
                max_gap_s,
                untrusted,
                max_bracket,
            })
        })
        .collect()
}

/// How far native's own O_DIRECT read speed moved over a run: every paired native read
/// (counted once per run, though all of a run's samples carry it) and the native
/// backend's own overhead reads (one reader, as in a paired read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// How many native reads.
    pub reads: usize,
    /// Slowest, MB/s.
    pub min_mbps: f64,
    /// Median, MB/s.
    pub median_mbps: f64,
    /// Fastest, MB/s.
    pub max_mbps: f64,
    /// (max − min) ÷ median.
    pub spread: f64,
}

/// Native's read-speed drift over the samples' runs, or None without native disk reads.
pub fn native_drift(samples: &[&BenchSample]) -> Option<Drift> {
    let mut runs: BTreeMap<(BackendKind, Test, usize, u32), Vec<f64>> = BTreeMap::new();
    let mut v = Vec::new();
    for s in samples.iter().filter(|s| s.resource == Resource::Disk) {
        if s.backend == BackendKind::Native {
            // Alone reads only, as the paired ones are (linearity and isolation share the disk).
            if s.test == Test::Overhead {
                v.push(s.value);
            }
        } else if let Some(m) = s.paired_native_mbps {
            let both = [Some(m), s.paired_native_after_mbps];
            runs.insert((s.backend, s.test, s.n, s.rep), both.into_iter().flatten().collect());
        }
    }
    v.extend(runs.into_values().flatten());
    v.retain(|x| x.is_finite() && *x > 0.0);
    let median = crate::stats::median(&v)?;
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(0.0, f64::max);
    Some(Drift {
        reads: v.len(),
        min_mbps: min,
        median_mbps: median,
        max_mbps: max,
        spread: (max - min) / median,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::testing::sample;

    /// A disk read of `mbps` (512 MB: its time is 512 ÷ mbps) paired with a native read
    /// of `native` MB/s, `gap` s before it.
    fn disk(b: BackendKind, test: Test, n: usize, rep: u32, mbps: f64, native: f64) -> BenchSample {
        BenchSample {
            value: mbps,
            unit: "MB/s".into(),
            elapsed_s: 512.0 / mbps,
            paired_native_mbps: (b != BackendKind::Native).then_some(native),
            paired_native_s: (b != BackendKind::Native).then_some(512.0 / native),
            paired_gap_s: (b != BackendKind::Native).then_some(0.01 * (rep + 1) as f64),
            ..sample(b, test, Resource::Disk, n, rep, 0, 0, 512.0 / mbps)
        }
    }

    #[test]
    fn paired_ratio_divides_each_read_by_its_adjacent_native_read() {
        // The disk slowed from 400 to 200 MB/s over the run; ns read at native speed each
        // time (400, 300, 200 beside native's 400, 300, 200): unpaired against native's
        // first figure it would look 1.33× slower, paired it is 1.
        let v = [
            disk(BackendKind::Ns, Test::Overhead, 1, 0, 400.0, 400.0),
            disk(BackendKind::Ns, Test::Overhead, 1, 1, 300.0, 300.0),
            disk(BackendKind::Ns, Test::Overhead, 1, 2, 200.0, 200.0),
            // uml at n = 2 (linearity): 100 and 150 beside 200 and 200: speed 0.5 and 0.75.
            disk(BackendKind::Uml, Test::Linearity, 2, 0, 100.0, 200.0),
            disk(BackendKind::Uml, Test::Linearity, 2, 1, 150.0, 200.0),
            // No pair: left out.
            disk(BackendKind::Native, Test::Overhead, 1, 0, 400.0, 0.0),
        ];
        let p = paired(&v.iter().collect::<Vec<_>>());
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].test, p[0].n, p[0].speed.samples), (Test::Overhead, 1, 3));
        assert!((p[0].speed.median - 1.0).abs() < 1e-12 && (p[0].time.mean - 1.0).abs() < 1e-12);
        assert!((p[0].max_gap_s - 0.03).abs() < 1e-12);
        assert_eq!((p[1].test, p[1].n), (Test::Linearity, 2));
        assert!((p[1].speed.mean - 0.625).abs() < 1e-12, "{:?}", p[1].speed);
        // Times: 2 and 4/3 of native's.
        assert!((p[1].time.mean - (2.0 + 4.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!(paired(&[]).is_empty());
    }

    #[test]
    fn a_bracketed_read_is_divided_by_the_mean_of_its_two_native_reads() {
        // ns reads at 300 MB/s between native reads of 280 and 320: the reference is 300
        // MB/s (1×), where the read before alone would say 1.07×; the two disagree by 2/15.
        let mut a = disk(BackendKind::Ns, Test::Overhead, 1, 0, 300.0, 280.0);
        (a.paired_native_after_mbps, a.paired_native_after_s) = (Some(320.0), Some(512.0 / 320.0));
        // A second read with the bracket agreeing (500, 500) and read at 550 (1.1×).
        let mut b = disk(BackendKind::Ns, Test::Overhead, 1, 1, 550.0, 500.0);
        (b.paired_native_after_mbps, b.paired_native_after_s) = (Some(500.0), Some(512.0 / 500.0));
        let p = paired(&[&a, &b]);
        assert_eq!(p.len(), 1);
        assert!((p[0].speed.mean - 1.05).abs() < 1e-12, "{:?}", p[0].speed);
        // Times: 512/300 ÷ mean(512/280, 512/320), and 512/550 ÷ 1.024.
        let r = (512.0 / 280.0 + 512.0 / 320.0) / 2.0;
        let t = ((512.0 / 300.0) / r + (512.0 / 550.0) / 1.024) / 2.0;
        assert!((p[0].time.mean - t).abs() < 1e-12, "{:?}", p[0].time);
        assert!((p[0].max_bracket.unwrap() - 40.0 / 300.0).abs() < 1e-12);
        assert_eq!(p[0].untrusted, 0);
        // Without the second read: the one before, and no bracket.
        let p = paired(&[&disk(BackendKind::Ns, Test::Overhead, 1, 0, 300.0, 200.0)]);
        assert!((p[0].speed.mean - 1.5).abs() < 1e-12 && p[0].max_bracket.is_none());
        // Both native reads count in native's drift.
        let d = native_drift(&[&a]).unwrap();
        assert_eq!((d.reads, d.min_mbps, d.max_mbps), (2, 280.0, 320.0));
    }

    #[test]
    fn disk_reads_repeat_until_the_ratio_is_known_to_five_percent() {
        // No read trusted yet after reps: read on.
        assert!(more_disk_reads(&[], 2, 2));
        // Fewer than reps counted: the loop's own count decides.
        assert!(!more_disk_reads(&[1.0], 1, 2));
        // Two reads 0.6 and 1.4 (mean 1, CI half width ≈ 5.1): read on, up to 8 for reps = 2.
        assert!(more_disk_reads(&[0.6, 1.4], 2, 2));
        assert!(more_disk_reads(&[0.6, 1.4, 0.6, 1.4, 0.6, 1.4], 6, 2));
        assert!(!more_disk_reads(&[0.6, 1.4, 0.6, 1.4, 0.6, 1.4, 0.6, 1.4], 8, 2));
        // Four times reps when that is more: 5 → 20.
        assert!(more_disk_reads(&[0.6, 1.4, 0.6, 1.4, 0.6, 1.4, 1.0], 19, 5));
        assert!(!more_disk_reads(&[0.6, 1.4, 0.6, 1.4, 0.6, 1.4, 1.0], 20, 5));
        // Agreeing reads stop at reps: 1.00 and 1.01 (CI half ≈ 0.064 ≈ 6 % — one more);
        // four reads within ±1 % stop.
        assert!(more_disk_reads(&[1.0, 1.01], 2, 2));
        assert!(!more_disk_reads(&[1.0, 1.01, 0.99, 1.0], 4, 2));
        // Untrusted reads do not count towards reps: 3 counted, 1 trusted, read on.
        assert!(more_disk_reads(&[1.0], 3, 2));
    }

    #[test]
    fn reads_whose_bracket_disagrees_are_left_out() {
        let bracketed = |rep, mbps, before: f64, after: f64| {
            let mut s = disk(BackendKind::Ns, Test::Overhead, 2, rep, mbps, before);
            (s.paired_native_after_mbps, s.paired_native_after_s) =
                (Some(after), Some(512.0 / after));
            s
        };
        // 1000 between 950 and 1050 (10 %: trusted, 1×); 1500 between 1100 and 500 (75 %:
        // left out, it would say 1.875×); 900 between 1000 and 1000 (0.9×).
        let v = [
            bracketed(0, 1000.0, 950.0, 1050.0),
            bracketed(1, 1500.0, 1100.0, 500.0),
            bracketed(2, 900.0, 1000.0, 1000.0),
        ];
        assert!(trusted(&v[0]) && !trusted(&v[1]) && trusted(&v[2]));
        let p = paired(&v.iter().collect::<Vec<_>>());
        assert_eq!((p[0].speed.samples, p[0].untrusted), (2, 1));
        assert!((p[0].speed.median - 0.95).abs() < 1e-12, "{:?}", p[0].speed);
        assert!((p[0].max_bracket.unwrap() - 0.75).abs() < 1e-12);
        // None agreeing: all kept, all counted as untrusted.
        let p = paired(&[&v[1]]);
        assert_eq!((p[0].speed.samples, p[0].untrusted), (1, 1));
        // Older reads without a second native read are trusted.
        assert!(trusted(&disk(BackendKind::Ns, Test::Overhead, 1, 0, 300.0, 200.0)));
    }

    #[test]
    fn drift_counts_each_paired_native_read_once() {
        // Native's own reads 400 and 380; ns's two reps carry 300 and 200; uml's one
        // linearity run (two guests' samples) carries 250 once.
        let mut v = vec![
            disk(BackendKind::Native, Test::Overhead, 1, 0, 400.0, 0.0),
            disk(BackendKind::Native, Test::Overhead, 1, 1, 380.0, 0.0),
            disk(BackendKind::Ns, Test::Overhead, 1, 0, 310.0, 300.0),
            disk(BackendKind::Ns, Test::Overhead, 1, 1, 190.0, 200.0),
            disk(BackendKind::Uml, Test::Linearity, 2, 0, 100.0, 250.0),
        ];
        v.push(BenchSample { guest: 1, ..v[4].clone() });
        // Native's concurrent reads are not alone reads: left out.
        v.push(disk(BackendKind::Native, Test::Linearity, 2, 0, 50.0, 0.0));
        let d = native_drift(&v.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(d.reads, 5);
        assert_eq!((d.min_mbps, d.median_mbps, d.max_mbps), (200.0, 300.0, 400.0));
        assert!((d.spread - 200.0 / 300.0).abs() < 1e-12);
        assert_eq!(native_drift(&[]), None);
    }

    #[test]
    fn overhead_is_the_difference_with_the_host() {
        // T_a = 2 s (host runs 1.9, 2.1); the guest takes 2.5, 2.7 s at n = 1 and 3.0 s at n = 5.
        let host = [
            sample(BackendKind::Native, Test::Overhead, Resource::Cpu, 1, 0, 0, 0, 1.9),
            sample(BackendKind::Native, Test::Overhead, Resource::Cpu, 1, 1, 0, 0, 2.1),
        ];
        let ta = baseline(&host.iter().collect::<Vec<_>>()).unwrap();
        assert!((ta.mean - 2.0).abs() < 1e-12 && ta.samples == 2);
        let g = [
            sample(BackendKind::Uml, Test::Overhead, Resource::Cpu, 1, 0, 0, 0, 2.5),
            sample(BackendKind::Uml, Test::Overhead, Resource::Cpu, 1, 1, 0, 0, 2.7),
            sample(BackendKind::Uml, Test::Overhead, Resource::Cpu, 5, 0, 0, 0, 3.0),
        ];
        let pts = analyse(&g.iter().collect::<Vec<_>>(), Some(ta.mean));
        assert_eq!(pts.iter().map(|p| p.n).collect::<Vec<_>>(), [1, 5]);
        assert!(
            (pts[0].value.mean - 2.6).abs() < 1e-12
                && (pts[0].overhead.unwrap() - 0.6).abs() < 1e-12
        );
        assert!((pts[1].overhead.unwrap() - 1.0).abs() < 1e-12 && pts[1].value.samples == 1);
        // Without a host baseline there is no overhead, only T_avn.
        assert_eq!(analyse(&g.iter().collect::<Vec<_>>(), None)[0].overhead, None);
        assert!(analyse(&[], Some(1.0)).is_empty());
    }

    #[test]
    fn network_overhead_is_the_bandwidth_lost() {
        let g = [
            sample(BackendKind::Xen, Test::Overhead, Resource::Network, 1, 0, 0, 0, 800.0),
            sample(BackendKind::Xen, Test::Overhead, Resource::Network, 1, 1, 0, 0, 900.0),
        ];
        let pts = analyse(&g.iter().collect::<Vec<_>>(), Some(1000.0));
        assert_eq!(pts[0].value.unit, "MB/s");
        assert!((pts[0].overhead.unwrap() - 150.0).abs() < 1e-9);
    }
}
