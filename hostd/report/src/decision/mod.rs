//! The answer first: one row per backend with the figures the paper's conclusion weighs
//! (overhead per resource, linearity, isolation, ring bandwidth, startup, memory per
//! guest), each with its spread and its rank among the virtualization systems, and one
//! sentence per backend derived from those ranks. Nothing here is written by hand: every
//! cell and every sentence comes from the report's figures.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use vb_protocol::bench::Resource;

use crate::backend::BackendKind;
use crate::report::{Report, Stat};
use crate::startup::StartMode;
use crate::suite::isolation::Policy;
use crate::suite::Test;

/// One column of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Its heading.
    pub name: String,
    /// What the number is, in a sentence (shown under the table).
    pub what: String,
    /// Whether smaller figures rank first (times, overheads).
    pub lower_is_better: bool,
    /// Whether cells are ranked (a verdict such as the isolation policy is not).
    pub ranked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// One backend's figure in one column.
pub struct Cell {
    /// The figure as shown, with its spread.
    pub text: String,
    /// The number ranked, if any.
    pub value: Option<f64>,
    /// 1 = best among the ranked backends; None for the reference, text cells and gaps.
    pub rank: Option<usize>,
    /// The value's 95 % interval, where it has one: a verdict calls a backend best or
    /// worst only when this interval does not overlap the runner-up's.
    #[serde(default)]
    pub interval: Option<[f64; 2]>,
    /// How many measurements the figure rests on (repetitions, guests' ready times, fleet
    /// sizes of a fit); None for gaps and verdicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// One backend's line of the table.
pub struct Row {
    /// The backend.
    pub backend: BackendKind,
    /// Its cells, in the columns' order.
    pub cells: Vec<Cell>,
    /// What this backend is good and bad for, from its ranks.
    pub verdict: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// The decision table: its columns, and a row of ranked cells per backend.
pub struct Table {
    /// The columns, left to right.
    pub columns: Vec<Column>,
    /// One row per backend.
    pub rows: Vec<Row>,
    /// How many backends each ranked column ranks (the verdicts' "of N").
    pub ranked_backends: usize,
}

/// A cell before ranking: its text and the number ranked, if any, without an interval.
fn cell(text: String, value: Option<f64>) -> Cell {
    Cell { text, value, rank: None, interval: None, samples: None }
}

impl Cell {
    fn of(self, samples: usize) -> Cell {
        Cell { samples: Some(samples), ..self }
    }
}

fn gap() -> Cell {
    cell("–".into(), None)
}

/// `x` with the relative CI half-width of `s` applied to it, as "1.23× ±0.04".
fn ratio_cell(ratio: f64, s: &Stat) -> Cell {
    let half = s.ci_half().map(|h| ratio * h / s.mean.abs().max(f64::MIN_POSITIVE));
    let spread = half.map(|h| format!(" ±{h:.2}")).unwrap_or_default();
    Cell {
        text: format!("{ratio:.2}×{spread}"),
        value: Some(ratio),
        rank: None,
        interval: half.map(|h| [ratio - h, ratio + h]),
        samples: Some(s.samples),
    }
}

/// The largest fleet size every backend with startup rows measured in `mode`, so ranks
/// compare equal fleets; None if they share none.
fn common_n(rep: &Report, mode: StartMode) -> Option<usize> {
    let mut per: BTreeMap<BackendKind, BTreeSet<usize>> = BTreeMap::new();
    for r in rep.startup.rows.iter().filter(|r| r.mode == mode && r.t_startup_s.is_some()) {
        per.entry(r.backend).or_default().insert(r.n);
    }
    let mut sets = per.into_values();
    let first = sets.next()?;
    sets.fold(first, |a, b| a.intersection(&b).copied().collect()).into_iter().max()
}

/// The backends the table has a row for: every one with any figure, the reference first.
fn backends(rep: &Report) -> Vec<BackendKind> {
    let mut set: BTreeSet<BackendKind> = rep.startup.rows.iter().map(|r| r.backend).collect();
    for k in rep.overhead.keys().chain(rep.linearity.keys()).chain(rep.isolation.keys()) {
        if let Some(b) = k.split('/').next().and_then(|b| b.parse().ok()) {
            set.insert(b);
        }
    }
    set.extend(rep.ring.keys().copied());
    set.into_iter().collect()
}

fn resource_key(b: BackendKind, r: Resource) -> String {
    format!("{b}/{}", r.name())
}

/// Builds the table from a report: its columns in order, those without any figure left
/// out, then the ranks and each row's verdict.
pub fn decide(rep: &Report) -> Table {
    let kinds = backends(rep);
    let mut pairs = overhead_columns(rep, &kinds);
    pairs.push(linearity_column(rep, &kinds));
    pairs.push(isolation_column(rep, &kinds));
    pairs.push(ring_column(rep, &kinds));
    pairs.extend(startup_columns(rep, &kinds));
    pairs.push(memory_column(rep, &kinds));
    // A column with no figure for any backend says nothing: leave it out.
    pairs.retain(|(_, cells)| cells.iter().any(|x| x.text != "–"));
    let (columns, mut cols): (Vec<Column>, Vec<Vec<Cell>>) = pairs.into_iter().unzip();
    let ranked_backends = rank(rep, &kinds, &columns, &mut cols);
    let rows = rows(rep, &kinds, &columns, &cols);
    Table { columns, rows, ranked_backends }
}

/// Overhead per resource at n = 1: T_av1 ÷ T_a (network: B_a ÷ B_av1), so 1 is native.
fn overhead_columns(rep: &Report, kinds: &[BackendKind]) -> Vec<(Column, Vec<Cell>)> {
    let mut out = Vec::new();
    for r in Resource::ALL {
        let Some(base) = rep.baseline.get(&r) else { continue };
        let cells: Vec<Cell> = kinds
            .iter()
            .map(|&b| {
                let p =
                    rep.overhead.get(&resource_key(b, r)).and_then(|v| v.iter().find(|p| p.n == 1));
                // Disk: against the adjacent native reads where the samples have them.
                let pair = rep
                    .paired_disk
                    .get(&b)
                    .and_then(|v| v.iter().find(|p| p.test == Test::Overhead && p.n == 1))
                    .filter(|_| r == Resource::Disk);
                if let Some(pp) = pair.filter(|pp| pp.time.mean > 0.0) {
                    let c = ratio_cell(pp.time.mean, &pp.time);
                    return Cell { text: format!("{} ‡", c.text), ..c };
                }
                match p {
                    Some(p) if p.value.mean > 0.0 && base.mean > 0.0 => {
                        let ratio = if r == Resource::Network {
                            base.mean / p.value.mean
                        } else {
                            p.value.mean / base.mean
                        };
                        ratio_cell(ratio, &p.value)
                    }
                    _ => gap(),
                }
            })
            .collect();
        let what = match r {
            Resource::Network => "native bandwidth ÷ the guest's, one guest running (n = 1), ± its 95 % CI",
            Resource::Disk if rep.paired_disk.values().flatten().any(|p| p.test == Test::Overhead && p.n == 1) => {
                "the guest's time ÷ native's for the same read, one guest running (n = 1), ± its 95 % CI; ‡: each read divided by the mean of the native O_DIRECT reads hostd took right before and right after it (the disk's speed drifts over a run), reads whose two native reads disagree by more than 20 % left out, not by native's T_a"
            }
            _ => "the guest's time ÷ native's for the same work, one guest running (n = 1), ± its 95 % CI",
        };
        out.push((
            Column {
                name: format!("{} overhead", r.name()),
                what: what.into(),
                lower_is_better: true,
                ranked: true,
            },
            cells,
        ));
    }
    out
}

/// Linearity: at the largest n measured, the slowest guest against the affine reference
/// (1 = as linear as sharing the CPUs allows); the worst resource is shown.
fn linearity_column(rep: &Report, kinds: &[BackendKind]) -> (Column, Vec<Cell>) {
    let cells: Vec<Cell> = kinds
        .iter()
        .map(|&b| {
            let mut worst: Option<(f64, Resource, usize, usize)> = None;
            for r in Resource::ALL {
                let Some(p) = rep
                    .linearity
                    .get(&resource_key(b, r))
                    .and_then(|v| v.iter().max_by_key(|p| p.n))
                else {
                    continue;
                };
                let Some(reference) = p.reference.filter(|x| *x > 0.0) else { continue };
                if p.worst <= 0.0 {
                    continue;
                }
                let ratio =
                    if r == Resource::Network { reference / p.worst } else { p.worst / reference };
                if worst.is_none_or(|(w, _, _, _)| ratio > w) {
                    worst = Some((ratio, r, p.n, p.value.samples));
                }
            }
            match worst {
                Some((ratio, r, n, k)) => {
                    cell(format!("{ratio:.2}× ({}, n = {n})", r.name()), Some(ratio)).of(k)
                }
                None => gap(),
            }
        })
        .collect();
    (
        Column {
            name: "linearity".into(),
            what: "at the largest n measured, the slowest guest ÷ the linear reference O_v + T_a·max(1, n/CPUs), for the resource where that is worst".into(),
            lower_is_better: true,
            ranked: true,
        },
        cells,
    )
}

/// Isolation: which sharing model the CPU measurement is closest to (the paper's
/// question), and where it was measured.
fn isolation_column(rep: &Report, kinds: &[BackendKind]) -> (Column, Vec<Cell>) {
    let cells: Vec<Cell> = kinds
        .iter()
        .map(|&b| match rep.isolation.get(&resource_key(b, Resource::Cpu)) {
            Some(i) => {
                let policy = match i.closest {
                    Policy::PerVm => "per guest",
                    Policy::PerProcess => "per process",
                };
                // Where it was measured: the isolation test's fleet is always two guests.
                let reps = i
                    .samples_per_copy
                    .map(|k| format!(", {k} repetition{}", if k == 1 { "" } else { "s" }))
                    .unwrap_or_default();
                let c = cell(format!("{policy} (n = 2: 1 + 2 copies{reps})"), None);
                match i.samples_per_copy {
                    Some(k) => c.of(k),
                    None => c,
                }
            }
            None => gap(),
        })
        .collect();
    (
        Column {
            name: "CPU isolation".into(),
            what: "whether the CPU is shared per guest (a guest with two copies gets no more than one with one) or per process, measured with n = 2 guests (one copy in the first, two in the second) over the repetitions stated".into(),
            lower_is_better: true,
            ranked: false,
        },
        cells,
    )
}

/// Ring bandwidth per guest.
fn ring_column(rep: &Report, kinds: &[BackendKind]) -> (Column, Vec<Cell>) {
    let cells: Vec<Cell> = kinds
        .iter()
        .map(|&b| match rep.ring.get(&b) {
            Some(r) => {
                let spread = r.bandwidth.ci_half().map(|h| format!(" ±{h:.0}")).unwrap_or_default();
                Cell {
                    text: format!("{:.0}{spread} MB/s ({} guests)", r.bandwidth.mean, r.guests),
                    value: Some(r.bandwidth.mean),
                    rank: None,
                    interval: r.bandwidth.ci95,
                    samples: Some(r.bandwidth.samples),
                }
            }
            None => gap(),
        })
        .collect();
    (
        Column {
            name: "ring bandwidth".into(),
            what: "stream bandwidth each guest gets in a ring of guests, mean ± 95 % CI".into(),
            lower_is_better: false,
            ranked: true,
        },
        cells,
    )
}

/// Startup at the largest fleet size all backends measured, cold and hot.
fn startup_columns(rep: &Report, kinds: &[BackendKind]) -> Vec<(Column, Vec<Cell>)> {
    let mut out = Vec::new();
    for mode in [StartMode::Cold, StartMode::Hot] {
        let n = common_n(rep, mode);
        let cells: Vec<Cell> = kinds
            .iter()
            .map(|&b| {
                let row = n.and_then(|n| {
                    rep.startup.rows.iter().find(|r| r.backend == b && r.mode == mode && r.n == n)
                });
                match row.and_then(|r| Some((r, r.t_startup_s?))) {
                    Some((r, t)) => {
                        let partial = if r.failed > 0 {
                            format!(", partial: {} of {}", r.ready, r.ready + r.failed)
                        } else {
                            String::new()
                        };
                        let c = cell(format!("{t:.2} s{partial}"), Some(t));
                        match &r.ready_times {
                            Some(s) => c.of(s.samples.len()),
                            None => c,
                        }
                    }
                    None => gap(),
                }
            })
            .collect();
        let at = n.map_or("no fleet size all backends share".to_string(), |n| format!("n = {n}"));
        out.push((
            Column {
                name: format!("T_startup {} ({at})", mode.name()),
                what: format!(
                    "time until the last of n guests started together is ready, {} start",
                    mode.name()
                ),
                lower_is_better: true,
                ranked: true,
            },
            cells,
        ));
    }
    out
}

/// Memory per guest: the slope of the M_used(n) fit (cold fleets, else hot).
fn memory_column(rep: &Report, kinds: &[BackendKind]) -> (Column, Vec<Cell>) {
    let cells: Vec<Cell> = kinds
        .iter()
        .map(|&b| {
            let fit = rep
                .startup
                .memory_fit
                .get(&format!("{b} cold"))
                .or_else(|| rep.startup.memory_fit.get(&format!("{b} hot")));
            // A backend whose M_used counts more than the label says carries it in the cell.
            let caveat = crate::report::memory_caveat(b, rep.emulated.contains(&b))
                .map(|c| format!("; {c}"))
                .unwrap_or_default();
            match fit {
                Some(f) => cell(
                    format!(
                        "{:.1} MiB (fit of {} sizes, residual {:.1}{caveat})",
                        f.slope, f.points, f.residual_std
                    ),
                    Some(f.slope),
                ),
                None => gap(),
            }
        })
        .collect();
    (
        Column {
            name: "memory per guest".into(),
            what: "M_VM, the slope of M_used(n) = n·M_VM + M_tool fitted over the fleet sizes, with the fit's residual standard error".into(),
            lower_is_better: true,
            ranked: true,
        },
        cells,
    )
}

/// Ranks the virtualization systems on each ranked column; native is the reference, not a
/// contender, and a backend measured on an emulated host (the Xen lab) is not comparable
/// with the others. Returns how many backends are ranked.
fn rank(rep: &Report, kinds: &[BackendKind], columns: &[Column], cols: &mut [Vec<Cell>]) -> usize {
    let contenders: Vec<usize> = (0..kinds.len())
        .filter(|&i| kinds[i] != BackendKind::Native && !rep.emulated.contains(&kinds[i]))
        .collect();
    for (c, cells) in columns.iter().zip(cols.iter_mut()) {
        if !c.ranked {
            continue;
        }
        let mut vals: Vec<(usize, f64)> =
            contenders.iter().filter_map(|&i| cells[i].value.map(|v| (i, v))).collect();
        vals.sort_by(
            |a, b| if c.lower_is_better { a.1.total_cmp(&b.1) } else { b.1.total_cmp(&a.1) },
        );
        for (rank, (i, _)) in vals.iter().enumerate() {
            cells[*i].rank = Some(rank + 1);
        }
    }
    contenders.len()
}

/// One row per backend: its cells and its verdict.
fn rows(rep: &Report, kinds: &[BackendKind], columns: &[Column], cols: &[Vec<Cell>]) -> Vec<Row> {
    let emulated = |b: BackendKind| rep.emulated.contains(&b);
    kinds
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let cells: Vec<Cell> = cols.iter().map(|c| c[i].clone()).collect();
            let mut verdict = verdict(b, columns, cols, i);
            if emulated(b) {
                verdict = "Measured on an emulated host (a Xen host under QEMU, docs/xen.md): not ranked, its figures are not those of a real Xen host".into();
            } else if rep.probes.get(&b).is_some_and(|d| d.contains("using TCG")) {
                verdict.push_str("; ran under TCG emulation (no usable KVM here): its figures are not those of a hardware-accelerated VM");
            }
            Row { backend: b, cells, verdict }
        })
        .collect()
}

/// "Best of the N for …; worst for …", from the ranks in row `i`.
fn verdict(b: BackendKind, columns: &[Column], cols: &[Vec<Cell>], i: usize) -> String {
    if b == BackendKind::Native {
        return "the reference: the host without virtualization (overheads are relative to it)"
            .into();
    }
    // Two intervals overlap: the ranks between them may be noise.
    let apart = |a: &Cell, b: Option<&Cell>| match (a.interval, b.and_then(|b| b.interval)) {
        (Some([lo, hi]), Some([blo, bhi])) => hi < blo || bhi < lo,
        _ => true,
    };
    let mut best = Vec::new();
    let mut worst = Vec::new();
    for (c, cells) in columns.iter().zip(cols) {
        let ranked = cells.iter().filter(|x| x.rank.is_some()).count();
        let at = |r: usize| cells.iter().find(|x| x.rank == Some(r));
        match cells[i].rank {
            Some(1) if ranked > 1 && apart(&cells[i], at(2)) => best.push(c.name.clone()),
            Some(r) if ranked > 1 && r == ranked && apart(&cells[i], at(r - 1)) => {
                worst.push(c.name.clone())
            }
            _ => {}
        }
    }
    let iso = columns
        .iter()
        .position(|c| c.name == "CPU isolation")
        // The policy alone: where it was measured is in the cell.
        .map(|k| cols[k][i].text.split(" (").next().unwrap_or_default().to_string())
        .filter(|t| t != "–");
    let mut parts = Vec::new();
    if !best.is_empty() {
        parts.push(format!("best for {}", best.join(", ")));
    }
    if !worst.is_empty() {
        parts.push(format!("worst for {}", worst.join(", ")));
    }
    if parts.is_empty() {
        parts.push("neither clearly best nor clearly worst on any ranked figure".into());
    }
    if let Some(iso) = iso {
        parts.push(format!("CPU shared {iso}"));
    }
    let mut s = parts.join("; ");
    if let Some(f) = s.get_mut(0..1) {
        f.make_ascii_uppercase();
    }
    s
}

/// Background for a rank: green for the best, red for the worst, between them in steps.
fn colour(rank: usize, of: usize) -> &'static str {
    const SHADES: [&str; 5] = ["#c8ecc8", "#e2f2c4", "#f5f0c0", "#f7dcc0", "#f3c4c4"];
    if of <= 1 {
        return SHADES[0];
    }
    SHADES[((rank - 1) * (SHADES.len() - 1)).div_ceil(of - 1).min(SHADES.len() - 1)]
}

/// The table as an HTML section (a maud template: every string escaped).
pub fn html(t: &Table) -> maud::Markup {
    maud::html! {
        section #decision {
            h2 { "Which system for a large emulation?" }
            table {
                tr {
                    th { "backend" }
                    @for c in &t.columns { th { (c.name) } }
                    th style="text-align:left" { "in short" }
                }
                @for r in &t.rows {
                    tr {
                        td { (r.backend) }
                        @for cell in &r.cells {
                            @match cell.rank {
                                Some(k) => {
                                    td style=(format!("background:{}", colour(k, t.ranked_backends))) title=(format!("rank {k}")) {
                                        (cell.text) @if let Some(n) = cell.samples { br; small { (samples(n)) } }
                                    }
                                }
                                None => { td { (cell.text) @if let Some(n) = cell.samples { br; small { (samples(n)) } } } }
                            }
                        }
                        td style="text-align:left" { (r.verdict) }
                    }
                }
            }
            ul {
                @for c in &t.columns {
                    @let order = if !c.ranked { "not ranked" } else if c.lower_is_better { "lower is better" } else { "higher is better" };
                    li { b { (c.name) } ": " (c.what) " (" (order) ")." }
                }
                li { "Under each figure: how many measurements it rests on (repetitions, guests' ready times, or fleet sizes of a fit)." }
                li {
                    "Colours rank the virtualization systems on each figure, green best to red worst; native is the reference and is not ranked. \
                     Ranks order the means; the sentences call a system best or worst only where its interval does not overlap the runner-up's."
                }
            }
        }
    }
}

/// "5 samples": what a figure rests on.
fn samples(n: usize) -> String {
    format!("{n} sample{}", if n == 1 { "" } else { "s" })
}

/// The table as Markdown, for pasting into a paper or an issue.
pub fn markdown(t: &Table) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut m = String::from("| backend |");
    for c in &t.columns {
        m.push_str(&format!(" {} |", cell(&c.name)));
    }
    m.push_str(" in short |\n|---|");
    for _ in &t.columns {
        m.push_str("---|");
    }
    m.push_str("---|\n");
    for r in &t.rows {
        m.push_str(&format!("| {} |", r.backend));
        for c in &r.cells {
            let notes: Vec<String> =
                c.rank.map(|k| format!("#{k}")).into_iter().chain(c.samples.map(samples)).collect();
            let notes =
                if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };
            m.push_str(&format!(" {}{notes} |", cell(&c.text)));
        }
        m.push_str(&format!(" {} |\n", cell(&r.verdict)));
    }
    m.push('\n');
    for c in &t.columns {
        let order = if !c.ranked {
            "not ranked"
        } else if c.lower_is_better {
            "lower is better"
        } else {
            "higher is better"
        };
        m.push_str(&format!("- **{}**: {} ({order}).\n", c.name, c.what));
    }
    m.push_str(
        "- (#k): rank among the virtualization systems (native, the reference, is not ranked); \
         k samples: how many measurements the figure rests on.\n",
    );
    m
}

#[cfg(test)]
mod tests;
