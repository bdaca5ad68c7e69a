//! Does every guest of a fleet reach a neighbour on another bridge? `hostd boot --reach`
//! asks after the fleet's figures are taken: every guest serves TCP (the agent's
//! `net_serve`), then, from inside each guest's own network namespace, hostd connects to
//! its neighbour's address: guest i's neighbour is i + [`PORTS_PER_BRIDGE`] (mod n), on the
//! next bridge whenever the fleet spans more than one. A completed TCP handshake proves the
//! whole path (eth0, veth, both bridges and the trunk between them, the neighbour's eth0);
//! the guests' agents do nothing but answer.
//!
//! Across hosts ([`check_to`]): every host's guests serve on the fixed [`REACH_PORT`]
//! ([`serve`]), since a host cannot ask another's guests which port they took; then chosen
//! guests of a host exchange 64 KiB each way with given addresses (a guest on every other
//! host), over the agent's request/response protocol, so segments of the full MTU cross the
//! VXLAN both ways: a path that drops them fails the check, not just the handshake.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vb_protocol::msg::{Command, ReplyBody};

use crate::fleet::Fleet;
use crate::netlab::{bridge_of, PORTS_PER_BRIDGE};

/// How long one guest's connection to its neighbour may take.
const CONNECT: Duration = Duration::from_secs(3);
/// A connection that failed is tried once more, after the pass, with this long. On this
/// 2-core host, in three runs of 1100 ns guests on two bridges, 5–7 connections of one
/// stretch of the pass (sources g509–g533) timed out at 3 s while their neighbours answered
/// every other guest, and each succeeded on the retry (most at once, some after one SYN
/// retransmission); the cause is not found. A single miss is therefore not proof of a
/// missing path; one that fails twice is reported, and the retries are counted.
const RETRY_CONNECT: Duration = Duration::from_secs(10);
/// The check stops after this many failed connections (each may take [`CONNECT`]): the
/// answer is already "not every guest", and thousands of timeouts would take hours.
const GIVE_UP_AFTER: usize = 10;
/// Most `net_serve` requests in flight at once.
const SERVE_AT_ONCE: usize = 256;
/// The port every guest serves on for [`check_to`].
pub const REACH_PORT: u16 = 5701;

/// The longest a check spends on failures before it gives up: each a connect timeout and
/// a retry's.
pub fn worst_failures() -> Duration {
    (CONNECT + RETRY_CONNECT) * GIVE_UP_AFTER as u32
}
/// Bytes each way in one [`check_to`] exchange: many full-size segments.
const EXCHANGE: usize = 64 << 10;

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reach {
    /// Guests checked (every ready guest with a fleet address, unless the check gave up
    /// after [`GIVE_UP_AFTER`] failures).
    pub checked: usize,
    /// Of which reached their neighbour.
    pub reached: usize,
    /// Of the reached, those that did only on the second try ([`RETRY_CONNECT`]).
    #[serde(default)]
    pub on_retry: usize,
    /// Of the checked, those whose neighbour sat on another bridge.
    pub across_bridges: usize,
    /// The first few failures, in words.
    pub failures: Vec<String>,
}

/// Guest `i`'s neighbour in a fleet of `n`, on another bridge whenever the fleet has more
/// than one: the same place on the next bridge, else on the first, and for a guest of the
/// first bridge with nobody at its place on the second, one of the second's; the next
/// guest when the fleet fits one bridge.
pub fn neighbour(i: usize, n: usize) -> usize {
    let p = PORTS_PER_BRIDGE;
    if n <= p {
        (i + 1) % n.max(1)
    } else if i + p < n {
        i + p
    } else if i >= p {
        i % p
    } else {
        p + i % (n - p)
    }
}

/// Runs the check on `fleet`'s ready guests (those with a fleet address).
pub async fn check(fleet: &Fleet) -> Reach {
    let guests: Vec<_> = fleet.guests.iter().filter(|g| g.spec.net.is_some()).collect();
    let mut r = Reach::default();
    if fleet.backend.own_kernel() {
        // Its process's namespace is the VMM's, not the guest kernel's stack.
        r.failures
            .push(format!("not checked: {} guests have a kernel of their own", fleet.backend));
        return r;
    }
    if guests.len() < 2 {
        return r;
    }
    // Every guest serves, a bounded number of requests at a time.
    let mut ports: Vec<Option<u16>> = Vec::with_capacity(guests.len());
    for chunk in guests.chunks(SERVE_AT_ONCE) {
        let served = futures::future::join_all(chunk.iter().map(|g| async {
            match g.conn.request(Command::NetServe { port: 0 }, Duration::from_secs(30)).await {
                Ok(ReplyBody::Listening { port }) if port != 0 => Some(port),
                _ => None,
            }
        }))
        .await;
        ports.extend(served);
    }
    let n = guests.len();
    // (own pid, neighbour address, across bridges, names) per guest.
    let plan: Vec<(u32, Option<SocketAddr>, bool, String)> = (0..n)
        .map(|i| {
            let j = neighbour(i, n);
            let (a, b) = (guests[i], guests[j]);
            let addr: Option<Ipv4Addr> = b.spec.net.as_ref().map(|x| x.addr);
            let across = bridge_of(a.spec.index) != bridge_of(b.spec.index);
            let to = addr.zip(ports[j]).map(|(ip, p)| SocketAddr::from((ip, p)));
            (a.process.pid(), to, across, format!("{} → {}", a.spec.name, b.spec.name))
        })
        .collect();
    let plan = plan.into_iter().map(|(pid, to, across, what)| (Some(pid), to, across, what));
    attempt_all(&mut r, plan.collect(), connect_from, "guests not checked").await;
    for (g, p) in guests.iter().zip(&ports) {
        if let Some(port) = p {
            let _ = g.conn.request(Command::NetStop { port: *port }, Duration::from_secs(10)).await;
        }
    }
    r
}

/// Has every ready guest of `fleet` with a fleet address listen on [`REACH_PORT`], for other
/// hosts' [`check_to`]; returns, in words, the guests that did not. Guests sharing the fleet
/// namespace's stack have one port between them: only one of them can serve.
pub async fn serve(fleet: &Fleet) -> Vec<String> {
    let guests: Vec<_> = fleet.guests.iter().filter(|g| g.spec.net.is_some()).collect();
    let mut failed = Vec::new();
    for chunk in guests.chunks(SERVE_AT_ONCE) {
        let served = futures::future::join_all(chunk.iter().map(|g| async {
            let r = g
                .conn
                .request(Command::NetServe { port: REACH_PORT }, Duration::from_secs(30))
                .await;
            match r {
                Ok(ReplyBody::Listening { port }) if port == REACH_PORT => None,
                other => {
                    Some(format!("{}: net_serve {REACH_PORT} answered {other:?}", g.spec.name))
                }
            }
        }))
        .await;
        failed.extend(served.into_iter().flatten());
    }
    failed
}

/// Stops what [`serve`] started (a guest that was not serving answers with an error, which
/// is ignored).
pub async fn unserve(fleet: &Fleet) {
    let guests: Vec<_> = fleet.guests.iter().filter(|g| g.spec.net.is_some()).collect();
    for chunk in guests.chunks(SERVE_AT_ONCE) {
        futures::future::join_all(chunk.iter().map(|g| {
            g.conn.request(Command::NetStop { port: REACH_PORT }, Duration::from_secs(10))
        }))
        .await;
    }
}

/// From inside guests of `fleet`, TCP exchanges with arbitrary addresses: for each
/// `(i, addr)`, ready guest `i` (by position in `fleet.guests`, as [`Fleet::addr`]) connects
/// to `addr`:[`REACH_PORT`] (where [`serve`] made guests listen, on any host) and sends and
/// receives 64 KiB. `across_bridges` counts the targets that are not this fleet's own guests
/// (on another host's bridge). As [`check`], a failure is tried once more after the pass
/// ([`RETRY_CONNECT`], counted in `on_retry`), and the check gives up after
/// [`GIVE_UP_AFTER`] failures.
pub async fn check_to(fleet: &Fleet, targets: &[(usize, Ipv4Addr)]) -> Reach {
    let mut r = Reach::default();
    if fleet.backend.own_kernel() {
        r.failures
            .push(format!("not checked: {} guests have a kernel of their own", fleet.backend));
        return r;
    }
    let own: std::collections::HashSet<Ipv4Addr> =
        fleet.guests.iter().filter_map(|g| g.spec.net.as_ref().map(|n| n.addr)).collect();
    let mut plan = Vec::with_capacity(targets.len());
    for &(i, addr) in targets {
        let to = SocketAddr::from((addr, REACH_PORT));
        match fleet.guests.get(i) {
            Some(g) if g.spec.net.is_some() => plan.push((
                Some(g.process.pid()),
                Some(to),
                !own.contains(&addr),
                format!("{} → {to}", g.spec.name),
            )),
            Some(g) => {
                plan.push((None, Some(to), false, format!("{} has no fleet network", g.spec.name)))
            }
            None => plan.push((
                None,
                Some(to),
                false,
                format!("no ready guest at {i} (of {})", fleet.guests.len()),
            )),
        }
    }
    attempt_all(&mut r, plan, exchange_from, "connections not tried").await;
    r
}

/// One planned attempt: the guest's host process (None: it has none, so it is not
/// checked), where to, whether across bridges or hosts, and what it is in words.
type Attempt = (Option<u32>, Option<SocketAddr>, bool, String);

/// Tries each planned attempt with `attempt`, giving up after [`GIVE_UP_AFTER`] failures,
/// then once more each failure (a single miss is not proof), and adds the outcome to `r`,
/// `untried` saying what was not tried. On a thread of its own: it enters each guest's
/// network namespace in turn, which no runtime worker may (it would stay there).
async fn attempt_all(
    r: &mut Reach,
    plan: Vec<Attempt>,
    attempt: fn(u32, Option<SocketAddr>, Duration) -> Result<(), ReachError>,
    untried: &str,
) {
    let n = plan.len();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut failed = 0;
        for (pid, to, across, what) in plan {
            let res = match pid {
                Some(pid) => attempt(pid, to, CONNECT),
                None => Err(ReachError::NoProcess),
            };
            failed += usize::from(res.is_err());
            out.push((across, what, res.map(|()| false), pid, to));
            if failed >= GIVE_UP_AFTER {
                break;
            }
        }
        for (_, what, res, pid, to) in &mut out {
            if let (Err(e), Some(pid)) = (&res, pid) {
                tracing::info!("reach: {what}: {e}; trying once more");
                if let Ok(()) = attempt(*pid, *to, RETRY_CONNECT) {
                    *res = Ok(true);
                }
            }
        }
        let _ = tx.send(out);
    });
    let outcome = rx.await.unwrap_or_default();
    tally(r, outcome.into_iter().map(|(a, w, res, _, _)| (a, w, res)), n, untried);
}

/// Adds each attempt (across bridges or hosts, what it was, reached and whether only on the
/// retry) to `r`, with the first failures in words and, when the pass gave up before all
/// `n`, how many were `untried`.
fn tally(
    r: &mut Reach,
    outcome: impl Iterator<Item = (bool, String, Result<bool, ReachError>)>,
    n: usize,
    untried: &str,
) {
    for (across, what, res) in outcome {
        r.checked += 1;
        r.across_bridges += usize::from(across);
        match res {
            Ok(retried) => {
                r.reached += 1;
                r.on_retry += usize::from(retried);
            }
            Err(e) if r.failures.len() < 5 => r.failures.push(format!("{what}: {e}")),
            Err(_) => {}
        }
    }
    if r.checked < n {
        r.failures.push(format!(
            "gave up after {GIVE_UP_AFTER} failures: {} of {n} {untried}",
            n - r.checked
        ));
    }
}

/// Why one guest did not reach its neighbour, by step.
#[derive(Debug, thiserror::Error)]
enum ReachError {
    /// The neighbour has no address or did not start serving.
    #[error("the neighbour did not serve")]
    NotServing,
    /// The guest has no host process whose namespace could be entered.
    #[error("not checked: the guest has no host process")]
    NoProcess,
    #[error("guest process {pid}'s network namespace: {source}")]
    OpenNetns { pid: u32, source: std::io::Error },
    #[error("entering guest process {pid}'s network namespace: {source}")]
    EnterNetns { pid: u32, source: nix::Error },
    #[error("connect {to}: {source}")]
    Connect { to: SocketAddr, source: std::io::Error },
    #[error("exchange with {to}: {source}")]
    Exchange { to: SocketAddr, source: std::io::Error },
    #[error("exchange with {to}: the echo differs from what was sent")]
    WrongEcho { to: SocketAddr },
}

/// From `pid`'s network namespace, one request/response exchange of [`EXCHANGE`] bytes
/// each way with the agent serving at `to` (its `R` mode echoes what it reads). Runs on a
/// thread that may be left in that namespace.
fn exchange_from(pid: u32, to: Option<SocketAddr>, timeout: Duration) -> Result<(), ReachError> {
    let to = to.ok_or(ReachError::NotServing)?;
    enter(pid)?;
    let mut s = TcpStream::connect_timeout(&to, timeout)
        .map_err(|source| ReachError::Connect { to, source })?;
    let io = |source| ReachError::Exchange { to, source };
    s.set_read_timeout(Some(CONNECT * 3)).map_err(io)?;
    s.set_write_timeout(Some(CONNECT * 3)).map_err(io)?;
    let mut msg = Vec::with_capacity(8 + EXCHANGE);
    msg.extend_from_slice(b"VBNR");
    msg.extend_from_slice(&(EXCHANGE as u32).to_le_bytes());
    msg.extend((0..EXCHANGE).map(|i| (i % 251) as u8));
    s.write_all(&msg).map_err(io)?;
    let mut back = vec![0u8; EXCHANGE];
    s.read_exact(&mut back).map_err(io)?;
    if back[..] != msg[8..] {
        return Err(ReachError::WrongEcho { to });
    }
    Ok(())
}

/// Moves the calling thread into `pid`'s network namespace.
fn enter(pid: u32) -> Result<(), ReachError> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|source| ReachError::OpenNetns { pid, source })?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|source| ReachError::EnterNetns { pid, source })
}

/// From `pid`'s network namespace, a TCP connection to `to`. Runs on a thread that may be
/// left in that namespace.
fn connect_from(pid: u32, to: Option<SocketAddr>, timeout: Duration) -> Result<(), ReachError> {
    let to = to.ok_or(ReachError::NotServing)?;
    enter(pid)?;
    TcpStream::connect_timeout(&to, timeout)
        .map(drop)
        .map_err(|source| ReachError::Connect { to, source })
}

impl Reach {
    /// Every checked guest reached its neighbour.
    pub fn all(&self) -> bool {
        self.checked > 0 && self.reached == self.checked
    }

    /// The check in one line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} of {} guests reached their neighbour ({} of them across bridges)",
            self.reached, self.checked, self.across_bridges
        );
        if self.on_retry > 0 {
            s.push_str(&format!(
                "; {} only on a second try ({} s timeout after a {} s one)",
                self.on_retry,
                RETRY_CONNECT.as_secs(),
                CONNECT.as_secs()
            ));
        }
        if !self.failures.is_empty() {
            s.push_str(&format!("; first failures: {}", self.failures.join("; ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_sit_on_the_next_bridge_when_there_is_one() {
        assert_eq!(neighbour(0, 10), 1);
        assert_eq!(neighbour(9, 10), 0);
        assert_eq!(neighbour(0, 1500), 1000);
        assert_eq!(neighbour(1200, 1500), 200);
        // Nobody at 1600: one of the second bridge's 500.
        assert_eq!(neighbour(600, 1500), 1100);
        assert_eq!(neighbour(4999, 5000), 999);
        for n in [1001, 1500, 2000, 5000, 10_000] {
            for i in 0..n {
                let j = neighbour(i, n);
                assert!(j < n && bridge_of(i) != bridge_of(j), "{i} → {j} of {n}");
            }
        }
    }
}
