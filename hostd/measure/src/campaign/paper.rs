//! Where a campaign departs from the paper's method.

use super::*;

impl Campaign {
    /// Where this campaign departs from the paper's method (sizes, tests, resources, the
    /// memory working set against `llc`), one line each, identical departures of several
    /// backends on one line. Empty for a campaign at the paper's sizes.
    pub fn departures_from_paper(&self, llc: Option<fidelity::Llc>) -> Vec<String> {
        use std::collections::BTreeMap;
        let plans = self.resolved_plans(llc);
        let mut out = Vec::new();
        // (what, value) → backends
        let mut groups: BTreeMap<(u8, String), Vec<&'static str>> = BTreeMap::new();
        let max = |s: &[usize]| s.last().copied().unwrap_or(0);
        for p in &plans {
            let name = p.kind.name();
            let top = max(&p.overhead_sizes);
            if top < fidelity::PAPER_MAX_N {
                groups
                    .entry((
                        0,
                        format!(
                            "overhead and linearity up to n = {top} (paper: 1 to {})",
                            fidelity::PAPER_MAX_N
                        ),
                    ))
                    .or_default()
                    .push(name);
            }
            let mem_top = max(&p.memory_sizes);
            if self.resources.contains(&Resource::Memory) && mem_top < top {
                groups.entry((1, format!("memory overhead and linearity up to n = {mem_top}, where the working sets fit in host memory"))).or_default().push(name);
            }
            let mut st = max(&p.startup_sizes);
            if p.kind == BackendKind::Xen && self.xen.lab {
                st = st.min(self.xen.lab_max_guests);
            }
            if st < fidelity::PAPER_MAX_N {
                groups
                    .entry((
                        2,
                        format!("startup up to n = {st} (paper: up to {})", fidelity::PAPER_MAX_N),
                    ))
                    .or_default()
                    .push(name);
            }
            if p.ring_guests != fidelity::PAPER_RING && p.kind != BackendKind::Native {
                let what = if p.ring_guests == 0 {
                    "no ring test".to_string()
                } else {
                    format!("ring of {} guests", p.ring_guests)
                };
                groups
                    .entry((3, format!("{what} (paper: {})", fidelity::PAPER_RING)))
                    .or_default()
                    .push(name);
            }
        }
        for ((_, what), backends) in groups {
            out.push(format!("{what}: {}", backends.join(", ")));
        }
        if !self.isolation.enabled {
            out.push("no isolation test (paper: every resource)".into());
        }
        let missing: Vec<&str> = Resource::ALL
            .iter()
            .filter(|r| !self.resources.contains(r))
            .map(|r| r.name())
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "resources left out: {} (paper: cpu, memory, disk, network)",
                missing.join(", ")
            ));
        }
        if self.guest.pin_one_core {
            out.push("guests pinned to one CPU, as the paper's one-CPU host".into());
        }
        if let Some(p) = plans.first().filter(|_| self.resources.contains(&Resource::Memory)) {
            let l = llc.unwrap_or(fidelity::LLC_FALLBACK);
            if fidelity::cache_resident(p.workloads.mem_n, l) {
                let params = p.workloads.params(Resource::Memory);
                // Worded as fidelity::report_notes words a sample's, so the report shows it once.
                out.push(format!(
                    "memory benchmark ({params}): {}",
                    fidelity::memory_label(&params, l).unwrap_or_default()
                ));
            }
        }
        out.extend(self.notes.iter().cloned());
        out
    }
}
