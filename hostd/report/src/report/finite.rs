//! [`Report::non_finite`]: every figure of a report that is not a finite number, checked part
//! by part (startup, the suite's tests, users' commands, the ring).

use super::{Report, Stat};

/// The figures found not finite so far, each named with its value.
#[derive(Default)]
struct NonFinite(Vec<String>);

impl NonFinite {
    /// Records `what` (named only if needed) unless `v` is finite.
    fn value(&mut self, what: impl FnOnce() -> String, v: f64) {
        if !v.is_finite() {
            self.0.push(format!("{} = {v}", what()));
        }
    }

    /// Every number of statistic `s`, named `what` and the number's name.
    fn stat(&mut self, what: &str, s: &Stat) {
        let [lo, hi] = s.ci95.unwrap_or([s.mean; 2]);
        for (k, v) in [
            ("mean", s.mean),
            ("std_dev", s.std_dev),
            ("min", s.min),
            ("max", s.max),
            ("median", s.median),
            ("ci95 low", lo),
            ("ci95 high", hi),
        ] {
            self.value(|| format!("{what} {k}"), v);
        }
    }
}

impl Report {
    /// Every figure of the report that is not a finite number, named: none may be, whatever
    /// the samples held.
    pub fn non_finite(&self) -> Vec<String> {
        let mut bad = NonFinite::default();
        self.startup_non_finite(&mut bad);
        self.suite_non_finite(&mut bad);
        self.commands_non_finite(&mut bad);
        for (b, r) in &self.ring {
            bad.stat(&format!("ring {b} bandwidth"), &r.bandwidth);
            if let Some(l) = &r.latency {
                bad.stat(&format!("ring {b} latency"), l);
            }
        }
        bad.0
    }

    /// The startup table's figures and the memory fits.
    fn startup_non_finite(&self, bad: &mut NonFinite) {
        for r in &self.startup.rows {
            let at = format!("startup {} n={} {}", r.backend, r.n, r.mode.name());
            for (k, v) in [
                ("T_startup", r.t_startup_s),
                ("M_used", r.m_used_mib),
                ("cgroup/guest", r.per_guest_cgroup_mib),
                ("PSS/guest", r.per_guest_pss_mib),
            ] {
                if let Some(v) = v {
                    bad.value(|| format!("{at} {k}"), v);
                }
            }
            for (k, s) in [("ready time", &r.ready_times), ("guest boot", &r.guest_boot)] {
                if let Some(s) = s {
                    for (m, v) in
                        [("mean", s.mean), ("std_dev", s.std_dev), ("min", s.min), ("max", s.max)]
                    {
                        bad.value(|| format!("{at} {k} {m}"), v);
                    }
                }
            }
        }
        for (k, fit) in &self.startup.memory_fit {
            for (m, v) in
                [("slope", fit.slope), ("intercept", fit.intercept), ("residual", fit.residual_std)]
            {
                bad.value(|| format!("memory fit {k} {m}"), v);
            }
        }
    }

    /// The suite's figures: baselines, overhead, linearity and isolation.
    fn suite_non_finite(&self, bad: &mut NonFinite) {
        for (r, s) in &self.baseline {
            bad.stat(&format!("baseline {}", r.name()), s);
        }
        for (k, pts) in &self.overhead {
            for p in pts {
                bad.stat(&format!("overhead {k} n={}", p.n), &p.value);
                if let Some(o) = p.overhead {
                    bad.value(|| format!("overhead {k} n={} O_v", p.n), o);
                }
            }
        }
        for (k, pts) in &self.linearity {
            for p in pts {
                bad.stat(&format!("linearity {k} n={}", p.n), &p.value);
                bad.value(|| format!("linearity {k} n={} worst", p.n), p.worst);
                if let Some(r) = p.reference {
                    bad.value(|| format!("linearity {k} n={} reference", p.n), r);
                }
            }
        }
        for (k, i) in &self.isolation {
            for (m, v) in [
                ("guest1", i.guest1),
                ("guest2 a", i.guest2[0]),
                ("guest2 b", i.guest2[1]),
                ("capacity", i.capacity),
            ] {
                bad.value(|| format!("isolation {k} {m}"), v);
            }
        }
    }

    /// Users' commands timed as workloads: their baselines, overhead and linearity.
    fn commands_non_finite(&self, bad: &mut NonFinite) {
        for c in &self.commands {
            let at = format!("user workload {} {}", c.backend, c.name);
            if let Some(b) = &c.baseline {
                bad.stat(&format!("{at} T_a"), b);
            }
            for p in &c.overhead {
                bad.stat(&format!("{at} overhead n={}", p.n), &p.value);
                if let Some(o) = p.overhead {
                    bad.value(|| format!("{at} overhead n={} O_v", p.n), o);
                }
            }
            for p in &c.linearity {
                bad.stat(&format!("{at} linearity n={}", p.n), &p.value);
                bad.value(|| format!("{at} linearity n={} worst", p.n), p.worst);
                if let Some(r) = p.reference {
                    bad.value(|| format!("{at} linearity n={} reference", p.n), r);
                }
            }
        }
    }
}
