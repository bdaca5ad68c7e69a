//! A user's container image as a fleet's system: an OCI image archive (made here with umoci
//! and skopeo from a small busybox tree, as a registry pull would leave it) imported by
//! imagegen's `oci-image` recipe kind and booted as a 3-guest ns fleet kept up by
//! `hostd up`; every guest answers `hostd exec` from the image. Offline, needs root.

mod support {
    pub mod cli;
    pub mod skip;
    pub mod system;
}

use std::path::Path;
use std::process::Command;

use support::cli::{hostd, text};
use support::system::{self, Scratch, BUSYBOX, OS};

const RECIPE: &str = "hostd-test-oci";

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
    let scratch = Scratch::new("vb-oci-fleet-test");
    std::fs::create_dir_all(&scratch.0).unwrap();
    let archive = make_archive(&scratch.0);
    let recipe =
        format!("kind = \"oci-image\"\npath = \"{}\"\nheadroom_mib = 8\n", archive.display());
    system::build(&scratch.0, &[(RECIPE, recipe)]).unwrap_or_else(|e| panic!("{e}"));

    let name = format!("oci{}", std::process::id());
    let file = scratch.0.join("fleet.toml");
    std::fs::write(
        &file,
        format!("name = \"{name}\"\nbackend = \"ns\"\nguests = 3\nsystem = \"{RECIPE}\"\n"),
    )
    .unwrap();
    let up = hostd().arg("up").arg(&file).output().unwrap();
    let exec = hostd().args(["exec", &name, "--", BUSYBOX, "cat", "/etc/os-release"]).output();
    let down = hostd().args(["down", &name]).output().unwrap();
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
    assert!(!text(&after).contains(&name), "the fleet is gone: {}", text(&after));
}
