//! Kernel recipes end to end. Ignored by default: they unpack the 150 MB source tarball
//! (and one builds a kernel). Run with `cargo test -p imagegen --test kernel -- --ignored`.
//! The source is the shipped recipes' pinned Debian package, fetched into the test's cache.

mod common;

use std::path::Path;

use common::{config_in, write_recipe};
use imagegen::{BuildError, Status, Store};

/// The tarball pin and the `[source]` table of the shipped kernel-pv recipe.
fn shipped_source() -> (String, String) {
    let text = std::fs::read_to_string(common::shipped_recipes().join("kernel-pv.toml")).unwrap();
    let v: toml::Table = toml::from_str(&text).unwrap();
    let sha = v["sha256"].as_str().unwrap().to_string();
    let table = text[text.find("\n[source]").expect("a [source] table") + 1..].to_string();
    (sha, table)
}

fn kernel_recipe(dir: &Path, fragment: &str) {
    let (pin, source) = shipped_source();
    write_recipe(dir, "kernels/test.config", fragment);
    write_recipe(
        dir,
        "k.toml",
        &format!(
            "kind = \"kernel\"\nsha256 = \"{pin}\"\narch = \"x86_64\"\n\
             fragments = [\"kernels/test.config\"]\ntarget = \"vmlinux\"\noutput = \"vmlinux\"\n\
             cmdline = \"console=ttyS0\"\n{source}"
        ),
    );
}

#[test]
#[ignore = "unpacks the kernel source and runs kconfig (~2 minutes); run with --ignored"]
fn fragment_option_lost_by_olddefconfig_fails_naming_it() {
    let d = tempfile::tempdir().unwrap();
    // VIRTIO_NET needs NET and a virtio transport, which tinyconfig does not have: olddefconfig
    // drops it.
    kernel_recipe(d.path(), "CONFIG_PRINTK=y\nCONFIG_VIRTIO_NET=y\n");
    let err = imagegen::build(&config_in(d.path()), &["k".to_string()], &()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BuildError::KernelConfig { .. }), "{err:?}");
    for part in ["recipes/k.toml", "kernels/test.config", "CONFIG_VIRTIO_NET", "requested y", "has not set"] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    assert!(!msg.contains("CONFIG_PRINTK"), "{msg}");
    assert!(Store::open(d.path().join("store")).unwrap().current("k").is_err());
}

#[test]
#[ignore = "builds a tinyconfig x86_64 kernel (~5-10 minutes on 2 CPUs); run with --ignored"]
fn kernel_builds_then_is_a_noop() {
    let d = tempfile::tempdir().unwrap();
    kernel_recipe(d.path(), "CONFIG_PRINTK=y\nCONFIG_64BIT=y\n# CONFIG_MODULES is not set\n");
    let cfg = config_in(d.path());
    let out = imagegen::build(&cfg, &["k".to_string()], &()).unwrap();
    assert_eq!(out[0].status, Status::Built);
    let m = &out[0].manifest;
    assert_eq!(m.cmdline.as_deref(), Some("console=ttyS0"));
    for t in ["gcc", "ld", "make"] {
        assert!(m.tools.contains_key(t), "{:?}", m.tools);
    }
    let store = Store::open(&cfg.store).unwrap();
    let config = std::fs::read_to_string(store.output_path(m, "config").unwrap()).unwrap();
    assert!(config.contains("CONFIG_PRINTK=y\n"));
    let vmlinux = std::fs::read(store.output_path(m, "kernel").unwrap()).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF");
    // The work directory is gone (or going: it is deleted in the background).
    let again = imagegen::build(&cfg, &["k".to_string()], &()).unwrap();
    assert_eq!(again[0].status, Status::Fresh);
}
