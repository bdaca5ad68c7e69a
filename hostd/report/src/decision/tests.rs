use super::*;
use crate::boot::BootRow;
use crate::report::build_from;
use crate::samples::{Record, Samples};
use crate::stats::LinearFit;
use crate::suite::testing::sample;

/// The report of these samples alone (all read, none rejected, no provenance).
fn report_of(v: Vec<crate::suite::BenchSample>) -> Report {
    let records = v.into_iter().map(Record::Bench).collect();
    build_from(Samples { records, unreadable: 0, implausible: 0, rejected: vec![] }, None)
}

/// Native T_a = 2 s; uml 2.5 s, qemu-microvm 3 s at n = 1 (two repetitions each); rings
/// of 300 and 100 MB/s; startup rows at n = 1 and 10 (qemu also 20); memory fits.
fn report() -> Report {
    let mut v = Vec::new();
    for (b, t) in
        [(BackendKind::Native, 2.0), (BackendKind::Uml, 2.5), (BackendKind::QemuMicrovm, 3.0)]
    {
        for rep in 0..2 {
            v.push(sample(
                b,
                Test::Overhead,
                Resource::Cpu,
                1,
                rep,
                0,
                0,
                t + if rep == 0 { -0.1 } else { 0.1 },
            ));
        }
    }
    for (b, bw) in [(BackendKind::Uml, 300.0), (BackendKind::QemuMicrovm, 100.0)] {
        for g in 0..2 {
            let mut s = sample(b, Test::Ring, Resource::Network, 2, 0, g, 0, bw);
            s.unit = "MB/s".into();
            v.push(s);
        }
    }
    let mut rep = report_of(v);
    let row = |backend, n, t: f64, failed| BootRow {
        backend,
        n,
        mode: StartMode::Cold,
        ready: n - failed,
        failed,
        t_startup_s: Some(t),
        ready_times: None,
        guest_boot: None,
        m_used_mib: None,
        per_guest_cgroup_mib: None,
        per_guest_pss_mib: None,
        checks: Default::default(),
    };
    rep.startup.rows = vec![
        row(BackendKind::Uml, 1, 0.5, 0),
        row(BackendKind::Uml, 10, 4.0, 0),
        row(BackendKind::QemuMicrovm, 1, 1.0, 0),
        row(BackendKind::QemuMicrovm, 10, 3.0, 1),
        row(BackendKind::QemuMicrovm, 20, 9.0, 0),
    ];
    let fit = |slope| LinearFit { slope, intercept: 10.0, residual_std: 0.5, points: 2 };
    rep.startup.memory_fit.insert("uml cold".into(), fit(40.0));
    rep.startup.memory_fit.insert("qemu-microvm cold".into(), fit(130.0));
    rep
}

fn col(t: &Table, name: &str) -> usize {
    t.columns
        .iter()
        .position(|c| c.name.starts_with(name))
        .unwrap_or_else(|| panic!("no column {name}: {:?}", t.columns))
}

#[test]
fn cells_and_ranks_from_the_figures() {
    let t = decide(&report());
    let kinds: Vec<_> = t.rows.iter().map(|r| r.backend).collect();
    assert_eq!(kinds, [BackendKind::Native, BackendKind::Uml, BackendKind::QemuMicrovm]);
    let cpu = col(&t, "cpu overhead");
    // 2.5 / 2 and 3 / 2; the spread is the CI half-width scaled: 1.25 · 1.2706 / 2.5.
    assert_eq!(t.rows[0].cells[cpu].text, "1.00× ±0.64");
    assert_eq!(t.rows[1].cells[cpu].value, Some(1.25));
    assert_eq!(t.rows[1].cells[cpu].text, "1.25× ±0.64");
    assert_eq!((t.rows[1].cells[cpu].rank, t.rows[2].cells[cpu].rank), (Some(1), Some(2)));
    assert_eq!(t.rows[0].cells[cpu].rank, None, "native is the reference, not ranked");
    let ring = col(&t, "ring bandwidth");
    assert_eq!(
        (t.rows[1].cells[ring].rank, t.rows[2].cells[ring].rank),
        (Some(1), Some(2)),
        "higher bandwidth ranks first"
    );
    // Startup compares the largest n both measured (10, not qemu's 20), and a partial
    // fleet says so.
    let cold = col(&t, "T_startup cold");
    assert!(t.columns[cold].name.contains("n = 10"), "{}", t.columns[cold].name);
    assert_eq!(t.rows[2].cells[cold].text, "3.00 s, partial: 9 of 10");
    assert_eq!((t.rows[1].cells[cold].rank, t.rows[2].cells[cold].rank), (Some(2), Some(1)));
    let mem = col(&t, "memory per guest");
    assert_eq!(t.rows[1].cells[mem].rank, Some(1));
    assert_eq!(t.rows[0].cells[mem].text, "–", "no figure: a gap, not a number");
}

#[test]
fn verdicts_come_from_the_ranks() {
    let t = decide(&report());
    assert!(t.rows[0].verdict.starts_with("the reference"));
    // CPU overhead ranks uml first, but 1.25 ± 0.64 and 1.5 ± 0.64 overlap: no verdict.
    assert_eq!(
        t.rows[1].verdict,
        "Best for ring bandwidth, memory per guest; worst for T_startup cold (n = 10)"
    );
    assert_eq!(
        t.rows[2].verdict,
        "Best for T_startup cold (n = 10); worst for ring bandwidth, memory per guest"
    );
    // A backend measured under TCG, and one on an emulated host, say so; the latter is
    // not ranked.
    let md = markdown(&t);
    assert!(md.starts_with("| backend | cpu overhead |"), "{md}");
    assert!(md.contains("| uml | 1.25× ±0.64 (#1; 2 samples) |"), "{md}");
    assert!(md.contains("| native | 1.00× ±0.64 (2 samples) |"), "the reference has its n: {md}");
    assert!(!md.contains("T_startup hot"), "a column without any figure is left out: {md}");
    let h = html(&t).into_string();
    assert!(h.contains("id=\"decision\"") && h.contains("title=\"rank 1\""), "{h}");
    assert!(h.contains("<small>2 samples</small>"), "each cell says its n: {h}");
    let mut rep = report();
    rep.probes.insert(BackendKind::QemuMicrovm, "QEMU 7.2; KVM probe failed: x; using TCG".into());
    rep.probes.insert(BackendKind::Uml, "…".into());
    rep.emulated.insert(BackendKind::Uml);
    let t = decide(&rep);
    assert!(t.rows[2].verdict.ends_with("ran under TCG emulation (no usable KVM here): its figures are not those of a hardware-accelerated VM"), "{}", t.rows[2].verdict);
    assert!(t.rows[1].verdict.starts_with("Measured on an emulated host"));
    assert!(t.rows[1].cells.iter().all(|c| c.rank.is_none()));
}

#[test]
fn disk_overhead_uses_the_adjacent_native_read_and_says_so() {
    // Native read 512 MB in 1 s (T_a); by the time uml read, the disk had slowed to
    // 2 s for native too: uml's 2.2 and 1.8 s are 1.1× and 0.9× the adjacent native
    // reads (mean 1.0), though 2.0× native's T_a. ns carries no pair (older results):
    // it keeps the T_a ratio.
    let disk = |b, rep, secs: f64, native: Option<f64>| {
        let mut s = sample(b, Test::Overhead, Resource::Disk, 1, rep, 0, 0, secs);
        s.value = 512.0 / secs;
        s.unit = "MB/s".into();
        s.paired_native_s = native;
        s.paired_native_mbps = native.map(|n| 512.0 / n);
        s.paired_gap_s = native.map(|_| 0.02);
        s
    };
    let v = vec![
        disk(BackendKind::Native, 0, 1.0, None),
        disk(BackendKind::Native, 1, 1.0, None),
        disk(BackendKind::Uml, 0, 2.2, Some(2.0)),
        disk(BackendKind::Uml, 1, 1.8, Some(2.0)),
        disk(BackendKind::Ns, 0, 1.5, None),
        disk(BackendKind::Ns, 1, 1.5, None),
    ];
    let rep = report_of(v);
    let t = decide(&rep);
    let c = col(&t, "disk overhead");
    let row = |b| t.rows.iter().find(|r| r.backend == b).unwrap();
    let uml = &row(BackendKind::Uml).cells[c];
    assert!((uml.value.unwrap() - 1.0).abs() < 1e-12, "{uml:?}");
    assert!(uml.text.ends_with(" ‡"), "{uml:?}");
    // Ratios 1.1 and 0.9: s = 0.1·√2, so t(0.975, 1) · s / √2 = 12.706 · 0.1 = 1.27.
    assert!(uml.text.starts_with("1.00× ±1.27"), "{uml:?}");
    assert_eq!(row(BackendKind::Ns).cells[c].value, Some(1.5));
    assert!(t.columns[c].what.contains("‡: each read divided by the mean of the native O_DIRECT reads hostd took right before and right after it"));
    // The page shows the paired table and native's drift: its two reads at 512 MB/s and
    // the two paired ones at 256, median 384.
    let d = rep.native_drift.as_ref().unwrap();
    assert_eq!((d.reads, d.min_mbps, d.median_mbps, d.max_mbps), (4, 256.0, 384.0, 512.0));
    let page = crate::report::html_page(&rep, &crate::report::figures(&rep));
    assert!(page.contains("Disk against the adjacent native read"), "{page}");
    assert!(page.contains("moved by 67 % of the median"), "{page}");
    assert!(page.contains("1.01 (0.91–1.11)"), "uml's speed ratios: {page}");
    assert!(!page.contains("more than 10 % faster"), "1.01 is not flagged");
    // Unpaired, uml read at half native's T_a speed (2 s against 1 s).
    assert!(page.contains("<td>1.00 ± 1.27</td><td>0.50</td>"), "{page}");
    // A backend reading 1.25× as fast as the native read beside it is flagged.
    let mut fast = rep.clone();
    fast.paired_disk.get_mut(&BackendKind::Uml).unwrap()[0].speed.median = 1.25;
    let page = crate::report::html_page(&fast, &crate::report::figures(&fast));
    assert!(page.contains("1.25 (0.91–1.11) !") && page.contains("more than 10 % faster"));
}

/// The isolation verdict says where it was measured: n = 2 guests, 1 + 2 copies, and
/// the repetitions behind each copy (3 here), as the other cells state their n.
#[test]
fn isolation_cell_states_its_n_and_repetitions() {
    let mut v = Vec::new();
    for rep in 0..3 {
        v.push(sample(BackendKind::Native, Test::Overhead, Resource::Cpu, 1, rep, 0, 0, 2.0));
        v.push(sample(BackendKind::Uml, Test::Overhead, Resource::Cpu, 1, rep, 0, 0, 2.0));
        // Every copy at 1.5 × alone: three copies sharing the guests' two CPUs alike,
        // per process (per guest would give guest 1 1 × and guest 2's copies 2 ×).
        for (g, i) in [(0, 0), (1, 0), (1, 1)] {
            let mut s = sample(BackendKind::Uml, Test::Isolation, Resource::Cpu, 2, rep, g, i, 3.0);
            s.cpus = Some(2);
            v.push(s);
        }
    }
    let rep = report_of(v);
    let t = decide(&rep);
    let c = col(&t, "CPU isolation");
    let uml = t.rows.iter().find(|r| r.backend == BackendKind::Uml).unwrap();
    let policy = "per process";
    assert_eq!(uml.cells[c].text, format!("{policy} (n = 2: 1 + 2 copies, 3 repetitions)"));
    assert_eq!(uml.cells[c].samples, Some(3));
    assert_eq!(uml.cells[c].rank, None, "a verdict is not ranked");
    assert!(uml.verdict.ends_with(&format!("CPU shared {policy}")), "{}", uml.verdict);
    assert!(t.columns[c].what.contains("n = 2 guests"));
    assert!(markdown(&t).contains("(n = 2: 1 + 2 copies, 3 repetitions) (3 samples) |"));
}

#[test]
fn the_report_opens_with_the_table() {
    let rep = report();
    let figs = crate::report::figures(&rep);
    let page = crate::report::html_page(&rep, &figs);
    let table = page.find("id=\"decision\"").expect("decision table");
    assert!(page.find("<figure").is_none_or(|f| f > table), "a figure before the table");
    assert!(!page[..table].contains("<h2>"), "a section before the table");
}

/// Xen's M_used counts dom0's QEMU disk backends and Xen's RAM: said beside its memory in
/// the decision table, the startup table and the memory figure; in the lab, also that it is
/// the emulated host's memory. Other backends' memory carries no such note.
#[test]
fn xens_memory_says_what_it_counts_beside_every_figure() {
    let mut rep = report();
    let row = |backend, n| BootRow {
        backend,
        n,
        mode: StartMode::Cold,
        ready: n,
        failed: 0,
        t_startup_s: Some(1.0),
        ready_times: None,
        guest_boot: None,
        m_used_mib: Some(140.0 * n as f64),
        per_guest_cgroup_mib: None,
        per_guest_pss_mib: None,
        checks: Default::default(),
    };
    rep.startup.rows.extend([row(BackendKind::Xen, 1), row(BackendKind::Xen, 2)]);
    let fit = LinearFit { slope: 140.0, intercept: 0.0, residual_std: 0.1, points: 2 };
    rep.startup.memory_fit.insert("xen cold".into(), fit);
    rep.emulated.insert(BackendKind::Xen);

    let t = decide(&rep);
    let mem = col(&t, "memory per guest");
    let cell = |b| &t.rows.iter().find(|r| r.backend == b).unwrap().cells[mem].text;
    let xen = cell(BackendKind::Xen);
    assert!(
        xen.starts_with("140.0 MiB (fit of 2 sizes, residual 0.1; xen: M_used is dom0's"),
        "{xen}"
    );
    assert!(xen.contains("QEMU device model") && xen.contains("emulated host"), "{xen}");
    assert_eq!(cell(BackendKind::Uml), "40.0 MiB (fit of 2 sizes, residual 0.5)");

    let figs = crate::report::figures(&rep);
    let html = crate::report::html_page(&rep, &figs);
    // Once beside the startup table (the figure's caption is in the page too).
    let said = "its dom0 and Xen, not this host's memory.</p>";
    assert_eq!(html.matches(said).count(), 1, "{html}");
    let (_, _, cap) = figs.iter().find(|(n, _, _)| n == "fig_memory.svg").unwrap();
    assert!(
        cap.contains(" xen: M_used is dom0's used memory")
            && cap.ends_with("not this host's memory."),
        "{cap}"
    );

    // On a real Xen host the emulated-host part is left out; no other backend has a note.
    let real = crate::report::memory_caveat(BackendKind::Xen, false).unwrap();
    assert!(real.contains("qdisk") && !real.contains("emulated"), "{real}");
    for b in BackendKind::ALL.into_iter().filter(|&b| b != BackendKind::Xen) {
        assert_eq!(crate::report::memory_caveat(b, true), None, "{b}");
    }
}
