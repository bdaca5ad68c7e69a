//! Bad recipes fail before anything is written to the store (or the cache), with one error
//! naming the recipe file, the field and the problem.

mod common;

use std::path::Path;

use common::{config_in, write_recipe};
use imagegen::{BuildError, PlanError};

const AGENT: &str = "kind = \"agent\"\n";
const KERNEL_PIN: &str = "585a4a074597aefa2b1a68ada83a3184ba351c127544dea80618bbcceaa3961f";

/// Builds `name` and returns the error, after checking nothing was written.
fn fails(dir: &Path, name: &str) -> (String, BuildError) {
    let cfg = config_in(dir);
    let err = imagegen::build(&cfg, &[name.to_string()], &()).expect_err("the recipe is bad");
    assert!(!cfg.store.exists(), "store touched by a failed plan: {err}");
    assert!(!cfg.cache.exists(), "cache touched by a failed plan: {err}");
    (err.to_string(), err)
}

fn assert_names(msg: &str, file: &str, field: &str, problem: &str) {
    assert!(msg.contains(file), "file {file:?} not in: {msg}");
    assert!(msg.contains(field), "field {field:?} not in: {msg}");
    assert!(msg.contains(problem), "problem {problem:?} not in: {msg}");
}

#[test]
fn unknown_key() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mb = 4\n");
    let (msg, err) = fails(d.path(), "disk");
    assert!(matches!(err, BuildError::Plan(PlanError::ParseRecipe { .. })), "{err:?}");
    assert_names(&msg, "recipes/disk.toml", "`size_mb`", "unknown field");
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn unknown_key_in_a_nested_table() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    write_recipe(d.path(), "rootfs.toml", "kind = \"rootfs\"\n[[files]]\ndst = \"/x\"\ncontents = \"\"\nmod = 1\n");
    let (msg, _) = fails(d.path(), "rootfs");
    assert_names(&msg, "recipes/rootfs.toml", "`mod`", "unknown field");
}

#[test]
fn missing_file() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    write_recipe(d.path(), "rootfs.toml", "kind = \"rootfs\"\n[[files]]\ndst = \"/etc/motd\"\nsrc = \"files/motd\"\n");
    let (msg, err) = fails(d.path(), "rootfs");
    assert!(matches!(err, BuildError::Plan(PlanError::ResolveInput { .. })), "{err:?}");
    assert_names(&msg, "recipes/rootfs.toml", "files[0].src", "files/motd does not exist");
}

#[test]
fn missing_fragment_and_patch() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("recipes/linux.tar.xz");
    write_recipe(d.path(), "linux.tar.xz", "not really");
    let k = format!(
        "kind = \"kernel\"\nsource = {src:?}\nsha256 = \"{KERNEL_PIN}\"\narch = \"x86_64\"\n\
         fragments = [\"kernels/none.config\"]\ntarget = \"vmlinux\"\noutput = \"vmlinux\"\n"
    );
    write_recipe(d.path(), "k.toml", &k);
    let (msg, _) = fails(d.path(), "k");
    assert_names(&msg, "recipes/k.toml", "fragments[0]", "kernels/none.config does not exist");
    write_recipe(d.path(), "kernels/none.config", "CONFIG_X=y\n");
    write_recipe(d.path(), "k.toml", &k.replace("target =", "patches = [\"p/missing.patch\"]\ntarget ="));
    let (msg, _) = fails(d.path(), "k");
    assert_names(&msg, "recipes/k.toml", "patches[0]", "p/missing.patch does not exist");
}

#[test]
fn wrong_sha256_pin() {
    let d = tempfile::tempdir().unwrap();
    // A stand-in tarball: the pin is checked before anything is unpacked or built.
    write_recipe(d.path(), "src.tar.xz", "not the kernel");
    write_recipe(
        d.path(),
        "k.toml",
        &format!(
            "kind = \"kernel\"\nsource = \"src.tar.xz\"\nsha256 = \"{KERNEL_PIN}\"\narch = \"um\"\n\
             target = \"linux\"\noutput = \"linux\"\n"
        ),
    );
    let (msg, err) = fails(d.path(), "k");
    assert!(matches!(err, BuildError::Plan(PlanError::VerifySource { .. })), "{err:?}");
    let actual = imagegen::hash::sha256_hex(b"not the kernel");
    assert_names(&msg, "recipes/k.toml", "`sha256`", &format!("pinned {KERNEL_PIN}"));
    assert!(msg.contains(&actual), "{msg}");
}

#[test]
fn malformed_sha256_pin() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "src.tar.xz", "x");
    write_recipe(
        d.path(),
        "k.toml",
        "kind = \"kernel\"\nsource = \"src.tar.xz\"\nsha256 = \"ABC\"\narch = \"um\"\n\
         target = \"linux\"\noutput = \"linux\"\n",
    );
    let (msg, _) = fails(d.path(), "k");
    assert_names(&msg, "recipes/k.toml", "`sha256`", "not 64 lower-case hex digits");
}

#[test]
fn dotdot_path() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    std::fs::write(d.path().join("outside"), "secret").unwrap();
    write_recipe(
        d.path(),
        "rootfs.toml",
        "kind = \"rootfs\"\n[[files]]\ndst = \"/x\"\nsrc = \"files/../../outside\"\n",
    );
    let (msg, _) = fails(d.path(), "rootfs");
    assert_names(&msg, "recipes/rootfs.toml", "files[0].src", "contains `..`");
}

#[test]
fn absolute_path() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    write_recipe(d.path(), "rootfs.toml", "kind = \"rootfs\"\n[[files]]\ndst = \"/x\"\nsrc = \"/etc/passwd\"\n");
    let (msg, _) = fails(d.path(), "rootfs");
    assert_names(&msg, "recipes/rootfs.toml", "files[0].src", "\"/etc/passwd\" is absolute");
}

#[test]
fn symlink_leaving_recipes() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    std::fs::write(d.path().join("outside"), "secret").unwrap();
    std::fs::create_dir_all(d.path().join("recipes/files")).unwrap();
    std::os::unix::fs::symlink(d.path().join("outside"), d.path().join("recipes/files/link")).unwrap();
    write_recipe(d.path(), "rootfs.toml", "kind = \"rootfs\"\n[[files]]\ndst = \"/x\"\nsrc = \"files/link\"\n");
    let (msg, _) = fails(d.path(), "rootfs");
    assert_names(&msg, "recipes/rootfs.toml", "files[0].src", "outside");
    assert!(msg.contains("symlink"), "{msg}");
}

#[test]
fn unknown_dependency() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "initramfs.toml", "kind = \"initramfs\"\nagent = \"no-such-agent\"\n");
    let (msg, err) = fails(d.path(), "initramfs");
    assert!(matches!(err, BuildError::Plan(PlanError::ResolveInput { .. })), "{err:?}");
    assert_names(&msg, "recipes/initramfs.toml", "`agent`", "no recipe \"no-such-agent\"");
}

#[test]
fn dependency_of_the_wrong_kind() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\n");
    write_recipe(d.path(), "initramfs.toml", "kind = \"initramfs\"\nagent = \"disk\"\n");
    let (msg, _) = fails(d.path(), "initramfs");
    assert_names(&msg, "recipes/initramfs.toml", "`agent`", "kind disk, expected agent");
}

#[test]
fn dependency_cycle() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    // Two trees each shipping the other's output.
    write_recipe(d.path(), "a.toml", "kind = \"rootfs\"\n[[files]]\ndst = \"/b.tar\"\nrecipe = \"b\"\n");
    write_recipe(d.path(), "b.toml", "kind = \"initramfs\"\n[[files]]\ndst = \"/a.tar\"\nrecipe = \"a\"\n");
    let (msg, err) = fails(d.path(), "a");
    assert!(matches!(err, BuildError::Plan(PlanError::DependencyCycle { .. })), "{err:?}");
    assert_names(&msg, "recipes/b.toml", "files[0].recipe", "dependency cycle a → b → a");
}

#[test]
fn conflicting_paths_in_one_tree() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    write_recipe(
        d.path(),
        "rootfs.toml",
        "kind = \"rootfs\"\n[[files]]\ndst = \"/sbin/guest-agent\"\ncontents = \"x\"\n",
    );
    let (msg, _) = fails(d.path(), "rootfs");
    assert_names(&msg, "recipes/rootfs.toml", "files[0].dst", "added twice");
}

#[test]
fn unknown_recipe_on_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("recipes")).unwrap();
    let (msg, err) = fails(d.path(), "nope");
    assert!(matches!(err, BuildError::Plan(PlanError::UnknownRecipe { .. })), "{err:?}");
    assert!(msg.contains("recipes/nope.toml"), "{msg}");
}

#[test]
fn the_binary_reports_one_line_and_fails() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mib = 0\n");
    let out = common::imagegen(d.path()).args(["build", "disk"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_names(&err, "recipes/disk.toml", "`size_mib`", "not in 1..=1048576");
    assert!(!d.path().join("store").exists());
}

/// Every shipped recipe parses and resolves (kernels included: this checks their fragment
/// and patch files exist, nothing is built).
#[test]
fn shipped_recipes_plan() {
    let plan = imagegen::plan::plan(&common::shipped_recipes(), &[]).unwrap();
    let names = plan.names();
    for n in ["agent", "initramfs", "rootfs", "oci-bundle", "disk", "kernel-uml", "kernel-pv"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("agent") < pos("initramfs") && pos("rootfs") < pos("oci-bundle"));
}

#[test]
fn busybox_from_a_path_or_a_package_not_both() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    let pin = format!(
        "busybox_package = {{ name = \"busybox-static\", version = \"1:1.35.0-4\", sha256 = \"{KERNEL_PIN}\" }}\n"
    );
    write_recipe(
        d.path(),
        "i.toml",
        &format!("kind = \"initramfs\"\nbusybox = true\nbusybox_path = \"/bin/busybox\"\n{pin}"),
    );
    let (msg, _) = fails(d.path(), "i");
    assert_names(&msg, "recipes/i.toml", "busybox_package", "not both");
    write_recipe(d.path(), "i.toml", &format!("kind = \"initramfs\"\n{pin}"));
    let (msg, _) = fails(d.path(), "i");
    assert_names(&msg, "recipes/i.toml", "busybox", "need busybox = true");
    write_recipe(
        d.path(),
        "i.toml",
        &format!("kind = \"initramfs\"\nbusybox = true\n{}", pin.replace("1:1.35.0-4", "one")),
    );
    let (msg, _) = fails(d.path(), "i");
    assert_names(&msg, "recipes/i.toml", "busybox_package.version", "not a Debian version");
}

#[test]
fn malformed_kernel_source_package() {
    let d = tempfile::tempdir().unwrap();
    let k = |package: &str, path: &str| {
        format!(
            "kind = \"kernel\"\nsha256 = \"{KERNEL_PIN}\"\narch = \"um\"\ntarget = \"linux\"\noutput = \"linux\"\n\
             [source]\npackage = \"{package}\"\nversion = \"6.12.1-1\"\nsha256 = \"{KERNEL_PIN}\"\npath = \"{path}\"\n"
        )
    };
    write_recipe(d.path(), "k.toml", &k("Linux Source", "/usr/src/l.tar.xz"));
    let (msg, _) = fails(d.path(), "k");
    assert_names(&msg, "recipes/k.toml", "source.package", "not a Debian package name");
    write_recipe(d.path(), "k.toml", &k("linux-source-6.12", "usr/src/l.tar.xz"));
    let (msg, _) = fails(d.path(), "k");
    assert_names(&msg, "recipes/k.toml", "source.path", "absolute");
}

/// A plain `imagegen build` (every recipe) with a stray file whose stem is not a recipe
/// name: the error names the file and says what a name may be, instead of "does not
/// exist"; the same by name on the command line.
#[test]
fn stray_recipe_file_names() {
    for stray in ["Initramfs2.toml", "my image.toml", ".disk.toml"] {
        let d = tempfile::tempdir().unwrap();
        write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mib = 1\n");
        write_recipe(d.path(), stray, "kind = \"disk\"\nsize_mib = 1\n");
        let check = |msg: &str| {
            assert!(msg.contains(&format!("recipes/{stray}")), "{stray}: {msg}");
            assert!(msg.contains("is not a recipe name"), "{stray}: {msg}");
            assert!(msg.contains("1 to 64 lower-case letters, digits, `-` and `_`"), "{stray}: {msg}");
            assert!(!msg.contains("does not exist"), "{stray}: {msg}");
        };
        let cfg = config_in(d.path());
        let err = imagegen::build(&cfg, &[], &()).expect_err("a stray recipe name");
        assert!(matches!(err, BuildError::Plan(PlanError::RecipeName { .. })), "{err:?}");
        check(&err.to_string());
        assert!(!cfg.store.exists());
        let (msg, err) = fails(d.path(), stray.trim_end_matches(".toml"));
        assert!(matches!(err, BuildError::Plan(PlanError::RecipeName { .. })), "{err:?}");
        check(&msg);
        let out = common::imagegen(d.path()).arg("build").output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success() && stderr.lines().count() == 1, "{stderr}");
        check(&stderr);
    }
}

#[test]
fn a_recipe_file_name_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mib = 1\n");
    let name = std::ffi::OsStr::from_bytes(b"k\xffrnel.toml");
    std::fs::write(d.path().join("recipes").join(name), "kind = \"disk\"\n").unwrap();
    let cfg = config_in(d.path());
    let err = imagegen::build(&cfg, &[], &()).expect_err("a non-UTF-8 recipe file name");
    assert!(matches!(err, BuildError::Plan(PlanError::RecipeNameNotUtf8 { .. })), "{err:?}");
    assert_names(&err.to_string(), "recipes/k\u{FFFD}rnel.toml", "file name", "not UTF-8");
    assert!(!cfg.store.exists());
    let out = common::imagegen(d.path()).arg("build").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("k\u{FFFD}rnel.toml: the file name is not UTF-8"));
}

#[test]
fn an_empty_recipe_directory() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "README.md", "no recipes here\n");
    let cfg = config_in(d.path());
    let err = imagegen::build(&cfg, &[], &()).expect_err("nothing to build");
    assert!(matches!(err, BuildError::Plan(PlanError::NoRecipes { .. })), "{err:?}");
    assert_names(&err.to_string(), "recipes", "no recipes (*.toml)", "nothing to build");
    assert!(!cfg.store.exists());
    let out = common::imagegen(d.path()).arg("build").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no recipes (*.toml) in it"));
}

/// hostd unpacks a rootfs tar for container runtimes, which take no device nodes: refused
/// when planned, not when hostd first unpacks it.
#[test]
fn device_node_in_a_rootfs() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    write_recipe(
        d.path(),
        "rootfs.toml",
        "kind = \"rootfs\"\nnodes = [{ path = \"/dev/console\", type = \"char\", major = 5, minor = 1 }]\n",
    );
    let (msg, _) = fails(d.path(), "rootfs");
    assert_names(&msg, "recipes/rootfs.toml", "nodes[0]", "cannot hold device nodes");
    assert!(msg.contains("/dev/console"), "{msg}");
}

#[test]
fn device_numbers_beyond_linux() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    let node = |major: u64, minor: u64| {
        format!(
            "kind = \"initramfs\"\nnodes = [{{ path = \"/dev/console\", type = \"char\", major = 5, minor = 1 }}, \
             {{ path = \"/dev/x\", type = \"block\", major = {major}, minor = {minor} }}]\n"
        )
    };
    write_recipe(d.path(), "i.toml", &node(4096, 0));
    let (msg, _) = fails(d.path(), "i");
    assert_names(&msg, "recipes/i.toml", "nodes[1].major", "4096 is beyond Linux's device numbers (major < 4096)");
    write_recipe(d.path(), "i.toml", &node(8, 1 << 20));
    let (msg, _) = fails(d.path(), "i");
    assert_names(
        &msg,
        "recipes/i.toml",
        "nodes[1].minor",
        "1048576 is beyond Linux's device numbers (minor < 1048576)",
    );
    // The largest numbers Linux has are fine.
    write_recipe(d.path(), "i.toml", &node(4095, (1 << 20) - 1));
    imagegen::plan::plan(&d.path().join("recipes"), &["i".to_string()]).unwrap();
}

#[test]
fn path_component_longer_than_linux_takes() {
    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    let long = "n".repeat(256);
    write_recipe(d.path(), "rootfs.toml", &format!("kind = \"rootfs\"\ndirs = [\"/etc/{long}\"]\n"));
    let (msg, _) = fails(d.path(), "rootfs");
    assert_names(&msg, "recipes/rootfs.toml", "dirs[0]", "a component longer than 255 bytes");
    write_recipe(
        d.path(),
        "rootfs.toml",
        &format!("kind = \"rootfs\"\n[[files]]\ndst = \"/{long}/x\"\ncontents = \"\"\n"),
    );
    let (msg, _) = fails(d.path(), "rootfs");
    assert_names(&msg, "recipes/rootfs.toml", "files[0].dst", "a component longer than 255 bytes");
    // 255 bytes is a name Linux takes.
    write_recipe(d.path(), "rootfs.toml", &format!("kind = \"rootfs\"\ndirs = [\"/etc/{}\"]\n", &long[..255]));
    imagegen::plan::plan(&d.path().join("recipes"), &["rootfs".to_string()]).unwrap();
}

/// `imagegen recipes --kind kernel`: the recipes scripts/test builds first, found by parsing
/// each recipe (the same set as their files' `kind = "kernel"` lines); a broken recipe among
/// the others is an error naming it, not a shorter list; an unknown kind lists the kinds.
#[test]
fn recipes_by_kind() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let mut by_line = Vec::new();
    for e in std::fs::read_dir(&repo).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml")
            && std::fs::read_to_string(&p).unwrap().lines().any(|l| l == "kind = \"kernel\"")
        {
            by_line.push(p.file_stem().unwrap().to_str().unwrap().to_string());
        }
    }
    by_line.sort();
    let kernels = imagegen::plan::recipes_of_kind(&repo, imagegen::Kind::Kernel).unwrap();
    assert!(!kernels.is_empty());
    assert_eq!(kernels, by_line);
    // Its recipes are the repository's (store and cache, not touched, beside them).
    let out = common::imagegen(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap())
        .args(["recipes", "--kind", "kernel"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{}\n", kernels.join("\n")));

    let d = tempfile::tempdir().unwrap();
    write_recipe(d.path(), "agent.toml", AGENT);
    write_recipe(d.path(), "disk.toml", "kind = \"disk\"\nsize_mb = 4\n");
    let cfg = config_in(d.path());
    let e = imagegen::plan::recipes_of_kind(&cfg.recipes, imagegen::Kind::Agent).unwrap_err().to_string();
    assert!(e.contains("disk.toml") && e.contains("size_mb"), "{e}");
    let e = "bogus".parse::<imagegen::Kind>().unwrap_err();
    assert!(e.contains("\"bogus\"") && e.contains("kernel-package"), "{e}");
}
