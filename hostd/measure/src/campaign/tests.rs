use super::*;

fn parse(t: &str) -> Result<Campaign, String> {
    let c: Campaign = toml::from_str(t).map_err(|e| e.to_string())?;
    c.check().map_err(|e| e.to_string())?;
    Ok(c)
}

#[test]
fn defaults_and_overrides() {
    let c = parse("").unwrap();
    assert_eq!(c.reps, 3);
    let plans = c.plans();
    assert_eq!(plans[0].kind, BackendKind::Native);
    assert_eq!(plans.len(), 7);
    assert_eq!(plans[6].kind, BackendKind::Xen);
    assert_eq!(c.xen, XenSection { lab: true, lab_max_guests: 10 });
    let c =
        parse("backends = [\"uml\"]\n[overrides.uml]\noverhead_sizes = [1, 3]\nring_guests = 4\n")
            .unwrap();
    let p = c.plans();
    assert_eq!(
        p.iter().map(|p| p.kind).collect::<Vec<_>>(),
        [BackendKind::Native, BackendKind::Uml]
    );
    assert_eq!((p[1].overhead_sizes.clone(), p[1].ring_guests), (vec![1, 3], 4));
    assert_eq!(p[0].ring_guests, 10);
}

#[test]
fn shipped_campaign_and_quick_variant_are_valid() {
    let c = Campaign::default_campaign();
    assert_eq!(c.name, "default");
    let q = c.quick();
    q.check().unwrap();
    assert_eq!(
        q.plans().iter().find(|p| p.kind == BackendKind::QemuFull).unwrap().workloads.cpu_rounds,
        2_000_000
    );
    assert_eq!(
        q.plans().iter().find(|p| p.kind == BackendKind::QemuFull).unwrap().overhead_sizes,
        vec![1, 2]
    );
    assert_eq!(
        q.plans().iter().find(|p| p.kind == BackendKind::Xen).unwrap().startup_sizes,
        vec![1],
        "one Xen lab in a quick run"
    );
}

fn host(mem_gib: u64) -> HostFacts {
    HostFacts {
        mem_total_kib: mem_gib << 20,
        llc: Some(fidelity::Llc { level: 3, size_kib: 300 << 10 }),
    }
}

#[test]
fn paper_campaign_is_at_the_papers_sizes_and_fits_the_reference_host() {
    let c: Campaign = toml::from_str(PAPER).unwrap();
    c.check().unwrap();
    // The reference host: 24 GiB (MemTotal 24151 MiB), L3 300 MiB.
    c.check_host(&HostFacts { mem_total_kib: 24_731_400, ..host(0) }).unwrap();
    assert_eq!(c.departures_from_paper(host(24).llc), ["memory overhead and linearity up to n = 15, where the working sets fit in host memory: native, ns, oci, uml, qemu-microvm, qemu-full, xen", "startup up to n = 50 (paper: up to 100): xen"]);
    for p in c.resolved_plans(host(24).llc) {
        assert_eq!(
            (p.overhead_sizes.last(), p.ring_guests, p.workloads.mem_n),
            (Some(&100), 10, 7248),
            "{}",
            p.kind
        );
    }
}

#[test]
fn default_campaign_departures_are_listed() {
    let c = Campaign::default_campaign();
    let d = c.departures_from_paper(host(24).llc);
    assert!(d.contains(&"ring of 4 guests (paper: 10): qemu-full".to_string()), "{d:#?}");
    assert!(
        d.contains(
            &"overhead and linearity up to n = 10 (paper: 1 to 100): native, ns, oci, uml"
                .to_string()
        ),
        "{d:#?}"
    );
    assert!(!d.iter().any(|l| l.contains("cache-resident")), "{d:#?}");
    c.check_host(&HostFacts { mem_total_kib: 24_731_400, ..host(0) }).unwrap();
    let q = c.quick();
    let d = q.departures_from_paper(host(24).llc);
    assert!(
        d.iter().any(|l| l
            .starts_with("memory benchmark (n=128 passes=4): cache-resident: working set 384 KiB")),
        "{d:#?}"
    );
    assert!(d.iter().any(|l| l.starts_with("quick variant")), "{d:#?}");
}

#[test]
fn host_checks_name_what_does_not_fit() {
    let c = parse("backends = [\"uml\"]\n[overhead]\nsizes = [1, 20]\n").unwrap();
    // 20 memory guests of 128 + 1203 MiB on a 24 GiB host: 26620 MiB > 22528 MiB.
    let e = c.check_host(&host(24)).unwrap_err().to_string();
    assert!(
        e.starts_with("field `overhead.memory_sizes`: native's memory fleet (guests of 1331 MiB"),
        "{e}"
    );
    assert!(
        e.contains("20 guests × 1331 MiB = 26620 MiB do not fit in this host's 22528 MiB"),
        "{e}"
    );
    let c = parse("backends = [\"uml\"]\n[overhead]\nsizes = [1, 20]\nmemory_sizes = [1, 10]\n")
        .unwrap();
    c.check_host(&host(24)).unwrap();
    let c = parse("[guest]\nmem_bench_mib = 2048\n").unwrap();
    let e = c.check_host(&host(24)).unwrap_err().to_string();
    assert!(e.starts_with("field `guest.mem_bench_mib`: 2048 MiB cannot hold the memory benchmark on native: 2 copies of a 1203 MiB working set (workloads.mem_n = 7248, \"auto\": 4 × LLC L3 300 MiB) plus 128 MiB"), "{e}");
    // Enough for two copies, but ten guests of 2600 MiB are too many for 24 GiB.
    let e = parse("[guest]\nmem_bench_mib = 2600\n")
        .unwrap()
        .check_host(&host(24))
        .unwrap_err()
        .to_string();
    assert!(e.contains("10 guests × 2600 MiB = 26000 MiB"), "{e}");
    assert!(parse("[guest]\nmem_bench_mib = 2600\n[overhead]\nmemory_sizes = [1, 5]\n")
        .unwrap()
        .check_host(&host(24))
        .is_ok());
    let e = parse("[startup]\nsizes = [1, 100]\n")
        .unwrap()
        .check_host(&host(8))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("field `startup.sizes`: native's startup fleet: 100 guests × 128 MiB"),
        "{e}"
    );
    // Without the memory resource, no working set is needed.
    parse("resources = [\"cpu\"]\n[overhead]\nsizes = [1, 20]\n")
        .unwrap()
        .check_host(&host(24))
        .unwrap();
}

#[test]
fn mem_n_is_a_number_or_auto() {
    assert_eq!(parse("[workloads]\nmem_n = \"auto\"").unwrap().workloads.mem_n, fidelity::AUTO);
    assert_eq!(parse("[workloads]\nmem_n = 64").unwrap().workloads.mem_n, 64);
    assert!(parse("[workloads]\nmem_n = 0").unwrap_err().contains("\"auto\""));
    assert!(parse("[workloads]\nmem_n = \"big\"").unwrap_err().contains("mem_n"));
    let t = toml::to_string(&Campaign::default_campaign()).unwrap();
    assert!(t.contains("mem_n = \"auto\""), "{t}");
    assert_eq!(toml::from_str::<Campaign>(&t).unwrap(), Campaign::default_campaign());
}

#[test]
fn errors_name_the_field() {
    let e = |t: &str| parse(t).unwrap_err();
    assert!(e("colour = 1").contains("colour"));
    assert!(e("backends = [\"vmware\"]").contains("`backends`"));
    assert!(e("reps = 0").contains("`reps`"));
    assert!(e("[startup]\nsizes = [10, 1]").contains("`startup.sizes`"));
    assert!(e("[overhead]\nsizes = [0]").contains("`overhead.sizes`"));
    assert!(e("[ring]\nguests = 1").contains("`ring.guests`"));
    assert!(e("[workloads]\ncpu_rounds = 1").contains("`workloads`"));
    assert!(e("[overrides.bogus]\nring_guests = 3").contains("overrides.bogus"));
    assert!(e("[overrides.uml]\nwhat = 3").contains("what"));
    assert!(e("[guest]\nmem_mib = 4").contains("`guest.mem_mib`"));
    assert!(e("resources = [\"gpu\"]").contains("gpu"));
    assert!(e("[xen]\nlab_max_guests = 0").contains("`xen.lab_max_guests`"));
    assert!(e("[xen]\nlab = \"yes\"").contains("lab"));
    assert!(e("[network]\nns_modes = []").contains("`network.ns_modes`"));
    assert!(e("[network]\nns_modes = [\"shared\", \"shared\"]").contains("`network.ns_modes`"));
    assert!(e("[network]\nns_modes = [\"bridged\"]").contains("bridged"));
}

#[test]
fn absurd_durations_sizes_and_counts_are_refused() {
    let e = |t: &str| parse(t).unwrap_err();
    // Near 2^63 s: `Instant::now() + deadline` would overflow.
    assert!(e("[guest]\nboot_timeout_s = 9223372036854775807").contains("`guest.boot_timeout_s`"));
    assert!(e("[guest]\nbench_timeout_s = 0").contains("`guest.bench_timeout_s`"));
    assert!(e("[guest]\nvcpus = 0").contains("`guest.vcpus`"));
    assert!(e("[startup]\nsettle_s = 9223372036854775807").contains("`startup.settle_s`"));
    assert!(e("[startup]\nsizes = [1, 100000]").contains("`startup.sizes`"));
    // 2^44 MiB is 2^64 bytes: shifted, it would wrap to 0.
    assert!(e("[workloads]\ndisk_mib = 17592186044416").contains("`workloads.disk_mib`"));
    assert!(e("[overrides.uml]\nmem_mib = 0").contains("`overrides.uml.mem_mib`"));
    assert!(e("[ring]\nguests = 100000").contains("`ring.guests`"));
    assert!(parse("[ring]\nguests = 0").is_ok(), "0 turns the ring off");
}

#[test]
fn user_commands_are_workloads_checked_with_the_campaign() {
    let c = parse(
        "[[workloads.commands]]\nname = \"compile\"\nargv = [\"/bin/sh\", \"-c\", \"i=0; while [ $i -lt 9 ]; do i=$((i+1)); done\"]\ntimeout_s = 60\n",
    )
    .unwrap();
    assert_eq!(c.workloads.commands[0].name, "compile");
    // Every backend's plan carries them; the quick variant keeps them as they are.
    assert!(c.plans().iter().all(|p| p.workloads.commands.len() == 1));
    assert_eq!(c.clone().quick().workloads.commands, c.workloads.commands);
    // Stored with the run and read back alike.
    let back: Campaign = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let e = parse("[[workloads.commands]]\nname = \"x\"\nargv = []\n").unwrap_err();
    assert!(e.contains("field `workloads.commands[0].argv`"), "{e}");
    let e = parse("[overrides.ns.workloads]\n[[overrides.ns.workloads.commands]]\nname = \"x\"\nargv = [\"true\"]\ntimeout_s = 0\n").unwrap_err();
    assert!(e.contains("field `overrides.ns.workloads.commands[0].timeout_s`"), "{e}");
}

#[test]
fn a_campaign_may_name_the_system_its_guests_boot() {
    let c = parse("[guest]\nsystem = \"debian-bookworm\"\ninit = \"image\"\n").unwrap();
    assert_eq!(c.guest.system.as_deref(), Some("debian-bookworm"));
    let back: Campaign = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    assert!(parse("[guest]\ninit = \"image\"\n").unwrap_err().contains("field `guest.init`"));
    assert!(parse("[guest]\nsystem = \"../x\"\n").unwrap_err().contains("field `guest.system`"));
    assert!(parse("[guest]\nsystem = \"\"\n").unwrap_err().contains("field `guest.system`"));
    // Without one, the stored campaign says nothing of it.
    assert!(!toml::to_string(&parse("").unwrap()).unwrap().contains("system"));
}
