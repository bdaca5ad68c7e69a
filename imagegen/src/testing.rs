//! Fixtures for tests of image handling, here and in hostd's tests (feature `testing`).

/// A tar whose names and link targets are written raw, bypassing the tar crate's own refusal
/// of `..` and absolute paths (attackers do not use the tar crate). Entries: name, type,
/// link target, data; every one mode 0644.
pub fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, et, link, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*et);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}
