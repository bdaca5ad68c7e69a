//! The paper's microbenchmarks (section II.A), one module per resource. Each function
//! runs one instance and returns its raw result; [`run`] runs several instances at once.

pub mod cpu;
pub mod disk;
pub mod memory;
pub mod net;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use vb_protocol::bench::{BenchReport, BenchRequest, BenchSpec, InstanceResult, Work};

use crate::clock::monotonic_ns;

/// Runs `req.instances` copies concurrently, each in its own thread, released together
/// by a barrier so they overlap as the isolation and linearity tests require, and then at
/// the request's start instant (if any), so copies in different guests start together
/// too. `received_ns`: when the request was read.
pub fn run(req: &BenchRequest, received_ns: u64) -> Result<BenchReport, String> {
    req.validate()?;
    let start_at = req.start_instant(received_ns)?;
    let n = req.instances as usize;
    let barrier = Arc::new(Barrier::new(n));
    // The latest arrival at the barrier: every instance starts after it.
    let prepared = Arc::new(AtomicU64::new(received_ns));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let spec = req.spec.clone();
            let (barrier, prepared) = (barrier.clone(), prepared.clone());
            thread::Builder::new()
                .name(format!("bench-{i}"))
                .spawn(move || run_one(&spec, &barrier, &prepared, start_at))
                .map_err(|e| format!("cannot start benchmark thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut instances = Vec::with_capacity(n);
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => instances.push(r),
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => first_err = first_err.or(Some("benchmark thread panicked".to_string())),
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => {
            Ok(BenchReport { instances, received_ns, prepared_ns: prepared.load(Ordering::SeqCst) })
        }
    }
}

/// One instance: set up outside the timed region, then time only the work. The barrier
/// is always reached, even when set-up failed, so no sibling waits forever.
fn run_one(
    spec: &BenchSpec,
    barrier: &Barrier,
    prepared_ns: &AtomicU64,
    start_at: Option<u64>,
) -> Result<InstanceResult, String> {
    let prepared = prepare(spec);
    prepared_ns.fetch_max(monotonic_ns(), Ordering::SeqCst);
    barrier.wait();
    let prepared = prepared?;
    // Ready by the instant: the work is timed from it, so waiting for a CPU after it (the
    // contention the concurrent tests measure) counts. Ready late: timed from now, and the
    // host sees the lateness as start skew.
    let ready = monotonic_ns();
    let start_ns = match start_at {
        Some(at) if ready <= at => {
            crate::clock::sleep_until(at);
            at
        }
        _ => ready,
    };
    let work = match prepared {
        Prepared::Cpu { rounds } => Work::Cpu { rounds, estimate: cpu::sqrt2(rounds) },
        Prepared::Memory(mut m, passes) => {
            m.run(passes);
            let end_ns = monotonic_ns();
            // The check reads every element: outside the timed region.
            let work = Work::Memory {
                n: m.n() as u32,
                passes,
                checked: m.check(passes),
                bytes: m.bytes_moved(passes),
            };
            return Ok(InstanceResult { start_ns, end_ns, work });
        }
        Prepared::Disk(mut reader, max_bytes) => {
            let bytes = reader.read_all(max_bytes)?;
            Work::Disk { bytes, block_size: reader.block_size() as u32, direct: reader.direct() }
        }
        // Network clients run for their duration from the start and time their own end:
        // the receiver's acknowledgement.
        Prepared::Stream(conn, duration_ms, msg_size) => {
            return net::stream_client(conn, start_ns, duration_ms, msg_size)
        }
        Prepared::Rr(conn, duration_ms, size) => {
            return net::rr_client(conn, start_ns, duration_ms, size)
        }
    };
    let end_ns = monotonic_ns();
    Ok(InstanceResult { start_ns, end_ns, work })
}

enum Prepared {
    Cpu { rounds: u64 },
    Memory(memory::Matrices, u32),
    Disk(disk::Reader, Option<u64>),
    Stream(std::net::TcpStream, u32, usize),
    Rr(std::net::TcpStream, u32, usize),
}

fn prepare(spec: &BenchSpec) -> Result<Prepared, String> {
    Ok(match spec {
        BenchSpec::Cpu { rounds } => Prepared::Cpu { rounds: *rounds },
        BenchSpec::Memory { n, passes } => {
            Prepared::Memory(memory::Matrices::new(*n as usize)?, *passes)
        }
        BenchSpec::Disk { path, block_size, max_bytes, direct } => {
            Prepared::Disk(disk::Reader::open(path, *block_size as usize, *direct)?, *max_bytes)
        }
        BenchSpec::NetStream { peer, duration_ms, msg_size } => Prepared::Stream(
            net::connect(peer, net::Mode::Stream)?,
            *duration_ms,
            *msg_size as usize,
        ),
        BenchSpec::NetRr { peer, duration_ms, size } => Prepared::Rr(
            net::connect(peer, net::Mode::Rr { size: *size })?,
            *duration_ms,
            *size as usize,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_wait_for_the_start_instant() {
        let received = monotonic_ns();
        let at = received + 20_000_000;
        let req = BenchRequest {
            spec: BenchSpec::Cpu { rounds: 1000 },
            instances: 2,
            start_at_ns: Some(at),
        };
        let rep = run(&req, received).unwrap();
        rep.check(&req).unwrap();
        assert_eq!(rep.received_ns, received);
        // Ready well before the instant: timed from it exactly.
        assert!(rep
            .instances
            .iter()
            .all(|i| i.start_ns == at && i.end_ns > at && i.start_ns >= rep.prepared_ns));
        // An instant already past when the instances are ready: timed from when they were.
        let late = BenchRequest { start_at_ns: Some(received), ..req.clone() };
        let rep = run(&late, received).unwrap();
        rep.check(&late).unwrap();
        assert!(rep
            .instances
            .iter()
            .all(|i| i.start_ns >= rep.prepared_ns && i.start_ns > received));
        // Too far ahead: refused before any work.
        let far = BenchRequest {
            start_at_ns: Some(received + vb_protocol::bench::MAX_START_AHEAD_NS + 1),
            ..req
        };
        assert!(run(&far, received).unwrap_err().contains("more than"));
    }
}
