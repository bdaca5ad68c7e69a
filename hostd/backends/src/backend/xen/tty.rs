//! The dom0 end of a domain's console: a raw non-blocking pty, and the capped log that
//! keeps xl's output and everything read from the console.

use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::LOG_CAP;

/// The guest's console log: xl's output and everything read from the console, up to
/// [`LOG_CAP`] bytes (then it says so once and stops growing).
#[derive(Clone)]
pub(super) struct Log(pub(super) Arc<Mutex<(std::fs::File, u64)>>);

impl Log {
    pub(super) fn append(&self, data: &[u8]) {
        let Ok(mut g) = self.0.lock() else { return };
        let (f, written) = &mut *g;
        if *written >= LOG_CAP {
            return;
        }
        let take = data.len().min((LOG_CAP - *written) as usize);
        let _ = f.write_all(&data[..take]);
        *written += take as u64;
        if *written >= LOG_CAP {
            let _ = f.write_all(b"\n[hostd: console log full, not logging more]\n");
        }
    }
}

/// A tty in raw mode, non-blocking: the dom0 end of a domain's console (a pty slave).
pub struct RawTty(AsyncFd<OwnedFd>);

impl RawTty {
    /// Opens the pty at `path` in raw mode, non-blocking.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        let fd = OwnedFd::from(f);
        // Raw (xenconsoled sets its end so, but the line discipline is the slave's). No
        // flush: the agent's hello may already be waiting.
        let mut t = nix::sys::termios::tcgetattr(&fd).map_err(std::io::Error::from)?;
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(&fd, nix::sys::termios::SetArg::TCSANOW, &t)
            .map_err(std::io::Error::from)?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until dropped, so the
        // descriptor stays open and unchanged for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(RawTty(fd))
    }
}

impl RawTty {
    /// Waits until everything written has left (before a power-off cuts it short).
    pub fn drain(&self) -> std::io::Result<()> {
        nix::sys::termios::tcdrain(self.0.get_ref()).map_err(std::io::Error::from)
    }
}

impl AsyncRead for RawTty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.as_raw_fd(), unfilled).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The master closed (xenconsoled let go of the dead domain): end of stream.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for RawTty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Copies what passes through a reader into the console log.
pub(super) struct Tee<R> {
    pub(super) inner: R,
    pub(super) log: Log,
}

impl<R: AsyncRead + Unpin> AsyncRead for Tee<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            self.log.append(new);
        }
        Poll::Ready(Ok(()))
    }
}
