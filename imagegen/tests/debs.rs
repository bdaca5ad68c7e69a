//! Debian packages as inputs: `packages` of a tree recipe and `kind = "deb-file"`. The test
//! packages are made here with `dpkg-deb --build` and put where a fetch leaves them (the
//! cache, under their sha256), so nothing is downloaded.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use common::{config_in, write_recipe};
use imagegen::archive::read_cpio_newc;
use imagegen::{BuildError, PlanError, Status, Store};

/// Builds a .deb of `files` (path → contents, mode) and caches it; returns its sha256.
fn cached_deb(dir: &Path, name: &str, files: &[(&str, &[u8], u32)]) -> String {
    let root = dir.join(format!("pkg-{name}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: test\n"),
    )
    .unwrap();
    for (path, data, mode) in files {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(*mode)).unwrap();
    }
    let deb = dir.join(format!("{name}.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .expect("dpkg-deb");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (sha, _) = imagegen::hash::sha256_file(&deb).unwrap();
    let cache = dir.join("cache/debs");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(&deb, cache.join(format!("{sha}.deb"))).unwrap();
    sha
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn deb_file_takes_one_file_and_gunzips_it() {
    let d = tempfile::tempdir().unwrap();
    let sha =
        cached_deb(d.path(), "hv", &[("/boot/hv.gz", &gz(b"the hypervisor"), 0o644), ("/boot/other", b"x", 0o644)]);
    write_recipe(d.path(), "hv.toml", &format!("kind = \"deb-file\"\npackage = \"hv\"\nversion = \"1.0-1\"\nsha256 = \"{sha}\"\npath = \"/boot/hv.gz\"\ngunzip = true\ncmdline = \"a=b\"\n"));
    let cfg = config_in(d.path());
    let out = imagegen::build(&cfg, &["hv".into()], &()).unwrap();
    assert_eq!(out[0].status, Status::Built);
    let store = Store::open(&cfg.store).unwrap();
    let m = store.current("hv").unwrap();
    assert_eq!(m.cmdline.as_deref(), Some("a=b"));
    assert!(m.inputs.iter().any(|i| i.role == "package" && i.name == "hv=1.0-1" && i.sha256 == sha));
    assert_eq!(std::fs::read(store.output_path(&m, "file").unwrap()).unwrap(), b"the hypervisor");
    let again = imagegen::build(&cfg, &["hv".into()], &()).unwrap();
    assert_eq!(again[0].status, Status::Fresh);
}

#[test]
fn packages_put_the_selected_files_into_a_tree() {
    let d = tempfile::tempdir().unwrap();
    let sha = cached_deb(
        d.path(),
        "tools",
        &[
            ("/usr/bin/tool", b"#!/bin/sh\n", 0o755),
            ("/usr/lib/t/libt.so.1", b"ELF", 0o644),
            ("/usr/share/doc/tools/README", b"doc", 0o644),
        ],
    );
    write_recipe(d.path(), "agent.toml", "kind = \"agent\"\n");
    write_recipe(
        d.path(),
        "img.toml",
        &format!(
            "kind = \"initramfs\"\nagent_path = \"/sbin/agent\"\n[[packages]]\nname = \"tools\"\nversion = \"1.0-1\"\nsha256 = \"{sha}\"\npaths = [\"/usr/bin/tool\", \"/usr/lib/t/\"]\n"
        ),
    );
    let cfg = config_in(d.path());
    imagegen::build(&cfg, &["img".into()], &()).unwrap();
    let store = Store::open(&cfg.store).unwrap();
    let m = store.current("img").unwrap();
    let mut cpio = Vec::new();
    flate2::read::GzDecoder::new(&std::fs::read(store.output_path(&m, "initramfs").unwrap()).unwrap()[..])
        .read_to_end(&mut cpio)
        .unwrap();
    let entries = read_cpio_newc(&cpio).unwrap();
    let get = |n: &str| entries.iter().find(|e| e.name == n);
    let tool = get("usr/bin/tool").expect("selected file");
    assert_eq!((tool.mode & 0o7777, tool.data.as_slice(), tool.uid), (0o755, &b"#!/bin/sh\n"[..], 0));
    assert_eq!(get("usr/lib/t/libt.so.1").expect("selected directory").data, b"ELF");
    assert!(get("usr/share/doc/tools/README").is_none(), "not selected");
}

#[test]
fn a_path_that_selects_nothing_fails_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let sha = cached_deb(d.path(), "tools", &[("/usr/bin/tool", b"x", 0o755)]);
    write_recipe(d.path(), "agent.toml", "kind = \"agent\"\n");
    write_recipe(
        d.path(),
        "img.toml",
        &format!("kind = \"rootfs\"\n[[packages]]\nname = \"tools\"\nversion = \"1.0-1\"\nsha256 = \"{sha}\"\npaths = [\"/usr/bin/tol\"]\n"),
    );
    let err = imagegen::build(&config_in(d.path()), &["img".into()], &()).unwrap_err().to_string();
    assert!(err.contains("building img") && err.contains("tools=1.0-1") && err.contains("\"/usr/bin/tol\""), "{err}");
}

#[test]
fn bad_pins_fail_before_anything_is_fetched() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", "kind = \"agent\"\n");
    write_recipe(
        d.path(),
        "img.toml",
        "kind = \"rootfs\"\n[[packages]]\nname = \"tools\"\nversion = \"1.0-1\"\nsha256 = \"abc\"\n",
    );
    let cfg = config_in(d.path());
    let err = imagegen::build(&cfg, &["img".into()], &()).unwrap_err();
    assert!(matches!(err, BuildError::Plan(PlanError::ResolveInput { .. })), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("recipes/img.toml") && msg.contains("packages[0].sha256"), "{msg}");
    assert!(!cfg.store.exists() && !cfg.cache.exists());
    write_recipe(
        d.path(),
        "f.toml",
        "kind = \"deb-file\"\npackage = \"Bad_Name\"\nversion = \"1\"\nsha256 = \"abc\"\npath = \"/x\"\n",
    );
    let msg = imagegen::build(&cfg, &["f".into()], &()).unwrap_err().to_string();
    assert!(msg.contains("`package`") && msg.contains("not a Debian package name"), "{msg}");
    let pin = "0".repeat(64);
    write_recipe(
        d.path(),
        "f.toml",
        &format!("kind = \"deb-file\"\npackage = \"pk\"\nversion = \"1\"\nsha256 = \"{pin}\"\npath = \"/boot/\"\n"),
    );
    let msg = imagegen::build(&cfg, &["f".into()], &()).unwrap_err().to_string();
    assert!(msg.contains("`path`") && msg.contains("names a directory"), "{msg}");
}

#[test]
fn busybox_from_a_pinned_package_with_its_applets() {
    let d = tempfile::tempdir().unwrap();
    // A stand-in busybox: a script that lists its applets as `busybox --list` does (and
    // answers only when called by that name, as busybox does).
    let script = b"#!/bin/sh\n[ \"$(basename \"$0\")\" = busybox ] || exit 127\necho sh\necho ls\necho busybox\n";
    let sha = cached_deb(d.path(), "bb", &[("/bin/busybox", script, 0o755), ("/usr/share/doc/bb/x", b"doc", 0o644)]);
    write_recipe(d.path(), "agent.toml", "kind = \"agent\"\n");
    write_recipe(
        d.path(),
        "img.toml",
        &format!(
            "kind = \"initramfs\"\nbusybox = true\nbusybox_package = {{ name = \"bb\", version = \"1.0-1\", sha256 = \"{sha}\" }}\n"
        ),
    );
    let cfg = config_in(d.path());
    let out = imagegen::build(&cfg, &["img".into()], &()).unwrap();
    let m = &out.iter().find(|o| o.recipe == "img").unwrap().manifest;
    assert!(m.inputs.iter().any(|i| i.role == "package" && i.name == "bb=1.0-1" && i.sha256 == sha), "{:?}", m.inputs);
    assert!(!m.inputs.iter().any(|i| i.role == "busybox"), "the host's busybox is not an input");
    let store = Store::open(&cfg.store).unwrap();
    let mut cpio = Vec::new();
    flate2::read::GzDecoder::new(&std::fs::read(store.output_path(m, "initramfs").unwrap()).unwrap()[..])
        .read_to_end(&mut cpio)
        .unwrap();
    let entries = read_cpio_newc(&cpio).unwrap();
    let get = |n: &str| entries.iter().find(|e| e.name == n);
    assert_eq!(get("bin/busybox").expect("busybox").data, script);
    for applet in ["bin/sh", "bin/ls"] {
        assert_eq!(get(applet).unwrap_or_else(|| panic!("{applet}")).data, b"busybox");
    }
    assert!(get("usr/share/doc/bb/x").is_none());
    assert!(common::files_under(&cfg.cache).iter().all(|f| !f.contains(".tmp-")), "the applet probe cleaned up");
}
