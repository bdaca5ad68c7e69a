//! Unpacking a tar blob into a directory tree (`trees/<hex>/`) for container runtimes.
//! Extraction is done entry by entry rather than with `tar::Archive::unpack`, so that each
//! unsafe entry is refused with an error instead of skipped: `..` components, absolute
//! paths, symlinks whose target leaves the tree, hard links to anything outside it, and any
//! write through a symlink.

use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::archive::normalize_path;
use crate::hash::is_sha256_hex;
use crate::store::{open_regular, temp_name, Store};

#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error("{sha256:?} is not a sha256")]
    BadHash { sha256: String },
    #[error("blob {path}: {source}")]
    OpenBlob { path: PathBuf, source: io::Error },
    #[error("blob {path} does not match its name (content sha256 {actual}): run `imagegen verify`")]
    Corrupt { path: PathBuf, actual: String },
    #[error("tar entry {path:?}: {problem}")]
    UnsafeEntry { path: String, problem: String },
    #[error("tar entry {path:?}: unsupported entry type {entry_type}")]
    Unsupported { path: String, entry_type: String },
    #[error("reading tar: {0}")]
    Read(#[source] io::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("unpacked tree {path} no longer matches its blob: {problem} (remove the tree; it is unpacked again on next use)")]
    TreeChanged { path: PathBuf, problem: String },
    #[error("cpio entry {name:?}: {problem}")]
    UnsafeCpio { name: String, problem: String },
    #[error("{recipe}: {problem}")]
    SystemTree { recipe: String, problem: String },
}

impl Store {
    /// Unpacks the tar blob `sha256` into `trees/<sha256>/` once and returns that path.
    /// The tree appears atomically (built in a temp directory, then renamed); the blob's
    /// hash is checked while unpacking.
    pub fn materialize_tree(&self, sha256: &str) -> Result<PathBuf, MaterializeError> {
        if !is_sha256_hex(sha256) {
            return Err(MaterializeError::BadHash { sha256: sha256.to_string() });
        }
        let dir = self.trees_dir();
        let done = dir.join(sha256);
        if done.is_dir() {
            return Ok(done);
        }
        let blob = self.blob_path(sha256);
        let (f, _) = open_regular(&blob).map_err(|source| MaterializeError::OpenBlob { path: blob.clone(), source })?;
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| MaterializeError::Write { path, source }
        };
        fs::create_dir_all(&dir).map_err(werr(&dir))?;
        let tmp = dir.join(temp_name(sha256));
        fs::create_dir(&tmp).map_err(werr(&tmp))?;
        let res = (|| {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(werr(&tmp))?;
            let mut r = HashingReader { inner: BufReader::new(f), hasher: Sha256::new() };
            extract_tar(&mut r, &tmp)?;
            io::copy(&mut r, &mut io::sink()).map_err(MaterializeError::Read)?;
            let actual = hex::encode(r.hasher.finalize());
            if actual != sha256 {
                return Err(MaterializeError::Corrupt { path: blob.clone(), actual });
            }
            match fs::rename(&tmp, &done) {
                Ok(()) => Ok(()),
                // Someone else finished the same tree first: theirs is as good as ours.
                Err(_) if done.is_dir() => {
                    let _ = fs::remove_dir_all(&tmp);
                    Ok(())
                }
                Err(e) => Err(werr(&done)(e)),
            }
        })();
        if res.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        res.map(|()| done)
    }
}

impl Store {
    /// Unpacks the `rootfs` tar of a root file system build (`debian-rootfs`,
    /// `rootfs-import`, `oci-image`) into `trees/<sha256>/` once, with GNU tar as root (owners
    /// kept), and returns that path. The tree appears atomically; the blob is checked against
    /// its sha256 first. Unlike [`Store::materialize_tree`] it keeps absolute symlinks: they
    /// are the guest's (imagegen refused the ones that climb out when it built the tar), so
    /// host code must never follow one: resolve paths in it with [`crate::rootfs::resolve_in`],
    /// or leave that to the container runtime, which resolves inside the root.
    pub fn materialize_system_tree(&self, m: &crate::Manifest) -> Result<PathBuf, MaterializeError> {
        let fail = |problem: String| MaterializeError::SystemTree { recipe: m.recipe.clone(), problem };
        if !m.kind.is_system() {
            return Err(fail(format!("kind {} is not a root file system", m.kind)));
        }
        let blob = self.output_path(m, "rootfs").map_err(|e| fail(e.to_string()))?;
        let sha256 = m.output("rootfs").map(|o| o.sha256.clone()).unwrap_or_default();
        let done = self.trees_dir().join(&sha256);
        if done.is_dir() {
            return Ok(done);
        }
        let (f, _) = open_regular(&blob).map_err(|source| MaterializeError::OpenBlob { path: blob.clone(), source })?;
        let (actual, _) = crate::hash::sha256_reader(f).map_err(MaterializeError::Read)?;
        if actual != sha256 {
            return Err(MaterializeError::Corrupt { path: blob, actual });
        }
        let dir = self.trees_dir();
        fs::create_dir_all(&dir).map_err(|source| MaterializeError::Write { path: dir.clone(), source })?;
        let tmp = dir.join(temp_name(&sha256));
        fs::create_dir(&tmp).map_err(|source| MaterializeError::Write { path: tmp.clone(), source })?;
        let res = (|| {
            let out = std::process::Command::new("tar")
                .arg("-C")
                .arg(&tmp)
                .args(["--numeric-owner", "--same-owner", "-xpf"])
                .arg(&blob)
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| fail(format!("running tar: {e}")))?;
            if !out.status.success() {
                return Err(fail(format!(
                    "tar -xpf {} failed ({}): {}",
                    blob.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            match fs::rename(&tmp, &done) {
                Ok(()) => Ok(()),
                Err(_) if done.is_dir() => {
                    let _ = fs::remove_dir_all(&tmp);
                    Ok(())
                }
                Err(source) => Err(MaterializeError::Write { path: done.clone(), source }),
            }
        })();
        if res.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        res.map(|()| done)
    }

    /// Checks that the unpacked tree `trees/<sha256>/` is still exactly what blob `sha256`
    /// holds. A tree is unpacked once and then used as it is, so a change made to it later
    /// (a replaced binary, a setuid bit) would go unseen: the blob is unpacked again into a
    /// scratch directory (checking its hash) and the two trees are compared entry by entry
    /// (type, permission bits, size, content, link target; nothing missing, nothing added).
    pub fn check_tree(&self, sha256: &str) -> Result<(), MaterializeError> {
        if !is_sha256_hex(sha256) {
            return Err(MaterializeError::BadHash { sha256: sha256.to_string() });
        }
        let tree = self.trees_dir().join(sha256);
        let blob = self.blob_path(sha256);
        let (f, _) = open_regular(&blob).map_err(|source| MaterializeError::OpenBlob { path: blob.clone(), source })?;
        // A temp name the next build's clean-up removes should this process die here.
        struct Scratch(PathBuf);
        impl Drop for Scratch {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        impl Scratch {
            fn path(&self) -> &Path {
                &self.0
            }
        }
        let scratch = Scratch(self.trees_dir().join(temp_name("check")));
        fs::create_dir(scratch.path())
            .map_err(|source| MaterializeError::Write { path: scratch.path().to_path_buf(), source })?;
        let mut r = HashingReader { inner: BufReader::new(f), hasher: Sha256::new() };
        extract_tar(&mut r, scratch.path())?;
        io::copy(&mut r, &mut io::sink()).map_err(MaterializeError::Read)?;
        let actual = hex::encode(r.hasher.finalize());
        if actual != sha256 {
            return Err(MaterializeError::Corrupt { path: blob, actual });
        }
        let changed = |problem: String| MaterializeError::TreeChanged { path: tree.clone(), problem };
        let want = walk(scratch.path()).map_err(|e| changed(format!("reading the blob's tree: {e}")))?;
        let have = walk(&tree).map_err(|e| changed(e.to_string()))?;
        for (rel, w) in &want {
            match have.get(rel) {
                None => return Err(changed(format!("{rel} is missing"))),
                Some(h) if h != w => return Err(changed(format!("{rel} changed ({h:?}, was {w:?})"))),
                Some(Entry::File { .. }) => {
                    let same = fs::read(scratch.path().join(rel)).ok() == fs::read(tree.join(rel)).ok();
                    if !same {
                        return Err(changed(format!("{rel}: content changed")));
                    }
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = have.keys().find(|k| !want.contains_key(*k)) {
            return Err(changed(format!("{extra} was added")));
        }
        Ok(())
    }
}

/// What [`Store::check_tree`] compares of one entry (file contents separately).
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, size: u64 },
    Symlink { target: PathBuf },
    Other,
}

/// Every entry below `root`, by path relative to it; symlinks are not followed.
fn walk(root: &Path) -> io::Result<std::collections::BTreeMap<String, Entry>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir)? {
            let p = e?.path();
            let m = fs::symlink_metadata(&p)?;
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
            let entry = if m.file_type().is_symlink() {
                Entry::Symlink { target: fs::read_link(&p)? }
            } else if m.is_dir() {
                todo.push(p.clone());
                Entry::Dir { mode: m.mode() & 0o7777 }
            } else if m.is_file() {
                Entry::File { mode: m.mode() & 0o7777, size: m.len() }
            } else {
                Entry::Other
            };
            out.insert(rel, entry);
        }
    }
    Ok(out)
}

/// Refuses a newc cpio (an initramfs, uncompressed) holding an entry that could name
/// anything outside its root: a `..` component, an absolute name, a symlink whose target
/// leaves the tree. (Hard links in newc are shared inode numbers within the archive, so
/// they cannot point outside it.)
pub fn check_cpio(buf: &[u8]) -> Result<usize, MaterializeError> {
    let entries = crate::archive::read_cpio_newc(buf).map_err(MaterializeError::Read)?;
    for e in &entries {
        let unsafe_entry = |problem: String| MaterializeError::UnsafeCpio { name: e.name.clone(), problem };
        if e.name.starts_with('/') {
            return Err(unsafe_entry("absolute path".into()));
        }
        if e.name == "." {
            continue;
        }
        let rel = normalize_path(&e.name, false).map_err(|p| unsafe_entry(p.into()))?;
        if e.mode & 0o170_000 == 0o120_000 {
            check_symlink(&rel, &String::from_utf8_lossy(&e.data)).map_err(unsafe_entry)?;
        }
    }
    Ok(entries.len())
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks a tar into the existing directory `dest`, refusing unsafe entries (see the
/// module docs). Owners are not restored (the caller's); modes are, after all entries are
/// written (so a read-only directory can still be filled).
pub fn extract_tar<R: Read>(r: R, dest: &Path) -> Result<(), MaterializeError> {
    let mut archive = tar::Archive::new(r);
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries().map_err(MaterializeError::Read)? {
        let mut entry = entry.map_err(MaterializeError::Read)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsafe_entry = |problem: &str| MaterializeError::UnsafeEntry { path: raw.clone(), problem: problem.into() };
        let et = entry.header().entry_type();
        if matches!(et, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            continue;
        }
        if raw.starts_with('/') {
            return Err(unsafe_entry("absolute path"));
        }
        let mode = entry.header().mode().map_err(MaterializeError::Read)? & 0o7777;
        if raw.split('/').all(|c| c.is_empty() || c == ".") {
            if et == tar::EntryType::Directory {
                dir_modes.push((dest.to_path_buf(), mode));
                continue;
            }
            return Err(unsafe_entry("names the root itself"));
        }
        let rel = normalize_path(&raw, false).map_err(unsafe_entry)?;
        let target = dest.join(&rel);
        ensure_parents(dest, &rel).map_err(|p| MaterializeError::UnsafeEntry { path: raw.clone(), problem: p })?;
        let werr = |source| MaterializeError::Write { path: target.clone(), source };
        match et {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(unsafe_entry("directory over an existing non-directory")),
                    Err(_) => fs::create_dir(&target).map_err(werr)?,
                }
                dir_modes.push((target.clone(), mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_non_dir(&target).map_err(|p| MaterializeError::UnsafeEntry { path: raw.clone(), problem: p })?;
                // create_new never follows a symlink at the final component.
                let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&target).map_err(werr)?;
                io::copy(&mut entry, &mut f).map_err(werr)?;
                f.set_permissions(fs::Permissions::from_mode(mode)).map_err(werr)?;
            }
            tar::EntryType::Symlink => {
                let link =
                    entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                check_symlink(&rel, &link)
                    .map_err(|p| MaterializeError::UnsafeEntry { path: raw.clone(), problem: p })?;
                remove_non_dir(&target).map_err(|p| MaterializeError::UnsafeEntry { path: raw.clone(), problem: p })?;
                std::os::unix::fs::symlink(&link, &target).map_err(werr)?;
            }
            tar::EntryType::Link => {
                let link =
                    entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                let problem = |p: &str| MaterializeError::UnsafeEntry {
                    path: raw.clone(),
                    problem: format!("hard link to {link:?}: {p}"),
                };
                if link.starts_with('/') {
                    return Err(problem("absolute target outside the tree"));
                }
                let link_rel = normalize_path(&link, false).map_err(problem)?;
                ensure_parents(dest, &link_rel).map_err(|p| problem(&p))?;
                let src = dest.join(&link_rel);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() => {}
                    _ => return Err(problem("target is not a regular file already in the tree")),
                }
                remove_non_dir(&target).map_err(|p| MaterializeError::UnsafeEntry { path: raw.clone(), problem: p })?;
                fs::hard_link(&src, &target).map_err(werr)?;
            }
            other => {
                return Err(MaterializeError::Unsupported { path: raw.clone(), entry_type: format!("{other:?}") });
            }
        }
    }
    // Deepest first, so restricting a parent cannot stop us setting a child.
    for (path, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|source| MaterializeError::Write { path, source })?;
    }
    Ok(())
}

/// Creates the missing parents of `rel` below `dest`; refuses to go through anything that
/// is not a real directory (a symlink planted by an earlier entry, in particular).
fn ensure_parents(dest: &Path, rel: &str) -> Result<(), String> {
    let mut p = dest.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len() - 1] {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => return Err(format!("parent {c:?} is a symlink")),
            Ok(_) => return Err(format!("parent {c:?} is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&p).map_err(|e| format!("creating {}: {e}", p.display()))?
            }
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
    Ok(())
}

/// A later entry replaces an earlier non-directory (as GNU tar does); the old one is
/// removed, never written through.
fn remove_non_dir(target: &Path) -> Result<(), String> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Err("replaces a directory".into()),
        Ok(_) => fs::remove_file(target).map_err(|e| format!("replacing {}: {e}", target.display())),
        Err(_) => Ok(()),
    }
}

/// A symlink at `rel` pointing at `target` must stay inside the tree when resolved
/// lexically from the link's directory. Absolute targets are refused: on the host they
/// point outside the tree, whatever they mean inside a container.
fn check_symlink(rel: &str, target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("empty symlink target".into());
    }
    if target.starts_with('/') {
        return Err(format!("symlink to absolute path {target:?} points outside the tree"));
    }
    let mut depth = rel.split('/').count() as i64 - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("symlink to {target:?} points outside the tree"));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::raw_tar;

    fn extract(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> (tempfile::TempDir, Result<(), MaterializeError>) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root");
        fs::create_dir(&dest).unwrap();
        let r = extract_tar(&raw_tar(entries)[..], &dest);
        (dir, r)
    }

    fn assert_unsafe(r: Result<(), MaterializeError>, needle: &str) {
        match r {
            Err(MaterializeError::UnsafeEntry { problem, .. }) => assert!(problem.contains(needle), "{problem}"),
            other => panic!("expected an unsafe-entry error, got {other:?}"),
        }
    }

    use tar::EntryType as E;

    #[test]
    fn plain_tree_extracts() {
        let (dir, r) = extract(&[
            ("etc/", E::Directory, "", b""),
            ("etc/hostname", E::Regular, "", b"vb\n"),
            ("bin/sh", E::Symlink, "busybox", b""),
            ("bin/busybox", E::Regular, "", b"bb"),
            ("bin/ash", E::Link, "bin/busybox", b""),
            ("a/b/c", E::Symlink, "../../etc/hostname", b""),
        ]);
        r.unwrap();
        let root = dir.path().join("root");
        assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"vb\n");
        assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
        assert_eq!(fs::read(root.join("bin/ash")).unwrap(), b"bb");
        assert_eq!(fs::read(root.join("a/b/c")).unwrap(), b"vb\n");
    }

    #[test]
    fn refuses_dotdot() {
        let (dir, r) = extract(&[("../evil", E::Regular, "", b"x")]);
        assert_unsafe(r, "`..`");
        assert!(!dir.path().join("evil").exists());
        let (_, r) = extract(&[("a/../../evil", E::Regular, "", b"x")]);
        assert_unsafe(r, "`..`");
    }

    #[test]
    fn refuses_absolute_paths() {
        let (_, r) = extract(&[("/tmp/evil", E::Regular, "", b"x")]);
        assert_unsafe(r, "absolute");
    }

    #[test]
    fn refuses_symlinks_leaving_the_tree() {
        let (_, r) = extract(&[("a/link", E::Symlink, "../../etc/passwd", b"")]);
        assert_unsafe(r, "outside the tree");
        let (_, r) = extract(&[("link", E::Symlink, "/etc/passwd", b"")]);
        assert_unsafe(r, "outside the tree");
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        // An in-tree link followed by an entry below it: never write through links.
        let (_, r) =
            extract(&[("d", E::Directory, "", b""), ("l", E::Symlink, "d", b""), ("l/x", E::Regular, "", b"x")]);
        assert_unsafe(r, "symlink");
    }

    #[test]
    fn refuses_hardlinks_leaving_the_tree() {
        let (_, r) = extract(&[("x", E::Link, "../../etc/passwd", b"")]);
        assert_unsafe(r, "hard link");
        let (_, r) = extract(&[("x", E::Link, "/etc/passwd", b"")]);
        assert_unsafe(r, "hard link");
        let (_, r) = extract(&[("x", E::Link, "missing", b"")]);
        assert_unsafe(r, "not a regular file");
        let (_, r) = extract(&[("l", E::Symlink, "f", b""), ("x", E::Link, "l", b"")]);
        assert_unsafe(r, "not a regular file");
    }

    #[test]
    fn refuses_device_nodes() {
        let (_, r) = extract(&[("dev/console", E::Char, "", b"")]);
        assert!(matches!(r, Err(MaterializeError::Unsupported { .. })), "{r:?}");
    }

    #[test]
    fn store_tree_appears_atomically_and_checks_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let tar = raw_tar(&[("etc/hostname", E::Regular, "", b"vb\n")]);
        let (sha, _) = store.put_blob_bytes(&tar).unwrap();
        let tree = store.materialize_tree(&sha).unwrap();
        assert_eq!(tree, dir.path().join("trees").join(&sha));
        assert_eq!(fs::read(tree.join("etc/hostname")).unwrap(), b"vb\n");
        assert_eq!(store.materialize_tree(&sha).unwrap(), tree, "second call reuses it");
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("trees")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp dir left");

        // A blob whose content no longer matches its name is refused, leaving no tree.
        let bad = raw_tar(&[("x", E::Regular, "", b"y")]);
        let (bad_sha, _) = store.put_blob_bytes(&bad).unwrap();
        let p = store.blob_path(&bad_sha);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, &tar).unwrap();
        assert!(matches!(store.materialize_tree(&bad_sha), Err(MaterializeError::Corrupt { .. })));
        assert!(!dir.path().join("trees").join(&bad_sha).exists());
        assert_eq!(fs::read_dir(dir.path().join("trees")).unwrap().count(), 1);
    }
}
