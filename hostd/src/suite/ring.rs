//! Communication between guests (paper II.A.4): a ring of guests, each running a stream
//! server and, at the same moment, a client to its neighbour; the bandwidth every guest gets
//! (paper Fig. 14), and request/response latency around the same ring.

use std::time::Duration;

use vb_protocol::bench::{BenchRequest, BenchSpec, Resource};
use vb_protocol::msg::{Command, ReplyBody};

use super::{run_together, samples_of, BenchSample, Starter, Test, Workloads};
use crate::fleet::Fleet;

/// Starts a server in every guest, then `reps` synchronised rounds of streams (and of
/// request/response) from guest i to guest i+1 (mod n).
pub async fn measure(fleet: &Fleet, w: &Workloads, warmup: u32, reps: u32, timeout: Duration) -> Result<Vec<BenchSample>, String> {
    let n = fleet.guests.len();
    if n < 2 {
        return Err("a ring needs at least two ready guests".into());
    }
    let mut ports = Vec::with_capacity(n);
    for g in &fleet.guests {
        match g.conn.request(Command::NetServe { port: 0 }, Duration::from_secs(30)).await {
            Ok(ReplyBody::Listening { port }) => ports.push(port),
            Ok(other) => return Err(format!("{}: net_serve answered {other:?}", g.spec.name)),
            Err(e) => return Err(format!("{}: net_serve: {e}", g.spec.name)),
        }
    }
    let peer = |i: usize| -> Result<String, String> {
        let j = (i + 1) % n;
        let addr = fleet.addr(j).ok_or("ring guests need the fleet network")?;
        Ok(format!("{addr}:{}", ports[j]))
    };
    let net = fleet.net_label();
    let mut out = Vec::new();
    for (test, make) in [
        (Test::Ring, &(|p: String| BenchSpec::NetStream { peer: p, duration_ms: w.net_duration_ms, msg_size: w.net_msg_size }) as &dyn Fn(String) -> BenchSpec),
        (Test::RingLatency, &|p: String| BenchSpec::NetRr { peer: p, duration_ms: w.net_duration_ms, size: 1 }),
    ] {
        let jobs: Vec<_> = (0..n).map(|i| Ok((&fleet.guests[i], BenchRequest { spec: make(peer(i)?), instances: 1, start_at_ns: None }))).collect::<Result<_, String>>()?;
        let mut starter = Starter::default();
        for i in 0..warmup + reps {
            let rs = run_together(&jobs, timeout, &mut starter).await;
            if i < warmup {
                continue;
            }
            for ((g, _), r) in jobs.iter().zip(rs) {
                out.extend(samples_of(fleet.backend, test, Resource::Network, &w.params(Resource::Network), n, i - warmup, g.spec.index, &r?, net));
            }
        }
    }
    for (g, p) in fleet.guests.iter().zip(ports) {
        let _ = g.conn.request(Command::NetStop { port: p }, Duration::from_secs(10)).await;
    }
    Ok(out)
}
