//! `report.csv`: every summarised point in long format.

use super::*;

/// The columns, in order.
const HEADER: [&str; 14] = [
    "section",
    "backend",
    "resource",
    "n",
    "metric",
    "mean",
    "std_dev",
    "min",
    "max",
    "samples",
    "unit",
    "median",
    "ci95_low",
    "ci95_high",
];

/// Which point a row is about: the first five columns.
struct At<'a> {
    section: &'a str,
    backend: &'a str,
    resource: &'a str,
    n: usize,
    metric: &'a str,
}

impl At<'_> {
    fn cells(&self) -> Vec<String> {
        vec![
            self.section.into(),
            self.backend.into(),
            self.resource.into(),
            self.n.to_string(),
            self.metric.into(),
        ]
    }
}

fn f(v: f64) -> String {
    v.to_string()
}

/// The interval's two ends, empty where there is none (one sample).
fn ci(c: Option<[f64; 2]>) -> [String; 2] {
    c.map(|[lo, hi]| [f(lo), f(hi)]).unwrap_or_default()
}

/// One row: a point's Stat.
fn stat_row(at: At, v: &Stat) -> Vec<String> {
    let [lo, hi] = ci(v.ci95);
    let mut row = at.cells();
    row.extend([
        f(v.mean),
        f(v.std_dev),
        f(v.min),
        f(v.max),
        v.samples.to_string(),
        v.unit.clone(),
        f(v.median),
        lo,
        hi,
    ]);
    row
}

/// One row of a bare value where there is no spread (only, maybe, a min and max).
fn bare_row(at: At, v: f64, min_max: Option<(f64, f64)>, samples: &str, unit: &str) -> Vec<String> {
    let (mn, mx) = min_max.map(|(a, b)| (f(a), f(b))).unwrap_or_default();
    let mut row = at.cells();
    row.extend([
        f(v),
        String::new(),
        mn,
        mx,
        samples.into(),
        unit.into(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    row
}

/// Long-format CSV of every summarised point.
pub(super) fn csv(rep: &Report) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(HEADER)?;
    for row in startup_rows(rep).into_iter().chain(point_rows(rep)) {
        w.write_record(row)?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

/// Startup times and memory occupation, one row per fleet size and mode.
fn startup_rows(rep: &Report) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for r in &rep.startup.rows {
        let (b, mode) = (r.backend.to_string(), r.mode.name());
        if let Some(s) = &r.ready_times {
            let [lo, hi] = ci(s.ci95);
            let section = format!("startup_{mode}");
            let mut row =
                At { section: &section, backend: &b, resource: "", n: r.n, metric: "ready_time" }
                    .cells();
            row.extend([
                f(s.mean),
                f(s.std_dev),
                f(s.min),
                f(s.max),
                s.samples.len().to_string(),
                "s".into(),
                f(s.median),
                lo,
                hi,
            ]);
            rows.push(row);
        }
        if let Some(m) = r.m_used_mib {
            let section = format!("memory_{mode}");
            let at = At { section: &section, backend: &b, resource: "", n: r.n, metric: "m_used" };
            rows.push(bare_row(at, m, None, "1", "MiB"));
        }
    }
    rows
}

/// Overhead, linearity, isolation and ring points.
fn point_rows(rep: &Report) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    // (section, backend/resource key, n, the point's Stat) of the two sections of curves.
    let overhead = rep
        .overhead
        .iter()
        .flat_map(|(k, pts)| pts.iter().map(move |p| ("overhead", k, p.n, &p.value)));
    let linearity = rep
        .linearity
        .iter()
        .flat_map(|(k, pts)| pts.iter().map(move |p| ("linearity", k, p.n, &p.value)));
    for (section, k, n, value) in overhead.chain(linearity) {
        let (b, res) = k.split_once('/').unwrap_or((k, ""));
        rows.push(stat_row(At { section, backend: b, resource: res, n, metric: "value" }, value));
    }
    for (k, i) in &rep.isolation {
        let (b, res) = k.split_once('/').unwrap_or((k, ""));
        let at = |metric| At { section: "isolation", backend: b, resource: res, n: 2, metric };
        rows.push(bare_row(at("guest1_relative"), i.guest1, None, "", "ratio"));
        let g2 = (i.guest2[0] + i.guest2[1]) / 2.0;
        let spread = Some((i.guest2[0].min(i.guest2[1]), i.guest2[0].max(i.guest2[1])));
        rows.push(bare_row(at("guest2_relative"), g2, spread, "", "ratio"));
    }
    // Users' commands: the "resource" column holds `command:NAME`.
    for c in &rep.commands {
        let (b, res) = (c.backend.to_string(), format!("command:{}", c.name));
        // T_a once, on native's rows (every backend's result carries it).
        if let Some(v) = c.baseline.as_ref().filter(|_| c.backend == BackendKind::Native) {
            let at = At { section: "baseline", backend: &b, resource: &res, n: 1, metric: "value" };
            rows.push(stat_row(at, v));
        }
        for p in &c.overhead {
            let at =
                At { section: "overhead", backend: &b, resource: &res, n: p.n, metric: "value" };
            rows.push(stat_row(at, &p.value));
        }
        for p in &c.linearity {
            let at =
                At { section: "linearity", backend: &b, resource: &res, n: p.n, metric: "value" };
            rows.push(stat_row(at, &p.value));
        }
    }
    for (b, r) in &rep.ring {
        let b = b.to_string();
        let at = At {
            section: "ring",
            backend: &b,
            resource: "network",
            n: r.guests,
            metric: "bandwidth",
        };
        rows.push(stat_row(at, &r.bandwidth));
    }
    rows
}
