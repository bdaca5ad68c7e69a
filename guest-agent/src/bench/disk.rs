//! Disk: a sequential read of a file or block device, like `dd if=… of=/dev/null
//! iflag=direct bs=…` (paper II.A uses dd in read-only mode). O_DIRECT bypasses the
//! guest's page cache so every block really comes from the (virtual) disk.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// Alignment O_DIRECT needs for buffers on every device we use (logical block ≤ 4 KiB).
const ALIGN: usize = 4096;

/// A block-aligned buffer (O_DIRECT rejects unaligned ones with EINVAL).
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Result<Self, String> {
        let layout = Layout::from_size_align(len, ALIGN)
            .map_err(|e| format!("disk: bad block size: {e}"))?;
        // SAFETY: layout has non-zero size (block_size ≥ 512 is validated by the protocol).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(format!("disk: cannot allocate a {len}-byte buffer"));
        }
        Ok(Self { ptr, layout })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live, initialised (zeroed) allocation of layout.size() bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was returned by alloc_zeroed with this same layout and is freed once.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

// SAFETY: the buffer is uniquely owned; moving it between threads is like moving a Vec.
unsafe impl Send for AlignedBuf {}

pub struct Reader {
    file: File,
    buf: AlignedBuf,
    direct: bool,
}

impl Reader {
    pub fn open(path: &str, block_size: usize, direct: bool) -> Result<Self, String> {
        let flags = if direct { libc::O_DIRECT } else { 0 };
        let file = OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(|e| {
            format!("disk: cannot open {path}{}: {e}", if direct { " with O_DIRECT" } else { "" })
        })?;
        Ok(Self { file, buf: AlignedBuf::new(block_size)?, direct })
    }

    pub fn block_size(&self) -> usize {
        self.buf.layout.size()
    }

    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Reads sequentially to the end (or `max_bytes`), returning the bytes read.
    pub fn read_all(&mut self, max_bytes: Option<u64>) -> Result<u64, String> {
        let limit = max_bytes.unwrap_or(u64::MAX);
        let bs = self.block_size() as u64;
        let mut total = 0u64;
        while total < limit {
            // Whole blocks only: O_DIRECT needs block-multiple lengths; a limit that is not
            // a multiple of the block size is rounded down.
            if limit - total < bs {
                break;
            }
            let n = self
                .file
                .read(self.buf.as_mut_slice())
                .map_err(|e| format!("disk: read failed after {total} bytes: {e}"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        std::hint::black_box(self.buf.as_mut_slice());
        if total == 0 {
            return Err(format!(
                "disk: nothing read (device empty or limit below one {bs}-byte block)"
            ));
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(len: usize) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vb-disk-test-{}-{len}", std::process::id()));
        let mut f = File::create(&p).unwrap();
        f.write_all(&vec![0xa5; len]).unwrap();
        p
    }

    #[test]
    fn reads_whole_file_and_respects_limit() {
        let p = temp_file(1 << 20);
        let path = p.to_str().unwrap();
        assert_eq!(Reader::open(path, 65536, false).unwrap().read_all(None).unwrap(), 1 << 20);
        assert_eq!(
            Reader::open(path, 65536, false).unwrap().read_all(Some(200_000)).unwrap(),
            3 * 65536
        );
        // O_DIRECT wherever the file system supports it: tmpfs does not, and refuses the open.
        let tmpfs = nix::sys::statfs::statfs(&p).unwrap().filesystem_type()
            == nix::sys::statfs::TMPFS_MAGIC;
        match Reader::open(path, 65536, true) {
            Ok(mut r) => {
                assert!(!tmpfs, "O_DIRECT opened on tmpfs");
                assert_eq!(r.read_all(None).unwrap(), 1 << 20);
            }
            Err(e) => assert!(tmpfs && e.contains("with O_DIRECT"), "{e}"),
        }
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = Reader::open("/nonexistent/vb", 4096, true).err().unwrap();
        assert!(e.contains("/nonexistent/vb"), "{e}");
    }
}
