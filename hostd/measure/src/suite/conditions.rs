//! The conditions the suite's samples were taken under, for the report: which network path
//! (and MTU) each backend's network figures crossed, and how well concurrent runs started
//! together (start skew, overlap; [`super::sync`]).
//!
//! A backend's network series in the figures is the path its guests really use; a local
//! path (loopback, host-stack) measured besides a bridged one for the same backend (native's
//! loopback reference, ns's Vserver-like mode next to its veth) is a second reference: shown
//! in the paths table, never mixed into the figures' series.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::Resource;

use super::{BenchSample, Test};
use crate::backend::BackendKind;

/// One backend's samples on one path, per test and fleet size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathRow {
    /// The backend.
    pub backend: BackendKind,
    /// The test.
    pub test: Test,
    /// Fleet size.
    pub n: usize,
    /// `veth+bridge, MTU 1500`.
    pub path: String,
    /// Whether this path is the backend's series in the figures (false: a second reference).
    pub in_figures: bool,
    /// The figure's unit.
    pub unit: String,
    /// Mean.
    pub mean: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// How many samples.
    pub samples: usize,
}

/// Start skew and overlap of one measurement's concurrent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRow {
    /// The backend.
    pub backend: BackendKind,
    /// The test.
    pub test: Test,
    /// The resource.
    pub resource: Resource,
    /// Fleet size.
    pub n: usize,
    /// Network samples: the path, as in [`PathRow::path`].
    pub path: Option<String>,
    /// How many samples.
    pub samples: usize,
    /// Largest |start − common instant| over the instances, s.
    pub max_abs_skew_s: f64,
    /// Largest clock-mapping error bound, s.
    pub max_clock_err_s: f64,
    /// Lowest overlap of a run.
    pub min_overlap: f64,
    /// Samples flagged `low_overlap` (overlap under 95 %).
    pub low_overlap: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
/// The conditions figures were measured under, for the report: network paths and start sync.
pub struct Conditions {
    /// One per backend, test, size and path.
    pub paths: Vec<PathRow>,
    /// One per backend, test, resource and size.
    pub sync: Vec<SyncRow>,
}

/// Whether `s` is a second reference: a local-path network sample of a backend that also
/// has bridged network samples.
fn second_reference(s: &BenchSample, bridged: &[BackendKind]) -> bool {
    s.net_path.is_some_and(|p| p.is_local()) && bridged.contains(&s.backend)
}

/// Splits the samples into the figures' series and the second references, and summarises
/// the conditions of all of them.
pub fn split(bench: Vec<BenchSample>) -> (Vec<BenchSample>, Conditions) {
    let mut bridged: Vec<BackendKind> = bench
        .iter()
        .filter(|s| s.net_path.is_some_and(|p| !p.is_local()))
        .map(|s| s.backend)
        .collect();
    bridged.dedup();
    // (backend, test, n, path, unit) → (in the figures, values).
    type PathKey = (BackendKind, Test, usize, String, String);
    // (backend, test, resource, n, path) → samples.
    type SyncKey = (BackendKind, Test, Resource, usize, Option<String>);
    let mut paths: BTreeMap<PathKey, (bool, Vec<f64>)> = BTreeMap::new();
    let mut sync: BTreeMap<SyncKey, Vec<&BenchSample>> = BTreeMap::new();
    for s in &bench {
        let label = s.path_label();
        if let Some(l) = &label {
            let e = paths
                .entry((s.backend, s.test, s.n, l.clone(), s.unit.clone()))
                .or_insert((!second_reference(s, &bridged), vec![]));
            e.1.push(s.value);
        }
        if s.sync.is_some() {
            sync.entry((s.backend, s.test, s.resource, s.n, label)).or_default().push(s);
        }
    }
    let conditions = Conditions {
        paths: paths
            .into_iter()
            .map(|((backend, test, n, path, unit), (in_figures, v))| PathRow {
                backend,
                test,
                n,
                path,
                in_figures,
                unit,
                mean: v.iter().sum::<f64>() / v.len() as f64,
                min: v.iter().copied().fold(f64::INFINITY, f64::min),
                max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                samples: v.len(),
            })
            .collect(),
        sync: sync
            .into_iter()
            .map(|((backend, test, resource, n, path), ss)| {
                let y: Vec<_> = ss.iter().filter_map(|s| s.sync).collect();
                SyncRow {
                    backend,
                    test,
                    resource,
                    n,
                    path,
                    samples: y.len(),
                    max_abs_skew_s: y.iter().map(|y| y.start_skew_s.abs()).fold(0.0, f64::max),
                    max_clock_err_s: y.iter().map(|y| y.clock_err_s).fold(0.0, f64::max),
                    min_overlap: y.iter().map(|y| y.overlap).fold(1.0, f64::min),
                    low_overlap: y.iter().filter(|y| y.low_overlap).count(),
                }
            })
            .collect(),
    };
    let figures = bench.into_iter().filter(|s| !second_reference(s, &bridged)).collect();
    (figures, conditions)
}

fn test_name(t: Test) -> &'static str {
    match t {
        Test::Overhead => "overhead",
        Test::Linearity => "linearity",
        Test::Isolation => "isolation",
        Test::Ring => "ring",
        Test::RingLatency => "ring latency",
    }
}

/// The report's two tables (empty when no sample carries these conditions; a maud
/// template, every string escaped).
pub fn html(c: &Conditions) -> maud::Markup {
    let low: usize = c.sync.iter().map(|r| r.low_overlap).sum();
    maud::html! {
        @if !c.paths.is_empty() {
            h2 { "Network paths" }
            p {
                "The path each network figure crossed and its MTU (host side of the guest's link). \
                 Figures and overheads use each backend's own path; rows marked " em { "second reference" } " (native on loopback, ns sharing one stack \
                 next to its veth) are shown here only. See docs/methodology.md."
            }
            table {
                tr {
                    th { "backend" } th { "test" } th { "n" } th { "path" } th { "mean" } th { "min–max" } th { "samples" } th {}
                }
                @for r in &c.paths {
                    tr {
                        td { (r.backend) }
                        td { (test_name(r.test)) }
                        td { (r.n) }
                        td { (r.path) }
                        td { (format!("{:.1}", r.mean)) " " (r.unit) }
                        td { (format!("{:.1}–{:.1}", r.min, r.max)) }
                        td { (r.samples) }
                        td { @if !r.in_figures { "second reference" } }
                    }
                }
            }
        }
        @if !c.sync.is_empty() {
            h2 { "Concurrent runs: start skew and overlap" }
            p {
                "Every concurrent run starts on one instant sent ahead; skew is an instance's \
                 start minus that instant (host clock, ± the clock error), overlap the fraction of the span from the first start to the first end \
                 during which all instances ran (docs/methodology.md). Samples under 95 % overlap are flagged: " strong { (low) } " here."
            }
            table {
                tr {
                    th { "backend" } th { "test" } th { "resource" } th { "n" } th { "path" } th { "samples" } th { "max |skew| (ms)" }
                    th { "clock error (ms)" } th { "min overlap" } th { "flagged (< 95 %)" }
                }
                @for r in &c.sync {
                    tr {
                        td { (r.backend) }
                        td { (test_name(r.test)) }
                        td { (r.resource.name()) }
                        td { (r.n) }
                        td { (r.path.as_deref().unwrap_or_default()) }
                        td { (r.samples) }
                        td { (format!("{:.3}", r.max_abs_skew_s * 1e3)) }
                        td { (format!("{:.3}", r.max_clock_err_s * 1e3)) }
                        td { (format!("{:.1}", r.min_overlap * 100.0)) " %" }
                        td { @if r.low_overlap > 0 { strong { (r.low_overlap) } } @else { "0" } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlab::NetPath;
    use crate::suite::StartSync;

    fn net(backend: BackendKind, path: NetPath, mtu: u32, value: f64) -> BenchSample {
        let s = crate::suite::testing::sample(
            backend,
            Test::Overhead,
            Resource::Network,
            1,
            0,
            0,
            0,
            value,
        );
        BenchSample {
            elapsed_s: 1.0,
            params: "ms=200 msg=65536".into(),
            net_path: Some(path),
            mtu: Some(mtu),
            ..s
        }
    }

    #[test]
    fn local_paths_beside_bridged_ones_are_second_references() {
        let samples = vec![
            net(BackendKind::Native, NetPath::VethBridge, 1500, 1000.0),
            net(BackendKind::Native, NetPath::Loopback, 65536, 3000.0),
            net(BackendKind::Native, NetPath::Loopback, 65536, 5000.0),
            net(BackendKind::Ns, NetPath::HostStack, 65536, 2900.0),
            net(BackendKind::Uml, NetPath::TapBridge, 1500, 100.0),
        ];
        let (figures, c) = split(samples);
        // Native's loopback leaves the figures; ns's host-stack stays (its only path here).
        assert_eq!(figures.len(), 3);
        assert!(figures.iter().all(|s| s.net_path != Some(NetPath::Loopback)));
        let lo = c.paths.iter().find(|r| r.path == "loopback, MTU 65536").unwrap();
        assert_eq!(
            (lo.in_figures, lo.samples, lo.mean, lo.min, lo.max),
            (false, 2, 4000.0, 3000.0, 5000.0)
        );
        assert!(c.paths.iter().find(|r| r.backend == BackendKind::Ns).unwrap().in_figures);
        assert!(c.sync.is_empty());
        let h = html(&c).into_string();
        assert!(
            h.contains("second reference")
                && h.contains("veth+bridge, MTU 1500")
                && !h.contains("start skew")
        );
    }

    #[test]
    fn sync_rows_summarise_skew_overlap_and_flags() {
        let y = |skew: f64, overlap: f64| StartSync {
            start_skew_s: skew,
            clock_err_s: 0.0002,
            overlap,
            low_overlap: overlap < 0.95,
        };
        let mut a = net(BackendKind::Uml, NetPath::TapBridge, 1500, 100.0);
        a.test = Test::Ring;
        a.sync = Some(y(0.004, 0.99));
        let mut b = a.clone();
        b.guest = 1;
        b.sync = Some(y(-0.0001, 0.90));
        let (_, c) = split(vec![a, b]);
        let r = &c.sync[0];
        assert_eq!(
            (r.samples, r.low_overlap, r.min_overlap, r.max_abs_skew_s),
            (2, 1, 0.90, 0.004)
        );
        assert!(html(&c).into_string().contains("<strong>1</strong>"));
    }
}
