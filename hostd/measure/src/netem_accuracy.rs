//! Accuracy of the emulated network: for each backend, a fleet of n guests whose links are
//! shaped alike, every guest measuring at once, first unshaped (the path's own base), then
//! shaped. Achieved RTT (agent request/response) and throughput (agent stream) are compared
//! with what was configured. Against the peer on the fleet bridge (`sites` = 0): RTT =
//! twice the guest link's one-way delay (the peer's side is not shaped), throughput = the
//! link's rate. Between sites (`sites` ≥ 2): each guest measures against the guest at the
//! same place in the next site, RTT = both ways' (link + matrix + link), throughput = the
//! slowest of the three. See docs/methodology.md, "Emulated network accuracy".

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::{BenchRequest, BenchSpec};
use vb_protocol::msg::{Command, ReplyBody};

use crate::backend::BackendKind;
use crate::fleet::Fleet;
use crate::netem::{LinkProps, Topology};
use crate::netlab::NetPath;
use crate::suite::sync::{run_together, Starter, Timed};

/// The campaign's `[netem]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetemSection {
    /// Run the accuracy step on every backend of the campaign. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Fleet sizes: guests shaped and measuring at once. Default [2].
    #[serde(default = "d_sizes")]
    pub sizes: Vec<usize>,
    /// Every guest's link. Default 5 ms one-way, 50 Mbit/s.
    #[serde(default = "d_link")]
    pub link: LinkProps,
    /// Request and response size of the RTT measurement, bytes. Default 1.
    #[serde(default = "d_rr_size")]
    pub rr_size: u32,
    /// 0: every guest measures against the peer on the bridge. k ≥ 2: the fleet is split into
    /// k sites of n / k guests, `between` apart, and every guest measures against the guest
    /// at its place in the next site. Default 0.
    #[serde(default)]
    pub sites: usize,
    /// Between every two sites, one way (with `sites` ≥ 2). Default nothing.
    #[serde(default)]
    pub between: crate::netem::Between,
}

fn d_sizes() -> Vec<usize> {
    vec![2]
}
fn d_link() -> LinkProps {
    LinkProps { delay_ms: 5.0, rate_mbit: Some(50.0), ..Default::default() }
}
fn d_rr_size() -> u32 {
    1
}

impl Default for NetemSection {
    fn default() -> Self {
        Self {
            enabled: false,
            sizes: d_sizes(),
            link: d_link(),
            rr_size: d_rr_size(),
            sites: 0,
            between: Default::default(),
        }
    }
}

/// Why a campaign's `[netem]` section cannot run, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum NetemCheckError {
    #[error("netem.sizes: give at least one fleet size")]
    NoSizes,
    #[error("netem.sizes: {0}")]
    Size(crate::limits::OutOfRange),
    #[error(transparent)]
    Link(#[from] crate::netem::LinkError),
    #[error(transparent)]
    Between(#[from] crate::netem::EntryError),
    #[error("netem.sites = 1: 0 (against the peer) or at least 2 sites")]
    OneSite,
    #[error("netem.between needs netem.sites ≥ 2")]
    BetweenWithoutSites,
    #[error("netem.sizes: {n} guests do not split into {sites} sites of equal size")]
    UnevenSites { n: usize, sites: usize },
    #[error("netem.link: give a delay_ms or a rate_mbit to measure")]
    NothingToMeasure,
    #[error("netem.rr_size = {0}: not in 1..=65536 bytes")]
    RrSize(u32),
}

impl NetemSection {
    /// What the step configures, for its step key and people.
    pub fn describe(&self) -> String {
        let mut d = self.link.describe();
        if self.sites >= 2 {
            let b = &self.between;
            d.push_str(&format!(
                "; {} sites, between {}ms ±{}ms",
                self.sites, b.delay_ms, b.jitter_ms
            ));
            if let Some(r) = b.rate_mbit {
                d.push_str(&format!(" {r} Mbit/s"));
            }
        }
        d
    }

    /// Checks the section before anything boots (nothing when it is off); errors name the
    /// field.
    pub fn check(&self) -> Result<(), NetemCheckError> {
        if !self.enabled {
            return Ok(());
        }
        if self.sizes.is_empty() {
            return Err(NetemCheckError::NoSizes);
        }
        for &n in &self.sizes {
            crate::limits::GUESTS.check(n).map_err(NetemCheckError::Size)?;
        }
        self.link.check("netem.link")?;
        self.between.check("netem.between")?;
        if self.sites == 1 {
            return Err(NetemCheckError::OneSite);
        }
        if self.sites == 0 && !self.between.is_none() {
            return Err(NetemCheckError::BetweenWithoutSites);
        }
        if let Some(&n) = self.sizes.iter().find(|&&n| self.sites >= 2 && n % self.sites != 0) {
            return Err(NetemCheckError::UnevenSites { n, sites: self.sites });
        }
        let between = self.between.delay_ms > 0.0 || self.between.rate_mbit.is_some();
        if self.link.delay_ms == 0.0 && self.link.rate_mbit.is_none() && !between {
            return Err(NetemCheckError::NothingToMeasure);
        }
        if !(1..=65536).contains(&self.rr_size) {
            return Err(NetemCheckError::RrSize(self.rr_size));
        }
        Ok(())
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
/// What the accuracy step measures of a path.
pub enum Metric {
    /// Round-trip time, ms.
    Rtt,
    /// Stream throughput, Mbit/s.
    Throughput,
}

impl Metric {
    /// The metric's unit (ms, Mbit/s).
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Rtt => "ms",
            Metric::Throughput => "Mbit/s",
        }
    }
}

/// One guest's figure in one repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccuracySample {
    /// The backend.
    pub backend: BackendKind,
    /// Guests measuring at once.
    pub n: usize,
    /// Repetition, from 0 (warm-ups left out).
    pub rep: u32,
    /// The measuring guest's index.
    pub guest: usize,
    /// RTT or throughput.
    pub metric: Metric,
    /// Sites the fleet was split into (0: measured against the peer on the bridge).
    #[serde(default)]
    pub sites: usize,
    /// Between the sites, one way (with `sites` ≥ 2).
    #[serde(default)]
    pub between: crate::netem::Between,
    /// False: the same path unshaped (the base); true: with `link`.
    pub shaped: bool,
    /// The link's configured properties (none when unshaped).
    pub link: LinkProps,
    /// What `link` should give, in the metric's unit; None when it sets nothing for it.
    #[serde(default)]
    pub configured: Option<f64>,
    /// What was measured, in the metric's unit.
    pub achieved: f64,
    #[serde(default)]
    /// The network path the guests used.
    pub net_path: Option<NetPath>,
    #[serde(default)]
    /// The provenance id the sample was measured with.
    pub provenance: String,
}

impl AccuracySample {
    /// Why this sample cannot be a measurement, or None.
    pub fn implausible(&self) -> Option<String> {
        let max = match self.metric {
            Metric::Rtt => crate::samples::MAX_SECONDS * 1e3,
            Metric::Throughput => crate::samples::MAX_RATE_MBPS * 8.0,
        };
        let ok = |v: f64| v.is_finite() && (0.0..=max).contains(&v);
        if crate::limits::GUESTS.check(self.n).is_err() {
            return Some(format!("n = {} is not a fleet size", self.n));
        }
        if !ok(self.achieved) {
            return Some(format!(
                "achieved = {} {} is out of range",
                self.achieved,
                self.metric.unit()
            ));
        }
        if self.configured.is_some_and(|c| !ok(c)) {
            return Some(format!(
                "configured {:?} {} is out of range",
                self.configured,
                self.metric.unit()
            ));
        }
        None
    }
}

/// What `link` should give for `metric` (RTT: its delay both ways; throughput: its rate).
pub fn configured(link: &LinkProps, metric: Metric) -> Option<f64> {
    match metric {
        Metric::Rtt => (link.delay_ms > 0.0).then_some(2.0 * link.delay_ms),
        Metric::Throughput => link.rate_mbit,
    }
}

/// Measures every guest of `fleet` at once, unshaped then shaped with `s.link`, and leaves
/// its links unshaped. `peer`: the network peer on the fleet bridge.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    fleet: &Fleet,
    s: &NetemSection,
    peer: SocketAddr,
    duration_ms: u32,
    msg_size: u32,
    warmup: u32,
    reps: u32,
    timeout: Duration,
) -> Result<Vec<AccuracySample>, String> {
    let net = fleet.net.as_ref().ok_or("the accuracy step needs the fleet network")?;
    let indices: Vec<usize> = fleet.guests.iter().map(|g| g.spec.index).collect();
    let n = indices.len();
    if indices.iter().enumerate().any(|(p, &i)| p != i) {
        return Err(format!("the accuracy step needs guests 0..{n}, the fleet has {indices:?}"));
    }
    let topo = if s.sites >= 2 {
        Topology::sites(s.sites, n / s.sites, s.link, s.between)
    } else {
        Topology::uniform(n, s.link)
    };
    let (ports, targets) = targets(fleet, s, &topo, peer).await?;
    let path = fleet.net_label().map(|l| l.0);
    let mut out = Vec::new();
    let r = async {
        for shaped in [false, true] {
            if shaped {
                let (ns, t, i) = (net.netns.clone(), topo.clone(), indices.clone());
                tokio::task::spawn_blocking(move || crate::netem::apply(&ns, &t, &i))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            }
            for metric in [Metric::Rtt, Metric::Throughput] {
                let jobs = jobs(fleet, &targets, metric, s.rr_size, duration_ms, msg_size);
                let mut starter = Starter::default();
                for rep in 0..warmup + reps {
                    let answers = run_together(&jobs, timeout, &mut starter).await;
                    if rep < warmup {
                        continue;
                    }
                    for ((g, a), target) in fleet.guests.iter().zip(answers).zip(&targets) {
                        let at = Pass { fleet, s, n, shaped, metric, rep: rep - warmup, path };
                        out.extend(at.samples(g.spec.index, target, &a?));
                    }
                }
            }
        }
        Ok::<(), String>(())
    }
    .await;
    for (g, p) in fleet.guests.iter().zip(ports) {
        let _ = g.conn.request(Command::NetStop { port: p }, Duration::from_secs(10)).await;
    }
    let (ns, i) = (net.netns.clone(), indices.clone());
    let cleared = tokio::task::spawn_blocking(move || crate::netem::clear(&ns, &i))
        .await
        .map_err(|e| e.to_string())?;
    r?;
    cleared.map_err(|e| e.to_string())?;
    Ok(out)
}

/// Whom one guest measures against: its address, the configured RTT (ms) and rate.
type Target = (String, f64, Option<f64>);

/// Each guest's target: with sites, a guest of the next site (every guest then serves
/// on a port returned first, to be stopped after); without, the peer on the bridge.
async fn targets(
    fleet: &Fleet,
    s: &NetemSection,
    topo: &Topology,
    peer: SocketAddr,
) -> Result<(Vec<u16>, Vec<Target>), String> {
    let n = fleet.guests.len();
    let mut ports = Vec::new();
    let mut targets = Vec::with_capacity(n);
    if s.sites < 2 {
        for _ in 0..n {
            targets.push((peer.to_string(), 2.0 * s.link.delay_ms, s.link.rate_mbit));
        }
        return Ok((ports, targets));
    }
    for g in &fleet.guests {
        match g.conn.request(Command::NetServe { port: 0 }, Duration::from_secs(30)).await {
            Ok(ReplyBody::Listening { port }) => ports.push(port),
            Ok(other) => return Err(format!("{}: net_serve answered {other:?}", g.spec.name)),
            Err(e) => return Err(format!("{}: net_serve: {e}", g.spec.name)),
        }
    }
    for a in 0..n {
        let b = (a + n / s.sites) % n;
        let addr = fleet.addr(b).ok_or("the accuracy step needs the fleet network")?;
        let rtt = topo.one_way_ms(a, b).unwrap_or(0.0) + topo.one_way_ms(b, a).unwrap_or(0.0);
        targets.push((format!("{addr}:{}", ports[b]), rtt, topo.rate_mbit(a, b)));
    }
    Ok((ports, targets))
}

/// One request per guest for `metric` towards its target.
fn jobs<'a>(
    fleet: &'a Fleet,
    targets: &[Target],
    metric: Metric,
    rr_size: u32,
    duration_ms: u32,
    msg_size: u32,
) -> Vec<(&'a crate::guest::RunningGuest, BenchRequest)> {
    fleet
        .guests
        .iter()
        .zip(targets)
        .map(|(g, (to, _, _))| {
            let spec = match metric {
                Metric::Rtt => BenchSpec::NetRr { peer: to.clone(), duration_ms, size: rr_size },
                Metric::Throughput => {
                    BenchSpec::NetStream { peer: to.clone(), duration_ms, msg_size }
                }
            };
            (g, BenchRequest { spec, instances: 1, start_at_ns: None })
        })
        .collect()
}

/// One measured repetition of one metric, shaped or not: what its samples share.
struct Pass<'a> {
    fleet: &'a Fleet,
    s: &'a NetemSection,
    n: usize,
    shaped: bool,
    metric: Metric,
    rep: u32,
    path: Option<NetPath>,
}

impl Pass<'_> {
    /// One guest's answer as samples: achieved in the metric's unit, against what the
    /// shaping should give (nothing when unshaped).
    fn samples(&self, guest: usize, (_, rtt, rate): &Target, a: &Timed) -> Vec<AccuracySample> {
        a.report
            .instances
            .iter()
            .map(|r| {
                let f = r.figure().value;
                let achieved = match self.metric {
                    Metric::Rtt => f / 1e3,        // µs per transaction → ms
                    Metric::Throughput => f * 8.0, // MB/s → Mbit/s
                };
                let configured = match (self.shaped, self.metric) {
                    (false, _) => None,
                    (true, Metric::Rtt) => Some(*rtt).filter(|v| *v > 0.0),
                    (true, Metric::Throughput) => *rate,
                };
                AccuracySample {
                    backend: self.fleet.backend,
                    n: self.n,
                    rep: self.rep,
                    guest,
                    metric: self.metric,
                    sites: self.s.sites,
                    between: if self.shaped { self.s.between } else { Default::default() },
                    shaped: self.shaped,
                    configured,
                    link: if self.shaped { self.s.link } else { LinkProps::default() },
                    achieved,
                    net_path: self.path,
                    provenance: String::new(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_checked() {
        let mut s = NetemSection { enabled: true, ..Default::default() };
        assert!(s.check().is_ok());
        s.sizes = vec![0];
        assert!(s.check().unwrap_err().to_string().contains("netem.sizes"));
        s.sizes = vec![2];
        s.link.rate_mbit = Some(0.0);
        assert!(s.check().unwrap_err().to_string().contains("rate"));
        s.link = LinkProps::default();
        assert!(s.check().unwrap_err().to_string().contains("delay_ms or a rate_mbit"));
        s.between.delay_ms = 10.0;
        assert!(s.check().unwrap_err().to_string().contains("netem.between needs netem.sites"));
        s.sites = 2;
        s.sizes = vec![2, 3];
        assert!(s.check().unwrap_err().to_string().contains("3 guests do not split into 2 sites"));
        s.sizes = vec![20];
        assert!(s.check().is_ok());
        s.between.delay_ms = -1.0;
        assert!(s.check().unwrap_err().to_string().contains("netem.between.delay_ms"));
    }
}
