//! Accuracy of the emulated network: for each backend, a fleet of n guests whose links are
//! shaped alike, every guest measuring at once, first unshaped (the path's own base), then
//! shaped. Achieved RTT (agent request/response with the peer on the fleet bridge) and
//! throughput (agent stream to the peer) are compared with what was configured: RTT = twice
//! the guest link's one-way delay (the peer's side of the bridge is not shaped), throughput
//! = the guest link's rate. See docs/methodology.md, "Emulated network accuracy".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::{BenchRequest, BenchSpec};

use super::{LinkProps, Topology};
use crate::backend::BackendKind;
use crate::fleet::Fleet;
use crate::netlab::NetPath;
use crate::report::Stat;
use crate::suite::sync::{run_together, Starter};

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
        Self { enabled: false, sizes: d_sizes(), link: d_link(), rr_size: d_rr_size() }
    }
}

impl NetemSection {
    pub fn check(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.sizes.is_empty() {
            return Err("netem.sizes: give at least one fleet size".into());
        }
        for &n in &self.sizes {
            crate::limits::GUESTS.check(n).map_err(|e| format!("netem.sizes: {e}"))?;
        }
        self.link.check("netem.link")?;
        if self.link.delay_ms == 0.0 && self.link.rate_mbit.is_none() {
            return Err("netem.link: give a delay_ms or a rate_mbit to measure".into());
        }
        if !(1..=65536).contains(&self.rr_size) {
            return Err(format!("netem.rr_size = {}: not in 1..=65536 bytes", self.rr_size));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Round-trip time, ms.
    Rtt,
    /// Stream throughput, Mbit/s.
    Throughput,
}

impl Metric {
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Rtt => "ms",
            Metric::Throughput => "Mbit/s",
        }
    }
}

/// One guest's figure in one repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracySample {
    pub backend: BackendKind,
    /// Guests measuring at once.
    pub n: usize,
    pub rep: u32,
    pub guest: usize,
    pub metric: Metric,
    /// False: the same path unshaped (the base); true: with `link`.
    pub shaped: bool,
    pub link: LinkProps,
    /// What `link` should give, in the metric's unit; None when it sets nothing for it.
    #[serde(default)]
    pub configured: Option<f64>,
    pub achieved: f64,
    #[serde(default)]
    pub net_path: Option<NetPath>,
    #[serde(default)]
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
    let topo = Topology::uniform(indices.iter().max().map_or(0, |m| m + 1), s.link);
    let path = fleet.net_label().map(|l| l.0);
    let mut out = Vec::new();
    for shaped in [false, true] {
        if shaped {
            let (ns, t, i) = (net.netns.clone(), topo.clone(), indices.clone());
            tokio::task::spawn_blocking(move || super::apply(&ns, &t, &i))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        let r = async {
            for metric in [Metric::Rtt, Metric::Throughput] {
                let spec = match metric {
                    Metric::Rtt => {
                        BenchSpec::NetRr { peer: peer.to_string(), duration_ms, size: s.rr_size }
                    }
                    Metric::Throughput => {
                        BenchSpec::NetStream { peer: peer.to_string(), duration_ms, msg_size }
                    }
                };
                let req = BenchRequest { spec, instances: 1, start_at_ns: None };
                let jobs: Vec<_> = fleet.guests.iter().map(|g| (g, req.clone())).collect();
                let mut starter = Starter::default();
                for rep in 0..warmup + reps {
                    let answers = run_together(&jobs, timeout, &mut starter).await;
                    if rep < warmup {
                        continue;
                    }
                    for (g, a) in fleet.guests.iter().zip(answers) {
                        let a = a?;
                        for r in &a.report.instances {
                            let f = r.figure().value;
                            let achieved = match metric {
                                Metric::Rtt => f / 1e3,        // µs per transaction → ms
                                Metric::Throughput => f * 8.0, // MB/s → Mbit/s
                            };
                            let link = if shaped { s.link } else { LinkProps::default() };
                            out.push(AccuracySample {
                                backend: fleet.backend,
                                n,
                                rep: rep - warmup,
                                guest: g.spec.index,
                                metric,
                                shaped,
                                configured: configured(&link, metric),
                                link,
                                achieved,
                                net_path: path,
                                provenance: String::new(),
                            });
                        }
                    }
                }
            }
            Ok::<(), String>(())
        }
        .await;
        if shaped {
            let (ns, i) = (net.netns.clone(), indices.clone());
            let cleared = tokio::task::spawn_blocking(move || super::clear(&ns, &i))
                .await
                .map_err(|e| e.to_string())?;
            r?;
            cleared.map_err(|e| e.to_string())?;
        } else {
            r?;
        }
    }
    Ok(out)
}

/// One line of the report: a backend's figure for one metric at one n.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub backend: BackendKind,
    pub n: usize,
    pub metric: Metric,
    pub link: String,
    pub configured: Option<f64>,
    /// The unshaped path's figure.
    pub base: Option<Stat>,
    pub achieved: Stat,
    /// (achieved − configured) / configured.
    pub rel_error: Option<f64>,
}

/// The report's rows from every accuracy sample.
pub fn analyse(samples: &[AccuracySample]) -> Vec<Row> {
    type Key = (BackendKind, usize, Metric);
    let mut base: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    let mut shaped: BTreeMap<Key, (Vec<f64>, Option<f64>, String)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.implausible().is_none()) {
        let k = (s.backend, s.n, s.metric);
        if s.shaped {
            let e =
                shaped.entry(k).or_insert_with(|| (Vec::new(), s.configured, s.link.describe()));
            e.0.push(s.achieved);
        } else {
            base.entry(k).or_default().push(s.achieved);
        }
    }
    shaped
        .into_iter()
        .filter_map(|(k, (v, configured, link))| {
            let achieved = Stat::of(&v, k.2.unit())?;
            Some(Row {
                backend: k.0,
                n: k.1,
                metric: k.2,
                link,
                configured,
                base: base.get(&k).and_then(|b| Stat::of(b, k.2.unit())),
                rel_error: configured.filter(|c| *c > 0.0).map(|c| (achieved.mean - c) / c),
                achieved,
            })
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The report's section: a table and a configured-vs-achieved figure per metric. Empty
/// when the campaign measured no accuracy.
pub fn html(rows: &[Row]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut h = String::from(
        "<h2>Emulated network accuracy</h2><p>Every guest's link shaped alike on the host side \
         (netem, htb), all n guests measuring at once against the peer on the fleet bridge. \
         Configured RTT is twice the link's one-way delay; base is the same path unshaped. See \
         docs/methodology.md.</p><table><tr><th>backend</th><th>n</th><th>metric</th>\
         <th>link</th><th>configured</th><th>base (unshaped)</th><th>achieved mean ± sd</th>\
         <th>error</th></tr>",
    );
    for r in rows {
        let u = r.metric.unit();
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.3} ± {:.3} {u}</td><td>{}</td></tr>",
            r.backend,
            r.n,
            if r.metric == Metric::Rtt { "RTT" } else { "throughput" },
            esc(&r.link),
            r.configured.map_or("—".into(), |c| format!("{c:.3} {u}")),
            r.base.as_ref().map_or("—".into(), |b| format!("{:.3} {u}", b.mean)),
            r.achieved.mean,
            r.achieved.std_dev,
            r.rel_error.map_or("—".into(), |e| format!("{:+.1} %", e * 100.0)),
        ));
    }
    h.push_str("</table>");
    for metric in [Metric::Rtt, Metric::Throughput] {
        let rs: Vec<&Row> =
            rows.iter().filter(|r| r.metric == metric && r.configured.is_some()).collect();
        if !rs.is_empty() {
            h.push_str(&figure(metric, &rs));
        }
    }
    h
}

/// Bars of configured (grey) and achieved (blue) per backend and n, as inline SVG.
fn figure(metric: Metric, rows: &[&Row]) -> String {
    let top = rows
        .iter()
        .flat_map(|r| [r.configured.unwrap_or(0.0), r.achieved.mean + r.achieved.std_dev])
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let (bar, gap, h, left) = (18.0, 22.0, 200.0, 50.0);
    let w = left + rows.len() as f64 * (2.0 * bar + gap) + gap;
    let y = |v: f64| 10.0 + h * (1.0 - v / top);
    let mut s = format!(
        "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{:.0}\" \
         font-size=\"10\"><text x=\"2\" y=\"10\">{}</text><line x1=\"{left}\" y1=\"{:.1}\" \
         x2=\"{w:.0}\" y2=\"{:.1}\" stroke=\"black\"/><text x=\"2\" y=\"{:.1}\">{top:.3}</text>",
        h + 50.0,
        metric.unit(),
        y(0.0),
        y(0.0),
        y(top) + 10.0,
    );
    for (i, r) in rows.iter().enumerate() {
        let x = left + gap + i as f64 * (2.0 * bar + gap);
        let c = r.configured.unwrap_or(0.0);
        let a = r.achieved.mean;
        s.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar}\" height=\"{:.1}\" fill=\"#bbb\">\
             <title>configured {c:.3}</title></rect><rect x=\"{:.1}\" y=\"{:.1}\" \
             width=\"{bar}\" height=\"{:.1}\" fill=\"#36c\"><title>achieved {a:.3}</title></rect>\
             <text x=\"{x:.1}\" y=\"{:.1}\">{} n={}</text>",
            y(c),
            y(0.0) - y(c),
            x + bar,
            y(a),
            y(0.0) - y(a),
            y(0.0) + 14.0,
            r.backend,
            r.n,
        ));
    }
    s.push_str(&format!(
        "</svg><figcaption>{}: configured (grey) and achieved (blue), per backend and \
         fleet size</figcaption></figure>",
        if metric == Metric::Rtt { "RTT" } else { "Throughput" }
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(b: BackendKind, metric: Metric, shaped: bool, achieved: f64) -> AccuracySample {
        let link = if shaped {
            LinkProps { delay_ms: 10.0, rate_mbit: Some(100.0), ..Default::default() }
        } else {
            LinkProps::default()
        };
        AccuracySample {
            backend: b,
            n: 2,
            rep: 0,
            guest: 0,
            metric,
            shaped,
            configured: configured(&link, metric),
            link,
            achieved,
            net_path: None,
            provenance: String::new(),
        }
    }

    #[test]
    fn rows_compare_achieved_with_configured() {
        let s = vec![
            sample(BackendKind::Ns, Metric::Rtt, false, 0.1),
            sample(BackendKind::Ns, Metric::Rtt, true, 22.0),
            sample(BackendKind::Ns, Metric::Rtt, true, 22.0),
            sample(BackendKind::Ns, Metric::Throughput, true, 90.0),
            // Forged: left out.
            sample(BackendKind::Ns, Metric::Throughput, true, f64::NAN),
        ];
        let rows = analyse(&s);
        assert_eq!(rows.len(), 2);
        let rtt = &rows[0];
        assert_eq!(rtt.configured, Some(20.0));
        assert!((rtt.rel_error.unwrap() - 0.1).abs() < 1e-9);
        assert!((rtt.base.as_ref().unwrap().mean - 0.1).abs() < 1e-9);
        assert!((rows[1].rel_error.unwrap() + 0.1).abs() < 1e-9);
        let h = html(&rows);
        assert!(h.contains("+10.0 %") && h.contains("-10.0 %") && h.contains("<svg"), "{h}");
        assert!(html(&[]).is_empty());
    }

    #[test]
    fn section_is_checked() {
        let mut s = NetemSection { enabled: true, ..Default::default() };
        assert!(s.check().is_ok());
        s.sizes = vec![0];
        assert!(s.check().unwrap_err().contains("netem.sizes"));
        s.sizes = vec![2];
        s.link.rate_mbit = Some(0.0);
        assert!(s.check().unwrap_err().contains("rate"));
        s.link = LinkProps::default();
        assert!(s.check().unwrap_err().contains("delay_ms or a rate_mbit"));
    }
}
