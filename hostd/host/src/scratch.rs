//! Reads into a buffer of the reading thread's, not the reader's: hostd holds a console
//! pipe and a control channel per guest, each read for the guest's whole life, and a
//! buffer of its own for each (64 KiB) was most of hostd's memory per guest whenever the
//! allocator handed it out of reused, hence zeroed and resident, memory
//! (docs/benchmarks.md, "hostd's memory per guest"). A read only borrows the buffer while
//! it runs; what it read is handed on before the next read can need the buffer.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};

/// Bytes one read can return: a pipe's default capacity.
pub const READ_MAX: usize = 64 << 10;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads once from `reader` (as `AsyncReadExt::read` does, and as cancel-safe: nothing is
/// consumed unless it completes) and returns what `take` makes of the bytes read, which
/// are empty at end of file. `take` runs while the thread's buffer is borrowed: it must not
/// read through this function itself.
pub async fn read_with<R, T>(reader: &mut R, mut take: impl FnMut(&[u8]) -> T) -> io::Result<T>
where
    R: AsyncRead + Unpin + ?Sized,
{
    poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|buf| {
            if buf.is_empty() {
                buf.resize(READ_MAX, 0);
            }
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(take(rb.filled()))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_what_was_written_then_end_of_file() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            b.write_all(&sent).await.unwrap();
        });
        let mut got = Vec::new();
        loop {
            let n = read_with(&mut a, |bytes| {
                got.extend_from_slice(bytes);
                bytes.len()
            })
            .await
            .unwrap();
            assert!(n <= READ_MAX, "{n}");
            if n == 0 {
                break;
            }
        }
        writer.await.unwrap();
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn a_read_abandoned_before_data_loses_nothing() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), read_with(&mut a, |_| ()))
                .await;
        assert!(waited.is_err(), "nothing was written yet");
        b.write_all(b"hello").await.unwrap();
        let got = read_with(&mut a, |bytes| bytes.to_vec()).await.unwrap();
        assert_eq!(got, b"hello");
    }
}
