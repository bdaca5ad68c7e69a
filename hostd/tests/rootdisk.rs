//! System images as guests' root (`--system`): VMs boot from a root block device (virtio-blk
//! on qemu-microvm, AHCI on qemu-full, ubd on UML) through a per-guest overlay, containers
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
    pub mod vm;
}

use support::cli::hostd;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hostd::backend::rootdisk::InitMode;
use hostd::backend::{BackendKind, BackendOptions, Images};
use hostd::guest::boot;
use support::vm;
use vb_protocol::msg::{Command, ExecRequest, ReplyBody, Role};

const SYSTEM: &str = "hostd-test-system";
const NOINIT: &str = "hostd-test-noinit";
const OS: &str = "virtbench test system";
const BUSYBOX: &str = "/bin/busybox";

fn skip(kind: Option<BackendKind>, why: &str) {
    support::skip::skip(kind.map(|k| k.name()), why);
}

/// Builds the two test systems into hostd's store, once per test process.
fn build_systems() -> Result<(), String> {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = PathBuf::from(format!("/var/tmp/vb-rootdisk-test-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let res = (|| {
                for (name, init) in [(SYSTEM, true), (NOINIT, false)] {
                    let tree = dir.join(name);
                    make_tree(&tree, init)
                        .map_err(|e| format!("making {}: {e}", tree.display()))?;
                    let recipes = dir.join("recipes");
                    std::fs::create_dir_all(&recipes).map_err(|e| e.to_string())?;
                    std::fs::write(
                        recipes.join(format!("{name}.toml")),
                        format!(
                            "kind = \"rootfs-import\"\npath = \"{}\"\nheadroom_mib = 8\n",
                            tree.display()
                        ),
                    )
                    .map_err(|e| e.to_string())?;
                }
                let mut cfg = imagegen::Config::for_workspace(&hostd::images::workspace_root())
                    .map_err(|e| e.to_string())?;
                cfg.recipes = dir.join("recipes");
                imagegen::build(&cfg, &[SYSTEM.to_string(), NOINIT.to_string()], &())
                    .map_err(|e| format!("building the test systems: {e}"))?;
                Ok(())
            })();
            let _ = std::fs::remove_dir_all(&dir);
            res
        })
        .clone()
}

/// busybox as /bin/busybox and /sbin/init (unless `init` is false), an os-release and an
/// inittab with one sysinit entry, and the mount points a guest needs.
fn make_tree(root: &Path, init: bool) -> std::io::Result<()> {
    for d in ["bin", "sbin", "etc", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    if init {
        std::os::unix::fs::symlink("../bin/busybox", root.join("sbin/init"))?;
    }
    std::fs::write(root.join("etc/os-release"), format!("PRETTY_NAME=\"{OS}\"\nID=vbtest\n"))?;
    std::fs::write(root.join("etc/inittab"), "::sysinit:/bin/busybox echo vbtest sysinit\n")?;
    Ok(())
}

/// Whether this host can run these tests; the images with `system` added, or why not.
fn images(kind: BackendKind, system: &str, init: InitMode) -> Option<Images> {
    if !vm::is_root() {
        skip(Some(kind), "system image tests need root");
        return None;
    }
    let static_busybox = std::process::Command::new("file")
        .arg("-L")
        .arg(BUSYBOX)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"));
    if !static_busybox {
        skip(Some(kind), &format!("the test system needs a static {BUSYBOX} on this host"));
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
            BackendKind::QemuMicrovm | BackendKind::QemuFull => "root.qcow2",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uml_boots_the_system_image() {
    two_guests(BackendKind::Uml, InitMode::Agent, "rdu").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_microvm_boots_the_system_image() {
    two_guests(BackendKind::QemuMicrovm, InitMode::Agent, "rdm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_full_boots_the_system_image() {
    two_guests(BackendKind::QemuFull, InitMode::Agent, "rdf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_runs_over_the_system_tree() {
    two_guests(BackendKind::Ns, InitMode::Agent, "rdn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_runs_over_the_system_tree() {
    two_guests(BackendKind::Oci, InitMode::Agent, "rdo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uml_runs_the_image_init() {
    two_guests(BackendKind::Uml, InitMode::Image, "rdiu").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_microvm_runs_the_image_init() {
    two_guests(BackendKind::QemuMicrovm, InitMode::Image, "rdim").await;
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
    let dir = tempfile::tempdir().unwrap();
    let name = format!("rdx{}", std::process::id());
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        format!("name = \"{name}\"\nbackend = \"ns\"\nguests = 5\nsystem = \"{SYSTEM}\"\n"),
    )
    .unwrap();
    let out = hostd().arg("up").arg(&file).output().unwrap();
    assert!(out.status.success(), "up: {}", String::from_utf8_lossy(&out.stderr));
    let run = |args: &[&str]| {
        let o = hostd().args(args).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (ok, text) = run(&["exec", &name, "--", "/bin/busybox", "cat", "/etc/os-release"]);
    let answered = text.matches(OS).count();
    let (ok1, one) = run(&["exec", &name, "--guest", "g1", "--", "/bin/busybox", "hostname"]);
    let (bad, missing) = run(&["exec", &name, "--", "/no/such/program"]);
    let (still, again) = run(&["exec", &name, "--", "/bin/busybox", "true"]);
    let down = hostd().args(["down", &name]).output().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let name = format!("mix{}", std::process::id());
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\nsystem = \"{SYSTEM}\"\nmem_mib = 128\n\
             commands = [[\"/bin/busybox\", \"cat\", \"/etc/os-release\"]]\n\
             [[group]]\nname = \"cts\"\nbackend = \"ns\"\nguests = 5\n\
             [[group]]\nname = \"uml\"\nbackend = \"uml\"\nguests = 2\n\
             [[group]]\nname = \"vm\"\nbackend = \"qemu-microvm\"\nguests = 1\n"
        ),
    )
    .unwrap();
    let hostd = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hostd"));
        c.env("VIRTBENCH_ACCEL", "tcg");
        c
    };
    let out = hostd().arg("up").arg(&file).output().unwrap();
    let up = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "up: {up}{}", String::from_utf8_lossy(&out.stderr));
    let run = |args: &[&str]| {
        let o = hostd().args(args).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let addrs: Vec<String> =
        (0..8).map(|i| hostd::netlab::FleetNet::guest_addr(i).unwrap().to_string()).collect();
    let script = format!(
        "for a in {}; do /bin/busybox ping -c 1 -W 10 $a >/dev/null || {{ echo unreachable $a; exit 1; }}; done; echo reached all",
        addrs.join(" ")
    );
    let (pinged, text) =
        run(&["exec", &name, "--timeout", "120", "--", BUSYBOX, "sh", "-c", &script]);
    let (_, status) = run(&["status", &name]);
    let down = hostd().args(["down", &name]).output().unwrap();
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
    assert!(!after.contains(&name), "the fleet is gone: {after}");
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
    let dir = tempfile::tempdir().unwrap();
    let name = format!("rdc{}", std::process::id());
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\nbackend = \"ns\"\nguests = 2\nsystem = \"{SYSTEM}\"\n\
             commands = [[\"/bin/busybox\", \"hostname\"], [\"/bin/busybox\", \"cat\", \"/no/such/file\"]]\n"
        ),
    )
    .unwrap();
    let hostd = || std::process::Command::new(env!("CARGO_BIN_EXE_hostd"));
    let out = hostd().arg("up").arg(&file).output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let down = hostd().args(["down", &name]).output().unwrap();
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
