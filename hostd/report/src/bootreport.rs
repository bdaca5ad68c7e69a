//! The figures, notes and text table of a `hostd boot` summary ([`crate::boot`]).

use std::collections::BTreeMap;

use crate::backend::BackendKind;
use crate::boot::{BootRow, BootSummary};
use crate::plot::{Chart, Point, Series};
use crate::startup::StartMode;

/// A curve's legend: backend and mode, the sizes whose start was not what the mode asked
/// for (a cold start that found files resident, a hot one whose files were not), and those
/// at which fewer guests came up than were started (partial T_startup).
fn series_name(b: BackendKind, m: StartMode, rows: &[&BootRow]) -> String {
    let mut name = format!("{b} {}", m.name());
    let odd: Vec<String> = rows
        .iter()
        .filter(|r| r.label() != m.name())
        .map(|r| format!("n={} {}", r.n, r.label()))
        .collect();
    if !odd.is_empty() {
        name.push_str(&format!(" [not verified {}: {}]", m.name(), odd.join(", ")));
    }
    let partial: Vec<String> = rows
        .iter()
        .filter(|r| r.partial())
        .map(|r| format!("n={}: {} of {}", r.n, r.ready, r.n))
        .collect();
    if !partial.is_empty() {
        name.push_str(&format!(" [partial: {}]", partial.join(", ")));
    }
    name
}

/// Startup vs n (cold and hot) and memory vs n, one curve per backend and mode.
pub fn charts(s: &BootSummary) -> Vec<(String, Chart)> {
    let mut by: BTreeMap<(BackendKind, StartMode), Vec<&BootRow>> = BTreeMap::new();
    for r in &s.rows {
        by.entry((r.backend, r.mode)).or_default().push(r);
    }
    let series = |f: &dyn Fn(&BootRow) -> Option<Point>| -> Vec<Series> {
        by.iter()
            .map(|((b, m), rows)| Series {
                name: series_name(*b, *m, rows),
                points: rows.iter().filter_map(|r| f(r)).collect(),
                // One colour per backend; hot dashed next to cold.
                color: BackendKind::ALL.iter().position(|k| k == b),
                dashed: *m == StartMode::Hot,
                ..Default::default()
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    vec![
        (
            "startup.svg".into(),
            Chart {
                title: "Concurrent startup (paper Fig. 1)".into(),
                x_label: "guests started together, n".into(),
                y_label: "T_startup = max ready time (s)".into(),
                series: series(&|r| Some(Point { x: r.n as f64, y: r.t_startup_s?, err: None })),
                // Backends span three orders of magnitude.
                log_y: true,
            },
        ),
        (
            "memory.svg".into(),
            Chart {
                title: "Memory occupation M_used(n)".into(),
                x_label: "guests booted and idle, n".into(),
                y_label: "M_used (MiB)".into(),
                // Error bars: the noise bound.
                series: series(&|r| {
                    Some(Point {
                        x: r.ready as f64,
                        y: r.m_used_mib?,
                        err: r.checks.m_used_noise_mib,
                    })
                }),
                log_y: false,
            },
        ),
    ]
}

/// What the report says under its startup table: what cold, warm and resident mean, the
/// partial fleets, the M_used bound, scratch and hostd's share (a maud template, escaped).
pub fn startup_notes_html(s: &BootSummary) -> maud::Markup {
    let partial: Vec<String> = s
        .rows
        .iter()
        .filter(|r| r.partial())
        .map(|r| format!("{} n={} {}: {} of {}", r.backend, r.n, r.label(), r.ready, r.n))
        .collect();
    let checks = s.rows.iter().filter_map(|r| {
        let mut bits = Vec::new();
        if let Some(res) = &r.checks.residency {
            bits.push(res.clone());
        }
        if let Some(t) = r.checks.scratch_tmpfs_mib {
            bits.push(format!("tmpfs scratch {t:.1} MiB (not in M_used)"));
        }
        if let Some(g) = r.checks.hostd_growth_mib {
            bits.push(format!("hostd's RSS grew {g:.2} MiB (part of M_tool)"));
        }
        if let Some(p) = &r.checks.pressure {
            bits.push(format!("stalls over the start (host-wide PSI): {}", p.line()));
        }
        (!bits.is_empty()).then(|| (r, bits.join("; ")))
    });
    maud::html! {
        p {
            "mode: " b { "cold" } " = nothing the launches read (images, VMM or runtime and its libraries but those other running processes hold) \
             was in the page cache just before the start (checked with mincore after eviction); " b { "hot" } " = all of it was (read just \
             before); " b { "warm" } " = anything between, whichever mode was asked (not counted as cold or hot). M_used: median of repeated readings against a \
             noise floor read with no fleet, ± the larger drift of the two windows; tmpfs scratch excluded."
        }
        @if !partial.is_empty() {
            p.bad { "Partial fleets (T_startup over the guests that came up; the slowest may be among the missing): " (partial.join("; ")) "." }
        }
        @for (r, bits) in checks {
            p { (r.backend) " n=" (r.n) " " (r.label()) ": " (bits) "." }
        }
        @for (key, sc) in &s.startup_scaling {
            p { "Startup scaling (" (key) "): " (scaling_line(sc)) "." }
        }
        @if let Some(b) = &s.memory_bound {
            p { "Memory bound: " (b.line()) "." }
        }
    }
}

/// T_startup(n)'s line and knee in words.
pub fn scaling_line(sc: &crate::scaling::Scaling) -> String {
    let sizes = sc.sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
    let line = format!(
        "T_startup(n) = {:.4} s × n + {:.2} s (residual {:.2} s) through {} fleets below the knee, of sizes {sizes}",
        sc.fit.slope, sc.fit.intercept, sc.fit.residual_std, sc.fit.points
    );
    match &sc.knee {
        Some(k) => format!(
            "{line}; knee at n = {}: {:.2} s against {:.2} s on the line through the smaller sizes ({:.1}×); {}",
            k.n,
            k.t_s,
            k.predicted_s,
            k.t_s / k.predicted_s,
            k.cause
        ),
        None if sc.sizes.len() < 3 => format!("{line}; two sizes: linearity not tested"),
        None => format!(
            "{line}; linear: no size more than {:.0} % above the line through the smaller ones",
            crate::scaling::TOLERANCE * 100.0
        ),
    }
}

/// The human-readable table.
pub fn table(s: &BootSummary) -> String {
    let mut out = String::new();
    for l in s.provenance.lines() {
        out.push_str(&format!("# {l}\n"));
    }
    out.push_str(&format!(
        "{:<13} {:>4} {:<5} {:>9} {:>7} {:>13} {:>26} {:>12} {:>14} {:>14} {:>12} {:>10} {:>10}\n",
        "backend",
        "n",
        "start",
        "resident",
        "ready",
        "T_startup s",
        "ready time s mean±sd [min,max]",
        "guest boot s",
        "M_used MiB",
        "cgroups+hostd",
        "cgroup/guest",
        "PSS/guest",
        "tmpfs MiB"
    ));
    let o = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
    for r in &s.rows {
        let dist = r
            .ready_times
            .as_ref()
            .map(|d| format!("{:.3}±{:.3} [{:.3},{:.3}]", d.mean, d.std_dev, d.min, d.max))
            .unwrap_or_else(|| "-".into());
        // A partial fleet's T_startup is over the guests that came up: marked, never bare.
        let t = match r.t_startup_s {
            Some(t) if r.partial() => format!("{t:.3} ({}/{})", r.ready, r.n),
            t => o(t, 3),
        };
        let m = match (r.m_used_mib, r.checks.m_used_noise_mib) {
            (Some(m), Some(b)) => format!("{m:.1}±{b:.1}"),
            (m, _) => o(m, 1),
        };
        out.push_str(&format!(
            "{:<13} {:>4} {:<5} {:>9} {:>7} {:>13} {:>26} {:>12} {:>14} {:>14} {:>12} {:>10} {:>10}\n",
            r.backend.name(),
            r.n,
            r.label(),
            r.checks.resident_fraction.map(|f| format!("{:.1} %", 100.0 * f)).unwrap_or_else(|| "-".into()),
            format!("{}/{}", r.ready, r.n),
            t,
            dist,
            o(r.guest_boot.as_ref().map(|g| g.mean), 3),
            m,
            o(r.checks.cross_check_mib, 1),
            o(r.per_guest_cgroup_mib, 2),
            o(r.per_guest_pss_mib, 2),
            o(r.checks.scratch_tmpfs_mib, 1)
        ));
    }
    out.push_str(&table_notes(s));
    out.push_str(
        "units: seconds on the host clock from the fleet's start request; MiB = 2^20 bytes; one fleet per row (1 repetition); \
         start: cold = nothing the launches read was in the page cache (mincore), hot = all of it was, warm = between (whichever mode was asked); \
         resident = share of the launches' files (images, programs, libraries but those other running processes hold) in the page cache just before the start; \
         M_used = median of repeated readings against a noise floor taken with no fleet, ± the floor's and the idle fleet's drift, tmpfs scratch excluded (tmpfs column)\n",
    );
    out
}

/// The table's notes: what each row's start read, partial fleets, memory figures that
/// disagree, hostd's own growth, the memory fit and the floor.
fn table_notes(s: &BootSummary) -> String {
    let mut out = row_notes(s);
    out.push_str(&fit_notes(s));
    out
}

/// The notes of each fleet's row: residency, partial fleets, memory cross-checks, hostd's
/// own cost, reachability, stalls.
fn row_notes(s: &BootSummary) -> String {
    let mut out = String::new();
    let o = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
    for r in &s.rows {
        if let Some(res) = &r.checks.residency {
            out.push_str(&format!(
                "note: {} n={} {}{}: {res}\n",
                r.backend,
                r.n,
                r.label(),
                if r.checks.image_copies {
                    " (per-guest image copies)"
                } else {
                    " (shared images)"
                }
            ));
        }
    }
    for r in s.rows.iter().filter(|r| r.partial() && r.t_startup_s.is_some()) {
        out.push_str(&format!(
            "note: {} n={} {}: partial fleet: T_startup is over the {} of {} guests that came up (the slowest may be among the missing)\n",
            r.backend, r.n, r.label(), r.ready, r.n
        ));
    }
    for r in s.rows.iter().filter(|r| r.checks.m_used_disagrees) {
        out.push_str(&format!(
            "note: {} n={} {}: M_used {} MiB (host-wide) and {} MiB (guests' cgroups + hostd's growth) differ by more than the ±{} MiB noise bound: both reported\n",
            r.backend,
            r.n,
            r.label(),
            o(r.m_used_mib, 1),
            o(r.checks.cross_check_mib, 1),
            o(r.checks.m_used_noise_mib, 1)
        ));
    }
    for r in s.rows.iter().filter(|r| r.checks.hostd_growth_mib.is_some()) {
        out.push_str(&format!(
            "note: {} n={} {}: hostd's own RSS grew {} MiB (part of M_tool)\n",
            r.backend,
            r.n,
            r.label(),
            o(r.checks.hostd_growth_mib, 2)
        ));
    }
    for r in &s.rows {
        let c = &r.checks;
        if c.hostd_kib_per_guest.is_some()
            || c.hostd_fds_per_guest.is_some()
            || c.hostd_cpu_ms_per_launch.is_some()
        {
            out.push_str(&format!(
                "hostd per guest: {} n={} {}: {} KiB resident, {} descriptors, {} ms CPU per launch\n",
                r.backend,
                r.n,
                r.label(),
                o(c.hostd_kib_per_guest, 1),
                o(c.hostd_fds_per_guest, 2),
                o(c.hostd_cpu_ms_per_launch, 3)
            ));
        }
    }
    for r in &s.rows {
        if let Some(x) = &r.checks.reach {
            out.push_str(&format!(
                "reach: {} n={} {}: {}{}\n",
                r.backend,
                r.n,
                r.label(),
                x.line(),
                if x.all() { "" } else { " — NOT every guest" }
            ));
        }
    }
    for r in &s.rows {
        if let Some(p) = &r.checks.pressure {
            out.push_str(&format!(
                "stalls: {} n={} {}: {} of the {:.2} s start (host-wide PSI: some task waiting)\n",
                r.backend,
                r.n,
                r.label(),
                p.line(),
                p.window_s
            ));
        }
    }
    out
}

/// The notes across fleets: startup scaling, the memory fit, the launch floor.
fn fit_notes(s: &BootSummary) -> String {
    let mut out = String::new();
    for (key, sc) in &s.startup_scaling {
        out.push_str(&format!("startup ({key}): {}\n", scaling_line(sc)));
    }
    if let Some(b) = &s.memory_bound {
        out.push_str(&format!(
            "memory bound ({}): {}\n",
            s.rows.first().map_or(String::new(), |r| r.backend.to_string()),
            b.line()
        ));
    }
    for (mode, f) in &s.memory_fit {
        out.push_str(&format!(
            "fit ({mode}): M_used(n) = {:.2} MiB × n + {:.1} MiB (M_VM, M_tool; residual {:.2} MiB over {} points: every repeated figure of each size)\n",
            f.slope, f.intercept, f.residual_std, f.points
        ));
    }
    if let Some(f) = &s.floor {
        out.push_str(&crate::floor::line(f));
        out.push('\n');
        for r in s.rows.iter().filter(|r| r.mode == StartMode::Hot && r.backend == f.backend) {
            let own = r.checks.own_start.as_ref().map(|o| o.samples.as_slice()).unwrap_or(&[]);
            if let Some(l) = crate::floor::fleet_line(f, r.n, own, r.t_startup_s) {
                out.push_str(&l);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::testing::boot;
    use crate::boot::{row, summarise};
    use crate::provenance::Provenance;

    #[test]
    fn partial_fleets_and_unverified_cold_starts_are_marked() {
        let rows = vec![
            row(&boot(StartMode::Cold, 7, 0)),
            row(&boot(StartMode::Hot, 10, 1000)),
            row(&boot(StartMode::Cold, 10, 10)),
        ];
        assert_eq!(
            (rows[0].label(), rows[0].partial(), rows[0].t_startup_s),
            ("cold", true, Some(7.0))
        );
        assert_eq!((rows[1].label(), rows[1].checks.resident_fraction), ("hot", Some(1.0)));
        assert_eq!((rows[2].label(), rows[2].checks.resident_fraction), ("warm", Some(0.01)));
        let s = summarise(Provenance::collect(Default::default()), rows);
        let t = table(&s);
        assert!(t.contains("7.000 (7/10)"), "{t}");
        assert!(t.contains("partial fleet: T_startup is over the 7 of 10 guests"), "{t}");
        assert!(
            t.lines().any(|l| l.starts_with("uml") && l.contains(" warm ") && l.contains("1.0 %")),
            "{t}"
        );
        let charts = charts(&s);
        let names: Vec<&str> = charts[0].1.series.iter().map(|x| x.name.as_str()).collect();
        assert!(names.iter().any(|n| n.contains("partial: n=10: 7 of 10")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("not verified cold: n=10 warm")), "{names:?}");
    }

    #[test]
    fn the_startup_line_and_its_knee_are_said_with_the_stalls() {
        let sized = |n: usize, t: f64, cpu: f64, memory: f64| {
            let mut r = row(&boot(StartMode::Hot, 10, 1000));
            r.n = n;
            r.ready = n;
            r.t_startup_s = Some(t);
            r.checks.pressure =
                Some(crate::pressure::Pressure { window_s: t, cpu, memory, io: 0.0 });
            r
        };
        let rows = vec![
            sized(100, 4.6, 0.95, 0.0),
            sized(200, 9.0, 0.97, 0.01),
            sized(400, 40.0, 1.0, 0.5),
        ];
        let s = summarise(Provenance::collect(Default::default()), rows);
        let t = table(&s);
        let line = t.lines().find(|l| l.starts_with("startup (uml hot)")).expect(&t);
        assert!(line.contains("knee at n = 400") && line.contains("memory ran short"), "{line}");
        assert!(line.contains("through 2 fleets"), "{line}");
        assert!(t.contains("stalls: uml n=400 hot: CPU 100 %, memory 50 %, I/O 0 %"), "{t}");
        let html = startup_notes_html(&s).into_string();
        assert!(html.contains("Startup scaling (uml hot)"), "{html}");
    }
}
