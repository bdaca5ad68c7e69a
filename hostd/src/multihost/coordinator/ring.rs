//! The coordinator's side of the ring across hosts ([`crate::multihost::ring`]): every live
//! host's guests serve, the ring is planned by global index, and each round starts on every
//! host at one instant. A worker that fails to answer, or answers wrongly, is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use super::super::clock::real_ns;
use super::super::proto::{FromWorker, RingRound, ToWorker};
use super::super::ring::{self, Member};
use super::reach::serve_within;
use super::{ask_within, brief, Worker, REPLY_WITHIN};
use crate::suite::{BenchSample, Test, Workloads};

/// The ring a multi-host run measures (`hostd run --engine slurm`).
#[derive(Debug, Clone)]
pub struct RingOptions {
    pub workloads: Workloads,
    pub warmup: u32,
    pub reps: u32,
    /// Each guest's run may take this long.
    pub timeout: Duration,
}

/// What the ring across hosts gave, as recorded in `multihost.json` (its samples go to
/// `samples.jsonl`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RingSummary {
    /// Guests in the ring.
    pub guests: usize,
    /// Hosts they ran on.
    pub hosts: usize,
    /// Of the ring's links (guest → next), those to a guest on another host.
    pub links_across_hosts: usize,
    /// Samples recorded (bandwidth and latency).
    pub samples: usize,
    /// What failed, in words, each naming its host.
    pub failures: Vec<String>,
}

/// Between sending a round and its start: room for every worker to get it and its guests
/// to get ready (the suite's own start lead is added on each host).
const ROUND_LEAD: Duration = Duration::from_secs(1);

/// Runs the ring over the live workers' ready guests: its samples, labelled.
pub(super) async fn run(
    ws: &mut [Worker],
    backend: crate::backend::BackendKind,
    o: &RingOptions,
) -> (Vec<BenchSample>, RingSummary) {
    let mut sum = RingSummary::default();
    let mut out = Vec::new();
    // Every live host's ready guests start a stream server.
    let served = futures::future::join_all(ws.iter_mut().map(serve)).await;
    let members: Vec<Member> = served
        .iter()
        .enumerate()
        .flat_map(|(host, ports)| {
            ports.iter().map(move |&(index, port)| Member { index, host, port })
        })
        .collect();
    let Some(links) = ring::plan(&members) else {
        sum.failures.push(format!("a ring needs two guests serving; {} did", members.len()));
        return (out, sum);
    };
    sum.guests = links.len();
    sum.hosts = links.iter().map(|l| l.host).collect::<BTreeSet<_>>().len();
    sum.links_across_hosts = links.iter().filter(|l| l.across_hosts).count();
    let across: BTreeMap<usize, bool> = links.iter().map(|l| (l.index, l.across_hosts)).collect();
    for test in [Test::Ring, Test::RingLatency] {
        for i in 0..o.warmup + o.reps {
            let at_unix_ns = real_ns() + ROUND_LEAD.as_nanos() as u64;
            let rep = i.checked_sub(o.warmup);
            let rounds = futures::future::join_all(ws.iter_mut().enumerate().map(|(h, w)| {
                let r = RingRound {
                    test,
                    n: links.len(),
                    rep,
                    at_unix_ns,
                    workloads: o.workloads.clone(),
                    timeout_s: o.timeout.as_secs().max(1),
                    jobs: links
                        .iter()
                        .filter(|l| l.host == h)
                        .map(|l| (l.index, l.peer.clone()))
                        .collect(),
                };
                round(w, r, o.timeout + ROUND_LEAD, backend, &across)
            }))
            .await;
            out.extend(rounds.into_iter().flatten());
        }
    }
    // A host lost meanwhile is counted by its guests (lost), not here.
    for w in ws.iter() {
        sum.failures.extend(w.rec.ring_failed.iter().map(|f| format!("host {}: {f}", w.name())));
    }
    sum.samples = out.len();
    (out, sum)
}

/// Has a live worker's ready guests start a stream server each: their (guest, port), checked
/// (none if the worker is or becomes lost).
async fn serve(w: &mut Worker) -> Vec<(usize, u16)> {
    if w.rec.lost.is_some() {
        return Vec::new();
    }
    let ready: BTreeSet<usize> =
        w.rec.booted.iter().flat_map(|b| b.ready.iter().map(|g| g.index)).collect();
    match ask_within(w, &ToWorker::RingServe, serve_within(w.rec.count)).await {
        Ok(FromWorker::RingPorts { ports, failed }) => match ring::check_ports(&ports, &ready) {
            Ok(()) => {
                w.rec.ring_failed.extend(failed.iter().take(100).map(|f| printable(f)));
                ports
            }
            Err(e) => lose(w, format!("bad ring ports: {e}")),
        },
        Ok(other) => lose(w, format!("answered the ring's serve with {}", brief(&other))),
        Err(e) => lose(w, format!("serving the ring: {e:#}")),
    }
}

/// Sends one live worker its part of a round (its guests' links) and takes its samples,
/// checked and labelled; none for a warm-up round, a worker with no part in the ring, or one
/// that is or becomes lost. `timeout` is each guest's run and the round's start lead.
async fn round(
    w: &mut Worker,
    r: RingRound,
    timeout: Duration,
    backend: crate::backend::BackendKind,
    across: &BTreeMap<usize, bool>,
) -> Vec<BenchSample> {
    if w.rec.lost.is_some() || r.jobs.is_empty() {
        return Vec::new();
    }
    let within = timeout + REPLY_WITHIN;
    match ask_within(w, &ToWorker::RingRound(r.clone()), within).await {
        Ok(FromWorker::RingSamples { samples, failed }) => {
            w.rec.ring_failed.extend(failed.iter().take(100).map(|f| printable(f)));
            if r.rep.is_none() {
                return Vec::new();
            }
            match ring::accept_samples(samples, &r, backend, across) {
                Ok(s) => s,
                Err(e) => lose(w, format!("bad ring samples: {e}")),
            }
        }
        Ok(other) => lose(w, format!("answered a ring round with {}", brief(&other))),
        Err(e) => lose(w, format!("a ring round: {e:#}")),
    }
}

/// Marks a worker lost, saying why: it gives nothing more.
fn lose<T>(w: &mut Worker, why: String) -> Vec<T> {
    w.set_lost(why);
    Vec::new()
}

/// A worker's text as one bounded line.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(500).collect()
}
