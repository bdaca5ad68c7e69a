//! The emulated network's accuracy in the report: configured against achieved per backend
//! (the samples come from [`crate::netem_accuracy`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::netem_accuracy::{AccuracySample, Metric};
use crate::report::Stat;

/// One line of the report: a backend's figure for one metric at one n.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The backend.
    pub backend: BackendKind,
    /// Guests measuring at once.
    pub n: usize,
    /// 0: against the peer on the bridge; k: between k sites.
    #[serde(default)]
    pub sites: usize,
    /// RTT or throughput.
    pub metric: Metric,
    /// The link's properties, described.
    pub link: String,
    /// What the shaping should give, in the metric's unit.
    pub configured: Option<f64>,
    /// The unshaped path's figure.
    pub base: Option<Stat>,
    /// The shaped path's figure.
    pub achieved: Stat,
    /// (achieved − configured) / configured.
    pub rel_error: Option<f64>,
}

/// The report's rows from every accuracy sample.
pub fn analyse(samples: &[AccuracySample]) -> Vec<Row> {
    type Key = (BackendKind, usize, usize, Metric);
    let mut base: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    let mut shaped: BTreeMap<Key, (Vec<f64>, Option<f64>, String)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.implausible().is_none()) {
        let k = (s.backend, s.n, s.sites, s.metric);
        if s.shaped {
            let e = shaped.entry(k).or_insert_with(|| (Vec::new(), s.configured, describe(s)));
            e.0.push(s.achieved);
        } else {
            base.entry(k).or_default().push(s.achieved);
        }
    }
    shaped
        .into_iter()
        .filter_map(|(k, (v, configured, link))| {
            let achieved = Stat::of(&v, k.3.unit())?;
            Some(Row {
                backend: k.0,
                n: k.1,
                sites: k.2,
                metric: k.3,
                link,
                configured,
                base: base.get(&k).and_then(|b| Stat::of(b, k.3.unit())),
                rel_error: configured.filter(|c| *c > 0.0).map(|c| (achieved.mean - c) / c),
                achieved,
            })
        })
        .collect()
}

/// The link, and what lies between sites.
fn describe(s: &AccuracySample) -> String {
    let mut d = s.link.describe();
    if s.sites >= 2 {
        let b = &s.between;
        d.push_str(&format!("; {} sites", s.sites));
        if !b.is_none() {
            d.push_str(&format!(", between them {}ms", b.delay_ms));
            if b.jitter_ms > 0.0 {
                d.push_str(&format!(" ±{}ms", b.jitter_ms));
            }
            if let Some(r) = b.rate_mbit {
                d.push_str(&format!(", {r} Mbit/s"));
            }
        }
    }
    d
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
         (netem, htb), all n guests measuring at once. \
         Against the peer, configured RTT is twice the link's one-way delay; between sites, each guest measures against its counterpart in the next site and configured RTT is link + matrix + link both ways. Base is the same path unshaped. See \
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
            if r.sites >= 2 { format!("{} ({} sites)", r.n, r.sites) } else { r.n.to_string() },
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
    let (bar, gap, h, left) = (18.0, 60.0, 200.0, 50.0);
    let w = left + rows.len() as f64 * (2.0 * bar + gap) + gap;
    let y = |v: f64| 10.0 + h * (1.0 - v / top);
    let mut s = format!(
        "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{:.0}\" \
         font-size=\"10\"><text x=\"2\" y=\"{:.1}\">{}</text><line x1=\"{left}\" y1=\"{:.1}\" \
         x2=\"{w:.0}\" y2=\"{:.1}\" stroke=\"black\"/><text x=\"2\" y=\"{:.1}\">{top:.1}</text>",
        h + 50.0,
        y(top) + 22.0,
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
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} n={}</text>",
            y(c),
            y(0.0) - y(c),
            x + bar,
            y(a),
            y(0.0) - y(a),
            x + bar,
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
    use crate::netem::LinkProps;
    use crate::netem_accuracy::configured;

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
            sites: 0,
            between: Default::default(),
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
}
