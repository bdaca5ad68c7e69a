//! Root file systems: `debian-rootfs` (mmdebstrap), `rootfs-import` (a directory or tarball)
//! and `oci-image` (skopeo + umoci), each made into a tree in
//! `$VIRTBENCH_CACHE/work/<recipe>-<input-hash>/root`, checked and normalised there, and
//! written as three outputs: `rootfs` (a tar), `rootfs.ext4` (`mke2fs -d`) and
//! `rootfs.erofs` (`mkfs.erofs`).
//!
//! The tree is only ever handled by tools that do not follow its symlinks (`cp -a`, GNU
//! tar, umoci, mke2fs, mkfs.erofs) and by [`resolve_in`], which resolves paths inside it the
//! way the guest will (an absolute link target starts again at the tree's root). Absolute
//! symlinks are normal in a root file system and kept; a relative one that climbs above the
//! root is refused: it only makes sense on the machine the tree came from.
//!
//! Reproducibility: every mtime is clamped to `SOURCE_DATE_EPOCH` and every atime set to the
//! mtime; the tar is sorted with numeric owners; mke2fs gets a UUID and hash seed derived
//! from the input hash and `E2FSPROGS_FAKE_TIME`, and, since it copies each file's ctime
//! (the time this build made it) and atime, every inode's ctime and atime are then set to
//! `SOURCE_DATE_EPOCH` with debugfs; mkfs.erofs gets a UUID and `-T`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};

use super::Ctx;
use crate::build::BuildError;
use crate::manifest::{Output, Package, SystemInfo};
use crate::recipe::{InitMode, OciFormat, Recipe, SystemSource, SystemSpec};
use crate::store::output_record;

const MIB: u64 = 1 << 20;
/// Symlink targets up to this long live in the inode (ext4's fast symlinks).
const FAST_SYMLINK: u64 = 59;

/// The identity of an imported directory or file: a file's sha256, or for a directory the
/// sha256 of every entry below it (path, type, mode, owner, mtime, content or link target),
/// symlinks not followed.
pub(crate) fn content_hash(path: &Path) -> io::Result<String> {
    let md = fs::metadata(path)?;
    if md.is_file() {
        return crate::hash::sha256_file(path).map(|(h, _)| h);
    }
    if !md.is_dir() {
        return Err(io::Error::other("neither a regular file nor a directory"));
    }
    let mut h = Sha256::new();
    fn field(h: &mut Sha256, b: &[u8]) {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    }
    fn walk(h: &mut Sha256, root: &Path, rel: &Path) -> io::Result<()> {
        let dir = root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            let rel = rel.join(&n);
            let p = root.join(&rel);
            let m = fs::symlink_metadata(&p)?;
            field(h, rel.as_os_str().as_encoded_bytes());
            field(
                h,
                format!("{:o} {} {} {} {} {}", m.mode(), m.uid(), m.gid(), m.mtime(), m.mtime_nsec(), m.rdev())
                    .as_bytes(),
            );
            let t = m.file_type();
            if t.is_symlink() {
                field(h, fs::read_link(&p)?.as_os_str().as_encoded_bytes());
            } else if t.is_file() {
                field(h, crate::hash::sha256_file(&p)?.0.as_bytes());
            } else if t.is_dir() {
                walk(h, root, &rel)?;
            }
        }
        Ok(())
    }
    walk(&mut h, path, Path::new(""))?;
    Ok(hex::encode(h.finalize()))
}

/// sources.list entries of the host's apt sources for `suite` and its `-updates` and
/// `-security` suites, as one-line `deb URI SUITE COMPONENT…` (what mmdebstrap takes).
pub(crate) fn host_mirrors(suite: &str) -> Result<Vec<String>, String> {
    host_mirrors_in(Path::new("/etc/apt"), suite)
}

fn host_mirrors_in(apt: &Path, suite: &str) -> Result<Vec<String>, String> {
    let wanted = [suite.to_string(), format!("{suite}-updates"), format!("{suite}-security")];
    let mut files = vec![apt.join("sources.list")];
    let mut more: Vec<PathBuf> = crate::store::list(&apt.join("sources.list.d")).unwrap_or_default();
    more.retain(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"));
    files.extend(more);
    let mut out: Vec<String> = Vec::new();
    let mut push = |uri: &str, s: &str, comps: &[&str]| {
        let line = format!("deb {uri} {s} {}", comps.join(" "));
        if !comps.is_empty() && !out.contains(&line) {
            out.push(line);
        }
    };
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else { continue };
        if f.extension().is_some_and(|x| x == "sources") {
            for stanza in text.split("\n\n") {
                let mut fields: BTreeMap<String, String> = BTreeMap::new();
                for line in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
                    if let Some((k, v)) = line.split_once(':') {
                        if !line.starts_with(' ') {
                            fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                }
                let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
                if !get("types").split_whitespace().any(|t| t == "deb") || get("enabled") == "no" {
                    continue;
                }
                let comps: Vec<&str> = get("components").split_whitespace().collect();
                for uri in get("uris").split_whitespace() {
                    for s in get("suites").split_whitespace().filter(|s| wanted.iter().any(|w| w == s)) {
                        push(uri, s, &comps);
                    }
                }
            }
        } else {
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                let mut words = line.split_whitespace().peekable();
                if words.next() != Some("deb") {
                    continue;
                }
                // `[signed-by=… arch=…]` options: mmdebstrap finds the keyring itself.
                if words.peek().is_some_and(|w| w.starts_with('[')) {
                    for w in words.by_ref() {
                        if w.ends_with(']') {
                            break;
                        }
                    }
                }
                let (Some(uri), Some(s)) = (words.next(), words.next()) else { continue };
                let comps: Vec<&str> = words.collect();
                if wanted.iter().any(|w| w == s) {
                    push(uri, s, &comps);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(format!(
            "the host's apt sources ({}) have no `deb` entry for suite {suite:?}: give `mirrors`",
            apt.display()
        ));
    }
    Ok(out)
}

/// What kind of container image `path` is: a directory is an OCI layout (it must have
/// `oci-layout`); a tar holding `oci-layout` is an oci-archive, one holding `manifest.json`
/// a docker-archive.
pub(crate) fn oci_format(path: &Path) -> Result<OciFormat, String> {
    let md = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if md.is_dir() {
        if !path.join("oci-layout").is_file() {
            return Err(format!("{} is a directory without `oci-layout`: not an OCI image layout", path.display()));
        }
        return Ok(OciFormat::Oci);
    }
    let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ar = tar::Archive::new(io::BufReader::new(f));
    let not_tar = |e: io::Error| format!("{} is not a tar archive ({e}): give `format`", path.display());
    let (mut layout, mut docker) = (false, false);
    for e in ar.entries().map_err(not_tar)? {
        let e = e.map_err(not_tar)?;
        let p = e.path().map_err(not_tar)?.to_string_lossy().trim_start_matches("./").to_string();
        layout |= p == "oci-layout";
        docker |= p == "manifest.json";
    }
    match (layout, docker) {
        (true, _) => Ok(OciFormat::OciArchive),
        (false, true) => Ok(OciFormat::DockerArchive),
        _ => Err(format!(
            "{} has neither `oci-layout` (oci-archive) nor `manifest.json` (docker-archive) at its top",
            path.display()
        )),
    }
}

/// Resolves `path` (absolute, inside the image) under `root` as the guest would: symlinks
/// are followed inside the tree, an absolute target starting again at `root` and `..`
/// stopping there. Never leaves `root`. `Ok(None)`: it does not exist. With `create`,
/// missing directories are made (0755) on the way.
pub fn resolve_in(root: &Path, path: &str, create: bool) -> io::Result<Option<PathBuf>> {
    let mut todo: Vec<String> = path.split('/').rev().map(String::from).collect();
    let mut parts: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        let here: PathBuf = parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)).join(&c);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::other(format!("too many levels of symbolic links resolving {path}")));
                }
                let target = fs::read_link(&here)?;
                let t = target.to_string_lossy();
                if t.starts_with('/') {
                    parts.clear();
                }
                todo.extend(t.split('/').rev().map(String::from));
            }
            Ok(m) => {
                if !m.is_dir() && !todo.iter().all(|c| c.is_empty() || c == ".") {
                    return Ok(None);
                }
                parts.push(c);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&here)?;
                fs::set_permissions(&here, fs::Permissions::from_mode(0o755))?;
                parts.push(c);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(parts.iter().fold(root.to_path_buf(), |p, c| p.join(c))))
}

/// Where `/sbin/init` leads, if it is an executable regular file; otherwise why not.
pub fn find_init(root: &Path) -> Result<String, String> {
    let p = match resolve_in(root, "/sbin/init", false) {
        Ok(Some(p)) => p,
        Ok(None) => return Err("/sbin/init is missing".into()),
        Err(e) => return Err(format!("/sbin/init: {e}")),
    };
    let inside = format!("/{}", p.strip_prefix(root).unwrap_or(&p).display());
    let md = fs::symlink_metadata(&p).map_err(|e| format!("/sbin/init ({inside}): {e}"))?;
    if !md.is_file() {
        return Err(format!("/sbin/init leads to {inside}, which is not a regular file"));
    }
    if md.mode() & 0o111 == 0 {
        return Err(format!("/sbin/init leads to {inside}, which is not executable (mode {:o})", md.mode() & 0o7777));
    }
    Ok(inside)
}

/// Every installed package in dpkg's status database (`Status: install ok installed`).
pub(crate) fn installed_packages(status: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in status.split("\n\n") {
        let mut f: BTreeMap<&str, &str> = BTreeMap::new();
        for line in stanza.lines() {
            if let Some((k, v)) = line.split_once(": ") {
                if !line.starts_with(' ') {
                    f.insert(k, v.trim());
                }
            }
        }
        if f.get("Status") == Some(&"install ok installed") {
            if let (Some(n), Some(v)) = (f.get("Package"), f.get("Version")) {
                let architecture = f.get("Architecture").unwrap_or(&"").to_string();
                out.push(Package { name: n.to_string(), version: v.to_string(), architecture });
            }
        }
    }
    out.sort();
    out
}

/// Counted while checking a tree.
#[derive(Debug, Default)]
pub(crate) struct TreeStats {
    pub bytes: u64,
    pub inodes: u64,
}

/// Walks the tree (never following a symlink): refuses what cannot go into an image (a
/// relative symlink that climbs out of the root, a device node outside `/dev`, a socket),
/// clamps every mtime to `sde` and sets every atime to the mtime, and counts the space it
/// takes. Returns the first problem as an error naming the path.
pub(crate) fn check_tree(root: &Path, sde: u64) -> Result<TreeStats, String> {
    let mut stats = TreeStats::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    fn walk(
        root: &Path,
        rel: &Path,
        sde: u64,
        stats: &mut TreeStats,
        seen: &mut HashSet<(u64, u64)>,
    ) -> Result<(), String> {
        let dir = root.join(rel);
        let io = |p: &Path, e: io::Error| format!("/{}: {e}", p.display());
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(|e| io(rel, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| io(rel, e))?;
        names.sort();
        for n in names {
            let rel = rel.join(&n);
            let p = root.join(&rel);
            let m = fs::symlink_metadata(&p).map_err(|e| io(&rel, e))?;
            let t = m.file_type();
            let shown = format!("/{}", rel.display());
            if t.is_symlink() {
                let target = fs::read_link(&p).map_err(|e| io(&rel, e))?;
                if !target.is_absolute() && climbs_out(&rel, &target) {
                    return Err(format!(
                        "{shown} is a symlink to {:?}, which climbs above the root file system's / \
                         (a link made for the machine the tree came from)",
                        target.display().to_string()
                    ));
                }
                let len = target.as_os_str().len() as u64;
                if len > FAST_SYMLINK {
                    stats.bytes += 4096;
                }
            } else if t.is_block_device() || t.is_char_device() {
                return Err(format!(
                    "{shown} is a device node outside /dev (the guest's devtmpfs or runtime provides them)"
                ));
            } else if t.is_socket() {
                return Err(format!("{shown} is a socket, which cannot go into an image"));
            } else if t.is_file() {
                if seen.insert((m.dev(), m.ino())) {
                    stats.bytes += m.size().div_ceil(4096) * 4096;
                } else {
                    continue; // another name of a file already counted and clamped
                }
            } else if t.is_dir() {
                stats.bytes += 4096;
                walk(root, &rel, sde, stats, seen)?;
            }
            stats.inodes += 1;
            clamp_times(&p, &m, sde).map_err(|e| format!("{shown}: setting times: {e}"))?;
        }
        Ok(())
    }
    walk(root, Path::new(""), sde, &mut stats, &mut seen)?;
    let m = fs::symlink_metadata(root).map_err(|e| format!("/: {e}"))?;
    clamp_times(root, &m, sde).map_err(|e| format!("/: setting times: {e}"))?;
    Ok(stats)
}

/// mtime := min(mtime, sde), atime := mtime, on the entry itself (not a link's target).
fn clamp_times(p: &Path, m: &fs::Metadata, sde: u64) -> nix::Result<()> {
    let sde = i64::try_from(sde).unwrap_or(i64::MAX);
    let mtime = if m.mtime() >= sde { TimeSpec::new(sde, 0) } else { TimeSpec::new(m.mtime(), m.mtime_nsec()) };
    utimensat(None, p, &mtime, &mtime, UtimensatFlags::NoFollowSymlink)
}

/// Whether a relative link at `rel` (relative to the root) with `target` leaves the root
/// when resolved lexically from the link's directory.
fn climbs_out(rel: &Path, target: &Path) -> bool {
    let mut depth = rel.parent().map_or(0, |p| p.components().count()) as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    false
}

/// Refuses a tarball with a `..` component in an entry or hard link name before anything
/// is unpacked (GNU tar would skip such entries and go on).
pub(crate) fn scan_tarball(path: &Path) -> Result<(), String> {
    let mut magic = [0u8; 6];
    let n =
        fs::File::open(path).and_then(|mut f| f.read(&mut magic)).map_err(|e| format!("{}: {e}", path.display()))?;
    let magic = &magic[..n];
    let filter = if magic.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if magic.starts_with(b"BZh") {
        Some("bzip2")
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else {
        None
    };
    let mut child = None;
    let reader: Box<dyn Read> = match filter {
        None => Box::new(io::BufReader::new(fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?)),
        Some(prog) => {
            let mut c = Command::new(prog)
                .arg("-dc")
                .arg(path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("running {prog} -dc: {e}"))?;
            let out = c.stdout.take().expect("piped");
            child = Some(c);
            Box::new(out)
        }
    };
    let res = (|| {
        let mut ar = tar::Archive::new(reader);
        let bad = |e: io::Error| format!("{}: not a readable tarball: {e}", path.display());
        for e in ar.entries().map_err(bad)? {
            let e = e.map_err(bad)?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            if name.split('/').any(|c| c == "..") {
                return Err(format!("{}: entry {name:?} has a `..` component", path.display()));
            }
            if let Some(l) = e.link_name_bytes() {
                let l = String::from_utf8_lossy(&l).into_owned();
                if e.header().entry_type().is_hard_link() && l.split('/').any(|c| c == "..") {
                    return Err(format!(
                        "{}: entry {name:?} is a hard link to {l:?}, outside the tree",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    })();
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    res
}

/// A UUID (version 4 layout) derived from `seed`: fixed for fixed inputs.
pub(crate) fn derived_uuid(seed: &str) -> String {
    let d = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// ext4 size for a tree: the tree plus 10 % (extents, directories' growth), 256 bytes per
/// inode, 64 MiB for the journal and metadata, and the headroom; whole MiB.
pub(crate) fn ext4_size(stats: &TreeStats, headroom_mib: u64) -> u64 {
    let need = stats.bytes + stats.bytes / 10 + inodes_for(stats, headroom_mib) * 256;
    (need.div_ceil(MIB) + 64 + headroom_mib) * MIB
}

/// Inodes: twice the tree's, and at least one per 16 KiB of headroom (mke2fs's ratio).
fn inodes_for(stats: &TreeStats, headroom_mib: u64) -> u64 {
    (stats.inodes * 2).max(stats.inodes + headroom_mib * MIB / 16384).max(1024)
}

/// Versions of the tools a root file system build of `source` runs (hashed).
pub(crate) fn tools(ctx_tools: &super::Tools, source: &SystemSource) -> Result<BTreeMap<String, String>, String> {
    let mut progs: Vec<(&str, &str, Vec<&str>)> =
        vec![("mke2fs", "mke2fs", vec!["-V"]), ("debugfs", "debugfs", vec!["-V"]), ("tar", "tar", vec!["--version"])];
    match source {
        SystemSource::Debian(_) => {
            progs.push(("mmdebstrap", "mmdebstrap", vec!["--version"]));
            progs.push(("apt", "apt-get", vec!["--version"]));
            progs.push(("dpkg", "dpkg", vec!["--version"]));
        }
        SystemSource::Import(_) => progs.push(("cp", "cp", vec!["--version"])),
        SystemSource::Oci(_) => {
            progs.push(("skopeo", "skopeo", vec!["--version"]));
            progs.push(("umoci", "umoci", vec!["--version"]));
        }
    }
    let hint = "(scripts/install-deps installs mmdebstrap, skopeo, umoci, e2fsprogs, erofs-utils)";
    let mut m = BTreeMap::new();
    let erofs = ctx_tools.version_any_status("mkfs.erofs", &["-V"]).map_err(|e| format!("{e} {hint}"))?;
    m.insert("mkfs.erofs".to_string(), erofs);
    for (name, prog, args) in progs {
        let v = ctx_tools.version(prog, &args, |_| false).map_err(|e| format!("{e} {hint}"))?;
        m.insert(name.to_string(), v);
    }
    Ok(m)
}

/// The work directory of one build: removed when done; after a failure only its
/// `build.log` stays, for the error's reader.
struct Work {
    dir: PathBuf,
    ok: bool,
}

impl Work {
    fn log(&self) -> PathBuf {
        self.dir.join("build.log")
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        // A tree with something mounted in it (a killed mmdebstrap in root mode) is left
        // alone: removing it would descend into the mount.
        if mounted_below(&self.dir) {
            return;
        }
        for p in crate::store::list(&self.dir).unwrap_or_default() {
            if !self.ok && p.file_name().is_some_and(|n| n == "build.log") {
                continue;
            }
            let _ = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        }
        if self.ok {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

/// Whether any mount point lies below `dir` (from /proc/self/mountinfo).
fn mounted_below(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    text.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| Path::new(m).starts_with(dir) && Path::new(m) != dir)
}

/// Builds a root file system recipe; returns its outputs and what the manifest says of it.
pub(crate) fn build(
    ctx: &Ctx<'_>,
    r: &Recipe,
    spec: &SystemSpec,
    input_hash: &str,
    path: Option<&Path>,
    oci: Option<OciFormat>,
    mirrors: &[String],
) -> Result<(BTreeMap<String, Output>, SystemInfo), BuildError> {
    let sde = ctx.cfg.source_date_epoch;
    let work_root = ctx.cfg.cache.join("work");
    let fail = |step: &str, m: String| ctx.fail(&r.name, step, m);
    // Earlier attempts at this recipe are stale (we hold the cache lock).
    for p in crate::store::list(&work_root).unwrap_or_default() {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let stale =
            name.strip_prefix(&r.name).and_then(|rest| rest.strip_prefix('-')).is_some_and(crate::hash::is_sha256_hex);
        if stale && !mounted_below(&p) {
            fs::remove_dir_all(&p).map_err(|e| fail("work directory", format!("removing {}: {e}", p.display())))?;
        }
    }
    let mut work = Work { dir: work_root.join(format!("{}-{input_hash}", r.name)), ok: false };
    fs::create_dir_all(&work.dir).map_err(|e| fail("work directory", format!("{}: {e}", work.dir.display())))?;
    let root = work.dir.join("root");
    let log = work.log();
    let env: Vec<(&str, String)> = vec![
        ("SOURCE_DATE_EPOCH", sde.to_string()),
        ("E2FSPROGS_FAKE_TIME", sde.to_string()),
        ("LC_ALL", "C.UTF-8".into()),
        ("TZ", "UTC".into()),
    ];
    let run = |what: &str, program: &str, args: &[&str]| -> Result<(), BuildError> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd.envs(env.iter().map(|(k, v)| (*k, v)));
        super::kernel::run_logged(ctx, &r.name, what, cmd, &log)
    };
    let s = |p: &Path| p.to_string_lossy().into_owned();

    // 1. The tree.
    match &spec.source {
        SystemSource::Debian(d) => {
            let mut args: Vec<String> = vec![
                "--mode=root".into(),
                format!("--variant={}", d.variant),
                "--format=directory".into(),
                "--aptopt=Acquire::Retries \"3\"".into(),
                // The host's: they would make the tree differ between machines; hostd names
                // each guest.
                "--customize-hook=rm -f \"$1\"/etc/hostname \"$1\"/etc/resolv.conf".into(),
            ];
            if !d.packages.is_empty() {
                args.push(format!("--include={}", d.packages.join(",")));
            }
            args.push(d.suite.clone());
            args.push(s(&root));
            args.extend(mirrors.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run("mmdebstrap", "mmdebstrap", &args)?;
        }
        SystemSource::Import(_) => {
            let src = path.expect("plan resolves an import path");
            if src.is_dir() {
                fs::create_dir(&root).map_err(|e| fail("copying the tree", e.to_string()))?;
                // -a: owners, modes, times, hard links; symlinks copied as links, never followed.
                run("copying the tree", "cp", &["-a", "--", &format!("{}/.", s(src)), &s(&root)])?;
            } else {
                scan_tarball(src).map_err(|m| fail("checking the tarball", m))?;
                fs::create_dir(&root).map_err(|e| fail("unpacking the tarball", e.to_string()))?;
                run(
                    "unpacking the tarball",
                    "tar",
                    &["-C", &s(&root), "--numeric-owner", "--same-owner", "-xpf", &s(src)],
                )?;
            }
        }
        SystemSource::Oci(o) => {
            let src = path.expect("plan resolves an image path");
            let format = oci.expect("plan resolves the format");
            let mut from = format!("{}:{}", format.transport(), s(src));
            if let Some(img) = &o.image {
                from.push(':');
                from.push_str(img);
            }
            let layout = format!("{}:image", s(&work.dir.join("layout")));
            // skopeo checks every blob against its digest; umoci applies the layers (with
            // their whiteouts) and checks them again.
            run("skopeo copy", "skopeo", &["--insecure-policy", "copy", "--quiet", &from, &format!("oci:{layout}")])?;
            run("umoci raw unpack", "umoci", &["raw", "unpack", "--image", &layout, &s(&root)])?;
        }
    }

    // 2. Normalise, add modules, check.
    let dev = root.join("dev");
    match fs::symlink_metadata(&dev) {
        Ok(m) if m.is_dir() => {
            for p in crate::store::list(&dev).unwrap_or_default() {
                let r = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                r.map_err(|e| fail("emptying /dev", format!("{}: {e}", p.display())))?;
            }
        }
        Ok(_) => return Err(fail("checking the tree", "/dev is not a directory".into())),
        Err(_) => {
            fs::create_dir(&dev).map_err(|e| fail("making /dev", e.to_string()))?;
            fs::set_permissions(&dev, fs::Permissions::from_mode(0o755))
                .map_err(|e| fail("making /dev", e.to_string()))?;
        }
    }
    if let Some(k) = &spec.common.kernel {
        install_modules(ctx, r, k, &root, &log)?;
    }
    let init = find_init(&root);
    if spec.common.init == InitMode::Image {
        if let Err(why) = &init {
            return Err(fail(
                "checking the init",
                format!(
                    "init = \"image\" needs the image's own init, and {why}; use init = \"agent\" (the agent as \
                     PID 1) or add an init (systemd-sysv, busybox)"
                ),
            ));
        }
    }
    let stats = check_tree(&root, sde).map_err(|m| fail("checking the tree", m))?;
    let packages = match resolve_in(&root, "/var/lib/dpkg/status", false) {
        Ok(Some(p)) if p.is_file() => installed_packages(&fs::read_to_string(&p).unwrap_or_default()),
        _ => vec![],
    };
    let os = resolve_in(&root, "/etc/os-release", false)
        .ok()
        .flatten()
        .or_else(|| resolve_in(&root, "/usr/lib/os-release", false).ok().flatten())
        .and_then(|p| fs::read_to_string(p).ok())
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())));
    let kernel_modules: Vec<String> = match resolve_in(&root, "/lib/modules", false) {
        Ok(Some(p)) => crate::store::list(&p)
            .unwrap_or_default()
            .iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect(),
        _ => vec![],
    };

    // 3. The images.
    let tar = work.dir.join("rootfs.tar");
    let mtime = format!("--mtime=@{sde}");
    run(
        "writing the tar",
        "tar",
        &[
            "--sort=name",
            "--format=gnu",
            "--numeric-owner",
            &mtime,
            "--clamp-mtime",
            "-C",
            &s(&root),
            "-cf",
            &s(&tar),
            ".",
        ],
    )?;
    let ext4 = work.dir.join("rootfs.ext4");
    let ext4_bytes = ext4_size(&stats, spec.common.headroom_mib);
    let ext4_uuid = derived_uuid(&format!("virtbench ext4 uuid {input_hash}"));
    let hash_seed = derived_uuid(&format!("virtbench ext4 hash seed {input_hash}"));
    fs::File::create(&ext4)
        .and_then(|f| f.set_len(ext4_bytes))
        .map_err(|e| fail("making the ext4 image", e.to_string()))?;
    let inodes = inodes_for(&stats, spec.common.headroom_mib).to_string();
    run(
        "mke2fs",
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-m",
            "0",
            "-N",
            &inodes,
            "-U",
            &ext4_uuid,
            "-E",
            &format!("hash_seed={hash_seed},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard"),
            "-d",
            &s(&root),
            &s(&ext4),
        ],
    )?;
    fix_ext4_times(ctx, r, &ext4, &work.dir, sde, &log)?;
    run("fsck of the ext4 image", "e2fsck", &["-f", "-n", &s(&ext4)])?;
    let erofs = work.dir.join("rootfs.erofs");
    let erofs_uuid = derived_uuid(&format!("virtbench erofs uuid {input_hash}"));
    run("mkfs.erofs", "mkfs.erofs", &["--quiet", "-U", &erofs_uuid, "-T", &sde.to_string(), &s(&erofs), &s(&root)])?;

    // 4. Into the store (only now: every check above passed).
    let store_err = |e| BuildError::Store { context: format!("recipe {}", r.name), source: e };
    let mut outputs = BTreeMap::new();
    for (name, p) in [("rootfs", &tar), ("rootfs.ext4", &ext4), ("rootfs.erofs", &erofs)] {
        ctx.progress.step(&r.name, &format!("storing {name}"));
        let (sha, size) = ctx.store.put_blob_file(p).map_err(store_err)?;
        outputs.insert(name.to_string(), output_record(sha, size));
    }
    work.ok = true;
    let info = SystemInfo {
        init: init.ok(),
        packages,
        kernel_modules,
        os,
        tree_bytes: stats.bytes,
        tree_inodes: stats.inodes,
        ext4_bytes,
        headroom_mib: spec.common.headroom_mib,
        ext4_uuid,
        erofs_uuid,
    };
    Ok((outputs, info))
}

/// mke2fs -d copies each file's ctime, which is when this build made the file, and its atime,
/// which reading it may have moved: set both to `sde` in every inode it allocated, with
/// debugfs, so the image depends on the tree only (mtimes are the tree's, crtimes
/// `E2FSPROGS_FAKE_TIME`). debugfs's own clock is `sde` too: it writes the superblock's last
/// write time when it closes the image.
fn fix_ext4_times(
    ctx: &Ctx<'_>,
    r: &Recipe,
    image: &Path,
    work: &Path,
    sde: u64,
    log: &Path,
) -> Result<(), BuildError> {
    let fail = |m: String| ctx.fail(&r.name, "setting ext4 inode times", m);
    let out = Command::new("dumpe2fs")
        .arg(image)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| fail(format!("running dumpe2fs: {e}")))?;
    let used = used_inodes(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| fail(format!("dumpe2fs {} gave no inode bitmap summary", image.display())))?;
    let cmds = work.join("debugfs.cmds");
    // debugfs stamps the superblock's last write time when it closes the image.
    let mut text = format!("set_current_time @{sde}\n");
    for ino in used {
        // mke2fs read every file, which may have moved its atime (relatime) after the tree's
        // times were set: atimes are `sde` too.
        text.push_str(&format!("sif <{ino}> ctime @{sde}\nsif <{ino}> atime @{sde}\n"));
    }
    fs::write(&cmds, text).map_err(|e| fail(format!("{}: {e}", cmds.display())))?;
    let mut cmd = Command::new("debugfs");
    cmd.arg("-w").arg("-f").arg(&cmds).arg(image).env("E2FSPROGS_FAKE_TIME", sde.to_string());
    super::kernel::run_logged(ctx, &r.name, "setting ext4 inode times", cmd, log)
}

/// The inodes in use from the first non-reserved one on, from `dumpe2fs` output: each
/// group's range minus its `Free inodes:` list.
fn used_inodes(dump: &str) -> Option<Vec<u64>> {
    let num = |k: &str| dump.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse::<u64>().ok()));
    let (count, per_group, first) = (num("Inode count:")?, num("Inodes per group:")?, num("First inode:")?);
    let mut free: Vec<(u64, u64)> = Vec::new();
    let mut groups = 0;
    for l in dump.lines() {
        let Some(list) = l.trim_start().strip_prefix("Free inodes:") else { continue };
        if !l.starts_with(' ') {
            continue; // the header's count, not a group's list
        }
        groups += 1;
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            free.push((a.parse().ok()?, b.parse().ok()?));
        }
    }
    if groups == 0 || groups * per_group != count {
        return None;
    }
    free.sort();
    let mut used = Vec::new();
    let mut next = first;
    for (a, b) in free.into_iter().chain([(count + 1, count + 1)]) {
        used.extend(next.max(first)..a.max(next));
        next = next.max(b + 1);
    }
    Some(used)
}

/// Unpacks the `modules` of kernel-package recipe `kernel` into `/lib/modules/<release>`.
fn install_modules(ctx: &Ctx<'_>, r: &Recipe, kernel: &str, root: &Path, log: &Path) -> Result<(), BuildError> {
    let fail = |m: String| ctx.fail(&r.name, "installing kernel modules", m);
    let m = ctx.deps.get(kernel).ok_or_else(|| fail(format!("{kernel} was not built before it")))?;
    let release = m
        .kernel_release
        .clone()
        .ok_or_else(|| fail(format!("{kernel} has no modules (a kernel `file` has none; take a package)")))?;
    let o = ctx.dep_output(&r.name, kernel, "modules")?;
    let blob = ctx.store.blob_path(&o.sha256);
    let dir = resolve_in(root, "/lib/modules", true)
        .map_err(|e| fail(format!("/lib/modules: {e}")))?
        .ok_or_else(|| fail("/lib/modules cannot be made (a parent is not a directory)".into()))?;
    if fs::symlink_metadata(dir.join(&release)).is_ok() {
        return Err(fail(format!("the tree already has /lib/modules/{release}")));
    }
    let mut cmd = Command::new("tar");
    cmd.arg("-C").arg(&dir).args(["--numeric-owner", "--same-owner", "-xpf"]).arg(&blob);
    super::kernel::run_logged(ctx, &r.name, "installing kernel modules", cmd, log)
}

/// Helps tests: every path below `root`, sorted.
#[cfg(test)]
fn listing(root: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    fn walk(root: &Path, rel: &Path, out: &mut std::collections::BTreeSet<String>) {
        for e in fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let t = e.file_type().unwrap();
            out.insert(format!("/{}", rel.display()));
            if t.is_dir() {
                walk(root, &rel, out);
            }
        }
    }
    walk(root, Path::new(""), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_inside_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        fs::write(root.join("usr/lib/systemd/systemd"), b"x").unwrap();
        fs::set_permissions(root.join("usr/lib/systemd/systemd"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("usr/sbin", root.join("sbin")).unwrap();
        // Absolute: the guest's /, never the host's.
        symlink("/lib/systemd/systemd", root.join("usr/sbin/init")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        assert_eq!(find_init(root).unwrap(), "/usr/lib/systemd/systemd");
        // `..` stops at the root.
        symlink("../../../../etc", root.join("usr/etc")).unwrap();
        assert_eq!(resolve_in(root, "/usr/etc", false).unwrap(), None);
        fs::create_dir(root.join("etc")).unwrap();
        assert_eq!(resolve_in(root, "/usr/etc", false).unwrap(), Some(root.join("etc")));
        fs::set_permissions(root.join("usr/lib/systemd/systemd"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(find_init(root).unwrap_err().contains("not executable"));
        fs::remove_file(root.join("usr/sbin/init")).unwrap();
        assert_eq!(find_init(root).unwrap_err(), "/sbin/init is missing");
        // Making /lib/modules goes through /lib → /usr/lib.
        let m = resolve_in(root, "/lib/modules", true).unwrap().unwrap();
        assert_eq!(m, root.join("usr/lib/modules"));
        assert!(listing(root).contains("/usr/lib/modules"));
        symlink("a", root.join("loop")).unwrap();
        symlink("loop", root.join("a")).unwrap();
        assert!(resolve_in(root, "/loop", false).is_err());
    }

    #[test]
    fn climbing_links() {
        assert!(!climbs_out(Path::new("etc/localtime"), Path::new("../usr/share/zoneinfo/UTC")));
        assert!(climbs_out(Path::new("etc/x"), Path::new("../../etc/shadow")));
        assert!(!climbs_out(Path::new("a/b/c"), Path::new("../x/../../y")));
        assert!(climbs_out(Path::new("a"), Path::new("x/../../y")));
    }

    #[test]
    fn status_database() {
        let s =
            "Package: a\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\nDescription: x\n more\n\n\
                 Package: b\nStatus: deinstall ok config-files\nVersion: 2\n\n\
                 Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4+deb12u1\n";
        let p = installed_packages(s);
        assert_eq!(p.len(), 2);
        assert_eq!((p[1].name.as_str(), p[1].version.as_str()), ("base-files", "12.4+deb12u1"));
    }

    #[test]
    fn mirrors_from_both_source_formats() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("sources.list.d")).unwrap();
        fs::write(
            t.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb-src\nURIs: http://x\nSuites: bookworm\nComponents: main\n",
        )
        .unwrap();
        fs::write(
            t.path().join("sources.list"),
            "# c\ndeb [signed-by=/k.gpg] http://sec/debian-security bookworm-security main contrib\ndeb http://o trixie main\n",
        )
        .unwrap();
        let m = host_mirrors_in(t.path(), "bookworm").unwrap();
        assert_eq!(
            m,
            [
                "deb http://sec/debian-security bookworm-security main contrib",
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
            ]
        );
        assert!(host_mirrors_in(t.path(), "buster").unwrap_err().contains("no `deb` entry"));
    }

    #[test]
    fn inodes_in_use_from_dumpe2fs() {
        let d = "Inode count:              30\nFree inodes:              20\nInodes per group:         10\n\
                 First inode:              11\nGroup 0: (Blocks 0-1)\n  Free inodes: \nGroup 1:\n  Free inodes: 14-15, 18-20\n\
                 Group 2:\n  Free inodes: 21-30\n";
        assert_eq!(used_inodes(d).unwrap(), [11, 12, 13, 16, 17]);
        assert_eq!(used_inodes("Inode count: 3\n"), None);
    }

    #[test]
    fn uuids_are_fixed_and_well_formed() {
        let u = derived_uuid("x");
        assert_eq!(u, derived_uuid("x"));
        assert_ne!(u, derived_uuid("y"));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
