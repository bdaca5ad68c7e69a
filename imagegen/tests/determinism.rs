//! The shipped non-kernel recipes, built twice from scratch into two stores by two
//! processes that differ in working directory, TZ, umask and LC_ALL, give the same bytes.
//! (Kernels: scripts/repro-kernels.sh, too slow for a unit test.)

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use imagegen::archive::{read_cpio_newc, Tree};
use imagegen::Store;

const NON_KERNEL: [&str; 5] = ["agent", "initramfs", "rootfs", "oci-bundle", "disk"];

fn build_in(dir: &Path, cwd: &Path, tz: &str, umask: &str, lc_all: &str) -> Output {
    build_with(dir, cwd, tz, umask, lc_all, None)
}

/// `target`: a cargo target directory of its own, so the agent is compiled afresh rather
/// than taken from the workspace's (where both builds would share one binary).
fn build_with(dir: &Path, cwd: &Path, tz: &str, umask: &str, lc_all: &str, target: Option<&Path>) -> Output {
    let recipes = common::shipped_recipes();
    let mut cmd = Command::new("sh");
    if let Some(t) = target {
        cmd.env("CARGO_TARGET_DIR", t);
    }
    cmd.arg("-c")
        .arg(format!("umask {umask} && exec \"$@\""))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_imagegen"))
        .arg("--recipes")
        .arg(&recipes)
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--cache")
        .arg(dir.join("cache"))
        .arg("build")
        .args(NON_KERNEL)
        .current_dir(cwd)
        .env("TZ", tz)
        .env("LC_ALL", lc_all)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

fn artifacts(store: &Path) -> BTreeMap<String, String> {
    let s = Store::open(store).unwrap();
    let mut m = BTreeMap::new();
    for man in s.current_all().unwrap() {
        for (name, o) in &man.outputs {
            m.insert(format!("{}/{name}", man.recipe), o.sha256.clone());
        }
    }
    m
}

#[test]
fn non_kernel_recipes_are_bit_reproducible() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (cwd_a, cwd_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let target_b = b.path().join("target");
    let (out_a, out_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| build_in(a.path(), cwd_a.path(), "UTC", "022", "C"));
        let tb =
            s.spawn(|| build_with(b.path(), cwd_b.path(), "Pacific/Kiritimati", "077", "en_US.UTF-8", Some(&target_b)));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    for o in [&out_a, &out_b] {
        assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    // b's agent was compiled in b's own target directory, not taken from a's.
    assert!(
        target_b.join("x86_64-unknown-linux-musl/agent/guest-agent").is_file(),
        "no fresh agent build in {}",
        target_b.display()
    );
    let (ha, hb) = (artifacts(&a.path().join("store")), artifacts(&b.path().join("store")));
    let expected: Vec<String> =
        ["agent/agent", "disk/disk", "initramfs/initramfs", "oci-bundle/bundle", "rootfs/rootfs"]
            .map(String::from)
            .to_vec();
    assert_eq!(ha.keys().cloned().collect::<Vec<_>>(), expected);
    assert_eq!(ha, hb, "same recipes, different hosts' settings, different bytes");

    // Blobs are read-only (ELF ones executable: the agent) and named by their content.
    let store = Store::open(a.path().join("store")).unwrap();
    for (name, sha) in &ha {
        let p = store.blob_path(sha);
        let want = if name == "agent/agent" { 0o555 } else { 0o444 };
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, want, "{name}");
        assert_eq!(&imagegen::hash::sha256_file(&p).unwrap().0, sha);
    }

    // A second build is a no-op.
    let again = build_in(a.path(), cwd_a.path(), "UTC", "022", "C");
    assert!(again.status.success());
    let stdout = String::from_utf8(again.stdout).unwrap();
    assert_eq!(stdout.lines().filter(|l| l.contains("up to date")).count(), 5, "{stdout}");
    assert_eq!(artifacts(&a.path().join("store")), ha);

    check_contents(&store, &ha);
}

/// What is inside is what the recipes ask for.
fn check_contents(store: &Store, h: &BTreeMap<String, String>) {
    let agent = std::fs::read(store.blob_path(&h["agent/agent"])).unwrap();

    let mut cpio = Vec::new();
    let gz = std::fs::File::open(store.blob_path(&h["initramfs/initramfs"])).unwrap();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut cpio).unwrap();
    let entries = read_cpio_newc(&cpio).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["dev", "dev/console", "etc", "init", "proc", "sys", "tmp"]);
    let init = entries.iter().find(|e| e.name == "init").unwrap();
    assert_eq!(init.data, agent);
    assert_eq!(init.mode, 0o100_755);
    let console = entries.iter().find(|e| e.name == "dev/console").unwrap();
    assert_eq!((console.mode, console.rdev), (0o020_600, (5, 1)));

    let tree = store.materialize_tree(&h["rootfs/rootfs"]).unwrap();
    assert_eq!(std::fs::read(tree.join("sbin/guest-agent")).unwrap(), agent);
    assert_eq!(std::fs::metadata(tree.join("sbin/guest-agent")).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::metadata(tree.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
    assert_eq!(std::fs::read_to_string(tree.join("etc/hostname")).unwrap(), "virtbench\n");
    assert!(std::fs::read_to_string(tree.join("etc/passwd")).unwrap().starts_with("root:x:0:0:"));
    assert_eq!(std::fs::read_to_string(tree.join("etc/group")).unwrap(), "root:x:0:\n");
    assert!(tree.join("data").is_dir());

    let bundle = store.materialize_tree(&h["oci-bundle/bundle"]).unwrap();
    assert_eq!(std::fs::read(bundle.join("rootfs/sbin/guest-agent")).unwrap(), agent);
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).unwrap();
    assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
    assert_eq!(
        spec.process().as_ref().unwrap().args().as_deref(),
        Some(&["/sbin/guest-agent".to_string(), "--ctl".into(), "fd:3".into()][..])
    );
    // The bundle's rootfs is the rootfs recipe's tree, entry for entry.
    let rootfs = Tree::from_tar(std::fs::File::open(store.blob_path(&h["rootfs/rootfs"])).unwrap()).unwrap();
    let bundle_tree = Tree::from_tar(std::fs::File::open(store.blob_path(&h["oci-bundle/bundle"])).unwrap()).unwrap();
    assert_eq!(bundle_tree.len(), rootfs.len() + 2, "rootfs/ and config.json");

    // The shipped 1 GiB disk, checked in 64 MiB pieces rather than held whole.
    let mut disk = std::fs::File::open(store.blob_path(&h["disk/disk"])).unwrap();
    assert_eq!(disk.metadata().unwrap().len(), 1 << 30);
    let mut piece = vec![0u8; 64 << 20];
    for _ in 0..16 {
        std::io::Read::read_exact(&mut disk, &mut piece).unwrap();
        assert!(!piece.contains(&0));
    }
}

#[test]
fn busybox_is_installed_with_applet_links() {
    assert!(Path::new("/bin/busybox").is_file(), "no /bin/busybox: scripts/install-deps installs busybox-static");
    let d = tempfile::tempdir().unwrap();
    common::write_recipe(d.path(), "agent.toml", "kind = \"agent\"\n");
    common::write_recipe(d.path(), "initramfs-busybox.toml", "kind = \"initramfs\"\nbusybox = true\n");
    let cfg = common::config_in(d.path());
    let out = imagegen::build(&cfg, &["initramfs-busybox".to_string()], &()).unwrap();
    let m = &out.iter().find(|o| o.recipe == "initramfs-busybox").unwrap().manifest;
    assert!(m.inputs.iter().any(|i| i.role == "busybox" && i.name == "/bin/busybox"));
    let store = Store::open(&cfg.store).unwrap();
    let mut cpio = Vec::new();
    let gz = std::fs::File::open(store.output_path(m, "initramfs").unwrap()).unwrap();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut cpio).unwrap();
    let entries = read_cpio_newc(&cpio).unwrap();
    let bb = entries.iter().find(|e| e.name == "bin/busybox").unwrap();
    assert_eq!(bb.data, std::fs::read("/bin/busybox").unwrap());
    let sh = entries.iter().find(|e| e.name == "bin/sh").expect("sh applet");
    assert_eq!((sh.mode & 0o170_000, &sh.data[..]), (0o120_000, &b"busybox"[..]));
    assert!(entries.iter().any(|e| e.name == "init"));
}
