//! Files for the host (`hostd cp`): `put_file` chunks go to a temporary file beside the
//! target, renamed over it with the last chunk (a copy that stops half-way leaves the
//! target as it was); `get_file` reads a chunk of a regular file. Bounds are the
//! protocol's; every error names the path.

use std::fs::{OpenOptions, Permissions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use vb_protocol::msg::{FileData, GetFile, PutFile, MAX_FILE_BYTES};

/// Writes one chunk; returns the bytes the file now holds.
pub fn put(p: &PutFile) -> Result<u64, String> {
    let bytes = p.check()?;
    let path = Path::new(&p.path);
    let Some(name) = path.file_name() else {
        return Err(format!("{}: not a file name", p.path));
    };
    let tmp = path.with_file_name(format!(".{}.vb-part", name.to_string_lossy()));
    if p.offset == 0 {
        // The rename would replace a symlink or fail on a directory only after the whole
        // file was sent: refuse both before the first byte.
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => {
                return Err(format!("{}: is a directory (name the file to write)", p.path))
            }
            Ok(md) if md.file_type().is_symlink() => {
                return Err(format!(
                    "{}: is a symbolic link (name its target to write through it)",
                    p.path
                ))
            }
            _ => {}
        }
    }
    let mut opts = OpenOptions::new();
    // O_NOFOLLOW: a symlink planted at the temporary name is refused, not written through.
    opts.write(true).custom_flags(libc::O_NOFOLLOW);
    if p.offset == 0 {
        opts.create(true).truncate(true).mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound if p.offset == 0 => format!(
            "{}: {e} (no directory {})",
            p.path,
            path.parent().unwrap_or(Path::new("/")).display()
        ),
        _ => format!("{}: {e}", tmp.display()),
    })?;
    let io = |e: std::io::Error| format!("{}: {e}", tmp.display());
    let len = f.metadata().map_err(io)?.len();
    if len != p.offset {
        return Err(format!(
            "{}: a chunk for offset {} but {len} bytes were written so far",
            p.path, p.offset
        ));
    }
    f.seek(SeekFrom::End(0)).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    if p.last {
        f.set_permissions(Permissions::from_mode(p.mode)).map_err(io)?;
        f.sync_all().map_err(io)?;
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("{}: {e}", p.path));
        }
    }
    Ok(len + bytes.len() as u64)
}

/// Reads one chunk of a regular file of at most [`MAX_FILE_BYTES`].
pub fn get(g: &GetFile) -> Result<FileData, String> {
    g.check()?;
    let io = |e: std::io::Error| format!("{}: {e}", g.path);
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
    // O_NOFOLLOW: a symlink is named as one rather than copied as what it points to.
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&g.path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                format!("{}: is a symbolic link (name its target to copy it)", g.path)
            }
            _ => io(e),
        })?;
    let md = f.metadata().map_err(io)?;
    if !md.is_file() {
        return Err(format!("{}: not a regular file", g.path));
    }
    if md.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{}: {} bytes, more than the {MAX_FILE_BYTES} a copy moves",
            g.path,
            md.len()
        ));
    }
    if g.offset > md.len() {
        return Err(format!("{}: offset {} beyond its {} bytes", g.path, g.offset, md.len()));
    }
    f.seek(SeekFrom::Start(g.offset)).map_err(io)?;
    let want = (md.len() - g.offset).min(g.max as u64);
    let mut buf = Vec::with_capacity(want as usize);
    Read::by_ref(&mut f).take(want).read_to_end(&mut buf).map_err(io)?;
    // A file that shrank while read ends where the read did.
    let size = if (buf.len() as u64) < want { g.offset + buf.len() as u64 } else { md.len() };
    Ok(FileData::new(size, md.permissions().mode() & 0o7777, &buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_get_in_chunks() {
        let d = tempfile_dir();
        let path = format!("{}/f", d);
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        assert_eq!(put(&PutFile::new(&path, 0o640, 0, &data[..600], false)).unwrap(), 600);
        assert!(!Path::new(&path).exists(), "nothing at the target before the last chunk");
        assert!(put(&PutFile::new(&path, 0o640, 100, &data[600..], true)).is_err());
        assert_eq!(put(&PutFile::new(&path, 0o640, 600, &data[600..], true)).unwrap(), 1000);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let g = GetFile { path: path.clone(), offset: 0, max: 700 };
        let a = get(&g).unwrap();
        let mut got = a.check(&g).unwrap();
        assert_eq!((a.size, a.mode), (1000, 0o640));
        let g = GetFile { offset: 700, ..g };
        got.extend(get(&g).unwrap().check(&g).unwrap());
        assert_eq!(got, data);
        let missing = get(&GetFile { path: format!("{d}/nope"), offset: 0, max: 10 }).unwrap_err();
        assert!(missing.contains("nope") && missing.contains("No such file"), "{missing}");
        let e = put(&PutFile::new(&format!("{d}/no/dir/f"), 0o644, 0, b"x", true)).unwrap_err();
        assert!(e.contains("no directory"), "{e}");
        let e = get(&GetFile { path: d.clone(), offset: 0, max: 10 }).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = put(&PutFile::new(&d, 0o644, 0, b"x", true)).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        let link = format!("{d}/link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = get(&GetFile { path: link.clone(), offset: 0, max: 10 }).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let e = put(&PutFile::new(&link, 0o644, 0, b"x", true)).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), data, "nothing written through the link");
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn tempfile_dir() -> String {
        let d = std::env::temp_dir().join(format!("vb-agent-files-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.to_string_lossy().into_owned()
    }
}
