//! A small system image for tests of users' own systems: this host's static busybox as
//! `/bin/busybox` (and `/sbin/init`), an os-release and an inittab; and the imagegen build
//! that puts a recipe made from it into hostd's store (`VIRTBENCH_IMAGES`), offline, in
//! seconds.

#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;

/// The busybox every test system carries.
pub const BUSYBOX: &str = "/bin/busybox";
/// The test systems' PRETTY_NAME: a guest that prints it booted the image.
pub const OS: &str = "virtbench test system";

/// Why this host cannot make a test system, if it cannot: busybox must be static.
pub fn unusable() -> Option<String> {
    let is_static = std::process::Command::new("file")
        .arg("-L")
        .arg(BUSYBOX)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"));
    (!is_static).then(|| format!("the test system needs a static {BUSYBOX} on this host"))
}

/// busybox as /bin/busybox and /sbin/init (unless `init` is false), an os-release and an
/// inittab with one sysinit entry, and the mount points a guest needs.
pub fn make_tree(root: &Path, init: bool) -> std::io::Result<()> {
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

/// Builds `recipes` (name, recipe text) into hostd's store with imagegen, from a recipe
/// directory of their own under `dir`.
pub fn build(dir: &Path, recipes: &[(&str, String)]) -> Result<(), String> {
    let rdir = dir.join("recipes");
    std::fs::create_dir_all(&rdir).map_err(|e| format!("{}: {e}", rdir.display()))?;
    for (name, text) in recipes {
        std::fs::write(rdir.join(format!("{name}.toml")), text).map_err(|e| e.to_string())?;
    }
    let mut cfg = imagegen::Config::for_workspace(&hostd::images::workspace_root())
        .map_err(|e| e.to_string())?;
    cfg.recipes = rdir;
    let names: Vec<String> = recipes.iter().map(|(n, _)| n.to_string()).collect();
    imagegen::build(&cfg, &names, &()).map(|_| ()).map_err(|e| format!("building {names:?}: {e}"))
}

/// A scratch directory for building test systems under /var/tmp (imagegen imports the
/// tree from there), removed when dropped.
pub fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{tag}-"))
        .tempdir_in("/var/tmp")
        .unwrap_or_else(|e| panic!("a scratch directory in /var/tmp: {e}"))
}
