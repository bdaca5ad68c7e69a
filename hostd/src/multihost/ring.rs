//! The paper's ring (II.A.4, Fig. 14) across hosts: every guest streams to the next one by
//! global index at the same moment, wherever that one runs. The workers run the suite's own
//! pieces on their guests (a stream server each, then `run_together` of `NetStream` or
//! `NetRr` requests); the coordinator plans the ring, starts each round at one instant on
//! CLOCK_REALTIME, checks what comes back and labels the samples whose neighbour is on
//! another host (their traffic is VXLAN-encapsulated over the hosts' link).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use vb_protocol::bench::{BenchRequest, BenchSpec, Resource};
use vb_protocol::msg::{Command, ReplyBody};

use super::clock::real_ns;
use super::proto::{FromWorker, RingRound, MAX_TEXT};
use crate::backend::BackendKind;
use crate::fleet::Fleet;
use crate::netlab::{FleetNet, NetPath};
use crate::suite::{run_together, samples_of, BenchSample, Starter, Test};

/// One guest of the ring: its global index, the host (position among the workers) it runs
/// on, and its stream server's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub index: usize,
    pub host: usize,
    pub port: u16,
}

/// One guest's part of the ring: its neighbour's server and whether that is on another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: usize,
    pub host: usize,
    pub peer: String,
    pub across_hosts: bool,
}

/// The ring over `members` (any order): each guest, by global index, to the next one, the
/// last to the first. None with fewer than two, or an index with no address.
pub fn plan(members: &[Member]) -> Option<Vec<Link>> {
    let mut m = members.to_vec();
    m.sort_by_key(|m| m.index);
    if m.len() < 2 {
        return None;
    }
    (0..m.len())
        .map(|k| {
            let next = m[(k + 1) % m.len()];
            let addr = FleetNet::guest_addr(next.index).ok()?;
            Some(Link {
                index: m[k].index,
                host: m[k].host,
                peer: format!("{addr}:{}", next.port),
                across_hosts: next.host != m[k].host,
            })
        })
        .collect()
}

/// A worker's `RingPorts` checked against its ready guests: each at most once, ports not 0.
pub fn check_ports(ports: &[(usize, u16)], ready: &BTreeSet<usize>) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for &(i, p) in ports {
        if !ready.contains(&i) || !seen.insert(i) || p == 0 {
            return Err(format!(
                "port {p} of guest {i}: not a ready guest of its slice, twice, or port 0"
            ));
        }
    }
    Ok(())
}

/// A worker's samples of one round checked against what it was asked (`jobs`: its guests
/// in the round, of `backend`), then labelled: the path `veth+bridge+vxlan` (a VM's
/// `tap+bridge+vxlan`) for a guest
/// whose neighbour is on another host (`across`, by global index); a worker cannot claim
/// that path for a link within its host.
pub fn accept_samples(
    mut samples: Vec<BenchSample>,
    r: &RingRound,
    backend: BackendKind,
    across: &BTreeMap<usize, bool>,
) -> Result<Vec<BenchSample>, String> {
    let asked: BTreeSet<usize> = r.jobs.iter().map(|(i, _)| *i).collect();
    let rep = r.rep.ok_or("samples of a warm-up round")?;
    let mut seen = BTreeSet::new();
    for s in &mut samples {
        let crosses = across.get(&s.guest) == Some(&true);
        let ok = s.test == r.test
            && s.backend == backend
            && (crosses || !s.net_path.is_some_and(NetPath::crosses_hosts))
            && s.resource == Resource::Network
            && s.n == r.n
            && s.rep == rep
            && s.instance == 0
            && asked.contains(&s.guest)
            && seen.insert(s.guest)
            && s.value.is_finite()
            && s.value >= 0.0
            && s.elapsed_s.is_finite()
            && s.unit.len() <= 16
            && s.params.len() <= MAX_TEXT;
        if !ok {
            return Err(format!(
                "a sample that is not one asked for ({} {:?}, n {}, rep {}, guest {}, instance {}, value {}, path {:?})",
                s.backend, s.test, s.n, s.rep, s.guest, s.instance, s.value, s.net_path
            ));
        }
        if crosses {
            // The guest's own link (veth or tap) then the VXLAN; a worker's claim of the
            // crossing path is kept, nothing else that cannot cross.
            s.net_path = match s.net_path {
                Some(p) if p.crosses_hosts() => Some(p),
                Some(p) => Some(
                    p.across_hosts()
                        .ok_or_else(|| format!("guest {}: path {p} cannot cross hosts", s.guest))?,
                ),
                None => return Err(format!("guest {}: no network path", s.guest)),
            };
        }
    }
    Ok(samples)
}

/// Worker: a stream server in every ready guest.
pub(super) async fn serve(fleet: &Fleet, clean: impl Fn(&str) -> String) -> FromWorker {
    let mut ports = Vec::new();
    let mut failed = Vec::new();
    for g in &fleet.guests {
        match g.conn.request(Command::NetServe { port: 0 }, Duration::from_secs(30)).await {
            Ok(ReplyBody::Listening { port }) => ports.push((g.spec.index, port)),
            Ok(other) => {
                failed.push(clean(&format!("{}: net_serve answered {other:?}", g.spec.name)))
            }
            Err(e) => failed.push(clean(&format!("{}: net_serve: {e}", g.spec.name))),
        }
    }
    FromWorker::RingPorts { ports, failed }
}

/// Worker: one round on this host's guests, started together at the round's instant.
pub(super) async fn round(
    fleet: &Fleet,
    r: &RingRound,
    starter: &mut Starter,
    clean: impl Fn(&str) -> String,
) -> FromWorker {
    let mut failed = Vec::new();
    let w = &r.workloads;
    let jobs: Vec<_> = r
        .jobs
        .iter()
        .filter_map(|(i, peer)| {
            let Some(g) = fleet.guests.iter().find(|g| g.spec.index == *i) else {
                failed.push(clean(&format!("g{i}: not a ready guest here")));
                return None;
            };
            let spec = match r.test {
                Test::RingLatency => {
                    BenchSpec::NetRr { peer: peer.clone(), duration_ms: w.net_duration_ms, size: 1 }
                }
                _ => BenchSpec::NetStream {
                    peer: peer.clone(),
                    duration_ms: w.net_duration_ms,
                    msg_size: w.net_msg_size,
                },
            };
            Some((g, BenchRequest { spec, instances: 1, start_at_ns: None }))
        })
        .collect();
    let wait = r.at_unix_ns.saturating_sub(real_ns());
    tokio::time::sleep(Duration::from_nanos(wait)).await;
    let answers = run_together(&jobs, Duration::from_secs(r.timeout_s), starter).await;
    let mut samples = Vec::new();
    for ((g, _), a) in jobs.iter().zip(answers) {
        match (a, r.rep) {
            (Err(e), _) => failed.push(clean(&e)),
            (Ok(_), None) => {}
            (Ok(t), Some(rep)) => samples.extend(samples_of(
                fleet.backend,
                r.test,
                Resource::Network,
                &w.params(Resource::Network),
                r.n,
                rep,
                g.spec.index,
                &t,
                fleet.net_label(),
            )),
        }
    }
    FromWorker::RingSamples { samples: crate::suite::place(samples, fleet), failed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_follows_global_indices_and_marks_links_across_hosts() {
        // Three hosts, guests 0-1, 2-3, 4 (given out of order).
        let m = |index, host| Member { index, host, port: 7000 + index as u16 };
        let l = plan(&[m(2, 1), m(0, 0), m(4, 2), m(1, 0), m(3, 1)]).unwrap();
        let got: Vec<(usize, &str, bool)> =
            l.iter().map(|l| (l.index, l.peer.as_str(), l.across_hosts)).collect();
        assert_eq!(
            got,
            [
                (0, "10.211.0.3:7001", false),
                (1, "10.211.0.4:7002", true),
                (2, "10.211.0.5:7003", false),
                (3, "10.211.0.6:7004", true),
                (4, "10.211.0.2:7000", true),
            ]
        );
        assert!(plan(&[m(0, 0)]).is_none());
        // One guest per host: every link crosses.
        assert!(plan(&[m(0, 0), m(1, 1), m(2, 2)]).unwrap().iter().all(|l| l.across_hosts));
    }

    #[test]
    fn ports_must_be_of_ready_guests_once() {
        let ready: BTreeSet<usize> = [3, 4].into();
        assert!(check_ports(&[(3, 10), (4, 11)], &ready).is_ok());
        assert!(check_ports(&[(5, 10)], &ready).is_err());
        assert!(check_ports(&[(3, 10), (3, 11)], &ready).is_err());
        assert!(check_ports(&[(3, 0)], &ready).is_err());
    }

    const NS: BackendKind = BackendKind::Ns;

    #[test]
    fn samples_are_checked_and_those_across_hosts_labelled() {
        let r = RingRound {
            test: Test::Ring,
            n: 3,
            rep: Some(1),
            at_unix_ns: 0,
            workloads: crate::suite::Workloads::default(),
            timeout_s: 10,
            jobs: vec![(0, "10.211.0.3:1".into()), (1, "10.211.0.4:1".into())],
        };
        let s = |guest: usize, value: f64| -> BenchSample {
            serde_json::from_value(serde_json::json!({
                "backend": "ns", "test": "ring", "resource": "network", "n": 3, "rep": 1,
                "guest": guest, "instance": 0, "value": value, "unit": "MB/s",
                "elapsed_s": 0.2, "net_path": "veth+bridge", "mtu": 1450,
            }))
            .unwrap()
        };
        let across: BTreeMap<usize, bool> = [(0, false), (1, true)].into();
        let got = accept_samples(vec![s(0, 900.0), s(1, 400.0)], &r, NS, &across).unwrap();
        assert_eq!(got[0].net_path, Some(NetPath::VethBridge));
        assert_eq!(got[1].net_path, Some(NetPath::VethBridgeVxlan));
        // Not asked for: another guest, twice, another rep, a warm-up, not a number.
        assert!(accept_samples(vec![s(2, 1.0)], &r, NS, &across).is_err());
        assert!(accept_samples(vec![s(0, 1.0), s(0, 1.0)], &r, NS, &across).is_err());
        let mut other = s(0, 1.0);
        other.rep = 0;
        assert!(accept_samples(vec![other], &r, NS, &across).is_err());
        let mut nan = s(0, 1.0);
        nan.value = f64::NAN;
        assert!(accept_samples(vec![nan], &r, NS, &across).is_err());
        assert!(accept_samples(vec![], &RingRound { rep: None, ..r.clone() }, NS, &across).is_err());
        // Another backend than the run's, or a claim of crossing hosts where it did not.
        assert!(accept_samples(vec![s(0, 1.0)], &r, BackendKind::Oci, &across).is_err());
        let mut claim = s(0, 1.0);
        claim.net_path = Some(NetPath::VethBridgeVxlan);
        assert!(accept_samples(vec![claim.clone()], &r, NS, &across).is_err());
        claim.net_path = Some(NetPath::TapBridgeVxlan);
        assert!(accept_samples(vec![claim], &r, NS, &across).is_err());
        // A VM's tap continues over the VXLAN as such; a local path cannot cross.
        let mut tap = s(1, 400.0);
        (tap.backend, tap.net_path) = (BackendKind::Uml, Some(NetPath::TapBridge));
        let got = accept_samples(vec![tap.clone()], &r, BackendKind::Uml, &across).unwrap();
        assert_eq!(got[0].net_path, Some(NetPath::TapBridgeVxlan));
        tap.net_path = Some(NetPath::HostStack);
        assert!(accept_samples(vec![tap], &r, BackendKind::Uml, &across).is_err());
    }
}
