//! Linearity (paper II.A.2): the same benchmark in all n guests at once. With a constant
//! virtualization cost the slowest guest's time is affine in n: t_max = O_v + t·n on the
//! paper's one-CPU host. On c cores a CPU-bound job gets min(1, c/n) of a core, so the
//! reference becomes t_max = O_v + t·max(1, n/c); a single shared device (disk, network)
//! keeps t·n. `reference` computes it; the report draws it next to the measurements.

use std::time::Duration;

use vb_protocol::bench::{BenchRequest, Resource};

use super::{before_reads, guest_spec, mark_reads, run_together, samples_of, BenchSample, Targets, Test, Workloads};
use crate::fleet::Fleet;

pub async fn measure(
    fleet: &Fleet,
    resource: Resource,
    w: &Workloads,
    t: &Targets,
    warmup: u32,
    reps: u32,
    timeout: Duration,
) -> Result<Vec<BenchSample>, String> {
    let jobs: Vec<_> =
        fleet.guests.iter().map(|g| (g, BenchRequest { spec: guest_spec(resource, w, fleet.backend, g, t), instances: 1 })).collect();
    let readers: Vec<_> = fleet.guests.iter().collect();
    let n = fleet.guests.len();
    let mut out = Vec::new();
    for i in 0..warmup + reps {
        let preps = before_reads(fleet.backend, resource, &readers)?;
        let results = run_together(&jobs, timeout).await;
        if i < warmup {
            continue;
        }
        for (g, r) in fleet.guests.iter().zip(results) {
            // One guest failing its run fails the point: a partial max would flatter it.
            let r = r?;
            let mut s = samples_of(fleet.backend, Test::Linearity, resource, &w.params(resource), n, i - warmup, g.spec.index, &r);
            mark_reads(&mut s, preps.as_deref());
            out.extend(s);
        }
    }
    Ok(out)
}

/// How many of the n concurrent jobs' work a resource can serve at once.
pub fn capacity(resource: Resource, cores: usize) -> f64 {
    match resource {
        // One single-threaded job per core.
        Resource::Cpu | Resource::Memory => cores as f64,
        // One disk, one network path: shared by everyone.
        Resource::Disk | Resource::Network => 1.0,
    }
}

/// The reference t_max(n) = O_v + t·max(1, n/capacity) for time-valued benchmarks.
pub fn reference(o_v: f64, t: f64, n: usize, capacity: f64) -> f64 {
    o_v + t * (n as f64 / capacity).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_matches_the_paper_on_one_core() {
        // Paper: t_max = O_v + t·n on a single CPU.
        assert_eq!(reference(0.5, 2.0, 10, 1.0), 20.5);
        // Two cores: the first two guests run in parallel.
        assert_eq!(reference(0.5, 2.0, 2, 2.0), 2.5);
        assert_eq!(reference(0.5, 2.0, 10, 2.0), 10.5);
        assert_eq!(capacity(Resource::Disk, 8), 1.0);
    }
}
