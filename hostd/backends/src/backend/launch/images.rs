//! A VM backend's boot images (kernel and initramfs), checked before a launch or a probe so
//! that a missing one is named rather than left to the VMM's own message.

use std::path::{Path, PathBuf};

use crate::backend::{Kernel, LaunchFiles};

/// A boot image that is not configured or not a readable regular file.
#[derive(Debug, Clone, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ImageError {
    #[error("no {what} configured")]
    Missing { what: String },
    #[error("{what} {} is not a file", path.display())]
    NotAFile { what: String, path: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    Unreadable { what: String, path: PathBuf, source: std::sync::Arc<std::io::Error> },
}

/// Probes and launch errors carry reasons as text.
impl From<ImageError> for String {
    fn from(e: ImageError) -> String {
        e.to_string()
    }
}

/// A regular file exists at `path`.
fn check_file(what: &str, path: &Path) -> Result<(), ImageError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ImageError::NotAFile { what: what.into(), path: path.into() }),
        Err(e) => Err(ImageError::Unreadable {
            what: what.into(),
            path: path.into(),
            source: std::sync::Arc::new(e),
        }),
    }
}

/// What a VM backend's launch reads: its kernel and initramfs (those configured), and
/// `program` (the VMM or toolstack).
pub fn vm_launch_files(
    kernel: Option<&Kernel>,
    initramfs: Option<&Path>,
    program: &str,
) -> LaunchFiles {
    LaunchFiles {
        images: kernel
            .map(|k| k.path.clone())
            .into_iter()
            .chain(initramfs.map(Path::to_path_buf))
            .collect(),
        programs: vec![program.to_string()],
        data: Vec::new(),
    }
}

/// The kernel (`what` names it in errors, e.g. "UML kernel (linux)") and the initramfs,
/// both configured and regular files.
pub fn boot_images<'a>(
    what: &str,
    kernel: Option<&'a Kernel>,
    initramfs: Option<&'a Path>,
) -> Result<(&'a Kernel, &'a Path), ImageError> {
    let kernel = kernel.ok_or_else(|| ImageError::Missing { what: what.into() })?;
    check_file(what, &kernel.path)?;
    let initramfs = initramfs.ok_or_else(|| ImageError::Missing { what: "initramfs".into() })?;
    check_file("initramfs", initramfs)?;
    Ok((kernel, initramfs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_problem_is_named() {
        let k = |p: &str| Kernel { path: p.into(), cmdline: String::new() };
        let e = boot_images("UML kernel", None, None).unwrap_err();
        assert_eq!(e.to_string(), "no UML kernel configured");
        let e = boot_images("UML kernel", Some(&k("/nonexistent/linux")), None).unwrap_err();
        assert!(matches!(e, ImageError::Unreadable { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/linux"), "{e}");
        let e = boot_images("UML kernel", Some(&k("/")), None).unwrap_err();
        assert_eq!(e.to_string(), "UML kernel / is not a file");
        let exe = std::env::current_exe().unwrap();
        let e = boot_images("k", Some(&k(exe.to_str().unwrap())), None).unwrap_err();
        assert_eq!(e.to_string(), "no initramfs configured");
        let kernel = k(exe.to_str().unwrap());
        let (kernel, initramfs) = boot_images("k", Some(&kernel), Some(&exe)).unwrap();
        assert_eq!((kernel.path.as_path(), initramfs), (exe.as_path(), exe.as_path()));
    }
}
