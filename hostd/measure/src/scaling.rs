//! Startup scaling: T_startup(n) fitted over the fleet sizes a run measured (the paper's
//! linearity, applied to startup), and the first size at which it turns superlinear — its
//! knee — with what ran short there, from the kernel's pressure stall accounting
//! ([`crate::pressure`]) read over each fleet's start.

use serde::{Deserialize, Serialize};

use crate::pressure::Pressure;
use crate::stats::{linear_fit, LinearFit};

/// A size is past the knee when its T_startup exceeds the line through the smaller sizes
/// by more than this share: well above the run-to-run spread of a fleet's start on a
/// loaded 2-core machine (10–20 %), well below the doubling a real knee shows.
pub const TOLERANCE: f64 = 0.25;

/// A resource counts as having run short at the knee when some task stalled on it for at
/// least this share of the start, and this much more than at the size before.
pub const STALL: f64 = 0.10;

/// One full fleet's figures for the analysis.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Guests (all ready).
    pub n: usize,
    /// T_startup(n), seconds.
    pub t_s: f64,
    /// Stalls over its start, when the kernel reports them.
    pub pressure: Option<Pressure>,
}

/// T_startup(n) of one backend and mode over the sizes measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scaling {
    /// T_startup(n) = slope·n + intercept (s per guest, s) over the sizes below the knee
    /// (every size without one).
    pub fit: LinearFit,
    /// The sizes measured with every guest ready, ascending.
    pub sizes: Vec<usize>,
    /// The first size past the linear regime, if any.
    pub knee: Option<Knee>,
}

/// Where T_startup(n) turned superlinear.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Knee {
    /// The size.
    pub n: usize,
    /// Its T_startup, seconds.
    pub t_s: f64,
    /// What the line through the smaller sizes predicted, seconds.
    pub predicted_s: f64,
    /// The size before it.
    pub prev_n: usize,
    /// What ran short, in words, from the stalls at both sizes.
    pub cause: String,
}

/// The fit and knee of `points` (fleets with every guest ready; any order). None for
/// fewer than two distinct sizes; a knee is looked for from the third size on.
pub fn analyse(points: &[Point]) -> Option<Scaling> {
    let mut pts = points.to_vec();
    pts.sort_by_key(|p| p.n);
    let mut sizes: Vec<usize> = pts.iter().map(|p| p.n).collect();
    sizes.dedup();
    let line = |below: usize| {
        let xy: Vec<(f64, f64)> =
            pts.iter().filter(|p| p.n < below).map(|p| (p.n as f64, p.t_s)).collect();
        linear_fit(&xy)
    };
    let mut knee = None;
    for (k, &n) in sizes.iter().enumerate().skip(2) {
        let Some(fit) = line(n) else { continue };
        let prev_n = sizes[k - 1];
        let at: Vec<&Point> = pts.iter().filter(|p| p.n == n).collect();
        let before: Vec<&Point> = pts.iter().filter(|p| p.n == prev_n).collect();
        let t_s = mean(at.iter().map(|p| p.t_s));
        // Never below the smaller size's own time: a line that noise tilted downwards
        // would otherwise call any size a knee.
        let predicted_s =
            (fit.slope * n as f64 + fit.intercept).max(mean(before.iter().map(|p| p.t_s)));
        if t_s > predicted_s * (1.0 + TOLERANCE) {
            let cause = cause(
                at.iter().find_map(|p| p.pressure),
                before.iter().find_map(|p| p.pressure),
                prev_n,
            );
            knee = Some(Knee { n, t_s, predicted_s, prev_n, cause });
            break;
        }
    }
    let fit = line(knee.as_ref().map_or(usize::MAX, |k| k.n))?;
    Some(Scaling { fit, sizes, knee })
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// What ran short at the knee: the stalls there against the size before.
pub fn cause(at: Option<Pressure>, before: Option<Pressure>, prev_n: usize) -> String {
    let Some(at) = at else {
        return "not measured: the kernel reported no pressure stalls (no PSI) for this start"
            .into();
    };
    let pct = |v: f64| format!("{:.0} %", v * 100.0);
    // The same resource's stall at the size before (0 where none was read).
    let then = |res: &str| {
        before.and_then(|b| b.by_resource().into_iter().find(|(r, _)| *r == res)).map(|x| x.1)
    };
    let was = |res: &str| {
        before.map_or_else(String::new, |_| {
            format!(" ({} at n = {prev_n})", pct(then(res).unwrap_or(0.0)))
        })
    };
    let rise = |res: &str, v: f64| v - then(res).unwrap_or(0.0);
    // Memory and I/O first: a stall on either is a resource that ran out, where CPU
    // contention alone is expected whenever more guests boot than there are cores.
    let short = at.by_resource()[1..]
        .iter()
        .filter(|(r, v)| *v >= STALL && rise(r, *v) >= STALL)
        .max_by(|a, b| rise(a.0, a.1).total_cmp(&rise(b.0, b.1)))
        .copied();
    if let Some((res, v)) = short {
        return format!(
            "{res} ran short: some task stalled on {res} {} of the start{}",
            pct(v),
            was(res)
        );
    }
    if at.cpu >= 0.9 {
        return format!(
            "CPU-bound: some task waited for a CPU {} of the start{}, memory and I/O stalls under {}: \
             more guests share the same cores, and guests already up take CPU from those still booting",
            pct(at.cpu),
            was("CPU"),
            pct(STALL)
        );
    }
    format!(
        "no resource ran short ({}): the extra time is serial work in the launch path (a lock or a \
         step done one guest at a time), not measured apart",
        at.line()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: usize, t_s: f64) -> Point {
        Point { n, t_s, pressure: None }
    }
    fn psi(cpu: f64, memory: f64, io: f64) -> Option<Pressure> {
        Some(Pressure { window_s: 1.0, cpu, memory, io })
    }

    #[test]
    fn a_linear_startup_has_no_knee_and_its_line() {
        let s = analyse(&[p(300, 3.1), p(100, 1.1), p(200, 2.1), p(400, 4.0)]).unwrap();
        assert!(s.knee.is_none(), "{s:?}");
        assert_eq!(s.sizes, vec![100, 200, 300, 400]);
        assert!((s.fit.slope - 0.0097).abs() < 1e-3 && s.fit.points == 4, "{:?}", s.fit);
    }

    #[test]
    fn the_first_superlinear_size_is_the_knee_and_the_line_stops_before_it() {
        // uml's own figures: 4.6 s at 100, 15 s at 200; a third size is needed to see it.
        let s = analyse(&[p(50, 2.4), p(100, 4.6), p(200, 15.0), p(400, 60.0)]).unwrap();
        let k = s.knee.expect("200 is far above the line through 50 and 100");
        assert_eq!((k.n, k.prev_n), (200, 100));
        assert!((k.predicted_s - 9.0).abs() < 1e-9, "{k:?}");
        assert_eq!(s.fit.points, 2);
        // Two sizes: a line, but nothing to test it against.
        let two = analyse(&[p(100, 4.6), p(200, 15.0)]).unwrap();
        assert!(two.knee.is_none() && two.fit.points == 2);
        assert!(analyse(&[p(100, 4.6), p(100, 4.7)]).is_none(), "one size is no line");
    }

    #[test]
    fn a_line_tilted_down_by_noise_does_not_make_a_knee() {
        let s = analyse(&[p(100, 5.0), p(200, 4.0), p(300, 4.5)]).unwrap();
        assert!(s.knee.is_none(), "{s:?}");
    }

    #[test]
    fn the_cause_names_what_stalled_more() {
        let mem = cause(psi(1.0, 0.40, 0.05), psi(0.95, 0.02, 0.03), 100);
        assert!(
            mem.starts_with("memory ran short")
                && mem.contains("40 %")
                && mem.contains("2 % at n = 100"),
            "{mem}"
        );
        let cpu = cause(psi(0.98, 0.01, 0.0), psi(0.9, 0.0, 0.0), 100);
        assert!(cpu.starts_with("CPU-bound") && cpu.contains("98 %"), "{cpu}");
        // High I/O stall at both sizes: not what changed.
        let same = cause(psi(0.5, 0.0, 0.6), psi(0.5, 0.0, 0.55), 100);
        assert!(same.starts_with("no resource ran short"), "{same}");
        assert!(cause(None, None, 100).starts_with("not measured"));
    }
}
