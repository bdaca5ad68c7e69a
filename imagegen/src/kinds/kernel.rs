//! `kind = "kernel"`: unpack the pinned source, patch, configure (base config + fragments
//! merged with the kernel's own merge_config.sh, then olddefconfig), check that every
//! fragment option survived, build. All in `$VIRTBENCH_CACHE/work/<recipe>-<input-hash>`,
//! removed after success and kept after a failure (for its `build.log`) until the next
//! attempt.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Ctx;
use crate::build::BuildError;
use crate::hash::is_sha256_hex;
use crate::manifest::Output;
use crate::recipe::{KernelSpec, Recipe};
use crate::store::{output_record, temp_name};

/// The environment of every configure and build step: the one place to add flags.
/// Timestamps, user and host names are fixed; build paths are mapped to `/kernel`.
pub fn kernel_env(source_date_epoch: u64, build_dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("KBUILD_BUILD_TIMESTAMP", format!("@{source_date_epoch}")),
        ("KBUILD_BUILD_USER", "virtbench".into()),
        ("KBUILD_BUILD_HOST", "virtbench".into()),
        ("KBUILD_BUILD_VERSION", "1".into()),
        ("SOURCE_DATE_EPOCH", source_date_epoch.to_string()),
        ("LC_ALL", "C".into()),
        ("TZ", "UTC".into()),
        ("KCFLAGS", format!("-ffile-prefix-map={}=/kernel", build_dir.display())),
    ]
}

/// Inherited variables that would change what make or the compiler do.
const ENV_REMOVE: &[&str] = &[
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "GNUMAKEFLAGS",
    "ARCH",
    "SUBARCH",
    "CROSS_COMPILE",
    "KBUILD_OUTPUT",
    "KCONFIG_CONFIG",
    "KCPPFLAGS",
    "KAFLAGS",
    "CFLAGS",
    "CPPFLAGS",
    "LDFLAGS",
    "LANG",
    "LANGUAGE",
];

/// An option a fragment asked for that the final .config does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub option: String,
    pub requested: String,
    /// `"not set"` when absent or `# … is not set`.
    pub actual: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: requested {}, final .config has {}", self.option, self.requested, self.actual)
    }
}

/// How `# CONFIG_X is not set` (and an absent option) reads in a [`Mismatch`].
const NOT_SET: &str = "not set";

/// `CONFIG_X=v` lines and `# CONFIG_X is not set` comments (as "not set").
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("# ").and_then(|r| r.strip_suffix(" is not set")) {
            if name.starts_with("CONFIG_") {
                m.insert(name.to_string(), NOT_SET.to_string());
            }
        } else if let Some((k, v)) = line.split_once('=').filter(|(k, _)| k.starts_with("CONFIG_")) {
            m.insert(k.to_string(), v.to_string());
        }
    }
    m
}

/// Every option of every fragment against the final config; a later fragment overrides an
/// earlier one, as merge_config.sh does. Mismatches by fragment, in fragment order.
pub fn check_fragments(fragments: &[(String, String)], final_config: &str) -> Vec<(String, Vec<Mismatch>)> {
    let actual = parse_config(final_config);
    let mut wanted: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (i, (_, text)) in fragments.iter().enumerate() {
        for (k, v) in parse_config(text) {
            wanted.insert(k, (i, v));
        }
    }
    let mut out: Vec<(String, Vec<Mismatch>)> = fragments.iter().map(|(n, _)| (n.clone(), vec![])).collect();
    for (option, (i, requested)) in wanted {
        let got = actual.get(&option).map(String::as_str).unwrap_or(NOT_SET);
        let ok = if requested == NOT_SET || requested == "n" { got == NOT_SET || got == "n" } else { got == requested };
        if !ok {
            out[i].1.push(Mismatch { option, requested, actual: got.to_string() });
        }
    }
    out.retain(|(_, m)| !m.is_empty());
    out
}

pub(crate) fn build(
    ctx: &Ctx<'_>,
    r: &Recipe,
    k: &KernelSpec,
    input_hash: &str,
    source: &Path,
    fragments: &[(String, PathBuf)],
    patches: &[(String, PathBuf)],
) -> Result<(BTreeMap<String, Output>, PathBuf), BuildError> {
    let work_root = ctx.cfg.cache.join("work");
    let work = work_root.join(format!("{}-{input_hash}", r.name));
    let io_err = |what: &str, p: &Path| {
        let m = format!("{what} {}", p.display());
        move |e: std::io::Error| ctx.fail(&r.name, "work directory", format!("{m}: {e}"))
    };
    // Earlier attempts at this recipe (this or other inputs) are stale, and so are work
    // directories a killed run did not finish discarding: we hold the cache lock.
    for p in crate::store::list(&work_root).unwrap_or_default() {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let stale = name.strip_prefix(&r.name).and_then(|rest| rest.strip_prefix('-')).is_some_and(is_sha256_hex);
        if stale || name.starts_with(crate::store::TMP_PREFIX) {
            fs::remove_dir_all(&p).map_err(io_err("removing", &p))?;
        }
    }
    let src = work.join("linux");
    fs::create_dir_all(&src).map_err(io_err("creating", &src))?;
    let log = work.join("build.log");
    let arch = format!("ARCH={}", k.arch.make_arch());
    let env = kernel_env(ctx.cfg.source_date_epoch, &src);
    let run = |what: &str, program: &str, args: &[&str]| -> Result<(), BuildError> {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(&src);
        for v in ENV_REMOVE {
            cmd.env_remove(v);
        }
        cmd.envs(env.iter().map(|(k, v)| (*k, v)));
        run_logged(ctx, &r.name, what, cmd, &log)
    };

    run("unpacking the source", "tar", &["-xf", &source.to_string_lossy(), "--strip-components=1", "--no-same-owner"])?;
    for (name, p) in patches {
        run(&format!("applying {name}"), "patch", &["-p1", "--batch", "--forward", "-i", &p.to_string_lossy()])?;
    }
    run(&format!("make {}", k.base_config.make_target()), "make", &[&arch, k.base_config.make_target()])?;
    if !fragments.is_empty() {
        let mut args = vec!["-m".to_string(), ".config".to_string()];
        args.extend(fragments.iter().map(|(_, p)| p.to_string_lossy().into_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("merging fragments", "scripts/kconfig/merge_config.sh", &args)?;
    }
    run("make olddefconfig", "make", &[&arch, "olddefconfig"])?;

    let config_path = src.join(".config");
    let final_config = fs::read_to_string(&config_path).map_err(io_err("reading", &config_path))?;
    let mut texts = Vec::new();
    for (name, p) in fragments {
        texts.push((name.clone(), fs::read_to_string(p).map_err(io_err("reading", p))?));
    }
    if let Some((fragment, mismatches)) = check_fragments(&texts, &final_config).into_iter().next() {
        return Err(BuildError::KernelConfig { file: r.file.clone(), fragment, mismatches });
    }

    let jobs = format!("-j{}", ctx.cfg.jobs.max(1));
    run(&format!("make {}", k.target), "make", &[&arch, &jobs, &k.target])?;

    let store_err = |e| BuildError::Store { context: format!("recipe {}", r.name), source: e };
    let out_path = src.join(&k.output);
    let (ksha, ksize) = ctx.store.put_blob_file(&out_path).map_err(store_err)?;
    let (csha, csize) = ctx.store.put_blob_file(&config_path).map_err(store_err)?;
    // Out of the way at once (rename); deleting a built tree takes minutes, see `discard`.
    let trash = work_root.join(temp_name("done"));
    fs::rename(&work, &trash).map_err(io_err("renaming", &work))?;
    let outputs = BTreeMap::from([
        ("kernel".to_string(), output_record(ksha, ksize)),
        ("config".to_string(), output_record(csha, csize)),
    ]);
    Ok((outputs, trash))
}

/// Deletes a finished work directory in a detached `rm -rf` (a built kernel tree is
/// ~1 GB of small files: minutes on a slow disk), so the build returns once its manifests
/// are written. A deletion that does not finish is redone by the next kernel build.
pub(crate) fn discard(trash: &Path) {
    let spawned = Command::new("rm")
        .arg("-rf")
        .arg(trash)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if spawned.is_err() {
        let _ = fs::remove_dir_all(trash);
    }
}

/// Runs `cmd` with its output appended to `log`, showing the log's latest line as progress.
pub(crate) fn run_logged(
    ctx: &Ctx<'_>,
    recipe: &str,
    what: &str,
    mut cmd: Command,
    log: &Path,
) -> Result<(), BuildError> {
    let fail = |m: String| ctx.fail(recipe, what, m);
    let mut f =
        OpenOptions::new().create(true).append(true).open(log).map_err(|e| fail(format!("{}: {e}", log.display())))?;
    let _ = writeln!(f, "\n$ {cmd:?}");
    let out = f.try_clone().map_err(|e| fail(e.to_string()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(f);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            // If imagegen dies (kill -9), make must not go on writing into a work directory
            // the next run is about to reuse. PDEATHSIG fires when the spawning thread
            // exits: builds run on the thread that called `build`, which outlives them.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    ctx.progress.step(recipe, what);
    let mut child = cmd.spawn().map_err(|e| fail(format!("starting {:?}: {e}", cmd.get_program())))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {
                if let Some(line) = last_line(log) {
                    ctx.progress.step(recipe, &format!("{what}: {line}"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    if status.success() {
        return Ok(());
    }
    let tail = tail_lines(log, 30);
    Err(fail(format!("{status}; log {} ends with:\n{tail}", log.display())))
}

fn read_tail(log: &Path, bytes: u64) -> Option<String> {
    let mut f = fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(bytes))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn last_line(log: &Path) -> Option<String> {
    let t = read_tail(log, 512)?;
    t.lines().rev().map(str::trim).find(|l| !l.is_empty()).map(String::from)
}

fn tail_lines(log: &Path, n: usize) -> String {
    let t = read_tail(log, 8192).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One x86_64 kernel boots QEMU microvm and q35, Firecracker and Xen domUs: its fragment
    /// keeps what each of them needs, and nothing that breaks one of them.
    #[test]
    fn one_kernel_serves_microvm_q35_firecracker_and_xen() {
        let frag =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/kernels/pv.config")).unwrap();
        let c = parse_config(&frag);
        let on = [
            // QEMU microvm and Firecracker: PVH entry, virtio-mmio devices from the command
            // line, ttyS0 and virtio-console, virtio disk and NIC, MP table without ACPI tables
            "CONFIG_PVH",
            "CONFIG_KVM_GUEST",
            "CONFIG_VIRTIO_MMIO",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_VIRTIO_CONSOLE",
            "CONFIG_VIRTIO_BLK",
            "CONFIG_VIRTIO_NET",
            "CONFIG_X86_MPPARSE",
            // Xen domUs: PV and PVH (which needs ACPI), hvc0, blkfront (xvda), netfront
            "CONFIG_XEN_PV",
            "CONFIG_XEN_PVH",
            "CONFIG_ACPI",
            "CONFIG_HVC_XEN",
            "CONFIG_XEN_BLKDEV_FRONTEND",
            "CONFIG_XEN_NETDEV_FRONTEND",
            // QEMU q35 (qemu-full): a PC's firmware interfaces (ACPI above), the e1000 it is
            // given and q35's own e1000e, the chipset's AHCI disks (sda)
            "CONFIG_PCI",
            "CONFIG_PCI_MSI",
            "CONFIG_HPET_TIMER",
            "CONFIG_E1000",
            "CONFIG_E1000E",
            "CONFIG_SATA_AHCI",
            "CONFIG_BLK_DEV_SD",
            // an ext4 root on vda, xvda or sda; systemd as an image's init
            "CONFIG_EXT4_FS",
            "CONFIG_CGROUPS",
            "CONFIG_INOTIFY_USER",
            "CONFIG_FHANDLE",
        ];
        for opt in on {
            assert_eq!(c.get(opt).map(String::as_str), Some("y"), "{opt} must be =y in kernels/pv.config");
        }
        // q35's control channel is ttyS1: the legacy UARTs past ttyS0 must be registered.
        assert_eq!(c.get("CONFIG_SERIAL_8250_RUNTIME_UARTS").map(String::as_str), Some("4"));
        // SysRq eats 0x0f bytes on hvc0, Xen's control channel.
        for opt in ["CONFIG_MAGIC_SYSRQ", "CONFIG_MODULES"] {
            assert_eq!(c.get(opt).map(String::as_str), Some(NOT_SET), "{opt} must be off in kernels/pv.config");
        }
        let recipe =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/kernel-pv.toml")).unwrap();
        assert!(recipe.contains("fragments = [\"kernels/pv.config\"]"), "kernel-pv builds from kernels/pv.config");
        // Each backend adds its own console (ttyS0 or hvc0): the recipe must name none.
        assert!(!recipe.lines().any(|l| l.starts_with("cmdline") && l.contains("console=")), "{recipe}");
    }

    #[test]
    fn parses_set_and_unset_options() {
        let c = parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n# comment\nFOO=1\n");
        assert_eq!(c["CONFIG_A"], "y");
        assert_eq!(c["CONFIG_B"], NOT_SET);
        assert_eq!(c["CONFIG_C"], "\"x y\"");
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn fragment_check_names_fragment_option_and_values() {
        let frags = vec![
            ("kernels/a.config".to_string(), "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=8\n".to_string()),
            // A later fragment overrides an earlier one.
            ("kernels/b.config".to_string(), "CONFIG_B=n\n".to_string()),
        ];
        let final_config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=4\n";
        let m = check_fragments(&frags, final_config);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, "kernels/a.config");
        assert_eq!(m[0].1, [Mismatch { option: "CONFIG_D".into(), requested: "8".into(), actual: "4".into() }]);
        let m = check_fragments(&frags, "CONFIG_B=y\nCONFIG_D=8\n");
        let all: Vec<String> = m.iter().flat_map(|(f, v)| v.iter().map(move |x| format!("{f}: {x}"))).collect();
        assert_eq!(
            all,
            [
                "kernels/a.config: CONFIG_A: requested y, final .config has not set",
                "kernels/b.config: CONFIG_B: requested n, final .config has y",
            ]
        );
    }

    #[test]
    fn env_is_fixed() {
        let env = kernel_env(1_700_000_000, Path::new("/c/work/k-1/linux"));
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("KBUILD_BUILD_TIMESTAMP"), Some("@1700000000"));
        assert_eq!(get("KCFLAGS"), Some("-ffile-prefix-map=/c/work/k-1/linux=/kernel"));
        assert_eq!(get("TZ"), Some("UTC"));
    }
}
