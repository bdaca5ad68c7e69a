use super::*;
use crate::backend::BackendKind;

fn load_file(text: &str) -> Result<FleetFile, String> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fleet.toml");
    std::fs::write(&p, text).unwrap();
    FleetFile::load(&p)
}

fn load(text: &str) -> Result<(FleetFile, BackendKind), String> {
    load_file(text).map(|f| {
        let k = f.resolved[0].kind;
        (f, k)
    })
}

#[test]
fn fleet_files_are_validated_with_field_names() {
    let (f, k) = load("name = \"lab\"\nbackend = \"native\"\nguests = 3\n").unwrap();
    assert_eq!((f.guests, f.mem_mib, f.network, k), (Some(3), 128, true, BackendKind::Native));
    assert!(load("name = \"lab\"\nbackend = \"native\"\nguests = 3\ncolour = 1\n")
        .unwrap_err()
        .contains("colour"));
    assert!(load("name = \"lab\"\nbackend = \"vmware\"\nguests = 3\n")
        .unwrap_err()
        .contains("`backend`"));
    assert!(load("name = \"lab\"\nbackend = \"native\"\nguests = 0\n")
        .unwrap_err()
        .contains("`guests`"));
    assert!(load("name = \"Lab!\"\nbackend = \"native\"\nguests = 1\n")
        .unwrap_err()
        .contains("`name`"));
    assert!(load("name = \"lab\"\nbackend = \"native\"\n").unwrap_err().contains("guests"));
    assert!(load("name = \"lab\"\nbackend = \"native\"\nguests = 1\n[limits]\ncpus = -1.0\n")
        .unwrap_err()
        .contains("limits.cpus"));
}

#[test]
fn absurd_limits_and_timeouts_are_refused() {
    let base = "name = \"lab\"\nbackend = \"native\"\nguests = 1\n";
    for (extra, field) in [
        // 2^44 MiB: shifted to bytes it wraps to a 0-byte limit.
        ("[limits]\nmemory_mib = 17592186044416\n", "`limits.memory_mib`"),
        ("[limits]\nmemory_mib = 0\n", "`limits.memory_mib`"),
        ("[limits]\npids = 0\n", "`limits.pids`"),
        ("[limits]\ncpus = nan\n", "`limits.cpus`"),
        // Near 2^63 s: `Instant::now() + deadline` would overflow.
        ("boot_timeout_s = 9223372036854775807\n", "`boot_timeout_s`"),
        ("boot_timeout_s = 0\n", "`boot_timeout_s`"),
        ("mem_mib = 0\n", "`mem_mib`"),
        ("vcpus = 0\n", "`vcpus`"),
        ("parallelism = 100000\n", "`parallelism`"),
    ] {
        let e = load(&format!("{base}{extra}")).unwrap_err();
        assert!(e.contains(field) && e.contains("fleet.toml"), "{extra}: {e}");
    }
    let (f, _) = load(&format!("{base}[limits]\nmemory_mib = 48\npids = 64\n")).unwrap();
    let cfg = f.fleet_config(&f.resolved[0]);
    assert_eq!((cfg.limits.memory_bytes, cfg.limits.pids), (Some(48 << 20), Some(64)));
}

const MIXED: &str = "name = \"mix\"\nmem_mib = 96\n\
    [[group]]\nname = \"c\"\nbackend = \"ns\"\nguests = 3\n\
    [[group]]\nname = \"u\"\nbackend = \"uml\"\nguests = 1\nmem_mib = 64\n\
    [[group]]\nname = \"q\"\nbackend = \"qemu-microvm\"\nguests = 2\nvcpus = 2\n";

#[test]
fn groups_are_numbered_across_the_fleet() {
    let f = load_file(MIXED).unwrap();
    let got: Vec<_> =
        f.resolved.iter().map(|g| (g.name.as_str(), g.kind, g.first, g.guests)).collect();
    assert_eq!(
        got,
        [
            ("c", BackendKind::Ns, 0, 3),
            ("u", BackendKind::Uml, 3, 1),
            ("q", BackendKind::QemuMicrovm, 4, 2)
        ]
    );
    assert_eq!(f.total_guests(), 6);
    assert_eq!((f.resolved[0].mem_mib, f.resolved[1].mem_mib), (96, 64));
    assert_eq!((f.resolved[1].vcpus, f.resolved[2].vcpus), (1, 2));
    let cfg = f.fleet_config(&f.resolved[2]);
    assert_eq!((cfg.n, cfg.vcpus, cfg.mem_mib), (2, 2, 96));
    // The single-backend form is one group named after its backend.
    let (one, _) = load("name = \"lab\"\nbackend = \"ns\"\nguests = 2\n").unwrap();
    assert_eq!((one.resolved[0].name.as_str(), one.resolved[0].first), ("ns", 0));
}

#[test]
fn bad_groups_are_refused_naming_the_group() {
    let g = |name: &str, body: &str| format!("[[group]]\nname = \"{name}\"\n{body}");
    let ok = g("a", "backend = \"ns\"\nguests = 1\n");
    for (extra, want) in [
        (g("b", "backend = \"vmware\"\nguests = 1\n"), "group \"b\": field `backend`"),
        (g("b", "backend = \"ns\"\nguests = 0\n"), "group \"b\": field `guests`"),
        (g("a", "backend = \"uml\"\nguests = 1\n"), "group \"a\": a second group"),
        (g("b", "backend = \"ns\"\nguests = 25000\n"), "25001 guests together"),
        (g("b", "backend = \"ns\"\nguests = 1\nmem_mib = 1\n"), "group \"b\": field `mem_mib`"),
        (g("B!", "backend = \"ns\"\nguests = 1\n"), "field `name`"),
        (
            g("b", "backend = \"native\"\nguests = 1\nsystem = \"x\"\n"),
            "group \"b\": field `system`",
        ),
        (g("b", "backend = \"ns\"\nguests = 1\ninit = \"image\"\n"), "group \"b\": field `init`"),
        (g("b", "backend = \"ns\"\nguests = 1\ncolour = 1\n"), "colour"),
    ] {
        let e = load_file(&format!("name = \"mix\"\n{ok}{extra}")).unwrap_err();
        assert!(e.contains(want) && e.contains("fleet.toml"), "{extra}: {e}");
    }
    let e = load_file(&format!("name = \"mix\"\nbackend = \"ns\"\n{ok}")).unwrap_err();
    assert!(e.contains("not at the top"), "{e}");
    let e = load_file("name = \"mix\"\n").unwrap_err();
    assert!(e.contains("`backend`"), "{e}");
    // A [net] is checked against all groups' guests together.
    let net = "[net]\nlink = { delay_ms = 1.0 }\n";
    assert!(load_file(&format!("name = \"mix\"\n{ok}{net}")).is_ok());
}

#[test]
fn fleet_commands_are_checked() {
    let base = "name = \"lab\"\nbackend = \"ns\"\nguests = 1\n";
    let (f, _) = load(&format!("{base}commands = [[\"/bin/true\"], [\"cat\", \"/x\"]]\n")).unwrap();
    assert_eq!(f.commands.len(), 2);
    assert_eq!(f.command_request(&f.commands[1]).timeout_ms, 300_000);
    let e = load(&format!("{base}commands = [[]]\n")).unwrap_err();
    assert!(e.contains("`commands[0]`"), "{e}");
    let e = load(&format!("{base}command_timeout_s = 0\n")).unwrap_err();
    assert!(e.contains("`command_timeout_s`"), "{e}");
}
