//! Overhead (paper II.A.1): T_avn is the benchmark's time in one guest while n − 1 other
//! guests idle; O_vn = T_avn − T_a against the host's T_a, and O_v = O_v1. T_a itself is
//! the native backend's n = 1 measurement (the agent as a plain host process).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::{BenchRequest, Resource};

use super::{
    before_reads, guest_spec, mark_reads, run_together, samples_of, suite_metric, BenchSample,
    Starter, Targets, Test, Workloads,
};
use crate::fleet::Fleet;
use crate::stats::Stat;

/// Runs the benchmark of `resource` in the fleet's first guest only, `warmup` discarded
/// runs then `reps` counted ones, with every other guest of the fleet idle.
pub async fn measure(
    fleet: &Fleet,
    resource: Resource,
    w: &Workloads,
    t: &Targets,
    warmup: u32,
    reps: u32,
    timeout: Duration,
) -> Result<Vec<BenchSample>, String> {
    let g = fleet.guests.first().ok_or("no ready guest")?;
    let req = BenchRequest {
        spec: guest_spec(resource, w, fleet.backend, g, t),
        instances: 1,
        start_at_ns: None,
    };
    let net = fleet.net_label();
    let mut out = Vec::new();
    let mut starter = Starter::default();
    for i in 0..warmup + reps {
        // A disk read starts with the guest's data evicted from the host cache, every time.
        let preps = before_reads(fleet.backend, resource, &[g])?;
        let r = run_together(&[(g, req.clone())], timeout, &mut starter).await.remove(0)?;
        if i >= warmup {
            let mut s = samples_of(
                fleet.backend,
                Test::Overhead,
                resource,
                &w.params(resource),
                fleet.guests.len(),
                i - warmup,
                g.spec.index,
                &r,
                net,
            );
            mark_reads(&mut s, preps.as_deref());
            out.extend(s);
        }
    }
    Ok(super::place(out, fleet))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverheadPoint {
    pub n: usize,
    /// T_avn (or the bandwidth for network).
    pub value: Stat,
    /// O_vn = T_avn − T_a (for network: B_a − B_avn, the bandwidth lost).
    pub overhead: Option<f64>,
}

/// T_a: the host's figure, from the native backend's n = 1 overhead samples of one workload.
pub fn baseline(samples: &[&BenchSample]) -> Option<Stat> {
    let unit = samples.first().map(|s| suite_metric(s).1)?;
    Stat::of(&samples.iter().map(|s| suite_metric(s).0).collect::<Vec<_>>(), unit)
}

/// One backend's overhead points for one resource and workload (`samples`: its overhead
/// samples), per n: T_avn over every counted repetition and O_vn = T_avn − T_a against the
/// host's mean `ta` (for the network, where more is better, B_a − B_avn).
pub fn analyse(samples: &[&BenchSample], ta: Option<f64>) -> Vec<OverheadPoint> {
    let mut by_n: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for s in samples {
        by_n.entry(s.n).or_default().push(suite_metric(s).0);
    }
    let Some((_, unit, higher)) = samples.first().map(|s| suite_metric(s)) else {
        return Vec::new();
    };
    by_n.into_iter()
        .filter_map(|(n, v)| {
            let value = Stat::of(&v, unit)?;
            let overhead = ta.map(|ta| if higher { ta - value.mean } else { value.mean - ta });
            Some(OverheadPoint { n, value, overhead })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::suite::testing::sample;

    #[test]
    fn overhead_is_the_difference_with_the_host() {
        // T_a = 2 s (host runs 1.9, 2.1); the guest takes 2.5, 2.7 s at n = 1 and 3.0 s at n = 5.
        let host = [
            sample(BackendKind::Native, Test::Overhead, Resource::Cpu, 1, 0, 0, 0, 1.9),
            sample(BackendKind::Native, Test::Overhead, Resource::Cpu, 1, 1, 0, 0, 2.1),
        ];
        let ta = baseline(&host.iter().collect::<Vec<_>>()).unwrap();
        assert!((ta.mean - 2.0).abs() < 1e-12 && ta.samples == 2);
        let g = [
            sample(BackendKind::Uml, Test::Overhead, Resource::Cpu, 1, 0, 0, 0, 2.5),
            sample(BackendKind::Uml, Test::Overhead, Resource::Cpu, 1, 1, 0, 0, 2.7),
            sample(BackendKind::Uml, Test::Overhead, Resource::Cpu, 5, 0, 0, 0, 3.0),
        ];
        let pts = analyse(&g.iter().collect::<Vec<_>>(), Some(ta.mean));
        assert_eq!(pts.iter().map(|p| p.n).collect::<Vec<_>>(), [1, 5]);
        assert!(
            (pts[0].value.mean - 2.6).abs() < 1e-12
                && (pts[0].overhead.unwrap() - 0.6).abs() < 1e-12
        );
        assert!((pts[1].overhead.unwrap() - 1.0).abs() < 1e-12 && pts[1].value.samples == 1);
        // Without a host baseline there is no overhead, only T_avn.
        assert_eq!(analyse(&g.iter().collect::<Vec<_>>(), None)[0].overhead, None);
        assert!(analyse(&[], Some(1.0)).is_empty());
    }

    #[test]
    fn network_overhead_is_the_bandwidth_lost() {
        let g = [
            sample(BackendKind::Xen, Test::Overhead, Resource::Network, 1, 0, 0, 0, 800.0),
            sample(BackendKind::Xen, Test::Overhead, Resource::Network, 1, 1, 0, 0, 900.0),
        ];
        let pts = analyse(&g.iter().collect::<Vec<_>>(), Some(1000.0));
        assert_eq!(pts[0].value.unit, "MB/s");
        assert!((pts[0].overhead.unwrap() - 150.0).abs() < 1e-9);
    }
}
