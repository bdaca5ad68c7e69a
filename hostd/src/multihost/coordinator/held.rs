//! A fleet kept up across hosts until told to go down (`hostd up --engine slurm`): the same
//! workers, slices, network and teardown as `hostd boot --engine slurm`, with the hold
//! open-ended and each worker's link watched, so that a host whose worker dies is shown
//! with its guests lost while the others stay up.

use serde::{Deserialize, Serialize};

use super::super::proto::{self, FromWorker, GuestLost, Reached, SlicePart};
use super::{brief, end_step, launch, reach, start, tear_down_reporting, HostRecord, Options};
use super::{Started, Worker};
use crate::netlab::FleetNet;

/// A fleet up on every host of the allocation.
pub struct Held {
    ws: Vec<Worker>,
    srun: tokio::process::Child,
    n: usize,
    network: bool,
    /// The hostd binary the nodes run.
    exe: std::path::PathBuf,
}

/// A ready guest of a held fleet, and how to reach it.
#[derive(Clone)]
pub struct GuestRef {
    /// `g<index>`.
    pub name: String,
    /// Its global index.
    pub index: usize,
    /// Its host's caller.
    pub host: super::HostCaller,
}

/// One host of a held fleet, as `hostd status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    pub hostname: String,
    pub node_name: Option<String>,
    pub addr: std::net::Ipv4Addr,
    /// Its slice: its part of each group.
    pub parts: Vec<SlicePart>,
    /// Guests in its slice.
    pub count: usize,
    /// The worker's run id on that host (its fleet namespace is `vb-<run>`).
    pub run: Option<String>,
    /// Its CLOCK_MONOTONIC minus the coordinator's, s, and the bound.
    pub offset_s: Option<f64>,
    pub bound_s: Option<f64>,
    /// Why its guests are lost (its worker's link dropped, it misbehaved), if they are.
    pub lost: Option<String>,
    /// With `--reach`: its guests' exchanges with a guest on each other host.
    pub reach: Option<Reached>,
    pub guests: Vec<HostGuest>,
}

/// One guest of a host's slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostGuest {
    pub name: String,
    pub index: usize,
    /// Its group (the backend's name for a fleet file without groups) and backend.
    pub group: String,
    pub backend: crate::backend::BackendKind,
    pub addr: Option<String>,
    pub state: GuestState,
    /// Its host's fleet start → ready, on that host's clock, s.
    pub ready_after_s: Option<f64>,
    /// Why it did not start, or how it was lost.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestState {
    /// Started and its host's worker still holds it.
    Ready,
    /// Did not start on a live host.
    Failed,
    /// Its host's worker died, disconnected or misbehaved: whatever it was is gone or
    /// unknown.
    Lost,
}

/// Starts the fleet on every host (and, with `o.reach`, checks every host's guests reach a
/// guest of each other host). Hosts lost while starting are kept, shown lost.
pub async fn up(o: &Options) -> anyhow::Result<Held> {
    let (listener, token, mut srun) = launch(o).await?;
    let started = match start(o, &listener, &token, &mut srun).await {
        Ok(s) => s,
        Err(e) => {
            // The workers' links are gone with `start`'s: they tear down, srun ends.
            end_step(srun, o.n()).await;
            return Err(e);
        }
    };
    let Started { mut ws, .. } = started;
    if o.reach {
        reach::reach(&mut ws).await;
    }
    Ok(Held { ws, srun, n: o.n(), network: o.network, exe: o.exe.clone() })
}

impl Held {
    /// Returns once a live worker's link drops or it says anything while its fleet is up
    /// (it has nothing to say): that host is then lost, and this says which and why.
    /// Never returns while no host is live. Cancel-safe while the workers stay silent,
    /// which held workers do.
    pub async fn watch(&mut self) -> String {
        let live: Vec<_> = self
            .ws
            .iter_mut()
            .filter(|w| w.rec.lost.is_none())
            .map(|w| Box::pin(watch_one(w)))
            .collect();
        if live.is_empty() {
            return std::future::pending().await;
        }
        futures::future::select_all(live).await.0
    }

    /// The ready guests of live hosts (every one, or the one named `name`, e.g. `g4`),
    /// each with the caller of its host; or an error saying why there is none.
    pub fn guests(&self, name: Option<&str>) -> Result<Vec<GuestRef>, String> {
        let mut out = Vec::new();
        let mut why_not = None;
        for w in &self.ws {
            for g in status_of(&w.rec, self.network).guests {
                if name.is_some_and(|n| n != g.name) {
                    continue;
                }
                if g.state == GuestState::Ready {
                    let host = w.caller.clone();
                    out.push(GuestRef { name: g.name, index: g.index, host });
                } else {
                    let e = g.error.unwrap_or_default();
                    why_not = Some(format!("{} on host {} is not ready: {e}", g.name, w.name()));
                }
            }
        }
        if out.is_empty() {
            return Err(match (name, why_not) {
                (Some(_), Some(why)) => why,
                (Some(n), None) => format!(
                    "no guest named {n:?} (the fleet's guests are g0..g{})",
                    self.n.saturating_sub(1)
                ),
                (None, _) => "no guest is ready on any host".into(),
            });
        }
        Ok(out)
    }

    /// Every host and its guests.
    pub fn hosts(&self) -> Vec<HostStatus> {
        self.ws.iter().map(|w| status_of(&w.rec, self.network)).collect()
    }

    /// Tears down on every live host (each says what it left behind), waits for the step
    /// to end, then cleans up on every lost host what its worker left: every host's record
    /// and, per lost host, what the clean-up found or why it could not run.
    pub async fn down(mut self) -> (Vec<HostRecord>, Vec<String>) {
        futures::future::join_all(self.ws.iter_mut().map(tear_down_reporting)).await;
        for w in &self.ws {
            w.caller.lose("the fleet was taken down");
        }
        let Held { ws, srun, n, exe, .. } = self;
        end_step(srun, n).await;
        let recs: Vec<HostRecord> = ws.into_iter().map(|w| w.rec).collect();
        let reaped = futures::future::join_all(
            recs.iter().filter(|r| r.lost.is_some()).map(|r| reap_on(&exe, r)),
        )
        .await;
        (recs, reaped)
    }
}

/// `hostd reap` on a lost host, as a job step of the allocation: a worker killed outright
/// left its guests, cgroups, fleet namespace and run state there, and its run's owner is
/// dead, so they are an orphan run. What it said, or why it could not run.
async fn reap_on(exe: &std::path::Path, r: &HostRecord) -> String {
    let node = r.node_name.as_deref().unwrap_or(&r.hostname);
    let step = tokio::process::Command::new("srun")
        .args(["-N", "1", "-n", "1", "-w", node, "--"])
        .arg(exe)
        .arg("reap")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let said = match tokio::time::timeout(super::REPLY_WITHIN, step).await {
        Err(_) => format!("no answer within {:?}", super::REPLY_WITHIN),
        Ok(Err(e)) => format!("running srun: {e}"),
        Ok(Ok(o)) => {
            let text =
                String::from_utf8_lossy(if o.status.success() { &o.stdout } else { &o.stderr });
            format!(
                "{}{}",
                if o.status.success() { "" } else { "failed: " },
                text.trim().replace('\n', "; ")
            )
        }
    };
    format!("host {}: clean-up of its lost worker's run: {said}", r.hostname)
}

async fn watch_one(w: &mut Worker) -> String {
    loop {
        // Answers to calls to its guests are all a held worker sends.
        match w.link.recv().await {
            Ok(FromWorker::GuestReply { id, reply }) => match w.caller.answer(id, Ok(reply)) {
                Ok(()) => continue,
                Err(e) => w.set_lost(format!("{e} while its fleet was up")),
            },
            Ok(FromWorker::GuestError { id, error }) => match w.caller.answer(id, Err(error)) {
                Ok(()) => continue,
                Err(e) => w.set_lost(format!("{e} while its fleet was up")),
            },
            m => lose(w, m),
        }
        break;
    }
    let why = w.rec.lost.as_deref().unwrap_or_default();
    format!("host {}: its {} guests are lost: {why}", w.name(), w.rec.count)
}

/// Records why a worker whose fleet is up is lost (it said something, where it has nothing
/// to say, or its link failed or went silent) and closes its link: if it comes back to life
/// (SIGCONT), it finds the link closed and tears down by itself.
pub(super) fn lose(w: &mut Worker, m: Result<FromWorker, proto::ReadError>) {
    let why = match m {
        Ok(m) => format!("sent {} while its fleet was up", brief(&m)),
        Err(e @ proto::ReadError::Silent(_)) => format!("{e} while its fleet was up"),
        Err(e) => format!("its link dropped while its fleet was up: {e}"),
    };
    w.set_lost(why);
}

/// A host's status from its record (`network`: its guests have addresses): a guest is ready if its host reported it ready and is
/// not lost, failed if it reported it failed, lost otherwise.
pub fn status_of(r: &HostRecord, network: bool) -> HostStatus {
    let ready: std::collections::HashMap<usize, f64> =
        r.booted.iter().flat_map(|b| b.ready.iter().map(|g| (g.index, g.ready_s))).collect();
    let failed: std::collections::HashMap<usize, &GuestLost> =
        r.booted.iter().flat_map(|b| b.failed.iter().map(|g| (g.index, g))).collect();
    let guests = SlicePart::indices(&r.parts)
        .map(|(index, part)| {
            let (state, error) = match (&r.lost, failed.get(&index)) {
                (_, Some(f)) => (GuestState::Failed, Some(format!("{:?}: {}", f.kind, f.error))),
                (Some(l), None) => {
                    (GuestState::Lost, Some(format!("host {} lost: {l}", r.hostname)))
                }
                (None, None) if ready.contains_key(&index) => (GuestState::Ready, None),
                // A live host that reported neither (it cannot: validated) or none yet.
                (None, None) => (GuestState::Lost, Some("not reported by its host".into())),
            };
            HostGuest {
                name: format!("g{index}"),
                index,
                group: part.group.clone(),
                backend: part.backend,
                addr: network
                    .then(|| FleetNet::guest_addr(index).ok().map(|a| a.to_string()))
                    .flatten(),
                state,
                ready_after_s: ready.get(&index).copied(),
                error,
            }
        })
        .collect();
    HostStatus {
        hostname: r.hostname.clone(),
        node_name: r.node_name.clone(),
        addr: r.addr,
        parts: r.parts.clone(),
        count: r.count,
        run: r.booted.as_ref().map(|b| b.run.clone()),
        offset_s: r.clock.map(|c| c.offset_s),
        bound_s: r.clock.map(|c| c.bound_s),
        lost: r.lost.clone(),
        reach: r.reach.clone(),
        guests,
    }
}
