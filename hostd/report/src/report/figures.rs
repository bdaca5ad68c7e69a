//! One figure per paper figure (and memory occupation), with the caption saying what its points
//! and bars stand on.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

pub(super) const RES: [(Resource, &str); 4] = [
    (Resource::Cpu, "CPU"),
    (Resource::Memory, "Memory"),
    (Resource::Disk, "Disk"),
    (Resource::Network, "Network"),
];

pub(super) fn y_label(r: Resource, what: &str) -> String {
    match r {
        Resource::Network => format!("{what} bandwidth (MB/s)"),
        _ => format!("{what} execution time (s)"),
    }
}

/// A figure the report shows.
pub enum Figure {
    /// A line chart.
    Line(Chart),
    /// Grouped bars.
    Bars(Bars),
}

/// "5" or "3–40": the range of sample counts behind a figure's points.
pub(super) fn count_range(counts: impl Iterator<Item = usize>) -> String {
    let (lo, hi) = counts.fold((usize::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)));
    match (lo, hi) {
        (usize::MAX, _) => "no".into(),
        (lo, hi) if lo == hi => lo.to_string(),
        (lo, hi) => format!("{lo}–{hi}"),
    }
}

/// What a figure's error bars are, for its caption.
pub(super) const CI_BARS: &str = "error bars: 95 % confidence interval of the mean (Student t, n − 1 degrees of freedom; none where a point has one sample)";

/// (file name, the figure, its caption) for every figure the report shows. The caption says
/// what the points and bars are and how many samples each stands on.
pub fn figures(rep: &Report) -> Vec<(String, Figure, String)> {
    let mut out = Vec::new();
    startup_figures(rep, &mut out);
    overhead_figures(rep, &mut out);
    linearity_figures(rep, &mut out);
    command_figures(rep, &mut out);
    isolation_figures(rep, &mut out);
    ring_figure(rep, &mut out);
    mark_emulated(rep, &mut out);
    out
}

/// The backends with a point for resource `r` in one of the report's sections.
fn backends_of<T>(m: &BTreeMap<String, T>, r: Resource) -> Vec<BackendKind> {
    BackendKind::ALL.into_iter().filter(|b| m.contains_key(&key(*b, r))).collect()
}

/// Fig. 1 (startup time) and memory occupation.
fn startup_figures(rep: &Report, out: &mut Vec<(String, Figure, String)>) {
    for (name, chart) in bootreport::charts(&rep.startup) {
        let (file, caption) = if name == "startup.svg" {
            ("fig01_startup.svg", "T_startup(n) = the last ready guest's time, host clock; one fleet per point (n guests), so no error bars.")
        } else {
            ("fig_memory.svg", "M_used(n) of one booted, idle fleet per point: no error bars; the fit n·M_VM + M_tool is in the table above.")
        };
        let mut caption = caption.to_string();
        if file == "fig_memory.svg" {
            for b in rep.startup.rows.iter().map(|r| r.backend).collect::<BTreeSet<_>>() {
                if let Some(c) = memory_caveat(b, rep.emulated.contains(&b)) {
                    caption.push_str(&format!(" {c}."));
                }
            }
        }
        out.push((file.to_string(), Figure::Line(chart), caption));
    }
}

/// Figs. 2–5: one busy guest among n, against the host's T_a.
fn overhead_figures(rep: &Report, out: &mut Vec<(String, Figure, String)>) {
    for (i, (r, label)) in RES.iter().enumerate() {
        let mut series: Vec<Series> = backends_of(&rep.overhead, *r)
            .into_iter()
            .map(|b| Series {
                name: b.to_string(),
                points: rep.overhead[&key(b, *r)]
                    .iter()
                    .map(|p| Point { x: p.n as f64, y: p.value.mean, err: p.value.ci_half() })
                    .collect(),
                reference: false,
                ..Default::default()
            })
            .collect();
        let counts = count_range(
            rep.overhead
                .iter()
                .filter(|(k, _)| k.ends_with(&format!("/{}", r.name())))
                .flat_map(|(_, p)| p.iter().map(|p| p.value.samples)),
        );
        if let (Some(ta), Some(maxn)) =
            (rep.baseline.get(r), rep.overhead.values().flatten().map(|p| p.n).max())
        {
            series.push(Series {
                name: "host T_a (native, n=1)".into(),
                points: vec![
                    Point { x: 1.0, y: ta.mean, err: None },
                    Point { x: maxn.max(2) as f64, y: ta.mean, err: None },
                ],
                reference: true,
                ..Default::default()
            });
        }
        out.push((
            format!("fig{:02}_overhead_{}.svg", 2 + i, r.name()),
            Figure::Line(Chart {
                title: format!("{label} overhead: one busy guest among n (paper Fig. {})", 2 + i),
                x_label: "guests running, n (n − 1 idle)".into(),
                y_label: y_label(*r, "T_avn:"),
                series,
                log_y: false,
            }),
            format!("Points: mean T_avn of the busy guest over the counted repetitions; {CI_BARS}; n = {counts} repetitions per point. Dashed: the host's T_a."),
        ));
    }
}

/// Figs. 6–9: n busy guests, against the reference the paper's formulas give.
fn linearity_figures(rep: &Report, out: &mut Vec<(String, Figure, String)>) {
    for (i, (r, label)) in RES.iter().enumerate() {
        let mut series = Vec::new();
        for b in backends_of(&rep.linearity, *r) {
            let pts = &rep.linearity[&key(b, *r)];
            series.push(Series {
                name: format!("{b} mean ± 95 % CI"),
                points: pts
                    .iter()
                    .map(|p| Point { x: p.n as f64, y: p.value.mean, err: p.value.ci_half() })
                    .collect(),
                reference: false,
                ..Default::default()
            });
            // The paper uses one reference (Vserver's) except for disk, where each tool has its own.
            if b == BackendKind::Native || *r == Resource::Disk {
                let refs: Vec<Point> = pts
                    .iter()
                    .filter_map(|p| Some(Point { x: p.n as f64, y: p.reference?, err: None }))
                    .collect();
                if !refs.is_empty() {
                    series.push(Series {
                        name: format!("{b} reference"),
                        points: refs,
                        reference: true,
                        ..Default::default()
                    });
                }
            }
        }
        let lin = || {
            rep.linearity
                .iter()
                .filter(|(k, _)| k.ends_with(&format!("/{}", r.name())))
                .flat_map(|(_, p)| p.iter())
        };
        let counts = count_range(lin().map(|p| p.value.samples));
        let cpus = count_range(lin().filter_map(|p| p.cpus.map(|c| c.count)));
        out.push((
            format!("fig{:02}_linearity_{}.svg", 6 + i, r.name()),
            Figure::Line(Chart {
                title: format!("{label} linearity: n busy guests (paper Fig. {})", 6 + i),
                x_label: "guests running the benchmark together, n".into(),
                y_label: y_label(*r, "per-guest"),
                series,
                log_y: *r == Resource::Disk || *r == Resource::Network,
            }),
            format!(
                "Points: mean over all n guests and the counted repetitions; {CI_BARS}; n = {counts} samples (guests × repetitions) per point. \
                 Dashed: the reference {}, {}.",
                if *r == Resource::Network { "B_av / max(1, n/capacity)" } else { "O_v + T_a·max(1, n/capacity)" },
                if matches!(r, Resource::Cpu | Resource::Memory) {
                    format!("capacity = the {cpus} CPU(s) the guests had")
                } else {
                    "capacity 1 (one shared device or path)".to_string()
                }
            ),
        ));
    }
}

/// Per user workload, as Figs. 2–9 for the microbenchmarks: T_avn against n with the
/// command's native T_a, and all n guests at once with native's reference.
fn command_figures(rep: &Report, out: &mut Vec<(String, Figure, String)>) {
    let names: std::collections::BTreeSet<&str> =
        rep.commands.iter().map(|c| c.name.as_str()).collect();
    for name in names {
        let of: Vec<&CommandResult> = rep.commands.iter().filter(|c| c.name == name).collect();
        let line = |pts: Vec<Point>, name: String, reference: bool| Series {
            name,
            points: pts,
            reference,
            ..Default::default()
        };
        let mut overhead: Vec<Series> = of
            .iter()
            .filter(|c| !c.overhead.is_empty())
            .map(|c| {
                let pts = c.overhead.iter().map(|p| Point {
                    x: p.n as f64,
                    y: p.value.mean,
                    err: p.value.ci_half(),
                });
                line(pts.collect(), c.backend.to_string(), false)
            })
            .collect();
        let maxn = of.iter().flat_map(|c| c.overhead.iter().map(|p| p.n)).max().unwrap_or(1);
        if let Some(ta) = of.iter().find_map(|c| c.baseline.as_ref()) {
            let pts = vec![
                Point { x: 1.0, y: ta.mean, err: None },
                Point { x: maxn.max(2) as f64, y: ta.mean, err: None },
            ];
            overhead.push(line(pts, "host T_a (native, n=1)".into(), true));
        }
        let mut linearity = Vec::new();
        for c in of.iter().filter(|c| !c.linearity.is_empty()) {
            let pts = c.linearity.iter().map(|p| Point {
                x: p.n as f64,
                y: p.value.mean,
                err: p.value.ci_half(),
            });
            linearity.push(line(pts.collect(), format!("{} mean ± 95 % CI", c.backend), false));
            if c.backend == BackendKind::Native {
                let refs = c
                    .linearity
                    .iter()
                    .filter_map(|p| Some(Point { x: p.n as f64, y: p.reference?, err: None }));
                linearity.push(line(refs.collect(), "native reference".into(), true));
            }
        }
        let command = of.first().map(|c| c.command.clone()).unwrap_or_default();
        let whose = format!("The user's command `{command}`: what it measures is the user's");
        if !overhead.is_empty() {
            out.push((
                format!("user_{name}_overhead.svg"),
                Figure::Line(Chart {
                    title: format!("User workload {name} overhead: one busy guest among n"),
                    x_label: "guests running, n (n − 1 idle)".into(),
                    y_label: "T_avn: wall time, agent's clock (s)".into(),
                    series: overhead,
                    log_y: false,
                }),
                format!("{whose}. Points: mean T_avn over the successful counted runs; {CI_BARS}. Dashed: the command's native T_a."),
            ));
        }
        if !linearity.is_empty() {
            out.push((
                format!("user_{name}_linearity.svg"),
                Figure::Line(Chart {
                    title: format!("User workload {name} linearity: n busy guests"),
                    x_label: "guests running the command together, n".into(),
                    y_label: "per-guest wall time, agent's clock (s)".into(),
                    series: linearity,
                    log_y: false,
                }),
                format!("{whose}. Points: mean over all n guests and the successful counted repetitions; {CI_BARS}. Dashed: O_v + T_a·max(1, n/capacity), capacity as for a CPU-bound job (the CPUs the guests had)."),
            ));
        }
    }
}

/// Figs. 10–13: one copy in guest 1, two in guest 2, against the two isolation models.
fn isolation_figures(rep: &Report, out: &mut Vec<(String, Figure, String)>) {
    for (i, (r, label)) in RES.iter().enumerate() {
        let bs: Vec<BackendKind> = BackendKind::ALL
            .into_iter()
            .filter(|b| rep.isolation.contains_key(&key(*b, *r)))
            .collect();
        let get = |f: &dyn Fn(&IsolationResult) -> f64| -> Vec<Option<f64>> {
            bs.iter().map(|b| Some(f(&rep.isolation[&key(*b, *r)]))).collect()
        };
        let none = vec![None; bs.len()];
        let what =
            if *r == Resource::Network { "bandwidth ÷ alone" } else { "time ÷ time alone" };
        out.push((
            format!("fig{:02}_isolation_{}.svg", 10 + i, r.name()),
            Figure::Bars(Bars {
                title: format!("{label} performance isolation: 1 copy in guest 1, 2 in guest 2 (paper Fig. {})", 10 + i),
                y_label: what.into(),
                categories: bs.iter().map(|b| b.to_string()).collect(),
                series: vec![
                    ("guest 1, copy".into(), get(&|x| x.guest1), none.clone()),
                    ("guest 2, copy a".into(), get(&|x| x.guest2[0]), none.clone()),
                    ("guest 2, copy b".into(), get(&|x| x.guest2[1]), none.clone()),
                ],
                marks: vec![
                    ("per-VM model: guest 1".into(), get(&|x| x.per_vm.guest1)),
                    ("per-VM model: guest 2".into(), get(&|x| x.per_vm.guest2)),
                    ("per-process model: guest 1".into(), get(&|x| x.per_process.guest1)),
                    ("per-process model: guest 2".into(), get(&|x| x.per_process.guest2)),
                ],
            }),
            format!(
                "Bars: each copy's mean over the counted repetitions ({} per copy), divided by the same backend's mean T_av1: a ratio of means, so no error bars. \
                 Marks: the models' predictions for the CPUs each guest could use (min(vCPUs, CPUs of its cpuset); see the table).",
                count_range(bs.iter().filter_map(|b| rep.isolation[&key(*b, *r)].samples_per_copy))
            ),
        ));
    }
}

/// Fig. 14: the ring of guests streaming to their neighbour.
fn ring_figure(rep: &Report, out: &mut Vec<(String, Figure, String)>) {
    let bs: Vec<BackendKind> = rep.ring.keys().copied().collect();
    out.push((
        "fig14_ring.svg".into(),
        Figure::Bars(Bars {
            title: "Inter-guest bandwidth, ring of guests streaming to their neighbour (paper Fig. 14)".into(),
            y_label: "per-guest bandwidth (MB/s)".into(),
            categories: bs.iter().map(|b| format!("{b} ({})", rep.ring[b].guests)).collect(),
            series: vec![(
                "mean ± 95 % CI".into(),
                bs.iter().map(|b| Some(rep.ring[b].bandwidth.mean)).collect(),
                bs.iter().map(|b| rep.ring[b].bandwidth.ci_half()).collect(),
            )],
            marks: vec![],
        }),
        format!(
            "Bars: mean per-guest bandwidth over all guests of the ring and the counted repetitions; {CI_BARS}; n = {} samples (guests × repetitions) per bar.",
            count_range(rep.ring.values().map(|r| r.bandwidth.samples))
        ),
    ));
}

/// What a figure shows of a backend measured inside an emulated host (the Xen lab).
pub const EMULATED_MARK: &str = " (emulated host)";

/// What a backend's M_used counts that the label alone does not say, to print beside it;
/// None where it means what it says (the host's used memory with the fleet up).
pub fn memory_caveat(b: BackendKind, emulated: bool) -> Option<String> {
    if b != BackendKind::Xen {
        return None;
    }
    // docs/xen.md, "Memory" and "Disk": domU RAM is Xen's, and qdisk is a QEMU per domain.
    let mut note = "xen: M_used is dom0's used memory plus the RAM Xen handed out (`xl info`); \
        a guest with a disk (data disk or system image) has it served by a QEMU device model \
        in dom0 (qdisk, about 13 MiB PSS a guest in the lab), which a host serving raw disks \
        with blkback would not run"
        .to_string();
    if emulated {
        note.push_str(
            "; measured inside the Xen lab's machine (an emulated host under QEMU TCG): \
             its dom0 and Xen, not this host's memory",
        );
    }
    Some(note)
}

/// How results written before [`Record::BackendProbe`]'s `emulated` field marked it.
pub(super) const OLD_EMULATED_PREFIX: &str = "[emulated host] ";

/// Per emulated backend, the CPU workloads its samples ran (distinct, in order).
pub(super) fn emulated_cpu(
    bench: &[BenchSample],
    emulated: &std::collections::BTreeSet<BackendKind>,
) -> BTreeMap<BackendKind, String> {
    let mut out: BTreeMap<BackendKind, Vec<String>> = BTreeMap::new();
    for s in bench.iter().filter(|s| s.resource == Resource::Cpu && emulated.contains(&s.backend)) {
        let v = out.entry(s.backend).or_default();
        if !v.contains(&s.params) {
            v.push(s.params.clone());
        }
    }
    out.into_iter().map(|(b, v)| (b, v.join(", "))).collect()
}

/// A CPU workload (`rounds=…`) and how it stands to the default campaigns and `hostd bench`
/// run, so a figure of another size (the Xen lab's own) says so.
pub fn cpu_workload_note(params: &str) -> String {
    let default = crate::suite::Workloads::default().params(Resource::Cpu);
    if params == default {
        format!("{params}, the default of campaigns and `hostd bench`")
    } else {
        format!("{params}, not the {default} campaigns and `hostd bench` run by default")
    }
}

/// Labels every curve and bar of a backend whose probe says it ran inside an emulated host,
/// so no figure passes those numbers off as a real host's; a CPU figure also states that
/// backend's CPU workload (the Xen lab's own size may differ from the other curves').
pub(super) fn mark_emulated(rep: &Report, figs: &mut [(String, Figure, String)]) {
    let emulated: Vec<String> = rep.emulated.iter().map(|b| b.to_string()).collect();
    let mark = |name: &mut String| {
        if let Some(b) = emulated.iter().find(|b| name == *b || name.starts_with(&format!("{b} ")))
        {
            name.insert_str(b.len(), EMULATED_MARK);
        }
    };
    for (file, f, caption) in figs.iter_mut() {
        let names: Vec<&String> = match f {
            Figure::Line(c) => c.series.iter().map(|s| &s.name).collect(),
            Figure::Bars(b) => b.categories.iter().collect(),
        };
        if file.contains("_cpu") {
            for (b, params) in &rep.emulated_cpu {
                let b = b.to_string();
                if names.iter().any(|n| *n == &b || n.starts_with(&format!("{b} "))) {
                    caption.push_str(&format!(
                        " {b}{EMULATED_MARK}: CPU workload {}.",
                        cpu_workload_note(params)
                    ));
                }
            }
        }
        match f {
            Figure::Line(c) => c.series.iter_mut().for_each(|s| mark(&mut s.name)),
            Figure::Bars(b) => b.categories.iter_mut().for_each(&mark),
        }
    }
}
