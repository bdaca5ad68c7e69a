//! Linearity (paper II.A.2): the same benchmark in all n guests at once. With a constant
//! virtualization cost the slowest guest's time is affine in n: t_max = O_v + t·n on the
//! paper's one-CPU host. On c cores a CPU-bound job gets min(1, c/n) of a core, so the
//! reference becomes t_max = O_v + t·max(1, n/c); a single shared device (disk, network)
//! keeps t·n. `reference` computes it; the report draws it next to the measurements.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::{BenchRequest, Resource};

use super::step::Step;
use super::{guest_spec, suite_metric, BenchSample, Cpus, StepPlan, Test};
use crate::fleet::Fleet;
use crate::stats::Stat;

/// Runs the linearity test of `resource` on `fleet`: every guest at once, repeatedly.
pub async fn measure(fleet: &Fleet, p: &StepPlan<'_>) -> Result<Vec<BenchSample>, String> {
    let StepPlan { resource, workloads: w, targets: t, warmup, reps, timeout } = *p;
    let jobs: Vec<_> = fleet
        .guests
        .iter()
        .map(|g| {
            (
                g,
                BenchRequest {
                    spec: guest_spec(resource, w, fleet.backend, g, t),
                    instances: 1,
                    start_at_ns: None,
                },
            )
        })
        .collect();
    let readers: Vec<_> = fleet.guests.iter().collect();
    let mut step = Step::new(fleet, Test::Linearity, resource, w, timeout);
    let n = fleet.guests.len();
    let mut out = Vec::new();
    for i in 0..warmup + reps {
        let run = step.run(&jobs, &readers).await?;
        if i < warmup {
            continue;
        }
        for (g, r) in fleet.guests.iter().zip(&run.answers) {
            // One guest failing its run fails the point: a partial max would flatter it.
            let r = r.as_ref().map_err(String::clone)?;
            out.extend(step.samples(&run, n, i - warmup, g.spec.index, r));
        }
    }
    Ok(super::place(out, fleet))
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

/// One fleet size's linearity figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearityPoint {
    /// Fleet size.
    pub n: usize,
    /// Over all guests and repetitions.
    pub value: Stat,
    /// Mean over repetitions of the slowest guest's time (lowest bandwidth for network).
    pub worst: f64,
    /// The affine reference for this backend: O_v + T_a·max(1, n/capacity) (network:
    /// B_av / max(1, n/capacity)).
    pub reference: Option<f64>,
    /// The host CPUs the guests had, from which the capacity comes (absent in reports
    /// older than the field).
    #[serde(default)]
    pub cpus: Option<Cpus>,
    #[serde(default)]
    /// Jobs the resource serves at full speed at once, from `cpus`.
    pub capacity: Option<f64>,
}

/// One backend's linearity points for one resource and workload (`samples`: its linearity
/// samples). `ta`: the host's T_a (B_a); `t_av`: this backend's T_av1 (B_av1), so that
/// O_v = t_av − ta. The capacity comes from the CPUs the samples recorded their guests had,
/// `host_cpus` standing in where they did not.
pub fn analyse(
    samples: &[&BenchSample],
    ta: Option<f64>,
    t_av: Option<f64>,
    host_cpus: usize,
) -> Vec<LinearityPoint> {
    let mut by_n: BTreeMap<usize, Vec<&BenchSample>> = BTreeMap::new();
    for s in samples {
        by_n.entry(s.n).or_default().push(s);
    }
    by_n.into_iter()
        .filter_map(|(n, ss)| {
            let (_, unit, higher) = suite_metric(ss[0]);
            let resource = ss[0].resource;
            let value = Stat::of(&ss.iter().map(|s| suite_metric(s).0).collect::<Vec<_>>(), unit)?;
            let mut per_rep: BTreeMap<u32, f64> = BTreeMap::new();
            for s in &ss {
                let m = suite_metric(s).0;
                let e = per_rep.entry(s.rep).or_insert(if higher { f64::INFINITY } else { 0.0 });
                *e = if higher { e.min(m) } else { e.max(m) };
            }
            let worst = per_rep.values().sum::<f64>() / per_rep.len() as f64;
            let cpus = Cpus::of(&ss, host_cpus);
            let cap = capacity(resource, cpus.count);
            let reference = match (ta, t_av) {
                (Some(ta), Some(tav)) if !higher => Some(reference(tav - ta, ta, n, cap)),
                (_, Some(bav)) if higher => Some(bav / (n as f64 / cap).max(1.0)),
                _ => None,
            };
            Some(LinearityPoint {
                n,
                value,
                worst,
                reference,
                cpus: Some(cpus),
                capacity: Some(cap),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::suite::testing::sample;

    #[test]
    fn analyse_takes_the_capacity_from_the_guests_cpuset() {
        // T_a = 2 s, T_av = 2.5 s (O_v = 0.5). n = 4 guests on a 4-CPU host; two repetitions.
        let mut v = Vec::new();
        for rep in 0..2 {
            for g in 0..4 {
                v.push(sample(
                    BackendKind::Uml,
                    Test::Linearity,
                    Resource::Cpu,
                    4,
                    rep,
                    g,
                    0,
                    2.5 + g as f64 * 0.1 + rep as f64,
                ));
            }
        }
        let refs: Vec<&BenchSample> = v.iter().collect();
        // Not recorded: the host's 4 CPUs stand in, so 4 guests run in parallel: 0.5 + 2.
        let p = &analyse(&refs, Some(2.0), Some(2.5), 4)[0];
        assert_eq!(p.cpus, Some(Cpus { count: 4, recorded: false }));
        assert!((p.reference.unwrap() - 2.5).abs() < 1e-12);
        // The slowest guest: 2.8 then 3.8, mean 3.3; the mean over all: 3.15.
        assert!((p.worst - 3.3).abs() < 1e-12 && (p.value.mean - 3.15).abs() < 1e-12);
        // Pinned to one CPU (cpuset "0"): the paper's O_v + T_a·n = 0.5 + 8.
        for s in &mut v {
            s.cpus = Some(1);
        }
        let refs: Vec<&BenchSample> = v.iter().collect();
        let p = &analyse(&refs, Some(2.0), Some(2.5), 4)[0];
        assert_eq!((p.cpus, p.capacity), (Some(Cpus { count: 1, recorded: true }), Some(1.0)));
        assert!((p.reference.unwrap() - 8.5).abs() < 1e-12);
        // Two CPUs: 0.5 + 2·4/2.
        for s in &mut v {
            s.cpus = Some(2);
        }
        let refs: Vec<&BenchSample> = v.iter().collect();
        assert!(
            (analyse(&refs, Some(2.0), Some(2.5), 4)[0].reference.unwrap() - 4.5).abs() < 1e-12
        );
        // No T_av: no reference.
        assert_eq!(analyse(&refs, Some(2.0), None, 4)[0].reference, None);
    }

    #[test]
    fn network_reference_divides_the_bandwidth() {
        // B_av = 900 MB/s; 3 guests share one path: 300 each; the worst is the lowest.
        let v: Vec<BenchSample> = (0..3)
            .map(|g| {
                sample(
                    BackendKind::Oci,
                    Test::Linearity,
                    Resource::Network,
                    3,
                    0,
                    g,
                    0,
                    250.0 + 50.0 * g as f64,
                )
            })
            .collect();
        let p = &analyse(&v.iter().collect::<Vec<_>>(), Some(1000.0), Some(900.0), 8)[0];
        assert!((p.reference.unwrap() - 300.0).abs() < 1e-9 && (p.worst - 250.0).abs() < 1e-12);
    }

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
