//! Debian packages as build inputs (`packages` of the tree kinds, `kind = "deb-file"`).
//!
//! A package is pinned by name, version and the .deb's sha256. It is fetched once with
//! apt's own client (`apt-get download NAME=VERSION`) into `<cache>/debs/<sha256>.deb`
//! and checked against the pin; its files are read with `dpkg-deb --fsys-tarfile`. Only the
//! files' contents, modes and link targets are used: imagegen re-serialises them with its own
//! timestamps and owners, so neither apt's nor dpkg's version can change an artifact.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Ctx;
use crate::archive::Node;
use crate::build::BuildError;
use crate::hash;

/// A package to fetch: what the recipe pins.
pub(crate) struct Pin<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
}

impl Pin<'_> {
    fn label(&self) -> String {
        format!("{}={}", self.name, self.version)
    }
}

/// The pinned .deb in the cache, fetched first if it is not there (or damaged).
pub(crate) fn fetch(ctx: &Ctx<'_>, recipe: &str, pin: &Pin<'_>) -> Result<PathBuf, BuildError> {
    let fail = |m: String| ctx.fail(recipe, &format!("fetching {}", pin.label()), m);
    let dir = ctx.cfg.cache.join("debs");
    let dst = dir.join(format!("{}.deb", pin.sha256));
    if dst.is_file() {
        match hash::sha256_file(&dst) {
            Ok((h, _)) if h == pin.sha256 => return Ok(dst),
            // A damaged cache entry is a miss (the cache is ours and under our lock).
            _ => std::fs::remove_file(&dst).map_err(|e| fail(format!("removing damaged {}: {e}", dst.display())))?,
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(crate::store::TMP_PREFIX)
        .tempdir_in(&dir)
        .map_err(|e| fail(format!("temporary directory in {}: {e}", dir.display())))?;
    ctx.progress.step(recipe, &format!("apt-get download {}", pin.label()));
    if let Err(first) = apt_download(tmp.path(), &pin.label()) {
        // Stale or missing package lists are the usual cause on a fresh machine; as root,
        // refresh them once (what scripts/install-deps does) and try again.
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(fail(format!("{first}; run `apt-get update` if the package lists are stale")));
        }
        ctx.progress.step(recipe, "apt-get update");
        let upd = Command::new("apt-get").args(["update", "-q"]).stdin(Stdio::null()).output();
        apt_download(tmp.path(), &pin.label()).map_err(|again| {
            let upd = match upd {
                Ok(o) if o.status.success() => String::new(),
                Ok(o) => format!(" (apt-get update failed: {})", String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => format!(" (apt-get update: {e})"),
            };
            fail(format!(
                "{again}{upd}. If the archive no longer carries this version, pin the one it has \
                 (`apt-cache policy {}`, then `apt-get download` it and take its sha256sum)",
                pin.name
            ))
        })?;
    }
    let debs: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .map_err(|e| fail(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    let [deb] = debs.as_slice() else {
        return Err(fail(format!("apt-get download left {} .deb files, expected one", debs.len())));
    };
    let (actual, _) = hash::sha256_file(deb).map_err(|e| fail(format!("hashing {}: {e}", deb.display())))?;
    if actual != pin.sha256 {
        return Err(fail(format!(
            "the archive's {} has sha256 {actual}, the recipe pins {}",
            pin.label(),
            pin.sha256
        )));
    }
    std::fs::rename(deb, &dst).map_err(|e| fail(format!("moving {} into the cache: {e}", deb.display())))?;
    Ok(dst)
}

fn apt_download(dir: &Path, what: &str) -> Result<(), String> {
    // The sandbox user (_apt) may not be able to write `dir`; the download is checked
    // against its pin anyway.
    let out = Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", what])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running apt-get: {e} (packages come from a Debian archive through apt)"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.lines().filter(|l| l.starts_with("E:")).collect::<Vec<_>>().join("; ");
    Err(format!("apt-get download {what} failed ({}): {err}", out.status))
}

/// Whether package path `path` (absolute) is selected by `spec` (a path, or a directory
/// ending in `/` that selects everything below it).
pub(crate) fn selects(spec: &str, path: &str) -> bool {
    match spec.strip_suffix('/') {
        Some(dir) => path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/')),
        None => path == spec,
    }
}

/// The files and symlinks of `deb` that `paths` select (all of them when empty), as
/// absolute paths with their nodes, in archive order. Directories are left out: the tree
/// creates the ones its entries need. Every element of `paths` must select something.
pub(crate) fn entries(ctx: &Ctx<'_>, recipe: &str, deb: &Path, label: &str, paths: &[String]) -> Result<Vec<(String, Node)>, BuildError> {
    let fail = |m: String| ctx.fail(recipe, &format!("reading {label}"), m);
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("running dpkg-deb: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let read = select_from_tar(stdout, paths);
    // Drain stderr before waiting, after the tar stream ended (it is small).
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().map_err(|e| fail(format!("dpkg-deb: {e}")))?;
    if !status.success() {
        return Err(fail(format!("dpkg-deb --fsys-tarfile {} failed ({status}): {}", deb.display(), err.trim())));
    }
    let (entries, unmatched) = read.map_err(fail)?;
    if let Some(p) = unmatched.first() {
        return Err(fail(format!("nothing in the package matches {p:?}")));
    }
    Ok(entries)
}

/// What [`select_from_tar`] found: the entries, and the elements of `paths` that selected
/// nothing.
pub(crate) type Selection = (Vec<(String, Node)>, Vec<String>);

/// The selection from a package's data tarball.
pub(crate) fn select_from_tar(r: impl Read, paths: &[String]) -> Result<Selection, String> {
    let mut matched = vec![false; paths.len()];
    let mut out: Vec<(String, Node)> = Vec::new();
    // Hard links name an earlier entry; selected files are found again through this index.
    let mut files: BTreeMap<String, usize> = BTreeMap::new();
    let mut ar = tar::Archive::new(r);
    for e in ar.entries().map_err(|e| format!("reading the data tarball: {e}"))? {
        let mut e = e.map_err(|e| format!("reading the data tarball: {e}"))?;
        let raw = e.path().map_err(|e| format!("entry path: {e}"))?.to_string_lossy().into_owned();
        let path = format!("/{}", raw.trim_start_matches("./").trim_end_matches('/'));
        let kind = e.header().entry_type();
        if kind.is_dir() || path == "/" {
            continue;
        }
        let hits: Vec<usize> = paths.iter().enumerate().filter(|(_, s)| selects(s, &path)).map(|(i, _)| i).collect();
        if !paths.is_empty() && hits.is_empty() {
            // Not read: the tar reader skips its data.
            continue;
        }
        let mode = e.header().mode().map_err(|e| format!("{path}: mode: {e}"))? & 0o7777;
        let link = || -> Result<String, String> {
            let t = e.link_name().map_err(|e| format!("{path}: link target: {e}"))?;
            Ok(t.ok_or(format!("{path}: link without a target"))?.to_string_lossy().into_owned())
        };
        let node = if kind.is_symlink() {
            Node::Symlink { target: link()? }
        } else if kind.is_hard_link() {
            let target = format!("/{}", link()?.trim_start_matches("./"));
            match files.get(&target).map(|&i| &out[i].1) {
                Some(Node::File { data, .. }) => Node::File { mode, data: data.clone() },
                _ => return Err(format!("{path} is a hard link to {target}, which is not selected (select it too)")),
            }
        } else if kind.is_file() {
            let mut data = Vec::new();
            e.read_to_end(&mut data).map_err(|e| format!("{path}: {e}"))?;
            files.insert(path.clone(), out.len());
            Node::File { mode, data }
        } else {
            return Err(format!("{path}: a {kind:?} entry cannot go into an image"));
        };
        for i in hits {
            matched[i] = true;
        }
        out.push((path, node));
    }
    let unmatched = paths.iter().zip(&matched).filter(|(_, m)| !**m).map(|(p, _)| p.clone()).collect();
    Ok((out, unmatched))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection() {
        assert!(selects("/usr/lib/x/", "/usr/lib/x/a.so"));
        assert!(selects("/usr/lib/x/", "/usr/lib/x/sub/b"));
        assert!(!selects("/usr/lib/x/", "/usr/lib/xy/a.so"));
        assert!(!selects("/usr/lib/x/", "/usr/lib/x"));
        assert!(selects("/bin/ip", "/bin/ip"));
        assert!(!selects("/bin/ip", "/bin/ipx"));
    }

    fn tarball() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            b.append_data(&mut h, path, data).unwrap();
        };
        add("./", tar::EntryType::Directory, 0o755, b"", None);
        add("./usr/lib/x/", tar::EntryType::Directory, 0o755, b"", None);
        add("./usr/lib/x/libx.so.1.0", tar::EntryType::Regular, 0o644, b"ELF", None);
        add("./usr/lib/x/libx.so.1", tar::EntryType::Symlink, 0o777, b"", Some("libx.so.1.0"));
        add("./usr/bin/tool", tar::EntryType::Regular, 0o4755, b"#!", None);
        add("./usr/bin/tool2", tar::EntryType::Link, 0o755, b"", Some("./usr/bin/tool"));
        add("./usr/share/doc/x/copyright", tar::EntryType::Regular, 0o644, b"c", None);
        b.into_inner().unwrap()
    }

    #[test]
    fn picks_files_links_and_hard_links() {
        let (all, none) = select_from_tar(&tarball()[..], &[]).unwrap();
        assert!(none.is_empty());
        let names: Vec<&str> = all.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["/usr/lib/x/libx.so.1.0", "/usr/lib/x/libx.so.1", "/usr/bin/tool", "/usr/bin/tool2", "/usr/share/doc/x/copyright"]);
        assert_eq!(all[1].1, Node::Symlink { target: "libx.so.1.0".into() });
        assert_eq!(all[2].1, Node::File { mode: 0o4755, data: b"#!".to_vec() });
        assert_eq!(all[3].1, Node::File { mode: 0o755, data: b"#!".to_vec() });

        let e = select_from_tar(&tarball()[..], &["/usr/bin/tool2".into()]).unwrap_err();
        assert!(e.contains("hard link to /usr/bin/tool, which is not selected"), "{e}");
        let want = ["/usr/lib/x/".to_string(), "/usr/bin/tool".into(), "/usr/bin/missing".into()];
        let (some, unmatched) = select_from_tar(&tarball()[..], &want).unwrap();
        let names: Vec<&str> = some.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["/usr/lib/x/libx.so.1.0", "/usr/lib/x/libx.so.1", "/usr/bin/tool"]);
        assert_eq!(unmatched, ["/usr/bin/missing"]);
    }
}
