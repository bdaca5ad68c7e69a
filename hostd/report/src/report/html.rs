//! `index.html`: the decision table, the sections' tables, the figures, provenance last.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::*;

/// "12.3 [11.9, 12.7]": a mean and its 95 % confidence interval (the mean alone for one sample).
pub(super) fn with_ci(s: &Stat, p: usize) -> String {
    match s.ci95 {
        Some([lo, hi]) => format!("{:.p$} [{lo:.p$}, {hi:.p$}]", s.mean),
        None => format!("{:.p$} (1 sample)", s.mean),
    }
}

pub(super) const CSS: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}.bad{color:#a00}";
/// Counts the figures the browser could load (the report test reads it in headless Chromium).
pub(super) const FIGURES_LOADED_JS: &str = "window.addEventListener('load',()=>{const i=[...document.images];document.body.dataset.figures=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});";

/// An optional number with `p` decimals, "–" when missing.
pub(super) fn opt(v: Option<f64>, p: usize) -> String {
    v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "–".into())
}

/// The page `index.html`: the decision table first, then the figures, provenance last.
/// A maud template: every interpolated string is escaped.
pub fn html_page(rep: &Report, figs: &[(String, Figure, String)]) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "virtbench report" }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "virtbench report" }
                // The answer first; where it came from last.
                (crate::decision::html(&crate::decision::decide(rep)))
                p {
                    "Host CPUs: " (rep.cores) ". References and isolation models use the CPUs the guests had (their cpuset, recorded with every sample) and each guest's vCPUs. \
                     Every figure's points are means over the repetitions recorded in " code { "samples.jsonl" } "; error bars are 95" (PreEscaped("&nbsp;")) "% confidence intervals of the mean \
                     (Student t with n − 1 degrees of freedom); medians and intervals of every point are in " code { "report.json" } " and " code { "report.csv" } "."
                }
                @if !rep.cpus_assumed.is_empty() {
                    p.bad {
                        "These figures' samples did not record the CPUs their guests had (results older than that record): their references and models assume the host's "
                        (rep.cores) " CPUs, which is wrong if the guests were pinned (guest.pin_one_core): " (rep.cpus_assumed.join(", ")) "."
                    }
                }
                (crate::fidelity::notes_html(&rep.notes))
                (backends_html(rep))
                (startup_html(rep))
                (overhead_html(rep))
                (commands_html(rep))
                (isolation_html(rep))
                (ring_html(rep))
                (crate::suite::conditions::html(&rep.conditions))
                (PreEscaped(crate::netem_report::html(&rep.netem)))
                h2 { "Figures" }
                @for (name, f, caption) in figs {
                    @let title = match f { Figure::Line(c) => &c.title, Figure::Bars(b) => &b.title };
                    figure {
                        img src=(format!("figures/{name}")) alt=(title);
                        figcaption {
                            b { (title) "." } " " (caption.trim())
                            @if name.ends_with("_disk.svg") {
                                @for (b, n) in &rep.disk_notes { br; "† " (b) ": " (n) }
                            }
                        }
                    }
                }
                (records_html(rep))
                @if let Some(p) = &rep.provenance {
                    h2 { "Host and provenance" }
                    ul { @for l in p.lines() { li { (l) } } }
                }
                script { (PreEscaped(FIGURES_LOADED_JS)) }
            }
        }
    };
    page.into_string() + "\n"
}

/// The backends measured and those that could not run, with why.
pub(super) fn backends_html(rep: &Report) -> Markup {
    html! {
        @if !rep.probes.is_empty() || !rep.unavailable.is_empty() {
            h2 { "Backends" }
            table {
                tr { th { "backend" } th { "status" } }
                @for (b, d) in &rep.probes {
                    tr {
                        td { (b) @if rep.emulated.contains(b) { (EMULATED_MARK) } }
                        td style="text-align:left" { (d) }
                    }
                }
                @for (b, d) in &rep.unavailable {
                    tr { td { (b) } td.bad style="text-align:left" { "unavailable: " (d) } }
                }
            }
        }
        @if !rep.failed_steps.is_empty() {
            h2 { "Failed steps" }
            ul { @for (k, e) in &rep.failed_steps { li.bad { b { (k) } ": " (e) } } }
        }
        @if !rep.lost.is_empty() {
            h2 { "Guests lost during measurements" }
            ul {
                @for (b, step, f) in &rep.lost {
                    li.bad {
                        b { (b) " " (f.name) } " (" (step) "): " (format!("{:?}", f.kind)) ": " (f.error)
                        @if let Some(t) = &f.console_tail { pre { (t) } }
                    }
                }
            }
        }
    }
}

/// Paper II.B: the startup and memory table, its notes and the memory fit.
pub(super) fn startup_html(rep: &Report) -> Markup {
    // M_used is host-wide (the paper's method): memory another process frees during the
    // measurement makes it fall, even below zero. Said next to the table, not hidden.
    let negative: Vec<String> = rep
        .startup
        .rows
        .iter()
        .filter(|r| r.m_used_mib.is_some_and(|m| m < 0.0))
        .map(|r| format!("{} n={} {}", r.backend, r.n, r.mode.name()))
        .collect();
    // What a backend's M_used counts beyond the label, beside the table.
    let mut caveats: Vec<String> = Vec::new();
    for r in &rep.startup.rows {
        let c = super::figures::memory_caveat(r.backend, rep.emulated.contains(&r.backend));
        if let Some(c) = c.filter(|c| !caveats.contains(c)) {
            caveats.push(c);
        }
    }
    html! {
        h2 { "Concurrent startup and memory occupation (paper II.B, Fig. 1)" }
        table {
            tr {
                th { "backend" } th { "n" } th { "mode" } th { "ready" } th { "T_startup (s)" }
                th { "ready time mean ± sd (s)" } th { "guest boot (s)" } th { "M_used (MiB)" }
                th { "cgroup / guest (MiB)" } th { "PSS / guest (MiB)" }
            }
            @for r in &rep.startup.rows {
                @let emulated = rep.emulated.contains(&r.backend);
                tr {
                    td { (r.backend) @if emulated { (EMULATED_MARK) } }
                    td { (r.n) }
                    // The verified label (cold, warm, hot) and the resident share before the start.
                    td {
                        @match r.checks.resident_fraction {
                            Some(f) => { (r.label()) " (" (format!("{:.1}", 100.0 * f)) " % resident)" }
                            None => { (r.label()) }
                        }
                    }
                    td { (r.ready) "/" (r.n) }
                    // Over the guests that came up: marked partial, never bare.
                    td {
                        (opt(r.t_startup_s, 3))
                        @if r.partial() && r.t_startup_s.is_some() { " (partial: " (r.ready) " of " (r.n) ")" }
                    }
                    td {
                        @match &r.ready_times {
                            Some(s) => { (format!("{:.3} ± {:.3}", s.mean, s.std_dev)) }
                            None => { "–" }
                        }
                    }
                    td { (opt(r.guest_boot.as_ref().map(|g| g.mean), 3)) }
                    td {
                        @match (r.m_used_mib, r.checks.m_used_noise_mib, r.checks.m_used_disagrees) {
                            (Some(m), Some(b), false) => { (format!("{m:.1} ± {b:.1}")) }
                            (Some(m), Some(b), true) => {
                                (format!("{m:.1} ± {b:.1}")) " (guests' cgroups + hostd: " (opt(r.checks.cross_check_mib, 1)) ")"
                            }
                            (m, _, _) => { (opt(m, 1)) }
                        }
                    }
                    td { (opt(r.per_guest_cgroup_mib, 2)) }
                    td { (opt(r.per_guest_pss_mib, 2)) }
                }
            }
        }
        @if !negative.is_empty() {
            p.bad {
                "M_used below zero for " (negative.join(", ")) ": the host's used memory fell during the measurement (another process freed memory), so those rows and the fit through them understate the guests' memory; rerun on a quiet host."
            }
        }
        @for c in &caveats { p { (c) "." } }
        (crate::bootreport::startup_notes_html(&rep.startup))
        @for (mode, f) in &rep.startup.memory_fit {
            p {
                "Fit (" (mode) "): " (format!("M_used(n) = {:.2} MiB × n + {:.1} MiB (M_VM, M_tool; residual {:.2} MiB over {} sizes).", f.slope, f.intercept, f.residual_std, f.points))
            }
        }
    }
}

/// Paper II.A.1: T_a on the host and O_v per backend and resource at n = 1.
pub(super) fn overhead_html(rep: &Report) -> Markup {
    let shown: Vec<Resource> =
        RES.iter().map(|(r, _)| *r).filter(|r| rep.baseline.contains_key(r)).collect();
    html! {
        @if !rep.baseline.is_empty() {
            h2 { "Overhead O_v = T_av − T_a (paper II.A.1)" }
            table {
                tr {
                    th { "backend" }
                    @for (r, l) in RES {
                        @if rep.baseline.contains_key(&r) {
                            th { (l) " (" (if r == Resource::Network { "MB/s lost" } else { "s" }) ")" }
                        }
                    }
                }
                tr {
                    td { "T_a (host)" }
                    @for (r, _) in RES {
                        @if let Some(s) = rep.baseline.get(&r) { td { (format!("{:.4}", s.mean)) " " (s.unit) } }
                    }
                }
                @for b in BackendKind::ALL {
                    @if RES.iter().any(|(r, _)| rep.overhead.contains_key(&key(b, *r))) {
                        tr {
                            td { (b) }
                            @for r in &shown {
                                @let v = rep.overhead.get(&key(b, *r)).and_then(|p| p.iter().find(|p| p.n == 1)).and_then(|p| p.overhead);
                                td {
                                    (opt(v, 4))
                                    @if *r == Resource::Disk && rep.disk_notes.contains_key(&b) { " †" }
                                }
                            }
                        }
                    }
                }
            }
            @for (b, n) in &rep.disk_notes { p { "† " (b) " disk: " (n) } }
        }
        (paired_disk_html(rep))
    }
}

/// A backend reading one disk alone faster than this × the adjacent native read is flagged:
/// no virtualization layer reads a device faster than the host (issue 11 allows 10 %).
pub(super) const FASTER_THAN_NATIVE: f64 = 1.10;

/// Disk reads against the native read taken right before each (the figures above compare
/// with native's T_a, measured minutes apart).
pub(super) fn paired_disk_html(rep: &Report) -> Markup {
    let ta = rep.baseline.get(&Resource::Disk);
    html! {
        @if !rep.paired_disk.is_empty() || rep.native_drift.is_some() {
            h3 { "Disk against the adjacent native read" }
            p {
                "A shared or virtual disk's speed drifts over a run (other I/O on the host or below it), so a backend's reads, taken minutes after native's, can look faster or slower than native for that reason alone. \
                 Right before and right after every disk read of a backend other than native, hostd reads the run's native reference copy with O_DIRECT (same size and block size) and records both in the sample; \
                 each read is divided here by the mean of those two native reads, and a read whose two native reads disagree by more than 20 % (the disk changed speed during it) is left out and counted in the reads column. The figures above (and Figures 4, 8, 12) keep the paper's T_a; the decision table's disk overhead uses the paired time ratio where the samples have one. \
                 A linearity or isolation run's native read is one reader alone: with n readers sharing the disk each one's ratio is expected near 1/n of the speed (n times the time)."
            }
            @if let Some(d) = &rep.native_drift {
                p {
                    (format!(
                        "Native O_DIRECT reads over the run ({} reads: the native backend's own and every paired one): {:.0} to {:.0} MB/s, median {:.0}; they moved by {:.0} % of the median.",
                        d.reads, d.min_mbps, d.max_mbps, d.median_mbps, d.spread * 100.0
                    ))
                }
            }
            @if !rep.paired_disk.is_empty() {
                table {
                    tr {
                        th { "backend" } th { "test" } th { "n" } th { "reads" }
                        th { "speed ÷ adjacent native (mean of the reads before and after), median (min–max)" }
                        th { "time ÷ adjacent native, mean ± 95 % CI" }
                        th { "unpaired speed: T_a ÷ T_avn (means)" }
                        th { "longest gap (ms)" }
                        th title="the largest |after − before| ÷ mean of the two native reads around one backend read" { "widest bracket" }
                    }
                    @for (b, pts) in &rep.paired_disk {
                        @for p in pts {
                            @let unpaired = (p.test == Test::Overhead).then(|| rep.overhead.get(&key(*b, Resource::Disk)).and_then(|v| v.iter().find(|q| q.n == p.n))).flatten();
                            tr {
                                td { (b) } td { (format!("{:?}", p.test).to_lowercase()) } td { (p.n) } td { (p.speed.samples) @if p.untrusted > 0 { " (+" (p.untrusted) " left out: bracket > 20 %)" } }
                                @let fast = p.test == Test::Overhead && p.speed.median > FASTER_THAN_NATIVE;
                                td class=[fast.then_some("bad")] title=[fast.then_some("faster than the adjacent native read by more than 10 %: not the disk's drift")] {
                                    (format!("{:.2} ({:.2}–{:.2})", p.speed.median, p.speed.min, p.speed.max))
                                    @if fast { " !" }
                                }
                                td { (format!("{:.2}", p.time.mean)) (p.time.ci_half().map(|h| format!(" ± {h:.2}")).unwrap_or_default()) }
                                td {
                                    @match (unpaired, ta) {
                                        (Some(q), Some(ta)) if q.value.mean > 0.0 => (format!("{:.2}", ta.mean / q.value.mean)),
                                        _ => "–",
                                    }
                                }
                                td { (format!("{:.2}", p.max_gap_s * 1e3)) }
                                td { (p.max_bracket.map(|b| format!("{:.0} %", b * 100.0)).unwrap_or_else(|| "–".into())) }
                            }
                        }
                    }
                }
                @if rep.paired_disk.values().flatten().any(|p| p.test == Test::Overhead && p.speed.median > FASTER_THAN_NATIVE) {
                    p.bad { "! A backend read the disk alone more than 10 % faster than the native reads around it (median): not the disk's drift; the † notes above may say why (read-ahead through the host page cache)." }
                }
            }
        }
    }
}

/// Paper II.A.3: each pair's relative times against both models.
pub(super) fn isolation_html(rep: &Report) -> Markup {
    html! {
        @if !rep.isolation.is_empty() {
            h2 { "Performance isolation (paper II.A.3)" }
            p {
                "Relative to one copy alone in one guest. Model predictions for the capacity the guests had (the CPUs of their cpuset for CPU and memory, 1 for a shared disk or network path) \
                 and what each guest could use of it (min(vCPUs, CPUs) for CPU and memory); see docs/methodology.md for why the paper's T_a1 = 2T_a, T_a2 = 3T_a/2 is not one model's prediction."
            }
            table {
                tr {
                    th { "backend / resource" } th { "guest 1" } th { "guest 2 (copies)" } th { "per-VM model" }
                    th { "per-process model" } th { "closer to" } th { "capacity" } th { "usable by guest 1, 2" }
                }
                @for (k, i) in &rep.isolation {
                    tr {
                        td { (k) }
                        td { (format!("{:.2}", i.guest1)) }
                        td { (format!("{:.2}, {:.2}", i.guest2[0], i.guest2[1])) }
                        td { (format!("{:.2} / {:.2}", i.per_vm.guest1, i.per_vm.guest2)) }
                        td { (format!("{:.2} / {:.2}", i.per_process.guest1, i.per_process.guest2)) }
                        td { (match i.closest { Policy::PerVm => "per-VM", Policy::PerProcess => "per-process" }) }
                        td { (i.capacity) @if rep.cpus_assumed.contains(k) { " (host CPUs assumed)" } }
                        td { (i.guest_cpus.map(|[a, b]| format!("{a}, {b}")).unwrap_or_else(|| "–".into())) }
                    }
                }
            }
        }
    }
}

/// Paper II.A.4: bandwidth and latency per guest on the ring.
pub(super) fn ring_html(rep: &Report) -> Markup {
    html! {
        @if !rep.ring.is_empty() {
            h2 { "Communication between guests (paper II.A.4, Fig. 14)" }
            table {
                tr {
                    th { "backend" } th { "guests" } th { "bandwidth per guest (MB/s): mean [95 % CI]" } th { "median" }
                    th { "min–max" } th { "samples" } th { "latency (µs): mean [95 % CI]" }
                }
                @for (b, r) in &rep.ring {
                    tr {
                        td { (b) }
                        td { (r.guests) }
                        td { (with_ci(&r.bandwidth, 1)) }
                        td { (format!("{:.1}", r.bandwidth.median)) }
                        td { (format!("{:.1}–{:.1}", r.bandwidth.min, r.bandwidth.max)) }
                        td { (r.bandwidth.samples) }
                        td { (r.latency.as_ref().map(|l| with_ci(l, 1)).unwrap_or_else(|| "–".into())) }
                    }
                }
            }
        }
    }
}

/// What of samples.jsonl could not be read or was left out.
pub(super) fn records_html(rep: &Report) -> Markup {
    html! {
        @if rep.unreadable_records > 0 {
            p.bad { (rep.unreadable_records) " record(s) in samples.jsonl could not be read (a run killed while writing)." }
        }
        @if rep.implausible_records > 0 {
            p.bad { (rep.implausible_records) " record(s) in samples.jsonl left out as outside physical sense (a damaged or edited samples file):" }
            ul {
                @for r in &rep.rejected { li.bad { "line " (r.line) ": " (r.why) } }
                @if rep.rejected.len() < rep.implausible_records {
                    li { "… and " (rep.implausible_records - rep.rejected.len()) " more" }
                }
            }
        }
    }
}

/// Users' commands timed as workloads, beside the microbenchmarks: per backend and fleet
/// size, T_avn and O_vn (overhead), and all n at once against the linearity reference.
pub(super) fn commands_html(rep: &Report) -> Markup {
    html! {
        @if !rep.commands.is_empty() {
            h2 { "User workloads (overhead and linearity, as the microbenchmarks)" }
            p {
                "Each workload below is the user's own command, run through the agent's exec message natively (T_a) and in guests; what it measures is the user's. \
                 Its time is the agent's, from the program's start to its exit (docs/methodology.md, \"User workloads\"). \
                 O_vn and the linearity reference are computed by the microbenchmarks' own formulas, the reference as for a CPU-bound job (one per host CPU). \
                 A failed run (non-zero exit, signal, timeout, a program that could not start) is not a figure; a linearity repetition in which any guest failed is left out whole."
            }
            @for c in &rep.commands {
                h3 { (c.name) " on " (c.backend) }
                p { "command: " code { (c.command) } }
                @if c.baseline.is_some() || !c.overhead.is_empty() || !c.linearity.is_empty() { table {
                    tr {
                        th { "test" } th { "n" } th { "mean (s)" } th { "std dev (s)" } th { "min–max (s)" }
                        th { "runs (repetitions × busy guests)" } th { "O_vn (s)" } th { "slowest (s)" } th { "reference (s)" }
                    }
                    @if let Some(b) = &c.baseline {
                        tr {
                            td { "T_a (native, n = 1)" } td { "1" } td { (with_ci(b, 4)) } td { (format!("{:.4}", b.std_dev)) }
                            td { (format!("{:.4}–{:.4}", b.min, b.max)) } td { (b.samples) } td { "" } td { "" } td { "" }
                        }
                    }
                    @for p in &c.overhead {
                        tr {
                            td { "overhead" } td { (p.n) } td { (with_ci(&p.value, 4)) } td { (format!("{:.4}", p.value.std_dev)) }
                            td { (format!("{:.4}–{:.4}", p.value.min, p.value.max)) } td { (p.value.samples) }
                            td { (opt(p.overhead, 4)) } td { "" } td { "" }
                        }
                    }
                    @for p in &c.linearity {
                        tr {
                            td { "linearity" } td { (p.n) } td { (with_ci(&p.value, 4)) } td { (format!("{:.4}", p.value.std_dev)) }
                            td { (format!("{:.4}–{:.4}", p.value.min, p.value.max)) } td { (p.value.samples) }
                            td { "" } td { (format!("{:.4}", p.worst)) } td { (opt(p.reference, 4)) }
                        }
                    }
                } }
                p {
                    (c.runs) " counted runs, " (c.failed) " failed"
                    @if c.baseline.is_none() { "; no successful native run of this command at n = 1 (T_a): no O_vn" }
                    "."
                }
                @if !c.failures.is_empty() {
                    ul { @for f in &c.failures { li.bad { (f) } } }
                }
            }
        }
    }
}
