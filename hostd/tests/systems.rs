//! Users' systems through the binary. A container image as a fleet's system: an OCI image
//! archive (made here with umoci and skopeo from a small busybox tree, as a registry pull
//! would leave it) imported by imagegen's `oci-image` recipe kind and booted as a 3-guest ns
//! fleet kept up by `hostd up`; every guest answers `hostd exec` from the image. And a
//! system image booted cold and hot with a private copy per guest (`hostd boot --system
//! --image-copies`) on uml and qemu-microvm. Offline, needs root.

mod support {
    pub mod cli;
    pub mod skip;
    pub mod system;
}

use std::path::Path;
use std::process::Command;

use support::cli::{fleet_file, hostd, text};
use support::system::{self, BUSYBOX, OS};

const RECIPE: &str = "hostd-test-oci";
/// The busybox tree imported as a directory (`rootfs-import`), for the boot tests (one
/// recipe per backend: the tests run side by side).
const TREE_RECIPE: &str = "hostd-test-copies";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
}

/// An oci-archive of one image `vbtest` whose only layer is the test system's tree.
fn make_archive(dir: &Path) -> std::path::PathBuf {
    let (layout, bundle, archive) =
        (dir.join("layout"), dir.join("bundle"), dir.join("vbtest.oci.tar"));
    let image = format!("{}:vbtest", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    system::make_tree(&bundle.join("rootfs"), true).unwrap();
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
    run(Command::new("skopeo")
        .args(["copy", "--quiet", &format!("oci:{image}")])
        .arg(format!("oci-archive:{}", archive.display())));
    archive
}

#[test]
fn an_oci_archive_boots_as_a_three_guest_ns_fleet() {
    if !support::skip::unless_root(Some("ns"), "an ns fleet needs root") {
        return;
    }
    if let Some(why) = system::unusable() {
        support::skip::skip(Some("ns"), &why);
        return;
    }
    let scratch = system::scratch("vb-oci-fleet-test");
    let archive = make_archive(scratch.path());
    let recipe =
        format!("kind = \"oci-image\"\npath = \"{}\"\nheadroom_mib = 8\n", archive.display());
    system::build(scratch.path(), &[(RECIPE, recipe)]).unwrap_or_else(|e| panic!("{e}"));

    let f = fleet_file("oci", &format!("backend = \"ns\"\nguests = 3\nsystem = \"{RECIPE}\"\n"));
    let name = f.name.as_str();
    let up = hostd().arg("up").arg(&f.path).output().unwrap();
    let exec = hostd().args(["exec", name, "--", BUSYBOX, "cat", "/etc/os-release"]).output();
    let down = hostd().args(["down", name]).output().unwrap();
    let after = hostd().arg("status").output().unwrap();
    assert!(up.status.success(), "up: {}", text(&up));
    let exec = exec.unwrap();
    let said = text(&exec);
    assert!(exec.status.success(), "exec: {said}");
    // One answer per guest, each from the image's own os-release.
    assert_eq!(said.matches(OS).count(), 3, "{said}");
    for g in ["g0", "g1", "g2"] {
        assert!(said.contains(g), "{g} answered: {said}");
    }
    assert!(down.status.success(), "down: {}", text(&down));
    assert!(!text(&after).contains(name), "the fleet is gone: {}", text(&after));
}

/// `hostd boot --system SYS --image-copies --modes cold,hot` on `backend`: every guest
/// ready in both modes; before the cold start none of the per-guest copies was in the page
/// cache, and the run's copies are gone afterwards.
fn private_copies_boot(backend: &str) {
    if !support::skip::unless_root(Some(backend), "booting guests needs root") {
        return;
    }
    if let Some(why) = system::unusable() {
        support::skip::skip(Some(backend), &why);
        return;
    }
    let scratch = system::scratch(&format!("vb-copies-test-{backend}"));
    let tree = scratch.path().join("tree");
    system::make_tree(&tree, true).unwrap();
    let recipe =
        format!("kind = \"rootfs-import\"\npath = \"{}\"\nheadroom_mib = 8\n", tree.display());
    let name = format!("{TREE_RECIPE}-{backend}");
    system::build(scratch.path(), &[(&name, recipe)]).unwrap_or_else(|e| panic!("{e}"));
    let results = scratch.path().join("results");
    let out = hostd()
        .env("VIRTBENCH_ACCEL", "tcg")
        .args(["boot", "--backend", backend, "-n", "2", "--modes", "cold,hot", "--system"])
        .arg(&name)
        .args(["--image-copies", "--floor-reps", "0", "--settle", "1", "--results"])
        .arg(&results)
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let dir = std::fs::read_dir(&results).unwrap().next().unwrap().unwrap().path();
    let samples = std::fs::read_to_string(dir.join("samples.jsonl")).unwrap();
    let starts: Vec<serde_json::Value> = samples
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["record"] == "startup")
        .collect();
    assert_eq!(starts.len(), 4, "2 guests ready in each mode: {said}");
    for s in &starts {
        assert_eq!(s["image_copies"], true, "{s}");
        let resident = s["residency"]["resident"].as_array().unwrap();
        let copies: Vec<&serde_json::Value> = resident
            .iter()
            .filter(|f| f[0].as_str().unwrap().starts_with("/var/tmp/virtbench"))
            .collect();
        if s["mode"] == "cold" {
            assert!(copies.is_empty(), "a cold start with its own copies resident: {s}");
        }
        // UML's launch reads three files, the kernel (also its program), the initramfs and
        // the system's ext4: each guest has its own copy of all three.
        if backend == "uml" {
            assert_eq!(s["residency"]["files"], 6, "{s}");
        }
    }
    // The note beside each row says how much of the launch was resident.
    assert!(said.contains("(per-guest image copies): resident before start"), "{said}");
    let run = dir.file_name().unwrap().to_str().unwrap().rsplit('-').next().unwrap().to_string();
    assert!(
        !Path::new("/var/tmp/virtbench").join(&run).exists(),
        "the run's image copies are left"
    );
}

#[test]
fn uml_boots_private_copies_of_a_system_cold_and_hot() {
    private_copies_boot("uml");
}

#[test]
fn qemu_microvm_boots_private_copies_of_a_system_cold_and_hot() {
    private_copies_boot("qemu-microvm");
}
