//! CPU: an iterative estimate of √2 (paper II.A). Newton's step x ← (x + 2/x)/2 is one
//! dependent chain of a division, an addition and a multiplication held in registers, so
//! the time measures the processor alone.

use std::hint::black_box;

/// Runs `rounds` Newton steps from x = 1 and returns the estimate (√2 after ~5 steps;
/// later steps keep recomputing the fixed point, which the compiler cannot skip).
pub fn sqrt2(rounds: u64) -> f64 {
    let mut x = black_box(1.0f64);
    for _ in 0..rounds {
        x = 0.5 * (x + 2.0 / x);
    }
    black_box(x)
}

#[cfg(test)]
mod tests {
    #[test]
    fn converges_to_sqrt2() {
        assert_eq!(super::sqrt2(1), 1.5);
        assert!((super::sqrt2(2) - 17.0 / 12.0).abs() < 1e-15);
        assert!((super::sqrt2(1000) - std::f64::consts::SQRT_2).abs() <= 1e-15);
    }
}
