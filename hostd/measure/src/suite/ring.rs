//! Communication between guests (paper II.A.4): a ring of guests, each running a stream
//! server and, at the same moment, a client to its neighbour; the bandwidth every guest gets
//! (paper Fig. 14), and request/response latency around the same ring.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::{BenchRequest, BenchSpec, Resource};
use vb_protocol::msg::{Command, ReplyBody};

use super::{run_together, samples_of, BenchSample, Starter, Test, Workloads};
use crate::fleet::Fleet;
use crate::stats::Stat;

/// Starts a server in every guest, then `reps` synchronised rounds of streams (and of
/// request/response) from guest i to guest i+1 (mod n).
pub async fn measure(
    fleet: &Fleet,
    w: &Workloads,
    warmup: u32,
    reps: u32,
    timeout: Duration,
) -> Result<Vec<BenchSample>, String> {
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
        (
            Test::Ring,
            &(|p: String| BenchSpec::NetStream {
                peer: p,
                duration_ms: w.net_duration_ms,
                msg_size: w.net_msg_size,
            }) as &dyn Fn(String) -> BenchSpec,
        ),
        (Test::RingLatency, &|p: String| BenchSpec::NetRr {
            peer: p,
            duration_ms: w.net_duration_ms,
            size: 1,
        }),
    ] {
        let jobs: Vec<_> = (0..n)
            .map(|i| {
                Ok((
                    &fleet.guests[i],
                    BenchRequest { spec: make(peer(i)?), instances: 1, start_at_ns: None },
                ))
            })
            .collect::<Result<_, String>>()?;
        let mut starter = Starter::default();
        for i in 0..warmup + reps {
            let rs = run_together(&jobs, timeout, &mut starter).await;
            if i < warmup {
                continue;
            }
            for ((g, _), r) in jobs.iter().zip(rs) {
                out.extend(samples_of(
                    fleet.backend,
                    test,
                    Resource::Network,
                    &w.params(Resource::Network),
                    n,
                    i - warmup,
                    g.spec.index,
                    &r?,
                    net,
                ));
            }
        }
    }
    for (g, p) in fleet.guests.iter().zip(ports) {
        let _ = g.conn.request(Command::NetStop { port: p }, Duration::from_secs(10)).await;
    }
    Ok(super::place(out, fleet))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
/// The ring test's outcome: each guest streaming to the next at once.
pub struct RingResult {
    /// Guests in the ring.
    pub guests: usize,
    /// Per-guest stream bandwidth, MB/s.
    pub bandwidth: Stat,
    /// Per-guest request/response latency, µs.
    pub latency: Option<Stat>,
}

/// One backend's ring (`samples`: its ring and ring-latency samples): the bandwidth every
/// guest got over all guests and repetitions, and the request/response latency. None
/// without bandwidth samples.
pub fn analyse(samples: &[&BenchSample]) -> Option<RingResult> {
    let bw: Vec<&&BenchSample> = samples.iter().filter(|s| s.test == Test::Ring).collect();
    let lat: Vec<f64> =
        samples.iter().filter(|s| s.test == Test::RingLatency).map(|s| s.value).collect();
    let bandwidth = Stat::of(&bw.iter().map(|s| s.value).collect::<Vec<_>>(), "MB/s")?;
    Some(RingResult {
        guests: bw.iter().map(|s| s.n).max()?,
        bandwidth,
        latency: Stat::of(&lat, "us"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::suite::testing::sample;

    #[test]
    fn ring_bandwidth_and_latency() {
        let mut v: Vec<BenchSample> = (0..3)
            .map(|g| {
                sample(
                    BackendKind::Uml,
                    Test::Ring,
                    Resource::Network,
                    3,
                    0,
                    g,
                    0,
                    100.0 * (g + 1) as f64,
                )
            })
            .collect();
        v.extend((0..3).map(|g| {
            sample(
                BackendKind::Uml,
                Test::RingLatency,
                Resource::Network,
                3,
                0,
                g,
                0,
                50.0 + g as f64,
            )
        }));
        let r = analyse(&v.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!((r.guests, r.bandwidth.samples, r.bandwidth.unit.as_str()), (3, 3, "MB/s"));
        assert!(
            (r.bandwidth.mean - 200.0).abs() < 1e-12 && (r.bandwidth.std_dev - 100.0).abs() < 1e-12
        );
        assert_eq!((r.bandwidth.min, r.bandwidth.max, r.bandwidth.median), (100.0, 300.0, 200.0));
        let l = r.latency.unwrap();
        assert!((l.mean - 51.0).abs() < 1e-12 && l.unit == "us");
        // Latency alone is no ring figure.
        assert!(analyse(&v[3..].iter().collect::<Vec<_>>()).is_none());
    }
}
