//! The store against bad files (issue 15): FIFOs and symlinks where blobs should be,
//! manifests edited, deleted or naming paths outside the store, orphan blobs, odd entries,
//! a directory that is not a store, and `imagegen verify` while a build runs. Each run of
//! the binary is bounded (common::run_bounded): a regression that hangs fails its test.
//! Each damage ends in a clear report, and following verify's advice repairs the store.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{config_in, run_bounded, write_recipe, Bounded};
use imagegen::{Store, StoreError};

/// Far above what any of these runs takes (under a second each); only a hang reaches it.
const LIMIT: Duration = Duration::from_secs(120);

/// Builds one 1 MiB disk recipe per (name, seed) and returns the store.
fn disks(dir: &Path, recipes: &[(&str, u64)]) -> Store {
    for (name, seed) in recipes {
        write_recipe(dir, &format!("{name}.toml"), &format!("kind = \"disk\"\nsize_mib = 1\nseed = {seed}\n"));
    }
    imagegen::build(&config_in(dir), &[], &()).unwrap();
    Store::open(dir.join("store")).unwrap()
}

fn run(dir: &Path, args: &[&str]) -> Bounded {
    let out = run_bounded(common::imagegen(dir).args(args), LIMIT);
    assert!(!out.timed_out, "imagegen {args:?} still running after {LIMIT:?}: {}", out.text());
    out
}

fn bad_lines(out: &Bounded) -> Vec<&str> {
    out.stdout.lines().filter(|l| l.starts_with("BAD ")).collect()
}

/// The file each BAD line names (`BAD [recipe/output: ]PATH: what`), checked to be inside
/// the store: verify's advice is to delete them.
fn bad_paths(out: &Bounded, store: &Path) -> Vec<PathBuf> {
    bad_lines(out)
        .into_iter()
        .map(|l| {
            let rest = &l["BAD ".len()..];
            let rest = if rest.starts_with('/') { rest } else { rest.split_once(": ").unwrap().1 };
            let path = PathBuf::from(rest.split_once(": ").unwrap_or_else(|| panic!("no path in {l:?}")).0);
            assert!(path.starts_with(store), "{l:?} names a path outside the store {}", store.display());
            path
        })
        .collect()
}

/// Does what verify's advice says (delete the files named at the start of each BAD line,
/// then build) and checks the store then verifies: nothing was lost.
fn repair(dir: &Path) {
    let store = dir.join("store");
    let out = run(dir, &["verify"]);
    assert!(out.stdout.contains("to repair: delete the file named at the start of each BAD line"), "{}", out.text());
    for p in bad_paths(&out, &store) {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&p).unwrap(),
            Ok(_) => fs::remove_file(&p).unwrap(),
            Err(_) => {} // reported missing
        }
    }
    let b = run(dir, &["build"]);
    assert_eq!(b.code(), Some(0), "{}", b.text());
    let out = run(dir, &["verify"]);
    assert_eq!(out.code(), Some(0), "not repaired: {}", out.text());
    assert!(bad_lines(&out).is_empty(), "{}", out.text());
}

fn blob_of(store: &Store, recipe: &str) -> PathBuf {
    store.blob_path(&store.current(recipe).unwrap().outputs["disk"].sha256)
}

/// Replaces a file (blobs and manifests are read-only) with `f`'s doing.
fn replace(path: &Path, f: impl FnOnce(&Path)) {
    fs::remove_file(path).unwrap();
    f(path);
}

/// Rewrites a manifest's JSON.
fn edit_manifest(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    f(&mut v);
    replace(path, |p| fs::write(p, serde_json::to_vec_pretty(&v).unwrap()).unwrap());
}

fn current_json(dir: &Path, recipe: &str) -> PathBuf {
    dir.join("store/current").join(format!("{recipe}.json"))
}

fn build_json(dir: &Path, store: &Store, recipe: &str) -> PathBuf {
    dir.join("store/builds").join(format!("{}.json", store.current(recipe).unwrap().input_hash))
}

#[test]
fn a_fifo_in_blobs_is_reported_not_waited_on() {
    let d = tempfile::tempdir().unwrap();
    let store = disks(d.path(), &[("d1", 1), ("d2", 2)]);
    // One FIFO where d1's blob was, one under a name no manifest uses.
    let p1 = blob_of(&store, "d1");
    replace(&p1, |p| nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap());
    let stray = store.blob_path(&imagegen::hash::sha256_hex(b"stray"));
    nix::unistd::mkfifo(&stray, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();

    let out = run(d.path(), &["verify"]);
    assert_eq!(out.code(), Some(1), "{}", out.text());
    let bad = bad_lines(&out);
    let has = |prefix: &str, path: &Path| {
        bad.iter().any(|l| l.starts_with(prefix) && l.contains(&path.display().to_string()) && l.contains("a FIFO"))
    };
    assert!(has("BAD d1/disk: ", &p1), "{}", out.text());
    assert!(has("BAD /", &stray), "{}", out.text());
    // Neither d2's recipe nor its blob (not the bare "d2", which a random temporary
    // directory's name may hold: /tmp/.tmp8myAd2/ failed CI once).
    let p2 = blob_of(&store, "d2").display().to_string();
    assert!(!bad.iter().any(|l| l.starts_with("BAD d2/") || l.contains(&p2)), "{}", out.text());
    // hostd's look-up refuses it without opening it.
    let e = store.output_path(&store.current("d1").unwrap(), "disk").unwrap_err();
    assert!(matches!(e, StoreError::Blob { .. }) && e.to_string().contains("a FIFO"), "{e}");
    let list = run(d.path(), &["list"]);
    assert_eq!(list.code(), Some(0), "{}", list.text());
    repair(d.path());
}

#[test]
fn a_blob_symlinked_to_dev_zero_is_not_read() {
    let d = tempfile::tempdir().unwrap();
    let store = disks(d.path(), &[("d1", 1), ("d2", 2)]);
    let p1 = blob_of(&store, "d1");
    let sha = store.current("d1").unwrap().outputs["disk"].sha256.clone();
    replace(&p1, |p| std::os::unix::fs::symlink("/dev/zero", p).unwrap());
    // The cache's copy too: a build must neither hash it forever nor take it.
    let cached = d.path().join("cache/blobs/sha256").join(&sha);
    replace(&cached, |p| std::os::unix::fs::symlink("/dev/zero", p).unwrap());

    let out = run(d.path(), &["verify"]);
    assert_eq!(out.code(), Some(1), "{}", out.text());
    let bad = bad_lines(&out);
    assert!(bad.iter().any(|l| l.starts_with("BAD d1/disk: ") && l.contains("a symlink")), "{}", out.text());
    assert_eq!(bad.len(), 1, "{}", out.text());
    assert!(matches!(store.output_path(&store.current("d1").unwrap(), "disk"), Err(StoreError::Blob { .. })));
    // The build rebuilds d1 (same bytes: same inputs) over the symlinks.
    let b = run(d.path(), &["build"]);
    assert_eq!(b.code(), Some(0), "{}", b.text());
    assert!(fs::symlink_metadata(&p1).unwrap().is_file());
    assert_eq!(imagegen::hash::sha256_file(&p1).unwrap().0, sha);
    assert!(common::verify(&store).ok());
}

#[test]
fn a_blob_symlinked_to_etc_passwd_is_a_symlink_not_truncated() {
    let d = tempfile::tempdir().unwrap();
    let store = disks(d.path(), &[("d1", 1)]);
    let passwd = fs::read("/etc/passwd").unwrap();
    let p1 = blob_of(&store, "d1");
    replace(&p1, |p| std::os::unix::fs::symlink("/etc/passwd", p).unwrap());

    let out = run(d.path(), &["verify"]);
    assert_eq!(out.code(), Some(1), "{}", out.text());
    let bad = bad_lines(&out);
    assert!(bad.len() == 1 && bad[0].starts_with("BAD d1/disk: ") && bad[0].contains("a symlink"), "{}", out.text());
    assert!(!out.stdout.contains("truncated") && !out.stdout.contains("BAD /etc"), "{}", out.text());
    let e = store.output_path(&store.current("d1").unwrap(), "disk").unwrap_err();
    assert!(e.to_string().contains("a symlink"), "{e}");
    repair(d.path());
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd);
}

#[test]
fn a_manifest_path_outside_the_store_is_used_nowhere() {
    let d = tempfile::tempdir().unwrap();
    let store = disks(d.path(), &[("d1", 1), ("d2", 2)]);
    let passwd = fs::read("/etc/passwd").unwrap();
    let evil = "../../../../etc/passwd";
    let (cur, rec) = (current_json(d.path(), "d1"), build_json(d.path(), &store, "d1"));
    for p in [&cur, &rec] {
        edit_manifest(p, |v| v["outputs"]["disk"]["path"] = evil.into());
    }

    let out = run(d.path(), &["verify"]);
    assert_eq!(out.code(), Some(1), "{}", out.text());
    let paths = bad_paths(&out, &d.path().join("store")); // each inside the store
    assert_eq!(paths.len(), 2, "{}", out.text());
    assert!(paths.contains(&cur) && paths.contains(&rec), "{}", out.text());
    assert!(bad_lines(&out).iter().all(|l| l.contains("is not blobs/sha256/<its sha256>")), "{}", out.text());
    let advice = out.stdout.lines().find(|l| l.starts_with("to repair")).unwrap();
    assert!(!advice.contains("etc/passwd"), "{advice}");

    // list: the good recipe, not the bad path; the bad manifest named, exit 1.
    let list = run(d.path(), &["list"]);
    assert_eq!(list.code(), Some(1), "{}", list.text());
    assert!(!list.stdout.contains("passwd") && list.stdout.contains("d2 "), "{}", list.text());
    assert!(list.stderr.contains(&cur.display().to_string()), "{}", list.text());

    // hostd's look-ups.
    let e = store.current("d1").unwrap_err();
    assert!(matches!(e, StoreError::CheckManifest { .. }) && e.to_string().contains("recorded path"), "{e}");
    let mut m = store.current("d2").unwrap();
    m.outputs.get_mut("disk").unwrap().path = evil.into();
    let e = store.output_path(&m, "disk").unwrap_err();
    assert!(matches!(e, StoreError::OutputRecord { .. }), "{e}");
    assert!(matches!(store.current("../../../../etc/passwd"), Err(StoreError::RecipeName { .. })));
    assert!(store.build_manifest(&store.current("d2").unwrap().input_hash).is_some());

    repair(d.path());
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd);
}

#[test]
fn each_kind_of_damage_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let store = disks(d.path(), &[("d1", 1), ("d2", 2), ("d3", 3), ("d4", 4), ("d5", 5)]);
    let m = |r: &str| store.current(r).unwrap();
    let (m2, m3, m5) = (m("d2"), m("d3"), m("d5"));
    let (rec1, rec3) = (build_json(d.path(), &store, "d1"), build_json(d.path(), &store, "d3"));
    // d1: its current pointer deleted.
    fs::remove_file(current_json(d.path(), "d1")).unwrap();
    // d2: its build record deleted.
    let rec2 = build_json(d.path(), &store, "d2");
    fs::remove_file(&rec2).unwrap();
    // d3: its current pointer swapped to d5's (valid) blob.
    let d5_out = serde_json::to_value(&m5.outputs["disk"]).unwrap();
    edit_manifest(&current_json(d.path(), "d3"), |v| v["outputs"]["disk"] = d5_out);
    // d4: its blob holds d5's bytes (hashes to another sha).
    let p4 = blob_of(&store, "d4");
    let d5_bytes = fs::read(blob_of(&store, "d5")).unwrap();
    replace(&p4, |p| fs::write(p, &d5_bytes).unwrap());
    // An orphan blob, a stray directory, a stray file, an unreadable manifest.
    let orphan = store.blob_path(&imagegen::hash::sha256_hex(b"orphan\n"));
    fs::write(&orphan, b"orphan\n").unwrap();
    let stray_dir = d.path().join("store/blobs/sha256/not-a-blob");
    fs::create_dir(&stray_dir).unwrap();
    let stray_file = d.path().join("store/current/notes.txt");
    fs::write(&stray_file, "x").unwrap();
    let garbage = d.path().join("store/builds").join(format!("{}.json", "0".repeat(64)));
    fs::write(&garbage, "{ not json").unwrap();

    let out = run(d.path(), &["verify"]);
    assert_eq!(out.code(), Some(1), "{}", out.text());
    let bad = bad_lines(&out);
    let has = |path: &Path, what: &str| {
        let p = path.display().to_string();
        bad.iter().any(|l| l.contains(&format!("{p}: ")) && l.contains(what))
    };
    let want: [(&Path, String); 8] = [
        (&rec1, format!("a build of d1, whose current manifest {} is missing", current_json(d.path(), "d1").display())),
        (&current_json(d.path(), "d2"), format!("its build record {} is missing", rec2.display())),
        (&current_json(d.path(), "d3"), format!("differs from its build record {}", rec3.display())),
        (&rec3, "differs from".into()),
        (&p4, format!("tampered (content sha256 {}", m5.outputs["disk"].sha256)),
        (&stray_dir, "not a blob".into()),
        (&stray_file, "not a manifest".into()),
        (&garbage, "unreadable manifest".into()),
    ];
    for (path, what) in &want {
        assert!(has(path, what), "no BAD line for {} saying {what:?}:\n{}", path.display(), out.text());
    }
    assert_eq!(bad.len(), want.len(), "{}", out.text());
    let note = format!("note: {}: orphan: no manifest names it (7 bytes)", orphan.display());
    assert!(out.stdout.lines().any(|l| l == note), "{}", out.text());
    assert!(out.stdout.contains("8 problems; 1 orphan blobs (7 bytes) no manifest names"), "{}", out.text());
    // Untouched: d2's and d3's own blobs are still named and intact.
    assert!(!bad.iter().any(|l| l.contains(&m2.outputs["disk"].sha256) || l.contains(&m3.outputs["disk"].sha256)));

    repair(d.path());
    // Orphans are notes: verify passes with one.
    let out = run(d.path(), &["verify"]);
    assert!(out.code() == Some(0) && out.stdout.lines().any(|l| l == note), "{}", out.text());
    assert_eq!(store.current("d3").unwrap(), m3, "d3 current again, as built");
}

#[test]
fn list_and_verify_go_on_past_bad_manifests() {
    let d = tempfile::tempdir().unwrap();
    let store = disks(d.path(), &[("d1", 1), ("d2", 2), ("d3", 3)]);
    let (c1, c2) = (current_json(d.path(), "d1"), current_json(d.path(), "d2"));
    replace(&c1, |p| fs::write(p, "{").unwrap());
    replace(&c2, |p| nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap());

    let list = run(d.path(), &["list"]);
    assert_eq!(list.code(), Some(1), "{}", list.text());
    let d3 = &store.current("d3").unwrap().outputs["disk"];
    assert!(list.stdout.lines().any(|l| l.starts_with("d3 ") && l.contains(&d3.sha256)), "{}", list.text());
    assert!(list.stderr.contains(&format!("{}: unreadable manifest", c1.display())), "{}", list.text());
    assert!(list.stderr.contains(&format!("{}: unreadable manifest", c2.display())), "{}", list.text());
    assert!(list.stderr.contains("a FIFO"), "{}", list.text());
    assert!(matches!(store.current("d2"), Err(StoreError::ReadManifest { .. })));

    let out = run(d.path(), &["verify"]);
    assert_eq!(out.code(), Some(1), "{}", out.text());
    assert_eq!(bad_paths(&out, &d.path().join("store")), [c1, c2], "{}", out.text());
    repair(d.path());
}

#[test]
fn an_empty_directory_is_not_a_store() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("store")).unwrap();
    for cmd in ["verify", "list"] {
        let out = run(d.path(), &[cmd]);
        assert_eq!(out.code(), Some(1), "{cmd}: {}", out.text());
        assert!(out.stderr.contains("is not an imagegen store: it has no blobs/sha256/"), "{cmd}: {}", out.text());
        assert!(!out.stdout.contains(" ok"), "{cmd}: {}", out.text());
    }
    assert!(common::files_under(&d.path().join("store")).is_empty(), "a check wrote into it");
    let store = Store::open(d.path().join("store")).unwrap();
    assert!(matches!(store.lock_shared(|_| {}), Err(StoreError::NotAStore { .. })));
}

/// Issue 15 saw "BAD … missing" in 3 of 7 verifies run during a build: verify listed the
/// blobs, the build then wrote new blobs and manifests, verify read the manifests. Verify
/// now waits for the build (shared lock) and reads manifests first.
#[test]
fn verify_during_builds_sees_no_half_build() {
    let d = tempfile::tempdir().unwrap();
    let recipes = |round: u32| {
        write_recipe(d.path(), "agent.toml", "kind = \"agent\"\n");
        write_recipe(d.path(), "disk.toml", &format!("kind = \"disk\"\nsize_mib = 1\nseed = {round}\n"));
        let tree = format!("kind = \"rootfs\"\n[[files]]\ndst = \"/etc/round\"\ncontents = \"{round}\\n\"\n");
        write_recipe(d.path(), "rootfs.toml", &tree);
    };
    // The agent's cargo build, once, outside the timed rounds.
    recipes(0);
    imagegen::build(&config_in(d.path()), &[], &()).unwrap();
    let mut overlapped = 0;
    for round in 1..=20 {
        recipes(round);
        let (build, verifies) = std::thread::scope(|s| {
            let b = s.spawn(|| run(d.path(), &["build"]));
            // Staggered first starts: before, at and after the build takes the lock; then
            // verify after verify for as long as the build runs.
            std::thread::sleep(Duration::from_millis(u64::from(round * 37 % 200)));
            let mut verifies = vec![run(d.path(), &["verify"])];
            while !b.is_finished() {
                verifies.push(run(d.path(), &["verify"]));
            }
            (b.join().unwrap(), verifies)
        });
        assert_eq!(build.code(), Some(0), "round {round}: {}", build.text());
        for v in &verifies {
            assert_eq!(v.code(), Some(0), "round {round}: {}", v.text());
            assert!(!v.stdout.contains("BAD") && !v.stdout.contains("missing"), "round {round}: {}", v.text());
        }
        let waited = verifies.iter().any(|v| v.stderr.contains("waiting for a build to finish"));
        if waited || build.stderr.contains("waiting for another") {
            overlapped += 1;
        }
    }
    // Otherwise the test proved nothing about concurrency.
    assert!(overlapped > 0, "no verify ran during a build in 20 rounds");
}
