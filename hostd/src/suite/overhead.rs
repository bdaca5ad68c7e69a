//! Overhead (paper II.A.1): T_avn is the benchmark's time in one guest while n − 1 other
//! guests idle; O_vn = T_avn − T_a against the host's T_a, and O_v = O_v1. T_a itself is
//! the native backend's n = 1 measurement (the agent as a plain host process).

use std::time::Duration;

use vb_protocol::bench::{BenchRequest, Resource};

use super::{run_together, samples_of, spec_for, BenchSample, Starter, Targets, Test, Workloads};
use crate::fleet::Fleet;

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
    let req = BenchRequest { spec: spec_for(resource, w, fleet.backend, t), instances: 1, start_at_ns: None };
    let net = fleet.net_label();
    let mut out = Vec::new();
    let mut starter = Starter::default();
    for i in 0..warmup + reps {
        let r = run_together(&[(g, req.clone())], timeout, &mut starter).await.remove(0)?;
        if i >= warmup {
            out.extend(samples_of(fleet.backend, Test::Overhead, resource, &w.params(resource), fleet.guests.len(), i - warmup, g.spec.index, &r, net));
        }
    }
    Ok(out)
}
