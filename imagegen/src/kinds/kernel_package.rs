//! `kind = "kernel-package"`: a prebuilt kernel. From a pinned Debian `linux-image-*`
//! package: `kernel` (its `/boot/vmlinuz-<release>`), `config` (`/boot/config-<release>`)
//! and `modules` (a tar of `<release>/…`, what goes under `/lib/modules`, with depmod's
//! indexes made for it). From a file: `kernel` only.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::debs::Pin;
use super::Ctx;
use crate::build::BuildError;
use crate::manifest::Output;
use crate::recipe::{KernelPackageSpec, Recipe};
use crate::store::output_record;

/// Versions of the tools that shape the outputs (hashed).
pub(crate) fn tools(t: &super::Tools, from_package: bool) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    if from_package {
        for (name, prog, arg) in
            [("dpkg-deb", "dpkg-deb", "--version"), ("depmod", "depmod", "--version"), ("tar", "tar", "--version")]
        {
            m.insert(name.to_string(), t.version(prog, &[arg], |_| false)?);
        }
    }
    Ok(m)
}

/// Builds it; the outputs and, for a package, the kernel release.
pub(crate) fn build(
    ctx: &Ctx<'_>,
    r: &Recipe,
    k: &KernelPackageSpec,
    input_hash: &str,
    file: Option<&Path>,
) -> Result<(BTreeMap<String, Output>, Option<String>), BuildError> {
    let store_err = |e| BuildError::Store { context: format!("recipe {}", r.name), source: e };
    let fail = |step: &str, m: String| ctx.fail(&r.name, step, m);
    if let Some(f) = file {
        let want = k.sha256.as_deref().unwrap_or_default();
        let (got, _) =
            crate::hash::sha256_file(f).map_err(|e| fail("hashing the kernel", format!("{}: {e}", f.display())))?;
        if got != want {
            return Err(fail(
                "checking the kernel",
                format!("{} has sha256 {got}, the recipe pins {want} (field `sha256`)", f.display()),
            ));
        }
        let (sha, size) = ctx.store.put_blob_file(f).map_err(store_err)?;
        return Ok((BTreeMap::from([("kernel".to_string(), output_record(sha, size))]), None));
    }
    let p = k.package.as_ref().expect("plan: a package or a file");
    let deb = ctx.fetcher().fetch(&r.name, &r.file, &Pin { name: &p.name, version: &p.version, sha256: &p.sha256 })?;
    let label = format!("{}={}", p.name, p.version);

    let work: PathBuf = ctx.cfg.cache.join("work").join(format!("{}-{input_hash}", r.name));
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _ = fs::remove_dir_all(&work);
    let x = work.join("x");
    fs::create_dir_all(&x).map_err(|e| fail("work directory", format!("{}: {e}", x.display())))?;
    let _gone = Gone(work.clone());
    let log = work.join("build.log");
    let run = |what: &str, mut cmd: Command| {
        cmd.env("SOURCE_DATE_EPOCH", ctx.cfg.source_date_epoch.to_string());
        super::kernel::run_logged(ctx, &r.name, what, cmd, &log)
    };
    let mut c = Command::new("dpkg-deb");
    c.arg("-x").arg(&deb).arg(&x);
    run(&format!("unpacking {label}"), c)?;

    // The one /boot/vmlinuz-<release> names the release.
    let boot = x.join("boot");
    let kernels: Vec<String> = crate::store::list(&boot)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.strip_prefix("vmlinuz-").map(String::from))
        .collect();
    let [release] = kernels.as_slice() else {
        return Err(fail(
            "finding the kernel",
            format!("{label} has {} /boot/vmlinuz-* files, expected one", kernels.len()),
        ));
    };
    let release = release.clone();
    // Modules under /lib/modules or, in merged-/usr packages, /usr/lib/modules.
    let modules = [x.join("lib/modules"), x.join("usr/lib/modules")]
        .into_iter()
        .find(|d| d.join(&release).is_dir())
        .ok_or_else(|| fail("finding the modules", format!("{label} has no /lib/modules/{release}")))?;
    if modules != x.join("lib/modules") {
        fs::create_dir_all(x.join("lib"))
            .and_then(|()| fs::rename(&modules, x.join("lib/modules")))
            .map_err(|e| fail("finding the modules", e.to_string()))?;
    }
    // What the package's postinst would do: the module indexes for this release.
    let mut c = Command::new("depmod");
    c.arg("-b").arg(&x).arg(&release);
    run("depmod", c)?;
    let tar = work.join("modules.tar");
    let mut c = Command::new("tar");
    c.args(["--sort=name", "--format=gnu", "--numeric-owner", "--owner=0", "--group=0", "--clamp-mtime"])
        .arg(format!("--mtime=@{}", ctx.cfg.source_date_epoch))
        .arg("-C")
        .arg(x.join("lib/modules"))
        .arg("-cf")
        .arg(&tar)
        .arg(&release);
    run("writing the modules tar", c)?;

    let mut outputs = BTreeMap::new();
    let config = boot.join(format!("config-{release}"));
    for (name, path) in [("kernel", boot.join(format!("vmlinuz-{release}"))), ("modules", tar), ("config", config)] {
        if !path.is_file() {
            return Err(fail(
                "taking the outputs",
                format!("{label} has no {}", path.strip_prefix(&x).unwrap_or(&path).display()),
            ));
        }
        let (sha, size) = ctx.store.put_blob_file(&path).map_err(store_err)?;
        outputs.insert(name.to_string(), output_record(sha, size));
    }
    Ok((outputs, Some(release)))
}
