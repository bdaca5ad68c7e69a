use super::*;
use crate::suite::testing::sample;

/// An emulated host is a typed field of the probe record; results written before it
/// existed said so by a prefix on the description, and still read as emulated.
#[test]
fn emulated_host_from_the_field_and_from_older_results() {
    let old =
        r#"{"record":"backend_probe","backend":"xen","description":"[emulated host] Xen 4.17"}"#;
    let new = Record::BackendProbe {
        backend: BackendKind::Uml,
        description: "UML 6.12".into(),
        emulated: true,
    };
    let plain = r#"{"record":"backend_probe","backend":"ns","description":"namespaces"}"#;
    let records = vec![
        serde_json::from_str(old).unwrap(),
        serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap(),
        serde_json::from_str(plain).unwrap(),
    ];
    let rep =
        build_from(Samples { records, unreadable: 0, implausible: 0, rejected: Vec::new() }, None);
    let want: std::collections::BTreeSet<_> = [BackendKind::Xen, BackendKind::Uml].into();
    assert_eq!(rep.emulated, want);
    assert_eq!(rep.probes[&BackendKind::Xen], "Xen 4.17");
    assert_eq!(rep.probes[&BackendKind::Ns], "namespaces");
}

/// A Xen lab run on its own measures the CPU with its own smaller workload: the CPU
/// figure its curve is on says which, against the campaigns' default; other figures
/// and backends say nothing of it.
#[test]
fn emulated_backends_cpu_workload_is_stated_beside_its_figure() {
    let probe = Record::BackendProbe {
        backend: BackendKind::Xen,
        description: "Xen 4.17".into(),
        emulated: true,
    };
    let mut records = vec![probe];
    for (b, params) in
        [(BackendKind::Xen, "rounds=5000000"), (BackendKind::Native, "rounds=200000000")]
    {
        for g in 0..2 {
            let mut s = sample(b, Test::Linearity, Resource::Cpu, 2, 0, g, 0, 1.0);
            s.params = params.into();
            records.push(Record::Bench(s));
        }
    }
    let rep =
        build_from(Samples { records, unreadable: 0, implausible: 0, rejected: Vec::new() }, None);
    assert_eq!(rep.emulated_cpu.len(), 1);
    let figs = figures(&rep);
    let cap = |f: &str| figs.iter().find(|(n, _, _)| n == f).map(|(_, _, c)| c.clone());
    let lin = cap("fig06_linearity_cpu.svg").expect("the CPU linearity figure");
    assert!(
        lin.ends_with(" xen (emulated host): CPU workload rounds=5000000, not the rounds=200000000 campaigns and `hostd bench` run by default."),
        "{lin}"
    );
    assert!(figs.iter().filter(|(_, _, c)| c.contains("CPU workload")).count() == 1);
    assert_eq!(
        cpu_workload_note("rounds=200000000"),
        "rounds=200000000, the default of campaigns and `hostd bench`"
    );
}

/// Host T_a = 2 s, uml T_av = 2.5 s (both two repetitions), and two uml guests busy
/// together taking 5 s, with `cpus` recorded per sample.
fn samples(cpus: Option<usize>) -> Samples {
    let mut v = vec![
        sample(BackendKind::Native, Test::Overhead, Resource::Cpu, 1, 0, 0, 0, 1.9),
        sample(BackendKind::Native, Test::Overhead, Resource::Cpu, 1, 1, 0, 0, 2.1),
        sample(BackendKind::Uml, Test::Overhead, Resource::Cpu, 1, 0, 0, 0, 2.4),
        sample(BackendKind::Uml, Test::Overhead, Resource::Cpu, 1, 1, 0, 0, 2.6),
    ];
    for rep in 0..2 {
        for g in 0..2 {
            v.push(sample(BackendKind::Uml, Test::Linearity, Resource::Cpu, 2, rep, g, 0, 5.0));
        }
    }
    for s in &mut v {
        s.cpus = cpus;
    }
    Samples {
        records: v.into_iter().map(Record::Bench).collect(),
        unreadable: 0,
        implausible: 0,
        rejected: vec![],
    }
}

fn four_cpu_host() -> Provenance {
    let mut p = Provenance::collect(Default::default());
    p.host.cpus = 4;
    p
}

#[test]
fn references_use_the_guests_cpus_not_the_hosts() {
    // Pinned to one CPU on a 4-CPU host: O_v + T_a·n = 0.5 + 2·2.
    let rep = build_from(samples(Some(1)), Some(four_cpu_host()));
    let p = &rep.linearity["uml/cpu"][0];
    assert!((p.reference.unwrap() - 4.5).abs() < 1e-9, "{p:?}");
    assert!(rep.cpus_assumed.is_empty());
    assert!((rep.overhead["uml/cpu"][0].overhead.unwrap() - 0.5).abs() < 1e-9);
    // Older samples without the record: the provenance's 4 CPUs stand in, and the
    // report says so.
    let rep = build_from(samples(None), Some(four_cpu_host()));
    assert!((rep.linearity["uml/cpu"][0].reference.unwrap() - 2.5).abs() < 1e-9);
    assert_eq!(rep.cpus_assumed, ["uml/cpu"]);
    let figs = figures(&rep);
    assert!(html_page(&rep, &figs).contains("did not record the CPUs their guests had"));
}

#[test]
fn captions_say_what_the_bars_are_and_n() {
    let rep = build_from(samples(Some(2)), Some(four_cpu_host()));
    let figs = figures(&rep);
    let cap = |name: &str| figs.iter().find(|f| f.0 == name).map(|f| f.2.clone()).unwrap();
    assert!(
        cap("fig02_overhead_cpu.svg").contains("95 % confidence interval of the mean")
            && cap("fig02_overhead_cpu.svg").contains("n = 2 repetitions")
    );
    assert!(
        cap("fig06_linearity_cpu.svg").contains("n = 4 samples")
            && cap("fig06_linearity_cpu.svg").contains("the 2 CPU(s) the guests had")
    );
    // The bars are the interval's half-width: 2.5 ± t(0.975, 1)·0.1414/√2 = 2.5 ± 1.2706.
    let Figure::Line(c) = &figs.iter().find(|f| f.0 == "fig02_overhead_cpu.svg").unwrap().1 else {
        panic!("a line chart")
    };
    let err = c.series[0].points[0].err.unwrap();
    assert!((err - 1.270620).abs() < 1e-5, "{err}");
    let h = html_page(&rep, &figs);
    assert!(
        h.contains("<figcaption><b>CPU overhead") && h.contains("95&nbsp;% confidence intervals")
    );
    // Every point's median and interval reach the CSV.
    let csv = String::from_utf8(csv(&rep).unwrap()).unwrap();
    let row: Vec<f64> = csv
        .lines()
        .find(|l| l.starts_with("overhead,uml,cpu,1,"))
        .unwrap()
        .split(',')
        .skip(11)
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        row[0] == 2.5 && (row[1] - 1.229380).abs() < 1e-5 && (row[2] - 3.770620).abs() < 1e-5,
        "{row:?}"
    );
}

/// A user's command shows beside the microbenchmarks: its own table after the overhead
/// one, with the command line, T_a, O_vn and its failed runs' reasons (escaped), and rows
/// of report.csv; a report without commands reads as before.
#[test]
fn user_workloads_are_reported_beside_the_microbenchmarks() {
    use crate::suite::command::CommandSample;
    let run = |b: BackendKind, rep: u32, t: Option<f64>| {
        Record::Command(CommandSample {
            backend: b,
            test: Test::Overhead,
            name: "build".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), "make <all>".into()],
            n: 1,
            rep,
            guest: 0,
            elapsed_s: t,
            host_s: 1.0,
            failure: t.is_none().then(|| "exit status 2; stderr ends: <oops>".into()),
            cpus: Some(2),
            vcpus: None,
            provenance: String::new(),
        })
    };
    let records = vec![
        Record::Bench(sample(BackendKind::Native, Test::Overhead, Resource::Cpu, 1, 0, 0, 0, 1.0)),
        Record::Bench(sample(BackendKind::Ns, Test::Overhead, Resource::Cpu, 1, 0, 0, 0, 1.1)),
        run(BackendKind::Native, 0, Some(2.0)),
        run(BackendKind::Ns, 0, Some(2.5)),
        run(BackendKind::Ns, 1, None),
    ];
    let rep =
        build_from(Samples { records, unreadable: 0, implausible: 0, rejected: Vec::new() }, None);
    let ns = rep.commands.iter().find(|c| c.backend == BackendKind::Ns).unwrap();
    assert_eq!((ns.overhead[0].overhead, ns.runs, ns.failed), (Some(0.5), 2, 1));
    assert_eq!(rep.data_points(), 2 + 3, "two bench samples, three command runs");
    let figs = figures(&rep);
    let names: Vec<&str> = figs.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(names.contains(&"user_build_overhead.svg"), "{names:?}");
    let html = html_page(&rep, &figs);
    let (micro, user) = (html.find("Overhead O_v").unwrap(), html.find("User workloads").unwrap());
    assert!(micro < user, "after the microbenchmarks' overhead");
    assert!(
        html.contains("/bin/sh -c &#39;make &lt;all&gt;&#39;")
            || html.contains("/bin/sh -c 'make &lt;all&gt;'"),
        "{html}"
    );
    assert!(html.contains("exit status 2; stderr ends: &lt;oops&gt;") && !html.contains("<oops>"));
    let csv = String::from_utf8(csv(&rep).unwrap()).unwrap();
    assert!(csv.contains("overhead,ns,command:build,1,value,2.5,"), "{csv}");
    assert!(csv.contains("baseline,native,command:build,1,value,2,"), "{csv}");
    assert!(!csv.contains("baseline,ns,command:build"), "{csv}");
    // Reports written before the field read with no commands.
    let mut old = serde_json::to_value(&rep).unwrap();
    old.as_object_mut().unwrap().remove("commands");
    assert!(serde_json::from_value::<Report>(old).unwrap().commands.is_empty());
}

/// Command records at the edges of what the reader takes in (times of 0 and a week, no
/// CPUs recorded or 0, a fleet at the limit) give no figure that is not a finite number;
/// records outside physical sense never get that far.
#[test]
fn user_workloads_at_the_edges_give_finite_figures() {
    use crate::suite::command::CommandSample;
    let at = |b: BackendKind, test: Test, n: usize, t: f64, cpus: Option<usize>| {
        Record::Command(CommandSample {
            backend: b,
            test,
            name: "w".into(),
            argv: vec!["x".into()],
            n,
            rep: 0,
            guest: 0,
            elapsed_s: Some(t),
            host_s: t,
            failure: None,
            cpus,
            vcpus: None,
            provenance: String::new(),
        })
    };
    let week = crate::samples::MAX_SECONDS;
    let records = vec![
        at(BackendKind::Native, Test::Overhead, 1, 0.0, Some(0)),
        at(BackendKind::Native, Test::Linearity, 25_000, week, None),
        at(BackendKind::Ns, Test::Overhead, 1, week, Some(usize::MAX)),
        at(BackendKind::Ns, Test::Linearity, 1, 0.0, Some(0)),
        at(BackendKind::Ns, Test::Linearity, 25_000, week, Some(1)),
    ];
    assert!(records.iter().all(|r| r.implausible().is_none()));
    let rep =
        build_from(Samples { records, unreadable: 0, implausible: 0, rejected: Vec::new() }, None);
    assert_eq!(rep.commands.len(), 2);
    assert!(rep.non_finite().is_empty(), "{:?}", rep.non_finite());
}

#[test]
fn non_finite_names_each_bad_figure_in_section_order() {
    let empty =
        Samples { records: Vec::new(), unreadable: 0, implausible: 0, rejected: Vec::new() };
    let mut rep = build_from(empty, None);
    assert!(rep.non_finite().is_empty(), "{:?}", rep.non_finite());
    let stat = |mean: f64, ci95| Stat {
        mean,
        std_dev: 0.0,
        min: 1.0,
        max: 1.0,
        samples: 2,
        unit: "s".into(),
        median: 1.0,
        ci95,
    };
    rep.overhead.insert(
        "ns/cpu".into(),
        vec![OverheadPoint { n: 4, value: stat(1.0, None), overhead: Some(f64::INFINITY) }],
    );
    rep.baseline.insert(Resource::Cpu, stat(f64::NAN, Some([1.0, f64::NEG_INFINITY])));
    assert_eq!(
        rep.non_finite(),
        [
            "baseline cpu mean = NaN",
            "baseline cpu ci95 high = -inf",
            "overhead ns/cpu n=4 O_v = inf",
        ]
    );
}
