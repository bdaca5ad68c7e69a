//! Summaries of repeated measurements: {name, unit, samples, mean, std_dev, min, max,
//! median, 95 % confidence interval of the mean}, and Welch's test of two means.
//!
//! The t quantiles come from a table (df 1..30, the values of every statistics textbook,
//! checked in the tests) and, beyond 30, the Cornish–Fisher expansion of Abramowitz &
//! Stegun 26.7.5 (within 1e-5 of the exact quantile there): no crate for one function.

use serde::{Deserialize, Serialize};

/// Mean, spread, median and 95 % confidence interval of one named set of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// What was measured.
    pub name: String,
    /// Its unit.
    pub unit: String,
    /// Every counted sample, in measurement order (warm-ups excluded).
    pub samples: Vec<f64>,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for a single sample.
    pub std_dev: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Middle sample (mean of the two middle ones for an even count).
    #[serde(default)]
    pub median: f64,
    /// 95 % confidence interval of the mean, mean ± t(0.975, n − 1)·s/√n; None for a single
    /// sample (no spread to estimate).
    #[serde(default)]
    pub ci95: Option<[f64; 2]>,
}

/// t(0.975, df) for df = 1..=30.
const T975: [f64; 30] = [
    12.706_204_736,
    4.302_652_730,
    3.182_446_305,
    2.776_445_105,
    2.570_581_836,
    2.446_911_849,
    2.364_624_251,
    2.306_004_135,
    2.262_157_163,
    2.228_138_852,
    2.200_985_160,
    2.178_812_830,
    2.160_368_656,
    2.144_786_688,
    2.131_449_546,
    2.119_905_299,
    2.109_815_578,
    2.100_922_040,
    2.093_024_054,
    2.085_963_447,
    2.079_613_845,
    2.073_873_068,
    2.068_657_610,
    2.063_898_562,
    2.059_538_553,
    2.055_529_439,
    2.051_830_516,
    2.048_407_142,
    2.045_229_642,
    2.042_272_456,
];

/// The 0.975 quantile of the standard normal distribution.
const Z975: f64 = 1.959_963_984_540_054;

/// The 0.975 quantile of Student's t with `df` degrees of freedom (df ≥ 1): the factor of
/// a two-sided 95 % interval. None for df = 0.
pub fn t975(df: usize) -> Option<f64> {
    match df {
        0 => None,
        1..=30 => Some(T975[df - 1]),
        _ => {
            // Abramowitz & Stegun 26.7.5, four terms.
            let (x, v) = (Z975, df as f64);
            let g1 = (x.powi(3) + x) / 4.0;
            let g2 = (5.0 * x.powi(5) + 16.0 * x.powi(3) + 3.0 * x) / 96.0;
            let g3 = (3.0 * x.powi(7) + 19.0 * x.powi(5) + 17.0 * x.powi(3) - 15.0 * x) / 384.0;
            let g4 = (79.0 * x.powi(9) + 776.0 * x.powi(7) + 1482.0 * x.powi(5)
                - 1920.0 * x.powi(3)
                - 945.0 * x)
                / 92160.0;
            Some(x + g1 / v + g2 / v.powi(2) + g3 / v.powi(3) + g4 / v.powi(4))
        }
    }
}

/// Half the width of the 95 % confidence interval of a mean from `n` samples of standard
/// deviation `std_dev`; None for n < 2.
pub fn ci95_half(std_dev: f64, n: usize) -> Option<f64> {
    Some(t975(n.checked_sub(1)?)? * std_dev / (n as f64).sqrt())
}

/// The median of finite values; None for none.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    match s.len() {
        0 => None,
        n if n % 2 == 1 => Some(s[m]),
        _ => Some((s[m - 1] + s[m]) / 2.0),
    }
}

/// Welch's two-sided t-test of two means at the 5 % level, from (mean, sample standard
/// deviation, count) each. The critical value is taken at ⌊df⌋ (Welch–Satterthwaite df),
/// which only ever widens it. None when either side has fewer than two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Welch {
    /// Welch's t statistic.
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// |t| exceeds t(0.975, ⌊df⌋): the means differ beyond the noise.
    pub differs: bool,
}

/// [`Welch`]'s test of `a` against `b`, each (mean, sample standard deviation, count).
pub fn welch(a: (f64, f64, usize), b: (f64, f64, usize)) -> Option<Welch> {
    let ((ma, sa, na), (mb, sb, nb)) = (a, b);
    if na < 2 || nb < 2 {
        return None;
    }
    let (va, vb) = (sa * sa / na as f64, sb * sb / nb as f64);
    let se2 = va + vb;
    if se2 == 0.0 {
        // No spread on either side: any difference is beyond the (absent) noise.
        let differs = ma != mb;
        return Some(Welch {
            t: if differs { f64::INFINITY } else { 0.0 },
            df: (na + nb - 2) as f64,
            differs,
        });
    }
    let t = (ma - mb) / se2.sqrt();
    let df = se2 * se2 / (va * va / (na - 1) as f64 + vb * vb / (nb - 1) as f64);
    let crit = t975((df.floor() as usize).max(1))?;
    Some(Welch { t, df, differs: t.abs() > crit })
}

impl Summary {
    /// None for an empty sample set: nothing measured is never shown as a number.
    pub fn of(name: impl Into<String>, unit: impl Into<String>, samples: Vec<f64>) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let var = if samples.len() > 1 {
            samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let std_dev = var.sqrt();
        let median = median(&samples)?;
        let ci95 = ci95_half(std_dev, samples.len()).map(|h| [mean - h, mean + h]);
        Some(Self {
            name: name.into(),
            unit: unit.into(),
            samples,
            mean,
            std_dev,
            min,
            max,
            median,
            ci95,
        })
    }
}

/// A ratio of two means, ā ÷ b̄, with its 95 % confidence interval by the delta method
/// (first-order Taylor expansion of the ratio, as Fieller's interval for small spreads).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// ā ÷ b̄.
    pub ratio: f64,
    /// None with fewer than two samples on a side, or a zero denominator mean.
    pub ci95: Option<[f64; 2]>,
}

/// ā ÷ b̄ for `a` and `b` measured in interleaved pairs (a[i] next to b[i]): the pairs'
/// covariance narrows the interval when both sides drift together, as on a shared host.
/// Var(R) ≈ (s_a² − 2R·s_ab + R²·s_b²) / (n·b̄²), t with n − 1 degrees of freedom. None
/// for unequal or empty sides or a zero denominator.
pub fn paired_ratio(a: &[f64], b: &[f64]) -> Option<Ratio> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    if mb == 0.0 {
        return None;
    }
    let r = ma / mb;
    let ci95 = (a.len() >= 2).then(|| {
        let d = n - 1.0;
        let saa = a.iter().map(|x| (x - ma).powi(2)).sum::<f64>() / d;
        let sbb = b.iter().map(|x| (x - mb).powi(2)).sum::<f64>() / d;
        let sab = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum::<f64>() / d;
        let var = ((saa - 2.0 * r * sab + r * r * sbb) / (n * mb * mb)).max(0.0);
        let h = t975(a.len() - 1).expect("df ≥ 1") * var.sqrt();
        [r - h, r + h]
    });
    Some(Ratio { ratio: r, ci95 })
}

/// ā ÷ b̄ for independent samples: Var(R) ≈ R²·(s_a²/(n_a·ā²) + s_b²/(n_b·b̄²)), t with
/// the Welch–Satterthwaite degrees of freedom of the two relative variances (floored).
pub fn ratio(a: &[f64], b: &[f64]) -> Option<Ratio> {
    let (sa, sb) = (Summary::of("", "", a.to_vec())?, Summary::of("", "", b.to_vec())?);
    if sb.mean == 0.0 {
        return None;
    }
    let r = sa.mean / sb.mean;
    // Relative variances need a non-zero numerator mean too.
    let ci95 = (a.len() >= 2 && b.len() >= 2 && sa.mean != 0.0).then(|| {
        let va = sa.std_dev.powi(2) / (a.len() as f64 * sa.mean.powi(2));
        let vb = sb.std_dev.powi(2) / (b.len() as f64 * sb.mean.powi(2));
        let v = va + vb;
        let df = if v == 0.0 {
            (a.len() + b.len() - 2) as f64
        } else {
            v * v / (va * va / (a.len() - 1) as f64 + vb * vb / (b.len() - 1) as f64)
        };
        let h = t975((df.floor() as usize).max(1)).expect("df ≥ 1") * r * v.sqrt();
        [r - h, r + h]
    });
    Some(Ratio { ratio: r, ci95 })
}

/// Least-squares line y = slope·x + intercept, with the residual standard error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearFit {
    /// Slope.
    pub slope: f64,
    /// Value at x = 0.
    pub intercept: f64,
    /// sqrt(Σ residual² / (n − 2)); 0 when n = 2.
    pub residual_std: f64,
    /// Points fitted.
    pub points: usize,
}

/// The least-squares [`LinearFit`] through `points` (x, y); None for fewer than two
/// points or a single x.
pub fn linear_fit(points: &[(f64, f64)]) -> Option<LinearFit> {
    let n = points.len();
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let my = points.iter().map(|p| p.1).sum::<f64>() / nf;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss: f64 = points.iter().map(|p| (p.1 - (slope * p.0 + intercept)).powi(2)).sum();
    let residual_std = if n > 2 { (ss / (nf - 2.0)).sqrt() } else { 0.0 };
    Some(LinearFit { slope, intercept, residual_std, points: n })
}

/// Mean, spread, median, 95 % confidence interval of the mean and count of one point, in
/// the suite's unit for its resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub std_dev: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// How many samples.
    pub samples: usize,
    /// Their unit.
    pub unit: String,
    #[serde(default)]
    /// Median.
    pub median: f64,
    /// mean ± t(0.975, n − 1)·s/√n; None for one sample (or a report older than the field).
    #[serde(default)]
    pub ci95: Option<[f64; 2]>,
}

impl Stat {
    /// The statistics of `v` in `unit`; None for no samples.
    pub fn of(v: &[f64], unit: &str) -> Option<Stat> {
        let s = Summary::of("", unit, v.to_vec())?;
        Some(Stat {
            mean: s.mean,
            std_dev: s.std_dev,
            min: s.min,
            max: s.max,
            samples: v.len(),
            unit: unit.into(),
            median: s.median,
            ci95: s.ci95,
        })
    }

    /// Half the width of the 95 % confidence interval (the figures' error bars).
    pub fn ci_half(&self) -> Option<f64> {
        self.ci95.map(|[lo, hi]| (hi - lo) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_values() {
        let s = Summary::of("x", "s", vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.mean, 2.5);
        assert!((s.std_dev - 1.2909944487358056).abs() < 1e-12);
        assert_eq!((s.min, s.max), (1.0, 4.0));
        assert_eq!(Summary::of("x", "s", vec![5.0]).unwrap().std_dev, 0.0);
        assert!(Summary::of("x", "s", vec![]).is_none());
        assert!(Summary::of("x", "s", vec![f64::NAN]).is_none());
    }

    #[test]
    fn median_and_interval() {
        let s = Summary::of("x", "s", vec![4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        // 2.5 ± t(0.975, 3)·1.29099/2 = 2.5 ± 2.054260
        let [lo, hi] = s.ci95.unwrap();
        assert!((lo - 0.445740).abs() < 1e-5 && (hi - 4.554260).abs() < 1e-5, "{lo} {hi}");
        let one = Summary::of("x", "s", vec![5.0]).unwrap();
        assert_eq!((one.median, one.ci95), (5.0, None));
        assert_eq!(Summary::of("x", "s", vec![3.0, 1.0, 2.0]).unwrap().median, 2.0);
        // Three samples 1, 2, 3: mean 2, s = 1, half-width 4.303/√3 = 2.484.
        let [lo, hi] = Summary::of("x", "s", vec![1.0, 2.0, 3.0]).unwrap().ci95.unwrap();
        assert!((lo - (2.0 - 2.484138)).abs() < 1e-5 && (hi - (2.0 + 2.484138)).abs() < 1e-5);
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        // Printed tables, 3 decimals.
        for (df, t) in [
            (1, 12.706),
            (2, 4.303),
            (3, 3.182),
            (4, 2.776),
            (5, 2.571),
            (9, 2.262),
            (10, 2.228),
            (20, 2.086),
            (30, 2.042),
        ] {
            assert!((t975(df).unwrap() - t).abs() < 5e-4, "df {df}");
        }
        // Beyond the table, the expansion against exact quantiles.
        for (df, t) in
            [(31, 2.039513), (40, 2.021075), (60, 2.000298), (120, 1.979930), (1000, 1.962339)]
        {
            assert!((t975(df).unwrap() - t).abs() < 1e-5, "df {df}: {}", t975(df).unwrap());
        }
        // Continuous at the seam and falling towards the normal quantile.
        assert!(t975(31).unwrap() < t975(30).unwrap() && t975(1_000_000).unwrap() > Z975);
        assert_eq!(t975(0), None);
        assert_eq!(ci95_half(1.0, 1), None);
    }

    #[test]
    fn welch_tells_noise_from_a_difference() {
        // Textbook case: means 10 and 12, s = 1 each, n = 5 each: t = −3.162, df = 8,
        // t(0.975, 8) = 2.306: a difference.
        let w = welch((10.0, 1.0, 5), (12.0, 1.0, 5)).unwrap();
        assert!((w.t + 3.162278).abs() < 1e-5 && (w.df - 8.0).abs() < 1e-9 && w.differs, "{w:?}");
        // Same means ± wide spread: noise.
        assert!(!welch((10.0, 3.0, 5), (11.0, 3.0, 5)).unwrap().differs);
        // Unequal variances: df from Welch–Satterthwaite.
        let w = welch((1.0, 1.0, 10), (2.0, 3.0, 5)).unwrap();
        // va = 0.1, vb = 1.8: df = 1.9² / (0.01/9 + 3.24/4) = 4.4507
        assert!((w.df - 4.450685).abs() < 1e-5 && !w.differs, "{w:?}");
        assert_eq!(welch((1.0, 0.0, 1), (2.0, 0.0, 5)), None);
        assert!(welch((1.0, 0.0, 3), (2.0, 0.0, 3)).unwrap().differs);
        assert!(!welch((1.0, 0.0, 3), (1.0, 0.0, 3)).unwrap().differs);
    }

    #[test]
    fn ratio_intervals_known_answers() {
        // Paired: a = 2, 4, 6, b = 1, 2, 3: every pair's ratio is 2, the interval is a point.
        let r = paired_ratio(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(r.ratio, 2.0);
        let [lo, hi] = r.ci95.unwrap();
        assert!((lo - 2.0).abs() < 1e-12 && (hi - 2.0).abs() < 1e-12, "{lo} {hi}");
        // a = 3, 5, b = 1, 1: R = 4; s_a² = 2, s_b² = 0, s_ab = 0: Var = 2/(2·1) = 1,
        // half-width t(0.975, 1)·1 = 12.706.
        let r = paired_ratio(&[3.0, 5.0], &[1.0, 1.0]).unwrap();
        let [lo, hi] = r.ci95.unwrap();
        assert!((r.ratio - 4.0).abs() < 1e-12 && (hi - 4.0 - 12.706205).abs() < 1e-5, "{lo} {hi}");
        assert_eq!(paired_ratio(&[1.0], &[2.0]).unwrap(), Ratio { ratio: 0.5, ci95: None });
        assert!(paired_ratio(&[1.0, 2.0], &[1.0]).is_none());
        assert!(paired_ratio(&[1.0], &[0.0]).is_none());
        // Independent: a = 9, 11 (mean 10, s² 2), b = 4, 6 (mean 5, s² 2): R = 2,
        // va = 2/(2·100) = 0.01, vb = 2/(2·25) = 0.04, v = 0.05, df = 0.0025/(1e-4 + 1.6e-3)
        // = 1.47 → 1: half-width 12.706·2·√0.05 = 5.682.
        let r = ratio(&[9.0, 11.0], &[4.0, 6.0]).unwrap();
        let [lo, hi] = r.ci95.unwrap();
        assert!((r.ratio - 2.0).abs() < 1e-12, "{r:?}");
        assert!((hi - 2.0 - 5.682388).abs() < 1e-5 && (lo - (2.0 - 5.682388)).abs() < 1e-5);
        assert_eq!(ratio(&[3.0], &[2.0]).unwrap(), Ratio { ratio: 1.5, ci95: None });
        assert!(ratio(&[1.0], &[0.0]).is_none() && ratio(&[], &[1.0]).is_none());
    }

    #[test]
    fn fit_recovers_line() {
        let f = linear_fit(&[(1.0, 12.0), (10.0, 30.0), (50.0, 110.0), (100.0, 210.0)]).unwrap();
        assert!(
            (f.slope - 2.0).abs() < 1e-12
                && (f.intercept - 10.0).abs() < 1e-9
                && f.residual_std < 1e-9
        );
        assert!(linear_fit(&[(1.0, 1.0)]).is_none());
        assert!(linear_fit(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }
}
