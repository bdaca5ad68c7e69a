//! A guest's console output (the VMM's, runtime's or agent's stdout and stderr), read by
//! hostd through a pipe and kept in a log of bounded size, whatever the guest writes.
//!
//! The log is two files: `console.log` holds the newest output; when it reaches half the
//! cap it is renamed to `console.log.1` (replacing the older half) and a fresh one is
//! started. Together they never exceed the cap and always end with the guest's latest
//! output, which is what a failure report quotes. The last [`TAIL_KEEP`] bytes are also
//! kept in memory, so a failure can be described after the work directory is gone.
//!
//! hostd keeps reading past the cap (discarding): a VMM blocked on a full console pipe
//! would stall its guest. When hostd itself dies, the guest's next console write fails
//! (EPIPE): the guest is an orphan the next hostd reaps anyway.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::scratch::read_with;

/// Most bytes of console output kept on disk per guest (both halves).
pub const CONSOLE_CAP: u64 = 512 << 10;
/// Bytes of the newest output kept in memory.
pub const TAIL_KEEP: usize = 16 << 10;

#[derive(Debug, Default)]
struct Shared {
    tail: Mutex<Vec<u8>>,
    /// Every byte the guest wrote.
    total: AtomicU64,
    /// Of which rotated out of the files.
    dropped: AtomicU64,
}

/// The reading end of one guest's console. Dropping it stops the reader.
#[derive(Debug)]
pub struct ConsoleLog {
    /// `console.log`; the older half is `console.log.1`.
    pub path: PathBuf,
    shared: Arc<Shared>,
    done: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Drop for ConsoleLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the console could not be set up.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ConsoleError {
    #[error("console pipe: {0}")]
    Pipe(io::Error),
    #[error("creating {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
}

impl ConsoleLog {
    /// Creates (empties) `path`, and the pipe whose write end (returned) becomes the
    /// guest's stdout and stderr. Must be called inside a tokio runtime.
    pub fn start(path: &Path, cap: u64) -> Result<(ConsoleLog, OwnedFd), ConsoleError> {
        let (rd, wr) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| ConsoleError::Pipe(e.into()))?;
        // The guest's end blocks like an ordinary stdout.
        nix::fcntl::fcntl(
            wr.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .map_err(|e| ConsoleError::Pipe(e.into()))?;
        let file = File::create(path)
            .map_err(|source| ConsoleError::Create { path: path.to_path_buf(), source })?;
        let _ = std::fs::remove_file(rotated(path));
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(rd).map_err(ConsoleError::Pipe)?;
        let shared = Arc::new(Shared::default());
        let (done_tx, done) = watch::channel(false);
        let task =
            tokio::spawn(pump(rx, file, path.to_path_buf(), cap.max(2), shared.clone(), done_tx));
        Ok((ConsoleLog { path: path.to_path_buf(), shared, done, task }, wr))
    }

    /// Waits until every writer has closed the pipe and the last byte is logged (or
    /// `within` passes); true if it was.
    pub async fn drained(&self, within: Duration) -> bool {
        let mut done = self.done.clone();
        tokio::time::timeout(within, done.wait_for(|d| *d)).await.is_ok_and(|r| r.is_ok())
    }

    /// The newest `max` bytes (at most [`TAIL_KEEP`]), as text.
    pub fn tail(&self, max: usize) -> String {
        let t = self.shared.tail.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&t[t.len().saturating_sub(max)..]).into_owned()
    }

    /// Whether the newest `window` bytes contain `needle`.
    pub fn tail_contains(&self, needle: &str, window: usize) -> bool {
        self.tail(window).contains(needle)
    }

    /// The log's files (the newest half first); together never more than the cap.
    pub fn files(&self) -> [PathBuf; 2] {
        [self.path.clone(), rotated(&self.path)]
    }

    /// Bytes the guest wrote in all, and how many of them were rotated away.
    pub fn written(&self) -> (u64, u64) {
        (self.shared.total.load(Ordering::Relaxed), self.shared.dropped.load(Ordering::Relaxed))
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// A console quiet this long has its log file closed (reopened for appending on its next
/// output): a fleet of idle guests then holds one descriptor each (the pipe), not two.
const IDLE_CLOSE: Duration = Duration::from_secs(1);

async fn pump(
    mut rx: tokio::net::unix::pipe::Receiver,
    file: File,
    path: PathBuf,
    cap: u64,
    shared: Arc<Shared>,
    done: watch::Sender<bool>,
) {
    let mut sink = Sink {
        half: cap / 2,
        in_file: 0,
        file_ok: true,
        rotations: 0,
        file: Some(file),
        path,
        shared,
    };
    loop {
        // Read into the thread's buffer, not one of the guest's own (crate::scratch).
        let read = if sink.file.is_some() {
            // Cancel-safe: a timeout loses no output.
            match tokio::time::timeout(IDLE_CLOSE, read_with(&mut rx, |c| sink.log(c))).await {
                Ok(r) => r,
                Err(_) => {
                    sink.file = None;
                    continue;
                }
            }
        } else {
            read_with(&mut rx, |c| sink.log(c)).await
        };
        if matches!(read, Ok(0) | Err(_)) {
            break;
        }
    }
    let _ = done.send(true);
}

/// Where a console's output goes: the two halves on disk and the tail in memory.
struct Sink {
    half: u64,
    in_file: u64,
    /// Cleared once the files cannot be written (work directory removed, disk full): the
    /// pipe is still drained so the guest never blocks on its console.
    file_ok: bool,
    rotations: u64,
    /// Closed while the console is idle.
    file: Option<File>,
    path: PathBuf,
    shared: Arc<Shared>,
}

impl Sink {
    /// Logs `chunk`; returns its length.
    fn log(&mut self, chunk: &[u8]) -> usize {
        let shared = &self.shared;
        shared.total.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        {
            // Only the chunk's end can stay in the tail: the tail never grows past it.
            let chunk = &chunk[chunk.len().saturating_sub(TAIL_KEEP)..];
            let mut t = shared.tail.lock().unwrap_or_else(|e| e.into_inner());
            let cut = (t.len() + chunk.len()).saturating_sub(TAIL_KEEP);
            t.drain(..cut);
            t.extend_from_slice(chunk);
        }
        let mut rest = chunk;
        while self.file_ok && !rest.is_empty() {
            if self.in_file >= self.half {
                self.rotate();
                continue;
            }
            let f = match &mut self.file {
                Some(f) => f,
                None => match std::fs::OpenOptions::new().append(true).open(&self.path) {
                    Ok(f) => self.file.insert(f),
                    Err(_) => {
                        self.file_ok = false;
                        continue;
                    }
                },
            };
            let take = rest.len().min((self.half - self.in_file) as usize);
            if f.write_all(&rest[..take]).is_err() {
                self.file_ok = false;
            }
            self.in_file += take as u64;
            rest = &rest[take..];
        }
        chunk.len()
    }

    fn rotate(&mut self) {
        match rotate(&self.path) {
            Ok(f) => {
                // From the second rotation on, an older half is replaced.
                if self.rotations > 0 {
                    self.shared.dropped.fetch_add(self.half, Ordering::Relaxed);
                }
                self.rotations += 1;
                self.file = Some(f);
                self.in_file = 0;
            }
            Err(_) => self.file_ok = false,
        }
    }
}

/// `console.log` becomes `console.log.1`; a new, empty `console.log` is returned.
fn rotate(path: &Path) -> io::Result<File> {
    std::fs::rename(path, rotated(path))?;
    File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_is_capped_and_the_newest_output_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let (log, wr) = ConsoleLog::start(&path, 64 << 10).unwrap();
        // Off the runtime's thread: the pipe only drains while the reader task runs.
        tokio::task::spawn_blocking(move || {
            let mut f = File::from(wr);
            for i in 0..2000 {
                writeln!(f, "line {i:06} {}", "x".repeat(100)).unwrap();
            }
            f.write_all(b"Kernel panic - not syncing: the end\n").unwrap();
        })
        .await
        .unwrap();
        assert!(log.drained(Duration::from_secs(5)).await);
        let on_disk = std::fs::metadata(&path).unwrap().len()
            + std::fs::metadata(rotated(&path)).unwrap().len();
        assert!(on_disk <= 64 << 10, "{on_disk} bytes on disk");
        let (total, dropped) = log.written();
        assert!(total > 200_000 && dropped > 0, "{total} {dropped}");
        assert!(log.tail(100).ends_with("Kernel panic - not syncing: the end\n"));
        assert!(log.tail_contains("Kernel panic", 4096));
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.ends_with("the end\n"), "the file ends with the newest output");
    }

    #[tokio::test]
    async fn an_idle_console_closes_its_file_and_reopens_it_to_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let (log, wr) = ConsoleLog::start(&path, 64 << 10).unwrap();
        let mut f = File::from(wr);
        let opens = |p: &Path| {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|t| t == p)
                .count()
        };
        f.write_all(b"first\n").unwrap();
        // Let the pump read it, then stay quiet well past IDLE_CLOSE (the pump runs on this
        // thread while the test sleeps).
        while log.written().0 < 6 {
            tokio::task::yield_now().await;
        }
        assert_eq!(opens(&path), 1);
        tokio::time::sleep(IDLE_CLOSE * 3).await;
        assert_eq!(opens(&path), 0, "an idle console holds no file");
        f.write_all(b"second\n").unwrap();
        drop(f);
        assert!(log.drained(Duration::from_secs(5)).await);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\nsecond\n");
    }

    #[tokio::test]
    async fn files_that_vanish_do_not_stop_the_draining() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g").join("console.log");
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        let (log, wr) = ConsoleLog::start(&path, 8 << 10).unwrap();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        tokio::task::spawn_blocking(move || {
            let mut f = File::from(wr);
            for _ in 0..100 {
                f.write_all(&[b'y'; 1000]).unwrap();
            }
        })
        .await
        .unwrap();
        assert!(log.drained(Duration::from_secs(5)).await);
        assert_eq!(log.written().0, 100_000);
        assert_eq!(log.tail(10), "yyyyyyyyyy");
    }
}
