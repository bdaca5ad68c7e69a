//! The host's end of a guest's control channel. Every byte from the guest is untrusted:
//! frames are bounded by the decoder, noise is counted and capped, replies are matched to
//! requests by id (a reply that arrives after its request timed out is recorded as stray,
//! never credited), and any protocol violation fails this guest only.
//!
//! The channel also watches the guest's main process (a pidfd, see [`ExitWatch`]): when it
//! exits, everything waiting on the channel fails at once, even if another process (a UML
//! helper, a VMM's child) still holds the guest's end open.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use vb_protocol::frame::{Event, FrameDecoder};
use vb_protocol::msg::{Command, GuestMsg, Hello, Outcome, ReplyBody, Request};

use crate::scratch::read_with;

/// Noise bytes tolerated on a channel before the guest is considered to be flooding it.
pub const MAX_NOISE_BYTES: u64 = 1 << 20;
/// Stray replies tolerated before the guest is considered hostile.
pub const MAX_STRAY_REPLIES: u64 = 64;
/// After the guest's process exited, how long the channel is still read for what it sent
/// just before (e.g. the reply to `poweroff`) when the channel does not close by itself.
const EXIT_DRAIN: Duration = Duration::from_millis(250);

/// Completes when the guest's main process has exited.
pub type ExitWatch = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ChannelError {
    #[error("no ready message within {0:?}")]
    HelloTimeout(Duration),
    #[error("{cmd} got no reply within {after:?}")]
    ReplyTimeout { cmd: &'static str, after: Duration },
    #[error("control channel closed{0}")]
    Closed(String),
    #[error("the guest's process exited{0}")]
    Exited(String),
    #[error("guest broke the protocol: {0}")]
    Protocol(String),
    #[error("guest reported an error: {0}")]
    Guest(String),
    #[error("control channel I/O: {0}")]
    Io(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<ReplyBody, ChannelError>>>>>;

/// Counters about what the guest sent besides proper replies, and what it failed to send.
#[derive(Debug, Default)]
pub struct ChannelStats {
    /// Bytes read that were not a frame (console noise on a shared tty).
    pub noise_bytes: AtomicU64,
    /// Replies to no pending request (late, after their request timed out).
    pub stray_replies: AtomicU64,
    /// Frames read.
    pub frames: AtomicU64,
    /// Requests that got no reply before their deadline.
    pub timeouts: AtomicU64,
    /// The latest of them, described.
    pub last_timeout: Mutex<Option<ChannelError>>,
}

/// A connected agent. Dropping it stops the reader task.
pub struct AgentConn {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    next_id: AtomicU64,
    /// Set once the channel is unusable; every later request fails with it.
    failure: watch::Receiver<Option<ChannelError>>,
    /// What the channel saw besides its replies.
    pub stats: Arc<ChannelStats>,
    reader: JoinHandle<()>,
}

impl Drop for AgentConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn cmd_name(c: &Command) -> &'static str {
    match c {
        Command::Ping => "ping",
        Command::Bench(_) => "bench",
        Command::NetServe { .. } => "net_serve",
        Command::NetStop { .. } => "net_stop",
        Command::Poweroff => "poweroff",
        Command::Fault { .. } => "fault",
        Command::Exec(_) => "exec",
        Command::PutFile(_) => "put_file",
        Command::GetFile(_) => "get_file",
    }
}

impl AgentConn {
    /// Waits for the agent's hello on `io`. Sends nothing before it arrives: a tty that is
    /// not yet in raw mode would echo it back.
    pub async fn establish<R, W>(
        reader: R,
        writer: W,
        hello_timeout: Duration,
    ) -> Result<(AgentConn, Hello), ChannelError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        Self::establish_watched(reader, writer, hello_timeout, None).await
    }

    /// [`establish`](Self::establish), failing the channel with [`ChannelError::Exited`] as
    /// soon as `exited` completes (and what the guest sent before is read).
    pub async fn establish_watched<R, W>(
        reader: R,
        writer: W,
        hello_timeout: Duration,
        exited: Option<ExitWatch>,
    ) -> Result<(AgentConn, Hello), ChannelError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let pending: Pending = Arc::default();
        let stats = Arc::new(ChannelStats::default());
        let (hello_tx, hello_rx) = oneshot::channel();
        let (fail_tx, fail_rx) = watch::channel(None);
        let reader = tokio::spawn(read_loop(
            reader,
            exited,
            pending.clone(),
            stats.clone(),
            hello_tx,
            fail_tx,
        ));
        let conn = AgentConn {
            writer: tokio::sync::Mutex::new(Box::new(writer)),
            pending,
            next_id: AtomicU64::new(1),
            failure: fail_rx,
            stats,
            reader,
        };
        let hello = match tokio::time::timeout(hello_timeout, hello_rx).await {
            Err(_) => {
                return Err(conn.failure().unwrap_or(ChannelError::HelloTimeout(hello_timeout)))
            }
            Ok(Err(_)) => {
                return Err(match conn.failure() {
                    Some(ChannelError::Closed(_)) | None => {
                        ChannelError::Closed(" before the ready message".into())
                    }
                    Some(ChannelError::Exited(_)) => {
                        ChannelError::Exited(" before the ready message".into())
                    }
                    Some(other) => other,
                })
            }
            Ok(Ok(h)) => h,
        };
        hello.check().map_err(|e| ChannelError::Protocol(e.to_string()))?;
        Ok((conn, hello))
    }

    /// Why the channel is unusable, if it is.
    pub fn failure(&self) -> Option<ChannelError> {
        self.failure.borrow().clone()
    }

    /// Sends one command and waits for the reply carrying its id.
    pub async fn request(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<ReplyBody, ChannelError> {
        if let Some(f) = self.failure() {
            return Err(f);
        }
        let name = cmd_name(&cmd);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending map").insert(id, tx);
        // The reader stores its failure before failing the pending map: re-checking after
        // inserting closes the window where a dying channel would never answer us.
        if let Some(f) = self.failure() {
            self.pending.lock().expect("pending map").remove(&id);
            return Err(f);
        }
        let frame = vb_protocol::frame_request(&Request { id, cmd })
            .map_err(|e| ChannelError::Io(e.to_string()))?;
        let sent = async {
            let mut w = self.writer.lock().await;
            w.write_all(&frame).await?;
            w.flush().await
        };
        if let Err(e) = sent.await {
            self.pending.lock().expect("pending map").remove(&id);
            return Err(self.failure().unwrap_or(ChannelError::Io(e.to_string())));
        }
        // The reader fails every pending request when the channel dies, so waiting on the
        // reply alone also covers failure; a reply that arrived just before the channel
        // closed (e.g. to `poweroff`) is still delivered.
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => {
                Err(self.failure().unwrap_or_else(|| ChannelError::Closed(String::new())))
            }
            Err(_) => {
                // Forget the id: a late reply now counts as stray.
                self.pending.lock().expect("pending map").remove(&id);
                let e = ChannelError::ReplyTimeout { cmd: name, after: timeout };
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                *self.stats.last_timeout.lock().expect("stats") = Some(e.clone());
                Err(e)
            }
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    mut exited: Option<ExitWatch>,
    pending: Pending,
    stats: Arc<ChannelStats>,
    hello_tx: oneshot::Sender<Hello>,
    fail_tx: watch::Sender<Option<ChannelError>>,
) {
    let mut hello_tx = Some(hello_tx);
    let mut dec = FrameDecoder::default();
    // Set when the process has exited: the channel is read until then, no longer.
    let mut drain_until: Option<tokio::time::Instant> = None;
    let err = loop {
        // Into the thread's buffer, not one per guest (crate::scratch): the decoder copies.
        let feed = |b: &[u8]| (b.len(), if b.is_empty() { Vec::new() } else { dec.feed(b) });
        let read = tokio::select! {
            r = read_with(&mut reader, feed) => r,
            () = async { exited.as_mut().expect("guarded").await }, if exited.is_some() => {
                exited = None;
                drain_until = Some(tokio::time::Instant::now() + EXIT_DRAIN);
                continue;
            }
            () = tokio::time::sleep_until(drain_until.unwrap_or_else(tokio::time::Instant::now)), if drain_until.is_some() => {
                break ChannelError::Exited(String::new());
            }
        };
        let events = match read {
            Ok((0, _)) => {
                if let Some(e) = dec.finish() {
                    break ChannelError::Protocol(e.to_string());
                }
                // The channel usually closes because the process exited: say so when the
                // exit follows within moments, whichever the kernel reported first.
                let exited_too = match exited.take() {
                    Some(w) => tokio::time::timeout(EXIT_DRAIN, w).await.is_ok(),
                    None => drain_until.is_some(),
                };
                break if exited_too {
                    ChannelError::Exited(String::new())
                } else {
                    ChannelError::Closed(String::new())
                };
            }
            Ok((_, events)) => events,
            Err(e) => break ChannelError::Io(e.to_string()),
        };
        if let Err(e) = handle_events(events, &pending, &stats, &mut hello_tx) {
            break e;
        }
    };
    // Fail everything still waiting; later requests see the stored failure.
    fail_tx.send_replace(Some(err.clone()));
    for (_, tx) in pending.lock().expect("pending map").drain() {
        let _ = tx.send(Err(err.clone()));
    }
}

fn handle_events(
    events: Vec<Event>,
    pending: &Pending,
    stats: &ChannelStats,
    hello_tx: &mut Option<oneshot::Sender<Hello>>,
) -> Result<(), ChannelError> {
    for ev in events {
        match ev {
            Event::Skipped(n) => {
                let total = stats.noise_bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                if total > MAX_NOISE_BYTES {
                    return Err(ChannelError::Protocol(format!(
                        "{total} bytes of noise on the control channel"
                    )));
                }
            }
            Event::Bad(e) => return Err(ChannelError::Protocol(e.to_string())),
            Event::Frame(payload) => {
                stats.frames.fetch_add(1, Ordering::Relaxed);
                let msg = GuestMsg::decode(&payload)
                    .map_err(|e| ChannelError::Protocol(e.to_string()))?;
                match (msg, hello_tx.take()) {
                    (GuestMsg::Hello(h), Some(tx)) => {
                        let _ = tx.send(h);
                    }
                    (GuestMsg::Hello(_), None) => {
                        return Err(ChannelError::Protocol("second ready message".into()))
                    }
                    (GuestMsg::Reply(_), Some(_)) => {
                        return Err(ChannelError::Protocol("reply before the ready message".into()))
                    }
                    (GuestMsg::Reply(r), None) => {
                        let waiter = pending.lock().expect("pending map").remove(&r.id);
                        match waiter {
                            Some(tx) => {
                                let _ = tx.send(match r.result {
                                    Outcome::Ok { body } => Ok(body),
                                    Outcome::Err { error } => Err(ChannelError::Guest(error)),
                                });
                            }
                            None => {
                                let n = stats.stray_replies.fetch_add(1, Ordering::Relaxed) + 1;
                                if n > MAX_STRAY_REPLIES {
                                    return Err(ChannelError::Protocol(format!(
                                        "{n} replies to no pending request"
                                    )));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt};
    use vb_protocol::frame::encode;
    use vb_protocol::msg::{GuestClock, Reply, Role};

    fn hello() -> Hello {
        Hello {
            protocol: vb_protocol::PROTOCOL_VERSION,
            agent_version: "test".into(),
            role: Role::Process,
            pid: 1,
            hostname: "h".into(),
            kernel_release: "k".into(),
            cpus: 1,
            mem_total_kib: 1,
            transport: "test".into(),
            clock: GuestClock {
                monotonic_ns: 1,
                boottime_ns: 1,
                realtime_ns: 1,
                uptime_s: 1.0,
                agent_start_ns: None,
                kernel_init_ns: None,
            },
            root: None,
        }
    }

    fn frame(m: &GuestMsg) -> Vec<u8> {
        vb_protocol::frame_guest(m).unwrap()
    }

    async fn read_request(r: &mut (impl AsyncRead + Unpin)) -> Request {
        let mut dec = FrameDecoder::default();
        let mut buf = [0u8; 4096];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            for e in dec.feed(&buf[..n]) {
                if let Event::Frame(p) = e {
                    return Request::decode(&p).unwrap();
                }
            }
        }
    }

    #[tokio::test]
    async fn late_reply_is_never_credited_to_the_next_request() {
        let (host, guest) = duplex(1 << 16);
        let (hr, hw) = tokio::io::split(host);
        let (mut gr, mut gw) = tokio::io::split(guest);
        gw.write_all(&frame(&GuestMsg::Hello(hello()))).await.unwrap();
        let (conn, _) = AgentConn::establish(hr, hw, Duration::from_secs(5)).await.unwrap();
        // First request times out: the guest does not answer in time.
        let e = conn.request(Command::Ping, Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(e, ChannelError::ReplyTimeout { cmd: "ping", .. }));
        let first = read_request(&mut gr).await;
        // Second request; the guest first sends the late reply to the first one.
        let conn = Arc::new(conn);
        let c2 = conn.clone();
        let second =
            tokio::spawn(async move { c2.request(Command::Ping, Duration::from_secs(5)).await });
        let req2 = read_request(&mut gr).await;
        assert_ne!(first.id, req2.id);
        let late = GuestMsg::Reply(Reply {
            id: first.id,
            result: Outcome::Ok { body: ReplyBody::Pong { monotonic_ns: 111 } },
        });
        let right = GuestMsg::Reply(Reply {
            id: req2.id,
            result: Outcome::Ok { body: ReplyBody::Pong { monotonic_ns: 222 } },
        });
        gw.write_all(&frame(&late)).await.unwrap();
        gw.write_all(&frame(&right)).await.unwrap();
        assert_eq!(second.await.unwrap().unwrap(), ReplyBody::Pong { monotonic_ns: 222 });
        assert_eq!(conn.stats.stray_replies.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn oversize_frame_fails_only_this_guest_with_a_clear_error() {
        let (host, guest) = duplex(1 << 16);
        let (hr, hw) = tokio::io::split(host);
        let (_gr, mut gw) = tokio::io::split(guest);
        gw.write_all(&frame(&GuestMsg::Hello(hello()))).await.unwrap();
        let (conn, _) = AgentConn::establish(hr, hw, Duration::from_secs(5)).await.unwrap();
        let hdr = vb_protocol::frame::header(u32::MAX, 0);
        gw.write_all(&hdr).await.unwrap();
        let e = conn.request(Command::Ping, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&e, ChannelError::Protocol(m) if m.contains("4294967295")), "{e}");
    }

    #[tokio::test]
    async fn flood_and_garbage_before_hello_are_bounded() {
        let (host, guest) = duplex(1 << 16);
        let (hr, hw) = tokio::io::split(host);
        let (_gr, mut gw) = tokio::io::split(guest);
        let flood = tokio::spawn(async move {
            let junk = vec![b'x'; 1 << 16];
            for _ in 0..64 {
                if gw.write_all(&junk).await.is_err() {
                    break;
                }
            }
        });
        let e = AgentConn::establish(hr, hw, Duration::from_secs(10)).await.err().unwrap();
        assert!(matches!(&e, ChannelError::Protocol(m) if m.contains("noise")), "{e}");
        flood.abort();
    }

    #[tokio::test]
    async fn malformed_json_and_wrong_version_are_rejected() {
        for payload in [b"{\"msg\":\"hello\"".to_vec(), b"[1,2,3]".to_vec()] {
            let (host, guest) = duplex(1 << 16);
            let (hr, hw) = tokio::io::split(host);
            let (_gr, mut gw) = tokio::io::split(guest);
            gw.write_all(&encode(&payload, 1 << 20).unwrap()).await.unwrap();
            let e = AgentConn::establish(hr, hw, Duration::from_secs(5)).await.err().unwrap();
            assert!(matches!(e, ChannelError::Protocol(_)), "{e}");
        }
        let (host, guest) = duplex(1 << 16);
        let (hr, hw) = tokio::io::split(host);
        let (_gr, mut gw) = tokio::io::split(guest);
        let mut h = hello();
        h.protocol = 99;
        gw.write_all(&frame(&GuestMsg::Hello(h))).await.unwrap();
        let e = AgentConn::establish(hr, hw, Duration::from_secs(5)).await.err().unwrap();
        assert!(e.to_string().contains("version 99"), "{e}");
    }

    #[tokio::test]
    async fn silent_guest_times_out_and_closed_guest_is_reported() {
        let (host, guest) = duplex(64);
        let (hr, hw) = tokio::io::split(host);
        let e = AgentConn::establish(hr, hw, Duration::from_millis(50)).await.err().unwrap();
        assert!(matches!(e, ChannelError::HelloTimeout(_)));
        drop(guest);
        let (host, guest) = duplex(64);
        let (hr, hw) = tokio::io::split(host);
        drop(guest);
        let e = AgentConn::establish(hr, hw, Duration::from_secs(5)).await.err().unwrap();
        assert!(matches!(e, ChannelError::Closed(_)), "{e}");
    }
}
