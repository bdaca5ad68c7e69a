//! An in-memory file tree and its deterministic serialisations: newc cpio (initramfs) and
//! tar (rootfs, OCI bundle). Nothing about the build host leaks into the bytes: entries are
//! sorted by path, every timestamp is the given epoch, owners are 0/0 ("root"), inode
//! numbers are 1, 2, 3… in archive order.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use flate2::{Compression, GzBuilder};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;

/// The name of the entry that ends a newc archive.
pub const CPIO_TRAILER: &str = "TRAILER!!!";

/// gzip level for every compressed artifact. Fixed: the level changes the bytes.
pub const GZIP_LEVEL: u32 = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        data: Vec<u8>,
    },
    /// Target as stored; the tree never resolves it.
    Symlink {
        target: String,
    },
    Device {
        kind: DeviceKind,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

impl Node {
    fn what(&self) -> &'static str {
        match self {
            Node::Dir { .. } => "directory",
            Node::File { .. } => "file",
            Node::Symlink { .. } => "symlink",
            Node::Device { .. } => "device node",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("{path:?}: {problem}")]
    BadPath { path: String, problem: &'static str },
    #[error("{path:?}: added twice (already a {existing})")]
    Conflict { path: String, existing: &'static str },
    #[error("{path:?}: parent {parent:?} is a {existing}, not a directory")]
    NotADirectory { path: String, parent: String, existing: &'static str },
    #[error("{path:?}: mode {mode:#o} has bits outside 0o7777")]
    BadMode { path: String, mode: u32 },
}

/// Longest file name Linux takes (NAME_MAX): a longer component fails only when unpacked.
pub const NAME_MAX: usize = 255;

/// Normalises an archive path: drops a leading `/` (when `allow_absolute`), empty and `.`
/// components; refuses `..` anywhere, so no entry can name anything outside the root, and
/// components longer than [`NAME_MAX`] bytes, which no Linux file system can create.
pub fn normalize_path(path: &str, allow_absolute: bool) -> Result<String, &'static str> {
    if path.starts_with('/') && !allow_absolute {
        return Err("absolute path");
    }
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("`..` component"),
            c if c.contains('\0') => return Err("NUL byte"),
            c if c.len() > NAME_MAX => return Err("a component longer than 255 bytes (Linux's NAME_MAX)"),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err("names the root itself");
    }
    Ok(parts.join("/"))
}

/// Paths relative to the archive root (no leading `/`), each parent directory present.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
    /// Directories created only because something was added below them: an explicit
    /// directory entry may still set their mode.
    implicit: BTreeSet<String>,
}

/// Two trees are equal when they serialise the same (how a directory came about is not
/// part of it).
impl PartialEq for Tree {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes
    }
}

impl Eq for Tree {}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `node` at `path` (absolute or relative, normalised with [`normalize_path`]),
    /// creating missing parents as 0755 directories.
    pub fn add(&mut self, path: &str, node: Node) -> Result<(), TreeError> {
        let key = normalize_path(path, true).map_err(|problem| TreeError::BadPath { path: path.into(), problem })?;
        let mode = match &node {
            Node::Dir { mode } | Node::File { mode, .. } | Node::Device { mode, .. } => *mode,
            Node::Symlink { .. } => 0o777,
        };
        if mode > 0o7777 {
            return Err(TreeError::BadMode { path: key, mode });
        }
        for (i, _) in key.match_indices('/') {
            let parent = &key[..i];
            match self.nodes.get(parent) {
                None => {
                    self.nodes.insert(parent.to_string(), Node::Dir { mode: 0o755 });
                    self.implicit.insert(parent.to_string());
                }
                Some(Node::Dir { .. }) => {}
                Some(other) => {
                    return Err(TreeError::NotADirectory {
                        path: key.clone(),
                        parent: parent.into(),
                        existing: other.what(),
                    })
                }
            }
        }
        match (self.nodes.get(&key), &node) {
            (None, _) => {}
            (Some(Node::Dir { .. }), Node::Dir { .. }) if self.implicit.remove(&key) => {}
            (Some(existing), _) => return Err(TreeError::Conflict { path: key, existing: existing.what() }),
        }
        self.nodes.insert(key, node);
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path.trim_start_matches('/'))
    }

    /// Entries in archive order (byte-wise sorted paths: parents come before children).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The same tree below `prefix/` (for the OCI bundle's `rootfs/`).
    pub fn nest_under(&self, prefix: &str, into: &mut Tree) -> Result<(), TreeError> {
        for (path, node) in &self.nodes {
            into.add(&format!("{prefix}/{path}"), node.clone())?;
        }
        Ok(())
    }

    /// Directory link counts: 2 ("." and the entry in its parent) plus one ".." per
    /// subdirectory.
    fn dir_nlinks(&self) -> BTreeMap<&str, u32> {
        let mut n: BTreeMap<&str, u32> = BTreeMap::new();
        for (path, node) in &self.nodes {
            if let Node::Dir { .. } = node {
                n.entry(path).or_insert(2);
                if let Some((parent, _)) = path.rsplit_once('/') {
                    *n.entry(parent).or_insert(2) += 1;
                }
            }
        }
        n
    }

    /// newc cpio ("070701"), as the kernel's initramfs unpacker reads it.
    ///
    /// Written by hand rather than with the `cpio` crate: the format is a fixed 110-byte
    /// ASCII header, the NUL-terminated name and the data, each padded to 4 bytes. Doing it
    /// here keeps every header field (inode numbers, nlink, device numbers, mtime, the
    /// trailer) visibly under our control in ~40 lines, which is the point of the exercise.
    pub fn write_cpio_newc<W: Write>(&self, mut w: W, mtime: u64) -> io::Result<W> {
        let mtime = u32::try_from(mtime).map_err(|_| invalid("mtime does not fit cpio newc"))?;
        // The kernel's unpacker (and every cpio reader) stops at this name: an entry so
        // named would silently drop everything after it from the initramfs.
        if self.nodes.contains_key(CPIO_TRAILER) {
            return Err(invalid("an entry named TRAILER!!! would end the cpio archive early"));
        }
        let nlinks = self.dir_nlinks();
        let mut ino = 0u32;
        for (path, node) in &self.nodes {
            ino += 1;
            let e = match node {
                Node::Dir { mode } => NewcEntry::new(path, S_IFDIR | mode, nlinks[path.as_str()], &[]),
                Node::File { mode, data } => NewcEntry::new(path, S_IFREG | mode, 1, data),
                Node::Symlink { target } => NewcEntry::new(path, S_IFLNK | 0o777, 1, target.as_bytes()),
                Node::Device { kind, mode, major, minor } => {
                    let t = if *kind == DeviceKind::Char { S_IFCHR } else { S_IFBLK };
                    NewcEntry { rdev: (*major, *minor), ..NewcEntry::new(path, t | mode, 1, &[]) }
                }
            };
            e.write(&mut w, ino, mtime)?;
        }
        // The trailer as the kernel's usr/gen_init_cpio writes it: everything 0 but nlink.
        NewcEntry::new(CPIO_TRAILER, 0, 1, &[]).write(&mut w, 0, 0)?;
        Ok(w)
    }

    /// A tar with explicit, deterministic GNU headers (owner 0/0 "root", mtime `mtime`).
    pub fn write_tar<W: Write>(&self, w: W, mtime: u64) -> io::Result<W> {
        let mut b = tar::Builder::new(w);
        for (path, node) in &self.nodes {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(mtime);
            h.set_username("root")?;
            h.set_groupname("root")?;
            h.set_size(0);
            match node {
                Node::Dir { mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    b.append_data(&mut h, path, io::empty())?;
                }
                Node::File { mode, data } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, &data[..])?;
                }
                Node::Symlink { target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    b.append_link(&mut h, path, target)?;
                }
                Node::Device { kind, mode, major, minor } => {
                    h.set_entry_type(if *kind == DeviceKind::Char {
                        tar::EntryType::Char
                    } else {
                        tar::EntryType::Block
                    });
                    h.set_mode(*mode);
                    h.set_device_major(*major)?;
                    h.set_device_minor(*minor)?;
                    b.append_data(&mut h, path, io::empty())?;
                }
            }
        }
        b.into_inner()
    }

    /// Reads a tar back into a tree (the OCI bundle re-nests the rootfs tar). Paths are
    /// checked like [`crate::extract_tar`] checks them; hard links are not supported.
    pub fn from_tar<R: Read>(r: R) -> Result<Tree, FromTarError> {
        let mut tree = Tree::new();
        let mut archive = tar::Archive::new(r);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = entry.path_bytes().into_owned();
            let path = String::from_utf8(raw).map_err(|_| FromTarError::NonUtf8)?;
            if normalize_path(&path, false).is_err() && path.trim_matches(['.', '/']).is_empty() {
                continue; // "./": the root itself
            }
            let h = entry.header();
            let mode = h.mode()? & 0o7777;
            let node = match h.entry_type() {
                tar::EntryType::Directory => Node::Dir { mode },
                tar::EntryType::Regular => {
                    let mut data = Vec::with_capacity(h.size()? as usize);
                    entry.read_to_end(&mut data)?;
                    Node::File { mode, data }
                }
                tar::EntryType::Symlink => {
                    let target = entry.link_name_bytes().ok_or(FromTarError::Unsupported { path: path.clone() })?;
                    let target = String::from_utf8(target.into_owned()).map_err(|_| FromTarError::NonUtf8)?;
                    Node::Symlink { target }
                }
                t @ (tar::EntryType::Char | tar::EntryType::Block) => Node::Device {
                    kind: if t == tar::EntryType::Char { DeviceKind::Char } else { DeviceKind::Block },
                    mode,
                    major: h.device_major()?.unwrap_or(0),
                    minor: h.device_minor()?.unwrap_or(0),
                },
                _ => return Err(FromTarError::Unsupported { path }),
            };
            if path.starts_with('/') {
                return Err(FromTarError::Tree(TreeError::BadPath { path, problem: "absolute path" }));
            }
            tree.add(&path, node)?;
        }
        Ok(tree)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FromTarError {
    #[error("reading tar: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Tree(#[from] TreeError),
    #[error("non-UTF-8 path in tar")]
    NonUtf8,
    #[error("{path:?}: unsupported entry type")]
    Unsupported { path: String },
}

struct NewcEntry<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

impl<'a> NewcEntry<'a> {
    fn new(name: &'a str, mode: u32, nlink: u32, data: &'a [u8]) -> Self {
        Self { name, mode, nlink, rdev: (0, 0), data }
    }

    fn write<W: Write>(&self, w: &mut W, ino: u32, mtime: u32) -> io::Result<()> {
        let size = u32::try_from(self.data.len()).map_err(|_| invalid("file too large for cpio newc"))?;
        let namesize = self.name.len() + 1;
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check: 8 hex digits each.
        let fields =
            [ino, self.mode, 0, 0, self.nlink, mtime, size, 0, 0, self.rdev.0, self.rdev.1, namesize as u32, 0];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        w.write_all(header.as_bytes())?;
        w.write_all(self.name.as_bytes())?;
        w.write_all(&[0])?;
        w.write_all(&[0; 3][..pad4(110 + namesize)])?;
        w.write_all(self.data)?;
        w.write_all(&[0; 3][..pad4(self.data.len())])
    }
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// gzip with a fixed level and an empty header: no file name, mtime 0.
pub fn gzip<W: Write>(w: W) -> flate2::write::GzEncoder<W> {
    GzBuilder::new().mtime(0).write(w, Compression::new(GZIP_LEVEL))
}

/// One entry of a newc archive, as parsed back by [`read_cpio_newc`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Parses a newc archive up to its trailer (inspection and tests).
pub fn read_cpio_newc(mut buf: &[u8]) -> io::Result<Vec<CpioEntry>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("cpio newc: {m}"));
    let mut out = Vec::new();
    loop {
        if buf.len() < 110 || &buf[..6] != b"070701" {
            return Err(bad("bad magic or short header"));
        }
        let field = |i: usize| -> io::Result<u32> {
            let s = std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i]).map_err(|_| bad("non-ASCII header"))?;
            u32::from_str_radix(s, 16).map_err(|_| bad("non-hex header field"))
        };
        let (ino, mode, uid, gid, nlink, mtime) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?, field(5)?);
        let (size, rdev, namesize) = (field(6)? as usize, (field(9)?, field(10)?), field(11)? as usize);
        let name_end = 110 + namesize;
        let data_start = name_end + pad4(name_end);
        let data_end = data_start + size;
        if buf.len() < data_end || namesize == 0 || buf[name_end - 1] != 0 {
            return Err(bad("truncated entry"));
        }
        let name = String::from_utf8(buf[110..name_end - 1].to_vec()).map_err(|_| bad("non-UTF-8 name"))?;
        if name == CPIO_TRAILER {
            return Ok(out);
        }
        out.push(CpioEntry { name, ino, mode, uid, gid, nlink, mtime, rdev, data: buf[data_start..data_end].to_vec() });
        buf = &buf[(data_end + pad4(data_end)).min(buf.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.add("/init", Node::File { mode: 0o755, data: b"#!agent".to_vec() }).unwrap();
        t.add("/tmp", Node::Dir { mode: 0o1777 }).unwrap();
        t.add("/dev/console", Node::Device { kind: DeviceKind::Char, mode: 0o600, major: 5, minor: 1 }).unwrap();
        t.add("/bin/sh", Node::Symlink { target: "busybox".into() }).unwrap();
        t.add("/etc/a/b", Node::File { mode: 0o644, data: b"x".to_vec() }).unwrap();
        t
    }

    #[test]
    fn normalize_refuses_escapes() {
        assert_eq!(normalize_path("/a//b/./c", true).unwrap(), "a/b/c");
        assert_eq!(normalize_path("./a", false).unwrap(), "a");
        assert!(normalize_path("/a", false).is_err());
        assert!(normalize_path("a/../b", true).is_err());
        assert!(normalize_path("/", true).is_err());
        assert_eq!(normalize_path(&format!("a/{}", "x".repeat(255)), false).unwrap().len(), 257);
        assert!(normalize_path(&format!("a/{}/b", "x".repeat(256)), false).unwrap_err().contains("255 bytes"));
    }

    #[test]
    fn parents_are_implicit_and_conflicts_refused() {
        let mut t = sample();
        assert_eq!(t.get("etc/a"), Some(&Node::Dir { mode: 0o755 }));
        // An explicit entry may set an implicit directory's mode once.
        t.add("/etc/a", Node::Dir { mode: 0o700 }).unwrap();
        assert!(matches!(t.add("/etc/a", Node::Dir { mode: 0o700 }), Err(TreeError::Conflict { .. })));
        assert!(matches!(t.add("/init/x", Node::Dir { mode: 0o755 }), Err(TreeError::NotADirectory { .. })));
        assert!(matches!(t.add("/x", Node::Dir { mode: 0o17777 }), Err(TreeError::BadMode { .. })));
    }

    #[test]
    fn cpio_newc_fields_are_deterministic() {
        let bytes = sample().write_cpio_newc(Vec::new(), 1_700_000_000).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = read_cpio_newc(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/sh", "dev", "dev/console", "etc", "etc/a", "etc/a/b", "init", "tmp"]);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino, i as u32 + 1, "inodes renumbered in order");
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000));
        }
        let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by("etc").nlink, 3, "etc has one subdirectory");
        assert_eq!(by("etc/a").nlink, 2);
        assert_eq!(by("init").nlink, 1);
        assert_eq!(by("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(by("dev/console").rdev, (5, 1));
        assert_eq!(by("tmp").mode, S_IFDIR | 0o1777);
        assert_eq!(by("bin/sh").data, b"busybox");
        assert!(bytes.ends_with(b"TRAILER!!!\0\0\0\0") || bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    /// Found by the recipe_parse fuzz target: a file named like the trailer would have cut
    /// the initramfs short, silently.
    #[test]
    fn an_entry_named_like_the_trailer_is_refused() {
        let mut t = sample();
        t.add("/TRAILER!!!", Node::File { mode: 0o644, data: b"x".to_vec() }).unwrap();
        let e = t.write_cpio_newc(Vec::new(), 0).unwrap_err();
        assert!(e.to_string().contains("TRAILER!!!"), "{e}");
        // Deeper down it is an ordinary name.
        let mut t = sample();
        t.add("/etc/TRAILER!!!", Node::File { mode: 0o644, data: b"x".to_vec() }).unwrap();
        let entries = read_cpio_newc(&t.write_cpio_newc(Vec::new(), 0).unwrap()).unwrap();
        assert_eq!(entries.len(), t.len());
    }

    #[test]
    fn cpio_is_readable_by_gnu_cpio() {
        let Ok(out) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("skipping: no cpio binary");
            return;
        };
        assert!(out.status.success());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, sample().write_cpio_newc(Vec::new(), 1_700_000_000).unwrap()).unwrap();
        let out =
            std::process::Command::new("sh").arg("-c").arg("cpio -it --quiet < \"$0\"").arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8(out.stdout).unwrap();
        assert_eq!(listing.lines().count(), 9, "{listing}");
    }

    #[test]
    fn tar_headers_are_deterministic_and_round_trip() {
        let t = sample();
        let a = t.write_tar(Vec::new(), 1_700_000_000).unwrap();
        let b = t.clone().write_tar(Vec::new(), 1_700_000_000).unwrap();
        assert_eq!(a, b);
        let mut ar = tar::Archive::new(&a[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (0, 0, 1_700_000_000));
            assert_eq!(h.username().unwrap(), Some("root"));
        }
        assert_eq!(Tree::from_tar(&a[..]).unwrap(), t);
    }

    #[test]
    fn gzip_header_has_no_name_or_time() {
        let mut gz = gzip(Vec::new());
        gz.write_all(b"hello").unwrap();
        let out = gz.finish().unwrap();
        assert_eq!(&out[..4], &[0x1f, 0x8b, 8, 0], "no FNAME flag");
        assert_eq!(&out[4..8], &[0, 0, 0, 0], "mtime 0");
    }
}
