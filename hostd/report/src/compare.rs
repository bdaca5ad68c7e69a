//! `hostd compare A B`: two runs' main figures side by side, from their stored samples.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::report::{self, Report, Stat};
use crate::results::DirError;
use crate::stats;

/// One headline figure: its value, unit and, for a mean over repetitions, (standard
/// deviation, sample count) to tell a difference from noise.
#[derive(Debug, Clone, PartialEq)]
struct Figure {
    value: f64,
    unit: String,
    spread: Option<(f64, usize)>,
}

fn single(value: f64, unit: &str) -> Figure {
    Figure { value, unit: unit.into(), spread: None }
}

fn mean(s: &Stat) -> Figure {
    Figure { value: s.mean, unit: s.unit.clone(), spread: Some((s.std_dev, s.samples)) }
}

/// Figure name → figure, for every headline figure of a report.
fn headline(r: &Report) -> BTreeMap<String, Figure> {
    let mut m = BTreeMap::new();
    for row in &r.startup.rows {
        if let Some(t) = row.t_startup_s {
            m.insert(
                format!("startup {} n={} {} T_startup", row.backend, row.n, row.mode.name()),
                single(t, "s"),
            );
        }
        if let Some(u) = row.m_used_mib {
            m.insert(
                format!("memory {} n={} {} M_used", row.backend, row.n, row.mode.name()),
                single(u, "MiB"),
            );
        }
    }
    for (k, pts) in &r.overhead {
        for p in pts {
            m.insert(format!("overhead {k} n={}", p.n), mean(&p.value));
        }
    }
    for (k, pts) in &r.linearity {
        for p in pts {
            m.insert(format!("linearity {k} n={} mean", p.n), mean(&p.value));
        }
    }
    for (k, i) in &r.isolation {
        m.insert(format!("isolation {k} guest1"), single(i.guest1, "ratio"));
        m.insert(format!("isolation {k} guest2"), single(i.guest2[0].max(i.guest2[1]), "ratio"));
    }
    for (b, ring) in &r.ring {
        m.insert(format!("ring {b} n={} bandwidth", ring.guests), mean(&ring.bandwidth));
    }
    m
}

/// Whether B differs from A beyond the noise: Welch's t-test at the 5 % level where both
/// are means of two or more samples ("differs" or "noise"), "-" where it cannot tell (one
/// fleet or a ratio of means).
fn verdict(a: &Figure, b: &Figure) -> &'static str {
    match (a.spread, b.spread) {
        (Some((sa, na)), Some((sb, nb))) => {
            match stats::welch((a.value, sa, na), (b.value, sb, nb)) {
                Some(w) if w.differs => "differs",
                Some(_) => "noise",
                None => "-",
            }
        }
        _ => "-",
    }
}

/// The table; an error naming the directory if either is missing or not a results
/// directory (an empty table would pass for two runs with nothing in common).
pub fn compare(a: &Path, b: &Path) -> Result<String, DirError> {
    let (ra, rb) = (report::build(a)?, report::build(b)?);
    let (ha, hb) = (headline(&ra), headline(&rb));
    let mut out = String::new();
    let _ = writeln!(out, "# A: {}\n# B: {}", a.display(), b.display());
    for (tag, r) in [("A", &ra), ("B", &rb)] {
        if let Some(p) = &r.provenance {
            let _ = writeln!(
                out,
                "# {tag}: {} — {} ({} CPUs), hostd {} measured {}",
                p.host.hostname, p.host.cpu_model, p.host.cpus, p.git_revision, p.date
            );
        }
    }
    let _ = writeln!(
        out,
        "# B − A: \"differs\" = Welch's t-test rejects equal means at the 5 % level (two-sided, t(0.975, ⌊df⌋)); \"noise\" = it does not, \
         the difference lies within the repetitions' noise; \"-\" = one fleet or a ratio of means, no spread to test"
    );
    let _ = writeln!(
        out,
        "{:<52} {:>12} {:>12} {:>8} {:>8}  unit",
        "figure (means over repetitions)", "A", "B", "B/A", "B − A"
    );
    let keys: std::collections::BTreeSet<&String> = ha.keys().chain(hb.keys()).collect();
    for k in keys {
        let fa = ha.get(k);
        let fb = hb.get(k);
        let unit = fa.or(fb).map(|x| x.unit.as_str()).unwrap_or("");
        let f =
            |x: Option<&Figure>| x.map(|v| format!("{:.4}", v.value)).unwrap_or_else(|| "-".into());
        let ratio = match (fa, fb) {
            (Some(x), Some(y)) if x.value != 0.0 => format!("{:.3}", y.value / x.value),
            _ => "-".into(),
        };
        let v = match (fa, fb) {
            (Some(x), Some(y)) => verdict(x, y),
            _ => "-",
        };
        let _ = writeln!(out, "{k:<52} {:>12} {:>12} {ratio:>8} {v:>8}  {unit}", f(fa), f(fb));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(value: f64, sd: f64, n: usize) -> Figure {
        Figure { value, unit: "s".into(), spread: Some((sd, n)) }
    }

    #[test]
    fn noise_or_difference() {
        // t = −3.16 on 8 df (critical 2.306): a difference.
        assert_eq!(verdict(&m(10.0, 1.0, 5), &m(12.0, 1.0, 5)), "differs");
        // t = −0.53: noise.
        assert_eq!(verdict(&m(10.0, 3.0, 5), &m(11.0, 3.0, 5)), "noise");
        // One repetition, or no spread recorded: cannot tell.
        assert_eq!(verdict(&m(10.0, 0.0, 1), &m(12.0, 1.0, 5)), "-");
        assert_eq!(verdict(&single(1.0, "s"), &single(2.0, "s")), "-");
    }
}
