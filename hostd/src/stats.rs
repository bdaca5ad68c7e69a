//! Summaries of repeated measurements: {name, unit, samples, mean, std_dev, min, max}.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    pub unit: String,
    /// Every counted sample, in measurement order (warm-ups excluded).
    pub samples: Vec<f64>,
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for a single sample.
    pub std_dev: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// None for an empty sample set: nothing measured is never shown as a number.
    pub fn of(name: impl Into<String>, unit: impl Into<String>, samples: Vec<f64>) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let var = if samples.len() > 1 { samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Self { name: name.into(), unit: unit.into(), samples, mean, std_dev: var.sqrt(), min, max })
    }
}

/// Least-squares line y = slope·x + intercept, with the residual standard error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearFit {
    pub slope: f64,
    pub intercept: f64,
    /// sqrt(Σ residual² / (n − 2)); 0 when n = 2.
    pub residual_std: f64,
    pub points: usize,
}

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
    fn fit_recovers_line() {
        let f = linear_fit(&[(1.0, 12.0), (10.0, 30.0), (50.0, 110.0), (100.0, 210.0)]).unwrap();
        assert!((f.slope - 2.0).abs() < 1e-12 && (f.intercept - 10.0).abs() < 1e-9 && f.residual_std < 1e-9);
        assert!(linear_fit(&[(1.0, 1.0)]).is_none());
        assert!(linear_fit(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }
}
