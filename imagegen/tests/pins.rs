//! Pinned Debian inputs fetched by exact version (issue: a new machine builds again): a pin
//! the archives no longer serve, the installed-package shortcut, `imagegen pin` on copies
//! of the shipped recipes, and the lock that `imagegen verify` compares the store with.
//! These talk to the Debian archives through apt (as imagegen does), with every store and
//! cache in a temporary directory.

mod common;

use std::path::Path;
use std::process::Output;

use common::{config_in, imagegen, shipped_recipes, write_recipe};
use imagegen::{BuildError, Store};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// What the archives serve of `name`, newest first (the same question imagegen asks).
fn served(name: &str) -> Vec<String> {
    let o = std::process::Command::new("apt-cache").args(["madison", name]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string())).fold(
        Vec::new(),
        |mut v, x| {
            if !v.contains(&x) {
                v.push(x);
            }
            v
        },
    )
}

/// Temp files and half-taken tarballs left anywhere below `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    common::files_under(dir).into_iter().filter(|f| f.contains(".tmp-")).collect()
}

/// A copy of a shipped recipe (and the recipe-relative files it names) with `edit` applied.
fn copy_shipped(dir: &Path, shipped: &str, as_name: &str, files: &[&str], edit: impl Fn(String) -> String) {
    let text = std::fs::read_to_string(shipped_recipes().join(format!("{shipped}.toml"))).unwrap();
    write_recipe(dir, &format!("{as_name}.toml"), &edit(text));
    for f in files {
        write_recipe(dir, f, &std::fs::read_to_string(shipped_recipes().join(f)).unwrap());
    }
}

/// Replaces the value of `key = "…"` in the first line that sets it after `after` (a
/// substring; "" for the first).
fn set(text: String, after: &str, key: &str, value: &str) -> String {
    let start = text.find(after).unwrap();
    let rel = text[start..].find(&format!("\n{key} = \"")).unwrap() + start + 1;
    let end = rel + text[rel..].find('\n').unwrap();
    format!("{}{key} = \"{value}\"{}", &text[..rel], &text[end..])
}

#[test]
fn unserved_kernel_source_pin_names_package_versions_and_the_command() {
    let d = tempfile::tempdir().unwrap();
    copy_shipped(d.path(), "kernel-pv", "k", &["kernels/pv.config"], |t| {
        let t = set(t, "[source]", "version", "6.12.1-1~deb12u1");
        set(t, "[source]", "sha256", &"0".repeat(64))
    });
    let cfg = config_in(d.path());
    let err = imagegen::build(&cfg, &["k".to_string()], &()).unwrap_err();
    assert!(matches!(err, BuildError::NotServed { .. }), "{err:?}");
    let msg = err.to_string();
    let newest = served("linux-source-6.12");
    assert!(!newest.is_empty(), "apt serves no linux-source-6.12 at all");
    for part in [
        "recipes/k.toml",
        "linux-source-6.12 6.12.1-1~deb12u1 is not served",
        &format!("served now: {}", newest[0]),
        "re-pin with `imagegen pin k`",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    // Nothing of the build was written: no store, and nothing half-fetched in the cache.
    assert!(!cfg.store.exists(), "store created by a build that could not fetch its source");
    assert_eq!(leftovers(d.path()), Vec::<String>::new());
    assert!(common::files_under(&cfg.cache.join("sources")).is_empty());
}

#[test]
fn installed_source_is_used_only_when_its_hash_is_the_pin() {
    let d = tempfile::tempdir().unwrap();
    let installed = d.path().join("usr-src/linux.tar.xz");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::write(&installed, b"the pinned tarball").unwrap();
    let pin = imagegen::hash::sha256_hex(b"the pinned tarball");
    write_recipe(
        d.path(),
        "k.toml",
        &format!(
            "kind = \"kernel\"\nsha256 = \"{pin}\"\narch = \"um\"\ntarget = \"linux\"\noutput = \"linux\"\n\
             [source]\npackage = \"virtbench-no-such-package\"\nversion = \"1.0-1\"\nsha256 = \"{}\"\npath = {:?}\n",
            "1".repeat(64),
            installed.display().to_string()
        ),
    );
    let cfg = config_in(d.path());
    let got = imagegen::fetch(&cfg, &["k".to_string()], &()).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, installed, "the matching installed file is the shortcut");
    // Another version installed: the package must be fetched, and here it cannot be.
    std::fs::write(&installed, b"a newer tarball").unwrap();
    let err = imagegen::fetch(&cfg, &["k".to_string()], &()).unwrap_err();
    assert!(matches!(err, BuildError::NotServed { .. }), "{err:?}");
    assert!(err.to_string().contains("virtbench-no-such-package 1.0-1 is not served"), "{err}");
}

#[test]
fn pin_moves_a_stale_deb_file_to_a_served_version_that_builds() {
    let d = tempfile::tempdir().unwrap();
    copy_shipped(d.path(), "xen-hypervisor", "hv", &[], |t| {
        let t = set(t, "", "version", "4.17.0-1");
        set(t, "", "sha256", &"0".repeat(64))
    });
    let before = std::fs::read_to_string(d.path().join("recipes/hv.toml")).unwrap();
    let o = imagegen(d.path()).args(["build", "hv"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("re-pin with `imagegen pin hv`"), "{}", text(&o));

    let o = imagegen(d.path()).args(["pin", "hv"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let newest = served("xen-hypervisor-4.17-amd64")[0].clone();
    assert!(text(&o).contains(&format!("4.17.0-1 -> {newest}")), "{}", text(&o));
    let after = std::fs::read_to_string(d.path().join("recipes/hv.toml")).unwrap();
    // Only the two values changed: comments, order and the other fields are as they were.
    let changed: Vec<(&str, &str)> = before.lines().zip(after.lines()).filter(|(a, b)| a != b).collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert_eq!(before.lines().count(), after.lines().count());
    assert!(after.contains(&format!("version = \"{newest}\"")), "{after}");
    let v: toml::Table = toml::from_str(&after).unwrap();
    let sha = v["sha256"].as_str().unwrap();
    assert!(d.path().join(format!("cache/debs/{sha}.deb")).is_file(), "pin leaves the new .deb in the cache");

    let o = imagegen(d.path()).args(["build", "hv"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let store = Store::open(d.path().join("store")).unwrap();
    let m = store.current("hv").unwrap();
    let hv = std::fs::read(store.output_path(&m, "file").unwrap()).unwrap();
    assert_eq!(&hv[..4], b"\x7fELF", "the gunzipped multiboot image");
}

#[test]
fn pin_moves_a_stale_kernel_source_and_the_new_pin_checks_out() {
    let d = tempfile::tempdir().unwrap();
    copy_shipped(d.path(), "kernel-pv", "k", &["kernels/pv.config"], |t| {
        let t = set(t, "", "sha256", &"2".repeat(64));
        let t = set(t, "[source]", "version", "6.12.1-1~deb12u1");
        set(t, "[source]", "sha256", &"3".repeat(64))
    });
    let o = imagegen(d.path()).args(["pin", "k"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let after = std::fs::read_to_string(d.path().join("recipes/k.toml")).unwrap();
    let v: toml::Table = toml::from_str(&after).unwrap();
    let newest = served("linux-source-6.12")[0].clone();
    assert_eq!(v["source"]["version"].as_str(), Some(newest.as_str()));
    let (tarball, deb) = (v["sha256"].as_str().unwrap(), v["source"]["sha256"].as_str().unwrap());
    assert!(tarball != "2".repeat(64) && deb != "3".repeat(64), "{after}");
    assert!(after.starts_with("# The x86_64 guest kernel"), "comments kept: {after}");
    // The rewritten pins are what the archive serves: a fetch checks both hashes.
    let cfg = config_in(d.path());
    let got = imagegen::fetch(&cfg, &["k".to_string()], &()).unwrap();
    assert_eq!(imagegen::hash::sha256_file(&got[0].path).unwrap().0, tarball);
    assert!(got[0].path.starts_with(&cfg.cache), "{:?}", got[0].path);
    assert_eq!(leftovers(d.path()), Vec::<String>::new());
}

#[test]
fn verify_compares_the_store_with_the_lock_and_says_why() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mib = 1\nseed = 1\n");
    let run = |args: &[&str]| imagegen(d.path()).args(args).output().unwrap();
    let o = run(&["build", "--update-lock"]);
    assert!(o.status.success(), "{}", text(&o));
    let lock = std::fs::read_to_string(d.path().join("recipes/imagegen.lock")).unwrap();
    assert!(lock.contains("[recipes.disk]"), "{lock}");
    let o = run(&["verify"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 of 1 locked recipes built here as"), "{}", text(&o));

    // Another recipe: a warning at build time, a failure with the reason at verify.
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mib = 1\nseed = 2\n");
    let o = run(&["build"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("warning: disk: disk differ from the lock"), "{}", text(&o));
    let o = run(&["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for part in ["DIFFERS disk: disk differ from the lock", "input here not in the lock: recipe disk.toml"] {
        assert!(text(&o).contains(part), "{part:?} not in {}", text(&o));
    }
    let o = run(&["build", "--update-lock"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(run(&["verify"]).status.success());

    // The same inputs recorded with other bytes: a build that is not reproducible.
    let m = Store::open(d.path().join("store")).unwrap().current("disk").unwrap();
    let lock = std::fs::read_to_string(d.path().join("recipes/imagegen.lock")).unwrap();
    std::fs::write(d.path().join("recipes/imagegen.lock"), lock.replace(&m.outputs["disk"].sha256, &"f".repeat(64)))
        .unwrap();
    let o = run(&["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("same inputs with the same tools, so this build is not reproducible"), "{}", text(&o));
}

#[test]
fn shipped_lock_holds_every_recipe_built_from_pins_only() {
    let lock: toml::Table = toml::from_str(
        &std::fs::read_to_string(shipped_recipes().join("imagegen.lock")).expect("recipes/imagegen.lock"),
    )
    .unwrap();
    let mut locked: Vec<String> = lock["recipes"].as_table().unwrap().keys().cloned().collect();
    locked.sort();
    // Kernels (built, or a pinned Debian kernel package), Debian files and the data disk:
    // no agent or other workspace code inside.
    let mut expected = Vec::new();
    for e in std::fs::read_dir(shipped_recipes()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let v: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            if ["kernel", "kernel-package", "deb-file", "disk"].contains(&v["kind"].as_str().unwrap()) {
                expected.push(p.file_stem().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    expected.sort();
    assert_eq!(locked, expected);
    // Each entry records the pin it was built from: the shipped recipes' own.
    for k in ["kernel-pv", "kernel-uml"] {
        let v: toml::Table =
            toml::from_str(&std::fs::read_to_string(shipped_recipes().join(format!("{k}.toml"))).unwrap()).unwrap();
        let source = format!(
            "source {}={} {} {}",
            v["source"]["package"].as_str().unwrap(),
            v["source"]["version"].as_str().unwrap(),
            v["source"]["path"].as_str().unwrap(),
            v["sha256"].as_str().unwrap()
        );
        let inputs = lock["recipes"][k]["inputs"].as_array().unwrap();
        assert!(
            inputs.iter().any(|i| i.as_str() == Some(source.as_str())),
            "{k}: {source} not in the lock's inputs {inputs:?}"
        );
    }
}
