//! One end of the coordinator–worker control link, with liveness: each side sends a
//! heartbeat line whenever it has sent nothing for a third of the bound, and declares the
//! other side gone once nothing at all (no message, no heartbeat, no byte) has arrived for
//! the bound. That catches what TCP alone does not: a frozen process (SIGSTOP: its kernel
//! still ACKs, so keepalive would not notice) and a host gone without closing its
//! connection (powered off, link down), which TCP only gives up on after many minutes.
//!
//! The socket is served by two threads of its own, not by the async runtime, so that a
//! worker whose runtime is busy starting guests still beats, and the beats cost the timed
//! startup window no more than two threads waking every third of the bound to send and read
//! one short line. The reader thread consumes heartbeats (checking them: the peer is
//! untrusted) and hands every other message over a channel, so [`Link::recv`] is
//! cancel-safe.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::proto::{ReadError, MAX_LINE};

/// The longest heartbeat line accepted, bytes (`{"msg":"heartbeat","seq":N}` is under 50).
pub const MAX_BEAT: usize = 128;

/// The bound's default: three missed beats at 5 s.
pub const DEFAULT_LOST_AFTER: Duration = Duration::from_secs(15);

/// Messages that can be a heartbeat: its sequence number if this one is.
pub trait Beat {
    fn beat(&self) -> Option<u64>;
    /// The heartbeat with this sequence number.
    fn heartbeat(seq: u64) -> Self;
}

/// The sending half of a link, for tasks that answer or ask over it while something else
/// receives (a worker's guests' answers, the coordinator's calls to guests). It shares the
/// link's queue: once the link is closed or abandoned, every clone's sends fail, so a clone
/// never keeps a closed link's writer alive.
#[derive(Clone)]
pub struct Sender {
    tx: Arc<Mutex<Option<std::sync::mpsc::Sender<Vec<u8>>>>>,
    /// Why the writer stopped, if it failed.
    write_failed: Arc<Mutex<Option<String>>>,
}

impl Sender {
    /// Queues a message (sent in order, after those queued before); an error if the link
    /// has failed or been closed.
    pub fn send<T: Serialize>(&self, m: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(m).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let failed = || {
            let why = self.write_failed.lock().map(|w| w.clone()).unwrap_or(None);
            std::io::Error::other(why.unwrap_or_else(|| "the link is closed".into()))
        };
        let tx = self.tx.lock().map_err(|_| failed())?;
        match &*tx {
            Some(tx) => tx.send(line).map_err(|_| failed()),
            None => Err(failed()),
        }
    }

    /// Drops the queue's input: the writer sends what is queued, then ends.
    fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            *tx = None;
        }
    }
}

/// One end of a link, receiving `In`.
pub struct Link<In> {
    rx: tokio::sync::mpsc::Receiver<Result<In, ReadError>>,
    out: Sender,
    writer: Option<std::thread::JoinHandle<()>>,
    sock: TcpStream,
    /// The error the reader reported, kept: every later `recv` returns it again in words.
    ended: Option<String>,
}

impl<In: DeserializeOwned + Beat + Send + 'static> Link<In> {
    /// Serves `sock` (blocking or not: it is made blocking) with the reader and writer
    /// threads; `lost_after` is the bound (at least 0.3 s).
    pub fn new<Out: Serialize + Beat>(
        sock: TcpStream,
        lost_after: Duration,
    ) -> std::io::Result<Self> {
        let lost_after = lost_after.max(Duration::from_millis(300));
        let beat_every = lost_after / 3;
        sock.set_nonblocking(false)?;
        sock.set_nodelay(true)?;
        // A reader wakes this often to see whether it has been silent too long (and
        // whether it is still wanted); a blocked send gives up after the bound.
        sock.set_read_timeout(Some(beat_every))?;
        sock.set_write_timeout(Some(lost_after))?;
        let (in_tx, rx) = tokio::sync::mpsc::channel(16);
        let rd = sock.try_clone()?;
        std::thread::Builder::new()
            .name("hostd-link-rx".into())
            .spawn(move || read_loop::<In>(rd, lost_after, in_tx))?;
        let (tx, out_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let write_failed = Arc::new(Mutex::new(None));
        let wr = sock.try_clone()?;
        let failed = write_failed.clone();
        let writer = std::thread::Builder::new()
            .name("hostd-link-tx".into())
            .spawn(move || write_loop::<Out>(wr, lost_after, out_rx, failed))?;
        let out = Sender { tx: Arc::new(Mutex::new(Some(tx))), write_failed };
        Ok(Link { rx, out, writer: Some(writer), sock, ended: None })
    }

    /// The next message that is not a heartbeat; an error once the link is closed, broken,
    /// silent past the bound, or the peer sent something malformed.
    pub async fn recv(&mut self) -> Result<In, ReadError> {
        if let Some(e) = &self.ended {
            return Err(ReadError::Ended(e.clone()));
        }
        let r = self.rx.recv().await.unwrap_or(Err(ReadError::Closed));
        if let Err(e) = &r {
            self.ended = Some(e.to_string());
        }
        r
    }
}

impl<In> Link<In> {
    /// Queues a message (sent in order, after those queued before); an error if the link
    /// has failed or been closed.
    pub fn send<T: Serialize>(&self, m: &T) -> std::io::Result<()> {
        self.out.send(m)
    }

    /// A sending half sharing this link's queue.
    pub fn sender(&self) -> Sender {
        self.out.clone()
    }

    /// Sends what is queued and closes the link, waiting at most the bound (a worker calls
    /// this before it exits, so that its last report is not lost with the process).
    pub async fn close(mut self) {
        self.out.close();
        if let Some(h) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    /// Closes the link now, whatever is queued: the peer sees it closed (a worker declared
    /// lost that comes back to life then tears down by itself).
    pub fn abandon(&mut self) {
        self.out.close();
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

impl<In> Drop for Link<In> {
    fn drop(&mut self) {
        // The writer sends what is queued, then shuts the socket down (the reader then
        // ends too); not joined here, as a send to a frozen peer can take the bound.
        self.out.close();
    }
}

fn read_loop<In: DeserializeOwned + Beat>(
    sock: TcpStream,
    lost_after: Duration,
    to: tokio::sync::mpsc::Sender<Result<In, ReadError>>,
) {
    let mut r = BufReader::new(sock);
    let mut heard = Instant::now();
    let mut last_beat: Option<u64> = None;
    let mut buf = Vec::new();
    let end = loop {
        if to.is_closed() {
            return;
        }
        let before = buf.len();
        let limit = (MAX_LINE + 1 - buf.len()) as u64;
        let got = (&mut r).take(limit).read_until(b'\n', &mut buf);
        if buf.len() > before {
            heard = Instant::now();
        }
        match got {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if heard.elapsed() >= lost_after {
                    break ReadError::Silent(lost_after);
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break ReadError::Io(e),
            Ok(0) if buf.is_empty() => break ReadError::Closed,
            Ok(_) => {}
        }
        if buf.last() != Some(&b'\n') {
            break if buf.len() > MAX_LINE { ReadError::TooLong } else { ReadError::Closed };
        }
        let line = std::mem::take(&mut buf);
        let m: In = match serde_json::from_slice(&line) {
            Ok(m) => m,
            Err(e) => break ReadError::Json(e),
        };
        if let Some(seq) = m.beat() {
            if line.len() > MAX_BEAT {
                break ReadError::Heartbeat(format!(
                    "a heartbeat of {} bytes (at most {MAX_BEAT})",
                    line.len()
                ));
            }
            if last_beat.is_some_and(|l| seq <= l) {
                break ReadError::Heartbeat(format!(
                    "heartbeat {seq} after heartbeat {}",
                    last_beat.unwrap_or_default()
                ));
            }
            last_beat = Some(seq);
            continue;
        }
        if to.blocking_send(Ok(m)).is_err() {
            return;
        }
    };
    let _ = to.blocking_send(Err(end));
}

fn write_loop<Out: Serialize + Beat>(
    mut sock: TcpStream,
    lost_after: Duration,
    from: std::sync::mpsc::Receiver<Vec<u8>>,
    failed: Arc<Mutex<Option<String>>>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let beat_every = lost_after / 3;
    let mut seq = 0u64;
    loop {
        let line = match from.recv_timeout(beat_every) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => {
                seq += 1;
                let mut l = serde_json::to_vec(&Out::heartbeat(seq)).unwrap_or_default();
                l.push(b'\n');
                l
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Err(e) = sock.write_all(&line).and_then(|()| sock.flush()) {
            let why = match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    format!(
                        "nothing could be sent for {} s (the peer does not read)",
                        lost_after.as_secs_f64()
                    )
                }
                _ => format!("sending: {e}"),
            };
            if let Ok(mut f) = failed.lock() {
                *f = Some(why);
            }
            break;
        }
    }
    let _ = sock.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::Link;
    use crate::multihost::proto::{FromWorker, ReadError, ToWorker};

    /// A connected pair on loopback: (the coordinator's side, a raw worker side).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let raw = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (l.accept().unwrap().0, raw)
    }

    const BOUND: Duration = Duration::from_millis(600);

    #[tokio::test]
    async fn heartbeats_keep_a_quiet_link_alive_and_are_not_delivered() {
        let (a, b) = pair();
        let mut coord = Link::<FromWorker>::new::<ToWorker>(a, BOUND).unwrap();
        let worker = Link::<ToWorker>::new::<FromWorker>(b, BOUND).unwrap();
        // Three bounds of nothing but heartbeats, both ways.
        tokio::time::sleep(BOUND * 3).await;
        worker.send(&FromWorker::Pong { seq: 7, mono_ns: 1 }).unwrap();
        let m = tokio::time::timeout(BOUND, coord.recv()).await.unwrap();
        assert_eq!(m.unwrap(), FromWorker::Pong { seq: 7, mono_ns: 1 });
        // Closed by the worker (what is queued goes first): the coordinator sees it closed.
        worker.close().await;
        let e = tokio::time::timeout(BOUND * 2, coord.recv()).await.unwrap().unwrap_err();
        assert!(matches!(e, ReadError::Closed | ReadError::Io(_)), "{e}");
    }

    #[tokio::test]
    async fn a_sending_half_shares_the_links_queue_and_its_end() {
        let (a, b) = pair();
        let mut coord = Link::<FromWorker>::new::<ToWorker>(a, BOUND).unwrap();
        let worker = Link::<ToWorker>::new::<FromWorker>(b, BOUND).unwrap();
        let half = worker.sender();
        let other = half.clone();
        worker.send(&FromWorker::Pong { seq: 1, mono_ns: 1 }).unwrap();
        half.send(&FromWorker::Pong { seq: 2, mono_ns: 2 }).unwrap();
        other.send(&FromWorker::Pong { seq: 3, mono_ns: 3 }).unwrap();
        for seq in 1..=3 {
            let m = tokio::time::timeout(BOUND, coord.recv()).await.unwrap().unwrap();
            assert_eq!(m, FromWorker::Pong { seq, mono_ns: seq as u64 });
        }
        // The link dropped: every clone's sends fail, and the peer sees the link end
        // although clones are still held (they do not keep its writer alive).
        drop(worker);
        assert!(half.send(&FromWorker::Pong { seq: 4, mono_ns: 4 }).is_err());
        let e = tokio::time::timeout(BOUND * 2, coord.recv()).await.unwrap().unwrap_err();
        assert!(matches!(e, ReadError::Closed | ReadError::Io(_)), "{e}");
        drop(other);
    }

    #[tokio::test]
    async fn a_silent_peer_is_gone_after_the_bound() {
        let (a, _raw) = pair();
        let mut coord = Link::<FromWorker>::new::<ToWorker>(a, BOUND).unwrap();
        let t = Instant::now();
        let e = coord.recv().await.unwrap_err();
        let took = t.elapsed();
        assert_eq!(e.to_string(), "no heartbeat for 0.6 s");
        assert!(took >= BOUND && took < BOUND * 2, "silent after {took:?}");
        // And stays gone.
        assert!(coord.recv().await.is_err());
    }

    #[tokio::test]
    async fn malformed_or_oversized_heartbeats_fail_the_link() {
        let pad = " ".repeat(200);
        for (lines, says) in [
            (format!("{{\"msg\":\"heartbeat\",{pad}\"seq\":1}}\n"), "bytes"),
            (
                "{\"msg\":\"heartbeat\",\"seq\":2}\n{\"msg\":\"heartbeat\",\"seq\":2}\n".into(),
                "after",
            ),
            ("{\"msg\":\"heartbeat\",\"seq\":1,\"x\":0}\n".into(), "not a message"),
        ] {
            let (a, mut raw) = pair();
            let mut coord = Link::<FromWorker>::new::<ToWorker>(a, BOUND).unwrap();
            raw.write_all(lines.as_bytes()).unwrap();
            let e = coord.recv().await.unwrap_err();
            assert!(e.to_string().contains(says), "{lines:?}: {e}");
        }
    }

    #[tokio::test]
    async fn a_peer_trickling_a_long_line_is_not_silent() {
        let (a, mut raw) = pair();
        let mut coord = Link::<FromWorker>::new::<ToWorker>(a, BOUND).unwrap();
        let line = b"{\"msg\":\"pong\",\"seq\":3,\"mono_ns\":5}\n";
        let t = std::thread::spawn(move || {
            // One byte every third of the bound: the line takes ~6 bounds to arrive.
            for b in line {
                raw.write_all(&[*b]).unwrap();
                std::thread::sleep(BOUND / 6);
            }
            raw
        });
        let m = coord.recv().await.unwrap();
        assert_eq!(m, FromWorker::Pong { seq: 3, mono_ns: 5 });
        drop(t.join());
    }
}
