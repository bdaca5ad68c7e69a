//! `hostd compare A B`: two runs' main figures side by side, from their stored samples.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::report::{self, Report};
use crate::results::DirError;

/// Figure name → (value, unit), for every headline figure of a report.
fn headline(r: &Report) -> BTreeMap<String, (f64, String)> {
    let mut m = BTreeMap::new();
    for row in &r.startup.rows {
        if let Some(t) = row.t_startup_s {
            m.insert(format!("startup {} n={} {} T_startup", row.backend, row.n, row.mode.name()), (t, "s".into()));
        }
        if let Some(u) = row.m_used_mib {
            m.insert(format!("memory {} n={} {} M_used", row.backend, row.n, row.mode.name()), (u, "MiB".into()));
        }
    }
    for (k, pts) in &r.overhead {
        for p in pts {
            m.insert(format!("overhead {k} n={}", p.n), (p.value.mean, p.value.unit.clone()));
        }
    }
    for (k, pts) in &r.linearity {
        for p in pts {
            m.insert(format!("linearity {k} n={} mean", p.n), (p.value.mean, p.value.unit.clone()));
        }
    }
    for (k, i) in &r.isolation {
        m.insert(format!("isolation {k} guest1"), (i.guest1, "ratio".into()));
        m.insert(format!("isolation {k} guest2"), (i.guest2[0].max(i.guest2[1]), "ratio".into()));
    }
    for (b, ring) in &r.ring {
        m.insert(format!("ring {b} n={} bandwidth", ring.guests), (ring.bandwidth.mean, "MB/s".into()));
    }
    m
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
            let _ = writeln!(out, "# {tag}: {} — {} ({} CPUs), hostd {} measured {}", p.host.hostname, p.host.cpu_model, p.host.cpus, p.git_revision, p.date);
        }
    }
    let _ = writeln!(out, "{:<52} {:>12} {:>12} {:>8}  unit", "figure (means over repetitions)", "A", "B", "B/A");
    let keys: std::collections::BTreeSet<&String> = ha.keys().chain(hb.keys()).collect();
    for k in keys {
        let fa = ha.get(k);
        let fb = hb.get(k);
        let unit = fa.or(fb).map(|x| x.1.as_str()).unwrap_or("");
        let f = |x: Option<&(f64, String)>| x.map(|v| format!("{:.4}", v.0)).unwrap_or_else(|| "-".into());
        let ratio = match (fa, fb) {
            (Some(x), Some(y)) if x.0 != 0.0 => format!("{:.3}", y.0 / x.0),
            _ => "-".into(),
        };
        let _ = writeln!(out, "{k:<52} {:>12} {:>12} {ratio:>8}  {unit}", f(fa), f(fb));
    }
    Ok(out)
}
