//! The store: no-op rebuilds, the cache, verify, and what a killed build leaves behind.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{config_in, write_recipe};
use imagegen::{Status, Store};

fn build(dir: &Path, names: &[&str]) -> Vec<imagegen::Outcome> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    imagegen::build(&config_in(dir), &names, &()).unwrap()
}

fn status_of(out: &[imagegen::Outcome], recipe: &str) -> Status {
    out.iter().find(|o| o.recipe == recipe).unwrap().status
}

#[test]
fn noop_then_cache_then_rebuild_on_change() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mib = 1\nseed = 3\n");
    let first = build(d.path(), &["disk"]);
    assert_eq!(status_of(&first, "disk"), Status::Built);
    let m = first[0].manifest.clone();
    assert_eq!(m.inputs[0].role, "recipe");
    assert_eq!(m.recipe_file.text, "kind = \"disk\"\nsize_mib = 1\nseed = 3\n");
    assert_eq!(m.source_date_epoch, imagegen::DEFAULT_SOURCE_DATE_EPOCH);

    let t = Instant::now();
    let second = build(d.path(), &["disk"]);
    assert_eq!(status_of(&second, "disk"), Status::Fresh);
    assert!(t.elapsed() < Duration::from_millis(500), "no-op took {:?}", t.elapsed());
    assert_eq!(second[0].manifest, m);

    // Another store, same cache: taken from the cache, hard-linked, same manifest.
    let other = d.path().join("other");
    let mut cfg = config_in(d.path());
    cfg.store = other.clone();
    let third = imagegen::build(&cfg, &["disk".to_string()], &()).unwrap();
    assert_eq!(status_of(&third, "disk"), Status::Cached);
    assert_eq!(third[0].manifest, m);
    let sha = &m.outputs["disk"].sha256;
    let a = fs::metadata(Store::open(&other).unwrap().blob_path(sha)).unwrap();
    let c = fs::metadata(d.path().join("cache/blobs/sha256").join(sha)).unwrap();
    assert_eq!((a.dev(), a.ino()), (c.dev(), c.ino()), "hard link, not a copy");

    // hostd's view.
    let store = Store::open(d.path().join("store")).unwrap();
    let cur = store.current("disk").unwrap();
    assert_eq!(cur, m);
    let p = store.output_path(&cur, "disk").unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 1 << 20);
    assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o444);
    assert!(matches!(store.current("nope"), Err(imagegen::StoreError::NotBuilt { .. })));
    assert!(matches!(store.output_path(&cur, "kernel"), Err(imagegen::StoreError::NoSuchOutput { .. })));

    // Any change to the recipe is a new input hash and a new build.
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mib = 1\nseed = 4\n");
    let fourth = build(d.path(), &["disk"]);
    assert_eq!(status_of(&fourth, "disk"), Status::Built);
    assert_ne!(fourth[0].manifest.input_hash, m.input_hash);
    assert_ne!(fourth[0].manifest.outputs["disk"].sha256, *sha);
    assert_eq!(store.current("disk").unwrap(), fourth[0].manifest);
    // The old build is still recorded (and would be a no-op to go back to).
    assert!(d.path().join("store/builds").join(format!("{}.json", m.input_hash)).is_file());
}

#[test]
fn source_date_epoch_is_an_input() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mib = 1\n");
    let mut cfg = config_in(d.path());
    let a = imagegen::build(&cfg, &[], &()).unwrap();
    cfg.source_date_epoch = 1;
    let b = imagegen::build(&cfg, &[], &()).unwrap();
    assert_eq!(b[0].status, Status::Built);
    assert_ne!(a[0].manifest.input_hash, b[0].manifest.input_hash);
    assert_eq!(b[0].manifest.source_date_epoch, 1);
}

#[test]
fn verify_reports_tampered_truncated_and_missing() {
    let d = tempfile::tempdir().unwrap();
    for (name, seed) in [("d1", 1), ("d2", 2), ("d3", 3), ("d4", 4)] {
        write_recipe(d.path(), &format!("{name}.toml"), &format!("kind = \"disk\"\nsize_mib = 1\nseed = {seed}\n"));
    }
    build(d.path(), &[]);
    let store = Store::open(d.path().join("store")).unwrap();
    assert!(common::verify(&store).ok());
    let ok = common::imagegen(d.path()).arg("verify").output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));

    let blob = |r: &str| store.output_path(&store.current(r).unwrap(), "disk").unwrap();
    let writable = |p: &Path| fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
    // d1: one byte flipped.
    let p = blob("d1");
    writable(&p);
    let mut data = fs::read(&p).unwrap();
    data[4096] ^= 0xFF;
    fs::write(&p, &data).unwrap();
    // d2: cut short.
    let p = blob("d2");
    writable(&p);
    fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(1000).unwrap();
    // d3: gone.
    fs::remove_file(blob("d3")).unwrap();

    let report = common::verify(&store);
    let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    let has = |prefix: &str, what: &str| lines.iter().any(|l| l.starts_with(prefix) && l.contains(what));
    assert!(has("d1/disk", "tampered"), "{lines:#?}");
    assert!(has("d2/disk", "truncated"), "{lines:#?}");
    assert!(has("d3/disk", "missing"), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.starts_with("d4/")), "{lines:#?}");

    let out = common::imagegen(d.path()).arg("verify").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    for r in ["d1/disk", "d2/disk", "d3/disk"] {
        assert!(stdout.contains(r), "{stdout}");
    }

    // A no-op build only checks sizes (it must stay fast), so it repairs the truncated and
    // missing blobs but not the flipped byte; removing the blob verify named (its cache copy
    // is the same inode, so it fails the cache's hash check too) makes the next build redo it.
    build(d.path(), &[]);
    let lines: Vec<String> = common::verify(&store).problems.iter().map(ToString::to_string).collect();
    assert!(lines.len() == 1 && lines[0].starts_with("d1/disk"), "{lines:#?}");
    fs::remove_file(blob_path_of(&store, "d1")).unwrap();
    build(d.path(), &[]);
    assert!(common::verify(&store).ok());
}

fn blob_path_of(store: &Store, recipe: &str) -> std::path::PathBuf {
    store.blob_path(&store.current(recipe).unwrap().outputs["disk"].sha256)
}

#[test]
fn list_prints_current_artifacts() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mib = 1\n");
    let m = build(d.path(), &["disk"]).remove(0).manifest;
    let out = common::imagegen(d.path()).arg("list").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let o = &m.outputs["disk"];
    let line = stdout.lines().find(|l| l.starts_with("disk ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains(&o.sha256) && line.contains(&o.size.to_string()) && line.contains(&o.path), "{line}");
    // The same rows as JSON, for scripts.
    let out = common::imagegen(d.path()).args(["list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows.iter().find(|r| r["recipe"] == "disk").unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(
        (row["output"].as_str(), row["sha256"].as_str(), row["size"].as_u64()),
        (Some("disk"), Some(o.sha256.as_str()), Some(o.size))
    );
    assert!(row["path"].as_str().unwrap().ends_with(&o.path), "{row}");
}

/// A build killed while writing its artifact leaves a temp file at most: no blob under a
/// content name, no manifest. The next build removes the temp file.
#[test]
fn killed_build_leaves_no_half_artifact() {
    let d = tempfile::tempdir().unwrap();
    // Big enough that the (debug) binary is still writing it when killed.
    write_recipe(d.path(), "big.toml", "kind = \"disk\"\nsize_mib = 8192\n");
    write_recipe(d.path(), "small.toml", "kind = \"disk\"\nsize_mib = 1\n");
    let mut child = common::imagegen(d.path()).args(["build", "big"]).spawn().unwrap();
    let blobs = d.path().join("store/blobs/sha256");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let writing =
            fs::read_dir(&blobs).into_iter().flatten().flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with(".tmp-") && e.metadata().is_ok_and(|m| m.len() > 0)
            });
        if writing {
            break;
        }
        assert!(Instant::now() < deadline, "build never started writing");
        assert!(child.try_wait().unwrap().is_none(), "build ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();

    let files = common::files_under(d.path());
    let visible: Vec<&String> =
        files.iter().filter(|f| !f.starts_with("recipes/") && !f.ends_with(".lock") && !f.contains("/.tmp-")).collect();
    assert!(visible.is_empty(), "half-built state visible: {visible:?}");
    assert!(files.iter().any(|f| f.starts_with("store/blobs/sha256/.tmp-")), "{files:?}");
    assert!(Store::open(d.path().join("store")).unwrap().current("big").is_err());

    build(d.path(), &["small"]);
    let files = common::files_under(d.path());
    assert!(!files.iter().any(|f| f.contains(".tmp-")), "temp files not cleaned: {files:?}");
}

/// `imagegen build --dry-run`: says build / fresh / import and why, and writes nothing.
#[test]
fn dry_run_says_what_would_build_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mib = 1\nseed = 3\n");
    let cfg = config_in(d.path());
    let dry = |cfg: &imagegen::Config| {
        imagegen::build::dry_run(cfg, &["disk".to_string()])
            .unwrap()
            .into_iter()
            .map(|p| (p.recipe, p.action, p.why))
            .collect::<Vec<_>>()
    };
    let first = dry(&cfg);
    assert_eq!(first[0].1, "build", "{first:?}");
    assert!(first[0].2.contains("never built"), "{first:?}");
    assert!(!cfg.store.exists() && !cfg.cache.exists(), "a dry run made the store or cache");
    build(d.path(), &["disk"]);
    assert_eq!(dry(&cfg)[0].1, "fresh");
    // Another store, same cache: imported.
    let mut other = config_in(d.path());
    other.store = d.path().join("other");
    assert_eq!(dry(&other)[0].1, "import");
    assert!(!other.store.exists());
    // The recipe changes: built again, and the changed input is named.
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mib = 1\nseed = 4\n");
    let changed = dry(&cfg);
    assert_eq!(changed[0].1, "build");
    assert!(changed[0].2.contains("changed since the current build"), "{changed:?}");
}
