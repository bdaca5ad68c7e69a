//! System images as guests' root (`--system`): VMs boot from a root block device (virtio-blk
//! on qemu-microvm, AHCI on qemu-full, ubd on UML, xvdb on Xen: on a dom0, else in the Xen
//! lab) through a per-guest overlay, containers
//! (ns, oci) run over a per-guest overlayfs of the same tree; with `init = "image"` the
//! image's own init is PID 1 and the agent its service. The image is a small busybox tree
//! (this host's static /bin/busybox, an os-release, an inittab) imported with imagegen's
//! `rootfs-import` into the store hostd uses (`VIRTBENCH_IMAGES`), as recipe
//! `hostd-test-system` (and `hostd-test-noinit`, the same without an init): it builds in
//! seconds, offline. Needs root, the store's kernels and initramfs (`imagegen build`).

mod support {
    pub mod cli;
    pub mod fault;
    pub mod skip;
    pub mod system;
    pub mod vm;
}

use support::cli::{fleet_file, hostd};

use std::path::Path;
use std::time::Duration;

use hostd::backend::rootdisk::InitMode;
use hostd::backend::{BackendKind, BackendOptions, Images};
use hostd::guest::boot;
use support::system::{BUSYBOX, OS};
use support::vm;
use vb_protocol::msg::{Command, ExecRequest, ReplyBody, Role};

const SYSTEM: &str = "hostd-test-system";
const NOINIT: &str = "hostd-test-noinit";

fn skip(kind: Option<BackendKind>, why: &str) {
    support::skip::skip(kind.map(|k| k.name()), why);
}

/// Builds the two test systems into hostd's store, once per test process.
fn build_systems() -> Result<(), String> {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let scratch = support::system::scratch("vb-rootdisk-test");
            let mut recipes = Vec::new();
            for (name, init) in [(SYSTEM, true), (NOINIT, false)] {
                let tree = scratch.path().join(name);
                support::system::make_tree(&tree, init)
                    .map_err(|e| format!("making {}: {e}", tree.display()))?;
                recipes.push((
                    name,
                    format!(
                        "kind = \"rootfs-import\"\npath = \"{}\"\nheadroom_mib = 8\n",
                        tree.display()
                    ),
                ));
            }
            support::system::build(scratch.path(), &recipes)
                .map_err(|e| format!("building the test systems: {e}"))
        })
        .clone()
}

/// Whether this host can run these tests; the images with `system` added, or why not.
fn images(kind: BackendKind, system: &str, init: InitMode) -> Option<Images> {
    if !vm::is_root() {
        skip(Some(kind), "system image tests need root");
        return None;
    }
    if let Some(why) = support::system::unusable() {
        skip(Some(kind), &why);
        return None;
    }
    if let Err(e) = build_systems() {
        panic!("{e}");
    }
    let mut images = hostd::images::resolve(None).unwrap_or_else(|e| panic!("{e:#}"));
    hostd::images::add_system(&mut images, system, init).unwrap_or_else(|e| panic!("{e:#}"));
    Some(images)
}

fn exec(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        cwd: None,
        timeout_ms: 30_000,
        output_max: 4096,
    }
}

fn tcg() -> BackendOptions {
    BackendOptions { accel: Some("tcg".into()), ..Default::default() }
}

/// Boots two guests of `kind` over the test system with `init`; checks each booted the
/// image (its os-release, its root), answers, wrote only to its own layer, and powers off.
async fn two_guests(kind: BackendKind, init: InitMode, tag: &str) {
    let Some(images) = images(kind, SYSTEM, init) else { return };
    let _heavy = vm::HEAVY.lock().await;
    let sys = images.system.clone().unwrap();
    let shared_sha = imagegen::hash::sha256_file(&sys.ext4).unwrap().0;
    let backend = vm::backend(kind, &images, &tcg());
    let dir = tempfile::tempdir().unwrap();
    let run = vm::run_id(tag);
    let _guard = vm::RunGuard { run: run.clone(), net: None };
    let specs: Vec<_> = (0..2).map(|i| vm::spec(&run, i, dir.path(), None, None)).collect();
    let results = futures::future::join_all(
        specs.into_iter().map(|s| boot(&backend, s, Duration::from_secs(240))),
    )
    .await;
    let guests: Vec<_> =
        results.into_iter().map(|r| r.unwrap_or_else(|e| panic!("{kind}: {e}"))).collect();
    for g in &guests {
        let root = g.hello.root.as_ref().unwrap_or_else(|| panic!("{kind}: no root in the hello"));
        println!("{kind} {}: {root:?}, ready in {:.2} s", g.spec.name, g.startup.as_secs_f64());
        assert_eq!(root.os.as_deref(), Some(OS), "{kind}: the guest's root is the image");
        match init {
            InitMode::Agent => {
                assert_eq!(root.init, "agent");
                assert_eq!(g.hello.role, Role::Init, "{kind}: the agent is PID 1");
            }
            InitMode::Image => {
                assert_eq!(root.init, "/bin/busybox", "{kind}: the image's init is PID 1");
                assert_eq!(g.hello.role, Role::Process, "{kind}: the agent is a service");
            }
        }
        if kind.own_kernel() {
            assert!(root.device.starts_with("/dev/"), "{kind}: {}", root.device);
        } else {
            assert_eq!(root.device, "tree");
        }
        // Each guest writes to a layer of its own in its work directory.
        let own = match kind {
            BackendKind::Uml => "root.cow",
            BackendKind::QemuMicrovm | BackendKind::QemuFull | BackendKind::Xen => "root.qcow2",
            _ => "upper/.virtbench/guest-agent",
        };
        assert!(g.spec.workdir.join(own).exists(), "{kind}: no {own} in the guest's work dir");
        assert!(matches!(
            g.conn.request(Command::Ping, Duration::from_secs(30)).await.unwrap(),
            ReplyBody::Pong { .. }
        ));
        // A user's program runs in the image: its own os-release, its exit status.
        let req = exec(&["/bin/busybox", "cat", "/etc/os-release"]);
        match g.conn.request(Command::Exec(req.clone()), Duration::from_secs(60)).await.unwrap() {
            ReplyBody::Exited(r) => {
                r.check(&req).unwrap();
                assert_eq!(r.status, Some(0), "{kind}: {r:?}");
                assert!(r.stdout.contains(OS), "{kind}: {r:?}");
            }
            other => panic!("{kind}: {other:?}"),
        }
        // A missing program is the guest's clear error; the guest goes on answering.
        let e = g.conn.request(Command::Exec(exec(&["/no/such/program"])), Duration::from_secs(60));
        let e = e.await.unwrap_err().to_string();
        assert!(e.contains("/no/such/program"), "{kind}: {e}");
        assert!(matches!(
            g.conn.request(Command::Ping, Duration::from_secs(30)).await.unwrap(),
            ReplyBody::Pong { .. }
        ));
    }
    for g in guests {
        let e = g.shutdown(&backend, Duration::from_secs(30)).await;
        println!("{kind}: exit {e:?}");
    }
    // The shared image and tree are as built: the guests' writes (a VM's mount alone
    // updates its superblock) went to their own layers.
    assert_eq!(imagegen::hash::sha256_file(&sys.ext4).unwrap().0, shared_sha);
    assert!(!sys.tree.join(".virtbench").exists(), "a container wrote into the shared tree");
}

/// One test per backend and init mode, each [`two_guests`] with its own run tag (separate
/// tests: each can be run, and is reported, alone).
macro_rules! two_guests_tests {
    ($($name:ident: $kind:ident, $init:ident, $tag:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            two_guests(BackendKind::$kind, InitMode::$init, $tag).await;
        }
    )*};
}

two_guests_tests! {
    uml_boots_the_system_image: Uml, Agent, "rdu";
    qemu_microvm_boots_the_system_image: QemuMicrovm, Agent, "rdm";
    qemu_full_boots_the_system_image: QemuFull, Agent, "rdf";
    ns_runs_over_the_system_tree: Ns, Agent, "rdn";
    oci_runs_over_the_system_tree: Oci, Agent, "rdo";
    uml_runs_the_image_init: Uml, Image, "rdiu";
    qemu_microvm_runs_the_image_init: QemuMicrovm, Image, "rdim";
}

/// On a Xen dom0, domUs boot the test system from their own qcow2 overlays (xvdb, served by
/// dom0's qdisk QEMU). Elsewhere the same in the Xen lab (Xen under QEMU): the image reaches
/// its dom0 as a read-only virtio disk, checked against the manifest's sha256, and two domUs
/// boot it from overlays in dom0's tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xen_boots_the_system_image() {
    if hostd::backend::xen::check_dom0(Path::new("/")).is_ok() {
        return two_guests(BackendKind::Xen, InitMode::Agent, "rdx").await;
    }
    let Some(images) = images(BackendKind::Xen, SYSTEM, InitMode::Agent) else { return };
    let _heavy = vm::HEAVY.lock().await;
    let sys = images.system.clone().unwrap();
    let shared_sha = imagegen::hash::sha256_file(&sys.ext4).unwrap().0;
    let results = tempfile::tempdir().unwrap();
    let args = hostd::xenlab::LabArgs {
        guests: 2,
        mem_mib: 128,
        vcpus: 1,
        cpu_rounds: 1_000_000,
        host_mib: None,
        timeout: 600,
        qemu: "qemu-system-x86_64".into(),
        accel: None,
        results: results.path().to_path_buf(),
        system: Some(SYSTEM.into()),
        init: InitMode::Agent,
        in_dom0: None,
    };
    let mut say = |l: String| println!("{l}");
    let o = hostd::xenlab::run(&args, &mut say).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (r, b) = (&o.report, &o.report.boot);
    let m_used = b.memory.as_ref().map(|m| m.m_used_kib as f64 / 1024.0);
    println!("lab, system image: T_startup(2) {:?} s, M_used(2) {m_used:?} MiB", b.t_startup());
    assert!(b.failures.is_empty(), "{:?}", b.failures);
    assert_eq!(b.startups.len(), 2, "both domUs ready");
    // dom0 read the image off its disk, and it is the manifest's.
    let disk = r.system_disk.as_ref().expect("dom0 reports the system disk");
    assert!(disk.device.starts_with("/dev/vd"), "{disk:?}");
    assert_eq!(disk.sha256, shared_sha);
    // Each domU runs on the image's root: its os-release, found on a Xen block device.
    assert_eq!(r.roots.len(), 2, "{:?}", r.roots);
    for g in &r.roots {
        let root = g.root.as_ref().unwrap_or_else(|| panic!("{}: no root in the hello", g.guest));
        assert_eq!(root.os.as_deref(), Some(OS), "{}: the guest's root is the image", g.guest);
        assert!(root.device.starts_with("/dev/xvd"), "{}: {}", g.guest, root.device);
        assert_eq!(root.init, "agent");
    }
    assert_eq!((b.teardown_clean, b.teardown_killed), (2, 0));
    assert!(r.leftover_domains.is_empty(), "{:?}", r.leftover_domains);
    // The results name the image they are of, like every backend's.
    let prov: hostd::provenance::Provenance =
        serde_json::from_slice(&std::fs::read(o.dir.join("provenance.json")).unwrap()).unwrap();
    let key = format!("system {SYSTEM} (rootfs.ext4)");
    assert_eq!(prov.artifacts.get(&key), Some(&shared_sha), "{:?}", prov.artifacts);
    // The lab machine had the image read-only: it is as built.
    assert_eq!(imagegen::hash::sha256_file(&sys.ext4).unwrap().0, shared_sha);
}

/// Bad choices are refused before any guest starts, each naming the problem.
#[test]
fn bad_systems_are_clear_errors() {
    if images(BackendKind::Ns, SYSTEM, InitMode::Agent).is_none() {
        return;
    }
    let mut images = hostd::images::resolve(None).unwrap();
    let e = hostd::images::add_system(&mut images, NOINIT, InitMode::Image).unwrap_err();
    assert!(format!("{e:#}").contains("no usable /sbin/init"), "{e:#}");
    // The same image with the agent as PID 1 is fine.
    hostd::images::add_system(&mut images, NOINIT, InitMode::Agent).unwrap();
    let e = hostd::images::add_system(&mut images, "no-such-system", InitMode::Agent).unwrap_err();
    assert!(format!("{e:#}").contains("imagegen build no-such-system"), "{e:#}");
    let e = hostd::images::add_system(&mut images, "initramfs", InitMode::Agent).unwrap_err();
    assert!(format!("{e:#}").contains("not a root file system"), "{e:#}");
}

/// `hostd up` with a fleet file naming the system, then `hostd exec --all`-style (no
/// `--guest`) and `--guest`, a failing program, and `hostd down`, through the binary.
#[test]
fn hostd_exec_in_a_fleet_kept_up() {
    if images(BackendKind::Ns, SYSTEM, InitMode::Agent).is_none() {
        return;
    }
    let f = fleet_file("rdx", &format!("backend = \"ns\"\nguests = 3\nsystem = \"{SYSTEM}\"\n"));
    let name = f.name.as_str();
    let out = hostd().arg("up").arg(&f.path).output().unwrap();
    assert!(out.status.success(), "up: {}", String::from_utf8_lossy(&out.stderr));
    let run = |args: &[&str]| support::cli::stdout_of(hostd().args(args));
    let (ok, text) = run(&["exec", name, "--", "/bin/busybox", "cat", "/etc/os-release"]);
    let answered = text.matches(OS).count();
    let (ok1, one) = run(&["exec", name, "--guest", "g1", "--", "/bin/busybox", "hostname"]);
    let (bad, missing) = run(&["exec", name, "--", "/no/such/program"]);
    let (still, again) = run(&["exec", name, "--", "/bin/busybox", "true"]);
    let down = hostd().args(["down", name]).output().unwrap();
    assert!(ok, "{text}");
    assert_eq!(answered, 3, "every guest answers from the image: {text}");
    assert!(ok1 && one.contains("== g1: exit 0") && !one.contains("g0"), "{one}");
    assert!(!bad && missing.matches("/no/such/program").count() == 3, "{missing}");
    assert!(
        still && again.matches("exit 0").count() == 3,
        "guests go on after a failed exec: {again}"
    );
    assert!(down.status.success(), "down: {}", String::from_utf8_lossy(&down.stderr));
}

/// A mixed fleet through the binary: 5 ns + 2 uml + 1 qemu-microvm (TCG) guests (the
/// issue's heterogeneous fleet), all booting the test system, on one fleet network and
/// numbered g0..g7 across the groups.
/// Every guest pings every other guest's address (busybox `ping` in the image) through
/// `hostd exec`, the file's command runs in every guest, and `hostd down` removes it all.
#[test]
fn mixed_fleet_every_guest_reaches_every_other() {
    if images(BackendKind::Ns, SYSTEM, InitMode::Agent).is_none() {
        return;
    }
    for kind in [BackendKind::Uml, BackendKind::QemuMicrovm] {
        if let Err(e) = vm::images(kind, Path::new("/")) {
            skip(Some(kind), &format!("a mixed fleet needs {kind}'s images: {e}"));
            return;
        }
    }
    let f = fleet_file(
        "mix",
        &format!(
            "system = \"{SYSTEM}\"\nmem_mib = 128\n\
             commands = [[\"/bin/busybox\", \"cat\", \"/etc/os-release\"]]\n\
             [[group]]\nname = \"cts\"\nbackend = \"ns\"\nguests = 5\n\
             [[group]]\nname = \"uml\"\nbackend = \"uml\"\nguests = 2\n\
             [[group]]\nname = \"vm\"\nbackend = \"qemu-microvm\"\nguests = 1\n"
        ),
    );
    let name = f.name.as_str();
    let hostd = support::cli::hostd_tcg;
    let out = hostd().arg("up").arg(&f.path).output().unwrap();
    let up = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "up: {up}{}", String::from_utf8_lossy(&out.stderr));
    let run = |args: &[&str]| support::cli::stdout_of(hostd().args(args));
    let addrs: Vec<String> =
        (0..8).map(|i| hostd::netlab::FleetNet::guest_addr(i).unwrap().to_string()).collect();
    let script = format!(
        "for a in {}; do /bin/busybox ping -c 1 -W 10 $a >/dev/null || {{ echo unreachable $a; exit 1; }}; done; echo reached all",
        addrs.join(" ")
    );
    let (pinged, text) =
        run(&["exec", name, "--timeout", "120", "--", BUSYBOX, "sh", "-c", &script]);
    let (_, status) = run(&["status", name]);
    let down = hostd().args(["down", name]).output().unwrap();
    let (_, after) = run(&["status"]);
    // The file's command ran in every guest, and the status names each guest's group.
    assert_eq!(up.matches(OS).count(), 8, "{up}");
    for (g, group, backend) in [
        ("g0", "cts", "ns"),
        ("g4", "cts", "ns"),
        ("g5", "uml", "uml"),
        ("g6", "uml", "uml"),
        ("g7", "vm", "qemu-microvm"),
    ] {
        assert!(
            status.lines().any(|l| l.starts_with(g) && l.contains(group) && l.contains(backend)),
            "{g} in group {group}: {status}"
        );
    }
    assert!(
        pinged && text.matches("reached all").count() == 8,
        "every guest reaches every other: {text}"
    );
    assert!(down.status.success(), "down: {}", String::from_utf8_lossy(&down.stderr));
    assert!(!after.contains(name), "the fleet is gone: {after}");
    let netns = status
        .split("ip netns exec ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("status names the fleet's namespace: {status}"));
    assert!(!Path::new("/run/netns").join(netns).exists(), "{netns} removed at down");
}

/// A fleet file's command that fails in its guests: `hostd up` exits 3 naming each guest
/// and the command, prints the others' results, and the fleet stays up for `hostd down`.
#[test]
fn a_failing_fleet_command_names_the_guests() {
    if images(BackendKind::Ns, SYSTEM, InitMode::Agent).is_none() {
        return;
    }
    let f = fleet_file(
        "rdc",
        &format!(
            "backend = \"ns\"\nguests = 2\nsystem = \"{SYSTEM}\"\n\
             commands = [[\"/bin/busybox\", \"hostname\"], [\"/bin/busybox\", \"cat\", \"/no/such/file\"]]\n"
        ),
    );
    let name = f.name.as_str();
    let out = hostd().arg("up").arg(&f.path).output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let down = hostd().args(["down", name]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("command `/bin/busybox hostname`"), "{stdout}");
    assert!(stdout.matches("exit 0").count() == 2 && stdout.contains("/no/such/file"), "{stdout}");
    for g in ["g0", "g1"] {
        assert!(
            stderr.contains(&format!("{g}: `/bin/busybox cat /no/such/file` exit 1")),
            "{stderr}"
        );
    }
    assert!(
        down.status.success(),
        "the fleet stayed up: {}",
        String::from_utf8_lossy(&down.stderr)
    );
}

/// `hostd cp` and the channel through the binary, on a fleet of one ns, one uml and one
/// qemu-microvm (TCG) guest booting the test system (g0, g1, g2):
/// - an exec argument of 60,000 bytes reaches every guest whole (a UML console channel
///   once lost any request over ~4 KiB: `recipes/patches/uml-line-unthrottle.patch`);
/// - a text file copied into the UML guest and read back with `cat`; a 6,000-byte file
///   (over the console's 4 KiB buffer) and a 700,000-byte one (three chunks) copied into
///   every guest and out again, byte for byte; into a guest directory (`g0:/tmp/`) the file
///   keeps its name;
/// - bad input is a clear error naming the problem: a missing host file, one over 64 MiB, a
///   guest path that is a directory or a symlink (either way), a missing guest file or
///   directory;
/// - the daemon serves requests off its loop: while one guest runs a long program, status
///   and another guest's exec answer; a guest that stops answering is reported as such.
#[test]
fn hostd_cp_and_large_requests_on_ns_uml_and_qemu() {
    if images(BackendKind::Ns, SYSTEM, InitMode::Agent).is_none() {
        return;
    }
    for kind in [BackendKind::Uml, BackendKind::QemuMicrovm] {
        if let Err(e) = vm::images(kind, Path::new("/")) {
            skip(Some(kind), &format!("hostd cp's test needs {kind}'s images: {e}"));
            return;
        }
    }
    let _serial = support::cli::serial();
    let f = fleet_file(
        "rdp",
        &format!(
            "system = \"{SYSTEM}\"\n\
             [[group]]\nname = \"c\"\nbackend = \"ns\"\nguests = 1\n\
             [[group]]\nname = \"u\"\nbackend = \"uml\"\nguests = 1\n\
             [[group]]\nname = \"vm\"\nbackend = \"qemu-microvm\"\nguests = 1\n"
        ),
    );
    let (name, dir) = (f.name.as_str(), &f.dir);
    let hostd = support::cli::hostd_tcg;
    let out = hostd().arg("up").arg(&f.path).output().unwrap();
    assert!(out.status.success(), "up: {}", String::from_utf8_lossy(&out.stderr));
    let run = |args: &[&str]| {
        let o = hostd().args(args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cp_checks(name, dir.path(), &run, &hostd)
    }));
    let down = hostd().args(["down", name]).output().unwrap();
    if let Err(p) = checks {
        std::panic::resume_unwind(p);
    }
    assert!(down.status.success(), "down: {}", String::from_utf8_lossy(&down.stderr));
}

/// Runs hostd with arguments: its exit code and everything it printed.
type Run<'a> = &'a dyn Fn(&[&str]) -> (Option<i32>, String);

fn cp_checks(name: &str, dir: &Path, run: Run<'_>, hostd: &dyn Fn() -> std::process::Command) {
    let long = "x".repeat(60_000);
    let (c_long, long_out) = run(&[
        "exec",
        name,
        "--",
        BUSYBOX,
        "sh",
        "-c",
        "printf %s \"$1\" | /bin/busybox wc -c",
        "sh",
        &long,
    ]);
    assert!(c_long == Some(0) && long_out.matches("60000").count() == 3, "{long_out}");

    let text = dir.join("hello.txt");
    std::fs::write(&text, "hello from the host\n").unwrap();
    let t = text.to_str().unwrap();
    let (c_in, in_text) = run(&["cp", name, t, "g1:/tmp/hello.txt"]);
    assert_eq!(c_in, Some(0), "{in_text}");
    let (c_cat, cat) =
        run(&["exec", name, "--guest", "g1", "--", BUSYBOX, "cat", "/tmp/hello.txt"]);
    assert!(c_cat == Some(0) && cat.contains("hello from the host"), "{cat}");
    let (c_dir, into_dir) = run(&["cp", name, t, "g0:/tmp/"]);
    assert!(c_dir == Some(0) && into_dir.contains("/tmp/hello.txt"), "{into_dir}");

    for size in [6_000u64, 700_000] {
        let src = dir.join(format!("f{size}.bin"));
        let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let gpath = format!(":/tmp/f{size}.bin");
        let (c_all, all) = run(&["cp", name, "--all", src.to_str().unwrap(), &gpath]);
        assert!(c_all == Some(0) && all.matches(&format!("{size} bytes")).count() == 3, "{all}");
        let outdir = dir.join(format!("out{size}"));
        std::fs::create_dir(&outdir).unwrap();
        let (c_out, outs) = run(&["cp", name, "--all", &gpath, outdir.to_str().unwrap()]);
        assert_eq!(c_out, Some(0), "{outs}");
        for g in ["g0", "g1", "g2"] {
            let got = std::fs::read(outdir.join(g).join(format!("f{size}.bin"))).unwrap();
            assert!(got == data, "{g}'s copy of {size} bytes differs ({} bytes)", got.len());
        }
    }
    let one = dir.join("one.txt");
    let (c_one, one_out) = run(&["cp", name, "g2:/etc/os-release", one.to_str().unwrap()]);
    assert!(c_one == Some(0) && std::fs::read_to_string(&one).unwrap().contains(OS), "{one_out}");

    let d = dir.to_str().unwrap();
    let missing_host = dir.join("nope.txt");
    let huge = dir.join("huge.bin");
    std::fs::File::create(&huge).unwrap().set_len(64 * 1024 * 1024 + 1).unwrap();
    let bad: [(&[&str], Option<i32>, &[&str]); 8] = [
        (
            &["cp", name, missing_host.to_str().unwrap(), "g0:/tmp/x"],
            Some(1),
            &["nope.txt", "No such file"],
        ),
        (
            &["cp", name, huge.to_str().unwrap(), "g1:/tmp/x"],
            Some(1),
            &["67108865 bytes", "64 MiB"],
        ),
        (&["cp", name, t, "g1:/tmp"], Some(3), &["/tmp", "is a directory"]),
        (&["cp", name, "g2:/tmp", d], Some(3), &["/tmp", "not a regular file"]),
        (&["cp", name, "g1:/sbin/init", d], Some(3), &["/sbin/init", "symbolic link"]),
        (&["cp", name, t, "g2:/sbin/init"], Some(3), &["/sbin/init", "symbolic link"]),
        (
            &["cp", name, "--guest", "g1", ":/no/such/file", d],
            Some(3),
            &["/no/such/file", "No such file"],
        ),
        (&["cp", name, t, "g2:/no/such/dir/f"], Some(3), &["no directory /no/such/dir"]),
    ];
    for (args, code, says) in bad {
        let (c, out) = run(args);
        assert!(c == code && says.iter().all(|s| out.contains(s)), "{args:?}: {c:?} {out}");
    }

    // One guest busy for a while: status and another guest's exec are answered meanwhile.
    let mut busy = hostd()
        .args(["exec", name, "--guest", "g1", "--", BUSYBOX, "sleep", "30"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (c_status, status) = run(&["status", name]);
    let (c_other, other) = run(&["exec", name, "--guest", "g0", "--", BUSYBOX, "true"]);
    let still_busy = busy.try_wait().unwrap().is_none();
    assert!(busy.wait().unwrap().success());
    assert!(c_status == Some(0) && status.contains("g1"), "{status}");
    assert!(c_other == Some(0), "{other}");
    assert!(still_busy, "status and g0's exec waited for g1's program");

    // A guest that stops answering (its agent stopped) is named, with why.
    let pid = status
        .lines()
        .find(|l| l.starts_with("g0 "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|p| p.parse::<i32>().ok())
        .unwrap_or_else(|| panic!("g0's host pid in {status}"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP)
        .unwrap();
    let (c_hung, hung) = run(&["exec", name, "--timeout", "1", "--", BUSYBOX, "true"]);
    let _ =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGCONT);
    assert!(c_hung == Some(3) && hung.contains("g0: failed: the guest did not answer"), "{hung}");
    assert_eq!(hung.matches("exit 0").count(), 2, "the other guests answered: {hung}");
}
