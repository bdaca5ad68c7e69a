//! A worker's slice of a fleet across hosts: its part of every group of the fleet, each
//! with its own backend, started together on this host's one part of the fleet network, as
//! the daemon starts a mixed fleet on one machine. Held, asked and torn down as one.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use vb_protocol::bench::{BenchRequest, BenchSpec, Work};
use vb_protocol::msg::{Command, ReplyBody};

use super::proto::{self, Booted, GuestLost, GuestReady, Slice, SlicePart};
use crate::backend::{AnyBackend, BackendKind, BackendOptions, Images};
use crate::fleet::{self, Fleet, FleetConfig};
use crate::netlab::FleetNet;
use crate::runstate::RunState;

/// One group's part, started.
pub(super) struct Part {
    pub backend: AnyBackend,
    pub fleet: Fleet,
}

/// Every part of the slice, and the network they share (torn down after them).
pub(super) struct Running {
    pub parts: Vec<Part>,
    pub net: Option<FleetNet>,
}

/// A part's backend and fleet configuration, checked (addresses, descriptors) before T0.
pub(super) struct Planned {
    part: SlicePart,
    backend: AnyBackend,
    cfg: FleetConfig,
}

/// Each part's backend and configuration, every part checked; an error names the group.
pub(super) fn plan(
    s: &Slice,
    images: &Images,
    opts: &BackendOptions,
    cfg: impl Fn(&SlicePart) -> FleetConfig,
) -> Result<Vec<Planned>> {
    let mut out = Vec::with_capacity(s.parts.len());
    for p in &s.parts {
        let images = part_images(p, images)
            .map_err(|e| anyhow::anyhow!("group {:?} ({}): {e:#}", p.group, p.backend))?;
        let backend = AnyBackend::new(p.backend, &images, opts);
        let cfg = cfg(p);
        fleet::check(&backend, &cfg, p.first)
            .map_err(|e| anyhow::anyhow!("group {:?} ({}): {e}", p.group, p.backend))?;
        out.push(Planned { part: p.clone(), backend, cfg });
    }
    Ok(out)
}

/// The images of a part: the agent's, with its group's system image if it has one (a
/// container keeps the agent as PID 1, as on one machine).
fn part_images(p: &SlicePart, images: &Images) -> Result<Images> {
    let Some((name, init)) = &p.system else { return Ok(images.clone()) };
    let mut im = images.clone();
    crate::images::add_system(&mut im, name, *init)?;
    if matches!(p.backend, BackendKind::Ns | BackendKind::Oci) {
        im.system = im.system.take().map(|s| s.for_container(p.backend.name()));
    }
    Ok(im)
}

impl Running {
    /// Starts every part at once on `net`; if one cannot start at all, whatever started is
    /// torn down and the error names its group.
    pub async fn start(
        planned: Vec<Planned>,
        run: &RunState,
        net: Option<FleetNet>,
    ) -> Result<Running> {
        let started =
            futures::future::join_all(planned.iter().map(|p| {
                fleet::start_on(&p.backend, run, &p.cfg, net.clone(), p.part.first, |_| {})
            }))
            .await;
        let mut running = Running { parts: Vec::new(), net };
        let mut error = None;
        for (p, r) in planned.into_iter().zip(started) {
            match r {
                // Each part keeps the network for what reads it (the ring's labels);
                // `teardown` removes it once, after every part.
                Ok(fleet) => running.parts.push(Part { backend: p.backend, fleet }),
                Err(e) => {
                    let e = anyhow::anyhow!("group {:?} ({}): {e:#}", p.part.group, p.part.backend);
                    error = error.or(Some(e));
                }
            }
        }
        if let Some(e) = error {
            let t = running.teardown(Duration::from_secs(10)).await;
            for l in t.2 {
                eprintln!("hostd worker: tearing down after a failed start: {l}");
            }
            return Err(e);
        }
        Ok(running)
    }

    /// The startup report: every part's ready guests (from the common start), failures, and
    /// the slice's memory against what was read `before` its start.
    pub fn booted(
        &self,
        run: &RunState,
        lateness_s: f64,
        start_mono_ns: u64,
        before: Option<&super::memory::Before>,
        clean: impl Fn(&str) -> String,
    ) -> Booted {
        let fleets = || self.parts.iter().map(|p| &p.fleet);
        Booted {
            run: run.run.clone(),
            lateness_s,
            start_mono_ns,
            ready: fleets()
                .flat_map(|f| f.guests.iter().zip(&f.ready_at))
                .map(|(g, at)| GuestReady { index: g.spec.index, ready_s: at.as_secs_f64() })
                .collect(),
            failed: fleets()
                .flat_map(|f| f.failures.iter())
                .map(|f| GuestLost { index: f.index, kind: f.kind.clone(), error: clean(&f.error) })
                .collect(),
            memory: before.and_then(|b| b.after(fleets().flat_map(|f| f.guests.iter()))),
        }
    }

    /// Shapes this host's ready guests' links by the whole fleet's topology (`[net]`):
    /// traffic from a guest here to one on another host gets this guest's link and the
    /// matrix here, the other guest's link on its host, and the VXLAN between them.
    pub fn shape(&self, run: &RunState, topo: &crate::netem::Topology) -> Result<(), String> {
        let Some(net) = &self.net else {
            return Err("[net] needs the fleet network".into());
        };
        let mut indices: Vec<usize> =
            self.parts.iter().flat_map(|p| p.fleet.guests.iter().map(|g| g.spec.index)).collect();
        indices.sort_unstable();
        crate::net::set(&run.scratch, &net.netns, topo, &indices)
    }

    /// Ready guests in all.
    pub fn ready(&self) -> usize {
        self.parts.iter().map(|p| p.fleet.guests.len()).sum()
    }

    /// The ready guest with global index `index`.
    pub fn guest(&self, index: usize) -> Option<&crate::guest::RunningGuest> {
        self.parts.iter().flat_map(|p| p.fleet.guests.iter()).find(|g| g.spec.index == index)
    }

    /// The one part's fleet, for what runs on a one-group slice only (the ring).
    pub fn only(&self) -> Option<&Fleet> {
        match &self.parts[..] {
            [p] => Some(&p.fleet),
            _ => None,
        }
    }

    /// Every part's ready guests serve the reach check; the ones that could not, in words.
    pub async fn serve(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for p in &self.parts {
            failed.extend(crate::reach::serve(&p.fleet).await);
        }
        failed
    }

    /// The exchanges asked (this host's guest, a guest on another host; global indices):
    /// from a guest sharing the host's kernel, from its network namespace
    /// (`reach::check_to`); from a guest with a kernel of its own, by its agent
    /// (request/response exchanges of 64 KiB with the target's reach server).
    pub async fn reach(
        &self,
        asked: &[(usize, usize)],
        clean: impl Fn(&str) -> String,
    ) -> proto::Reached {
        let mut r = proto::Reached::default();
        let mut bad = Vec::new();
        for p in &self.parts {
            let place: std::collections::HashMap<usize, usize> =
                p.fleet.guests.iter().enumerate().map(|(i, g)| (g.spec.index, i)).collect();
            let mine: Vec<(usize, usize)> =
                asked.iter().copied().filter(|(from, _)| place.contains_key(from)).collect();
            let mut pairs = Vec::new();
            for &(from, to) in &mine {
                match FleetNet::guest_addr(to) {
                    Ok(addr) => pairs.push((place[&from], addr)),
                    Err(e) => bad.push(clean(&format!("g{from} → g{to}: {e}"))),
                }
            }
            if p.fleet.backend.own_kernel() {
                own_kernel_reach(&p.fleet, &pairs, &mut r, &clean).await;
            } else {
                let x = crate::reach::check_to(&p.fleet, &pairs).await;
                r.checked += x.checked;
                r.reached += x.reached;
                r.across_hosts += x.across_bridges;
                r.failures.extend(x.failures.iter().map(|f| clean(f)));
            }
        }
        for &(from, to) in asked {
            if self.guest(from).is_none() {
                bad.push(format!("g{from} → g{to}: g{from} is not a ready guest here"));
            }
        }
        r.failures.extend(bad);
        r
    }

    /// Tears every part down at once, then the network: (clean, killed, what was left).
    pub async fn teardown(self, grace: Duration) -> (usize, usize, Vec<String>) {
        let done = futures::future::join_all(self.parts.into_iter().map(|mut p| async move {
            // Not each part's to remove: the slice's, once, below.
            p.fleet.net = None;
            p.fleet.teardown(&p.backend, grace).await
        }))
        .await;
        let (mut clean, mut killed, mut left) = (0, 0, Vec::new());
        for t in done {
            (clean, killed) = (clean + t.clean, killed + t.killed);
            left.extend(t.errors);
        }
        if let Some(n) = self.net {
            if let Err(e) = n.destroy() {
                left.push(format!("removing the fleet network: {e}"));
            }
        }
        (clean, killed, left)
    }
}

/// Bytes of each request and response of an own-kernel guest's reach exchange.
const EXCHANGE: u32 = 64 * 1024;

/// The reach exchanges of guests with a kernel of their own: each guest's agent runs
/// request/response exchanges with the target's reach server for a moment; at least one
/// completed exchange is a reach.
async fn own_kernel_reach(
    fleet: &Fleet,
    pairs: &[(usize, Ipv4Addr)],
    r: &mut proto::Reached,
    clean: &impl Fn(&str) -> String,
) {
    let own: std::collections::HashSet<Ipv4Addr> =
        fleet.guests.iter().filter_map(|g| g.spec.net.as_ref().map(|n| n.addr)).collect();
    let tries = futures::future::join_all(pairs.iter().map(|&(i, addr)| async move {
        let g = &fleet.guests[i];
        let peer = format!("{addr}:{}", crate::reach::REACH_PORT);
        let req = BenchRequest {
            spec: BenchSpec::NetRr { peer: peer.clone(), duration_ms: 100, size: EXCHANGE },
            instances: 1,
            start_at_ns: None,
        };
        let what = format!("{} → {peer}", g.spec.name);
        match g.conn.request(Command::Bench(req), Duration::from_secs(30)).await {
            Ok(ReplyBody::Bench(b))
                if b.instances.iter().any(
                    |x| matches!(x.work, Work::NetRr { transactions } if transactions > 0),
                ) =>
            {
                Ok(())
            }
            Ok(other) => Err(format!("{what}: answered {:.200}", format!("{other:?}"))),
            Err(e) => Err(format!("{what}: {e}")),
        }
    }))
    .await;
    for (&(_, addr), t) in pairs.iter().zip(tries) {
        r.checked += 1;
        r.across_hosts += usize::from(!own.contains(&addr));
        match t {
            Ok(()) => r.reached += 1,
            Err(e) => r.failures.push(clean(&e)),
        }
    }
}
