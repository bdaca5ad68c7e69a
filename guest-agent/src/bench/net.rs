//! Network: netperf-style TCP_STREAM and TCP_RR (paper II.A uses Netperf; II.A.4 runs a
//! server and a client in every guest of a ring, hence a background server here).
//!
//! Data connection: the client opens with an 8-byte header `"VBN" mode size_u32_le`,
//! mode `S` (stream) or `R` (request/response).
//! - Stream: the client writes for a fixed time, shuts its side down, and the server
//!   answers with the byte count it received (u64 LE). Like netperf, the bandwidth is
//!   what the receiver got over the sender's elapsed time, ending at that answer.
//! - RR: `size` bytes each way, one transaction at a time.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use vb_protocol::bench::{InstanceResult, Work};

use crate::clock::monotonic_ns;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer silent this long is gone; keeps a dead peer from hanging the benchmark.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one server serves at once (a ring needs 1 per neighbour).
const MAX_CONNECTIONS: usize = 256;

pub enum Mode {
    Stream,
    Rr { size: u32 },
}

pub fn connect(peer: &str, mode: Mode) -> Result<TcpStream, String> {
    let addr: SocketAddr =
        peer.parse().map_err(|_| format!("network: bad peer address {peer:?}"))?;
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("network: cannot connect to {peer}: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut hdr = *b"VBN\0\0\0\0\0";
    match mode {
        Mode::Stream => hdr[3] = b'S',
        Mode::Rr { size } => {
            hdr[3] = b'R';
            hdr[4..].copy_from_slice(&size.to_le_bytes());
            s.set_nodelay(true).map_err(|e| e.to_string())?;
        }
    }
    s.write_all(&hdr).map_err(|e| format!("network: cannot send header to {peer}: {e}"))?;
    Ok(s)
}

/// Streams from `start_ns` (CLOCK_MONOTONIC, now or the request's start instant) for the
/// duration.
pub fn stream_client(
    mut s: TcpStream,
    start_ns: u64,
    duration_ms: u32,
    msg_size: usize,
) -> Result<InstanceResult, String> {
    let buf = vec![0x5au8; msg_size];
    let deadline = start_ns + duration_ms as u64 * 1_000_000;
    let mut sent = 0u64;
    // At least one write, even when the start came late enough to leave no time at all.
    loop {
        s.write_all(&buf)
            .map_err(|e| format!("net_stream: send failed after {sent} bytes: {e}"))?;
        sent += msg_size as u64;
        if monotonic_ns() >= deadline {
            break;
        }
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .map_err(|e| format!("net_stream: no byte count from receiver: {e}"))?;
    let end_ns = monotonic_ns();
    let bytes = u64::from_le_bytes(count);
    if bytes != sent {
        return Err(format!("net_stream: sent {sent} bytes but the receiver counted {bytes}"));
    }
    Ok(InstanceResult { start_ns, end_ns, work: Work::NetStream { bytes } })
}

pub fn rr_client(
    mut s: TcpStream,
    start_ns: u64,
    duration_ms: u32,
    size: usize,
) -> Result<InstanceResult, String> {
    let req = vec![0x5au8; size];
    let mut resp = vec![0u8; size];
    let deadline = start_ns + duration_ms as u64 * 1_000_000;
    let mut transactions = 0u64;
    let mut now;
    // At least one transaction, as the stream makes at least one write.
    loop {
        s.write_all(&req)
            .map_err(|e| format!("net_rr: send failed after {transactions} transactions: {e}"))?;
        s.read_exact(&mut resp)
            .map_err(|e| format!("net_rr: no response after {transactions} transactions: {e}"))?;
        transactions += 1;
        now = monotonic_ns();
        if now >= deadline {
            break;
        }
    }
    Ok(InstanceResult { start_ns, end_ns: now, work: Work::NetRr { transactions } })
}

/// Running servers by port, so `net_stop` can find them.
fn servers() -> &'static Mutex<HashMap<u16, TcpListener>> {
    static S: OnceLock<Mutex<HashMap<u16, TcpListener>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// Starts a server on `port` (0: any free port) and returns the port it listens on.
pub fn serve(port: u16) -> Result<u16, String> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| format!("network: cannot listen on port {port}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let accept = listener.try_clone().map_err(|e| e.to_string())?;
    servers().lock().map_err(|_| "server table poisoned")?.insert(port, listener);
    let active = Arc::new(AtomicUsize::new(0));
    thread::Builder::new()
        .name(format!("net-serve-{port}"))
        .spawn(move || {
            // Ends when net_stop shuts the listening socket down.
            while let Ok((conn, _)) = accept.accept() {
                if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    continue; // dropped: closes the connection
                }
                active.fetch_add(1, Ordering::Relaxed);
                let mine = active.clone();
                let spawned = thread::Builder::new().name("net-conn".into()).spawn(move || {
                    let _ = serve_conn(conn);
                    mine.fetch_sub(1, Ordering::Relaxed);
                });
                if spawned.is_err() {
                    // The closure (and its decrement) never ran.
                    active.fetch_sub(1, Ordering::Relaxed);
                }
            }
        })
        .map_err(|e| format!("network: cannot start server thread: {e}"))?;
    Ok(port)
}

pub fn stop(port: u16) -> Result<(), String> {
    let listener = servers()
        .lock()
        .map_err(|_| "server table poisoned")?
        .remove(&port)
        .ok_or_else(|| format!("network: no server on port {port}"))?;
    // SAFETY: shutdown(2) on a listening socket fd we own; it wakes the blocked accept()
    // in the server thread (which holds a dup of the same socket) with an error.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    Ok(())
}

fn serve_conn(mut s: TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr)?;
    if &hdr[..3] != b"VBN" {
        return Ok(());
    }
    let size = u32::from_le_bytes(hdr[4..].try_into().expect("4 bytes")) as usize;
    match hdr[3] {
        b'S' => {
            // 128 KiB reads, as iperf3 and netperf do by default on Linux.
            let mut buf = vec![0u8; 128 << 10];
            let mut total = 0u64;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            s.write_all(&total.to_le_bytes())
        }
        b'R' if size > 0 && size <= 1 << 20 => {
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; size];
            loop {
                match s.read_exact(&mut buf) {
                    Ok(()) => s.write_all(&buf)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_and_rr_over_loopback() {
        let port = serve(0).unwrap();
        let peer = format!("127.0.0.1:{port}");
        let r =
            stream_client(connect(&peer, Mode::Stream).unwrap(), monotonic_ns(), 50, 4096).unwrap();
        let Work::NetStream { bytes } = r.work else { panic!() };
        assert!(bytes > 0 && bytes % 4096 == 0);
        let r = rr_client(connect(&peer, Mode::Rr { size: 1 }).unwrap(), monotonic_ns(), 50, 1)
            .unwrap();
        let Work::NetRr { transactions } = r.work else { panic!() };
        assert!(transactions > 0);
        stop(port).unwrap();
        assert!(stop(port).is_err());
        // Stopped: new connections are refused.
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            connect(&peer, Mode::Stream).is_err()
                || stream_client(connect(&peer, Mode::Stream).unwrap(), monotonic_ns(), 10, 16)
                    .is_err()
        );
    }
}
