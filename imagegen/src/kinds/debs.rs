//! Debian packages as build inputs (`packages` of the tree kinds, `kind = "deb-file"`).
//!
//! A package is pinned by name, version and the .deb's sha256. It is fetched once with
//! apt's own client (`apt-get download NAME=VERSION`) into `<cache>/debs/<sha256>.deb`
//! and checked against the pin; its files are read with `dpkg-deb --fsys-tarfile`. Only the
//! files' contents, modes and link targets are used: imagegen re-serialises them with its own
//! timestamps and owners, so neither apt's nor dpkg's version can change an artifact.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::archive::Node;
use crate::build::{BuildError, Progress};
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

/// Where fetched packages go and who hears about it: the cache and the progress display.
#[derive(Clone, Copy)]
pub(crate) struct Fetcher<'a> {
    pub cache: &'a Path,
    pub progress: &'a dyn Progress,
}

impl Fetcher<'_> {
    fn debs_dir(&self) -> PathBuf {
        self.cache.join("debs")
    }

    /// The pinned .deb in the cache, fetched first if it is not there (or damaged). `file`
    /// is the recipe that pins it (named in the error when the version is no longer served).
    pub fn fetch(&self, recipe: &str, file: &Path, pin: &Pin<'_>) -> Result<PathBuf, BuildError> {
        let fail = |m: String| BuildError::Build {
            recipe: recipe.to_string(),
            step: format!("fetching {}", pin.label()),
            message: m,
        };
        let dst = self.debs_dir().join(format!("{}.deb", pin.sha256));
        if dst.is_file() {
            match hash::sha256_file(&dst) {
                Ok((h, _)) if h == pin.sha256 => return Ok(dst),
                // A damaged cache entry is a miss (the cache is ours and under our lock).
                _ => {
                    std::fs::remove_file(&dst).map_err(|e| fail(format!("removing damaged {}: {e}", dst.display())))?
                }
            }
        }
        let (deb, actual) = match self.download(recipe, pin.name, pin.version) {
            Ok(x) => x,
            Err(Download::NotServed { served }) => {
                return Err(BuildError::NotServed {
                    file: file.to_path_buf(),
                    recipe: recipe.to_string(),
                    package: pin.name.to_string(),
                    version: pin.version.to_string(),
                    served,
                })
            }
            Err(Download::Failed(m)) => return Err(fail(m)),
        };
        if actual != pin.sha256 {
            let _ = std::fs::remove_file(&deb);
            return Err(fail(format!(
                "the archive's {} has sha256 {actual}, the recipe pins {}",
                pin.label(),
                pin.sha256
            )));
        }
        Ok(deb)
    }

    /// Downloads `name=version` with apt's own client into the cache as `<sha256>.deb`
    /// (whatever its hash: the caller compares it with a pin, or records it as one).
    pub fn download(&self, recipe: &str, name: &str, version: &str) -> Result<(PathBuf, String), Download> {
        let label = format!("{name}={version}");
        let dir = self.debs_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Download::Failed(format!("creating {}: {e}", dir.display())))?;
        let tmp = tempfile::Builder::new()
            .prefix(crate::store::TMP_PREFIX)
            .tempdir_in(&dir)
            .map_err(|e| Download::Failed(format!("temporary directory in {}: {e}", dir.display())))?;
        self.progress.step(recipe, &format!("apt-get download {label}"));
        if let Err(first) = apt_download(tmp.path(), &label) {
            // Stale or missing package lists are the usual cause on a fresh machine; as root,
            // refresh them once (what scripts/install-deps does) and try again.
            let mut upd = String::new();
            if is_root() {
                self.progress.step(recipe, "apt-get update");
                upd = apt_update().err().map(|e| format!(" ({e})")).unwrap_or_default();
                if apt_download(tmp.path(), &label).is_ok() {
                    return self.keep(tmp.path(), &label);
                }
            }
            let served = served_versions(name).unwrap_or_default();
            if !served.iter().any(|v| v == version) {
                return Err(Download::NotServed { served });
            }
            let hint =
                if is_root() { upd } else { "; run `apt-get update` if the package lists are stale".to_string() };
            return Err(Download::Failed(format!("{first}{hint}")));
        }
        self.keep(tmp.path(), &label)
    }

    /// Moves the one .deb apt left in `tmp` into the cache under its sha256.
    fn keep(&self, tmp: &Path, label: &str) -> Result<(PathBuf, String), Download> {
        let debs: Vec<PathBuf> = std::fs::read_dir(tmp)
            .map_err(|e| Download::Failed(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        let [deb] = debs.as_slice() else {
            return Err(Download::Failed(format!(
                "apt-get download {label} left {} .deb files, expected one",
                debs.len()
            )));
        };
        let (sha, _) =
            hash::sha256_file(deb).map_err(|e| Download::Failed(format!("hashing {}: {e}", deb.display())))?;
        let dst = self.debs_dir().join(format!("{sha}.deb"));
        std::fs::rename(deb, &dst)
            .map_err(|e| Download::Failed(format!("moving {} into the cache: {e}", deb.display())))?;
        Ok((dst, sha))
    }
}

/// Why [`Fetcher::download`] did not bring a package.
#[derive(Debug)]
pub(crate) enum Download {
    /// The archives apt knows do not carry that version (any more); these they do, newest first.
    NotServed {
        served: Vec<String>,
    },
    Failed(String),
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn apt_update() -> Result<(), String> {
    match Command::new("apt-get").args(["update", "-q"]).stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("apt-get update failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("apt-get update: {e}")),
    }
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

/// The versions of `name` the configured archives serve, newest first (`apt-cache madison`,
/// ordered by `dpkg --compare-versions` semantics as apt sorts them).
pub(crate) fn served_versions(name: &str) -> Result<Vec<String>, String> {
    let out = Command::new("apt-cache")
        .args(["madison", name])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running apt-cache: {e}"))?;
    if !out.status.success() {
        return Err(format!("apt-cache madison {name} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(parse_madison(&String::from_utf8_lossy(&out.stdout), name))
}

/// `apt-cache madison` lines (`name | version | archive`), deduplicated, in apt's order
/// (newest first); lines of other packages (source stanzas, say) are left out.
pub(crate) fn parse_madison(text: &str, name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut cols = line.split('|').map(str::trim);
        let (Some(pkg), Some(version), Some(_)) = (cols.next(), cols.next(), cols.next()) else { continue };
        if pkg == name && !version.is_empty() && !out.iter().any(|v| v == version) {
            out.push(version.to_string());
        }
    }
    out
}

/// Streams the regular file `path` (absolute) of `deb` into `dst`; false when the package
/// has no such regular file. For large members (a kernel source tarball) that
/// [`entries`] would hold in memory.
pub(crate) fn extract_file(deb: &Path, path: &str, dst: &mut dyn Write) -> Result<bool, String> {
    let (mut child, stdout) = data_tarball(deb)?;
    let found = (|| -> Result<bool, String> {
        let mut ar = tar::Archive::new(stdout);
        for e in ar.entries().map_err(|e| format!("reading the data tarball: {e}"))? {
            let mut e = e.map_err(|e| format!("reading the data tarball: {e}"))?;
            let raw = e.path().map_err(|e| format!("entry path: {e}"))?.to_string_lossy().into_owned();
            let p = format!("/{}", raw.trim_start_matches("./"));
            if p == path && e.header().entry_type().is_file() {
                std::io::copy(&mut e, dst).map_err(|e| format!("{path}: {e}"))?;
                return Ok(true);
            }
        }
        Ok(false)
    })();
    // The rest of the stream is not needed: stop dpkg-deb rather than read it all (its
    // exit status then says nothing).
    let _ = child.kill();
    let reaped = reap(child, deb);
    let found = found?;
    if !found {
        reaped?;
    }
    Ok(found)
}

/// `dpkg-deb --fsys-tarfile DEB`: the package's data tarball on the child's stdout.
fn data_tarball(deb: &Path) -> Result<(Child, ChildStdout), String> {
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running dpkg-deb: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    Ok((child, stdout))
}

/// Waits for a [`data_tarball`] child once its stream was read; its stderr if it failed.
fn reap(mut child: Child, deb: &Path) -> Result<(), String> {
    // Drain stderr before waiting, after the tar stream ended (it is small).
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().map_err(|e| format!("dpkg-deb: {e}"))?;
    if !status.success() {
        return Err(format!("dpkg-deb --fsys-tarfile {} failed ({status}): {}", deb.display(), err.trim()));
    }
    Ok(())
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
pub(crate) fn entries(
    recipe: &str,
    deb: &Path,
    label: &str,
    paths: &[String],
) -> Result<Vec<(String, Node)>, BuildError> {
    let fail =
        |m: String| BuildError::Build { recipe: recipe.to_string(), step: format!("reading {label}"), message: m };
    let (child, stdout) = data_tarball(deb).map_err(fail)?;
    let read = select_from_tar(stdout, paths);
    reap(child, deb).map_err(fail)?;
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
    fn madison_lines() {
        let text = "linux-source-6.12 | 6.12.118-1~deb12u1 | http://x bookworm-security/main amd64 Packages\n\
                    linux-source-6.12 | 6.12.117-1~deb12u1 | http://x bookworm-security/main amd64 Packages\n\
                    linux-source-6.12 | 6.12.117-1~deb12u1 | http://y bookworm-security/main amd64 Packages\n\
                    linux-signed | 6.12.117 | http://x bookworm/main Sources\n";
        assert_eq!(parse_madison(text, "linux-source-6.12"), ["6.12.118-1~deb12u1", "6.12.117-1~deb12u1"]);
        assert!(parse_madison("N: Unable to locate package x\n", "x").is_empty());
    }

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
        assert_eq!(
            names,
            [
                "/usr/lib/x/libx.so.1.0",
                "/usr/lib/x/libx.so.1",
                "/usr/bin/tool",
                "/usr/bin/tool2",
                "/usr/share/doc/x/copyright"
            ]
        );
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
