//! Overhead (paper II.A.1): T_avn is the benchmark's time in one guest while n − 1 other
//! guests idle; O_vn = T_avn − T_a against the host's T_a, and O_v = O_v1. T_a itself is
//! the native backend's n = 1 measurement (the agent as a plain host process).

use std::time::Duration;

use vb_protocol::bench::{BenchRequest, Resource};

use super::{before_reads, guest_spec, mark_reads, run_together, samples_of, BenchSample, Targets, Test, Workloads};
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
    let req = BenchRequest { spec: guest_spec(resource, w, fleet.backend, g, t), instances: 1 };
    let mut out = Vec::new();
    for i in 0..warmup + reps {
        // A disk read starts with the guest's data evicted from the host cache, every time.
        let preps = before_reads(fleet.backend, resource, &[g])?;
        let r = run_together(&[(g, req.clone())], timeout).await.remove(0)?;
        if i >= warmup {
            let mut s = samples_of(fleet.backend, Test::Overhead, resource, &w.params(resource), fleet.guests.len(), i - warmup, g.spec.index, &r);
            mark_reads(&mut s, preps.as_deref());
            out.extend(s);
        }
    }
    Ok(out)
}
