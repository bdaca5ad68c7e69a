//! A run's startup and memory summary, rebuilt from its records.

use super::*;

/// A run's startup and memory summary from its records: per fleet (backend, n, mode),
/// T_startup = max ready time over the guests that came up ([`FleetBoot::t_startup`]), the
/// ready-time and guest-boot distributions and M_used (the fleet's last memory record), and
/// per backend and mode the fit M_used(n) = n·M_VM + M_tool ([`crate::boot::summarise`]).
pub fn analyse(
    provenance: crate::provenance::Provenance,
    startups: Vec<StartupSample>,
    memory: Vec<MemorySample>,
    failures: Vec<(BackendKind, usize, StartMode, GuestFailure)>,
) -> crate::boot::BootSummary {
    type Fleet = (Vec<StartupSample>, Vec<GuestFailure>, Option<MemorySample>);
    let mut fleets: std::collections::BTreeMap<(BackendKind, usize, StartMode), Fleet> =
        Default::default();
    for s in startups {
        fleets.entry((s.backend, s.n, s.mode)).or_default().0.push(s);
    }
    for (backend, n, mode, f) in failures {
        fleets.entry((backend, n, mode)).or_default().1.push(f);
    }
    for m in memory {
        let k = (m.backend, m.n, m.mode);
        fleets.entry(k).or_default().2 = Some(m);
    }
    let rows = fleets
        .into_iter()
        .map(|((backend, n, mode), (startups, failures, memory))| {
            // The fleet's residency: every sample of it carries the same.
            let residency = startups.first().and_then(|s| s.residency.clone());
            crate::boot::row(&FleetBoot {
                backend,
                n,
                mode,
                startups,
                failures,
                memory,
                teardown_clean: 0,
                teardown_killed: 0,
                residency,
                // Not a sample record: boot.json keeps it.
                reach: None,
            })
        })
        .collect();
    crate::boot::summarise(provenance, rows)
}

#[cfg(test)]
mod analyse_tests {
    use super::*;
    use crate::fleet::FailureKind;

    fn up(
        backend: BackendKind,
        n: usize,
        mode: StartMode,
        index: usize,
        ready_s: f64,
    ) -> StartupSample {
        StartupSample {
            backend,
            n,
            mode,
            index,
            ready_s,
            own_s: ready_s,
            guest_boot_s: Some(ready_s / 2.0),
            guest_kernel_s: None,
            residency: None,
            image_copies: false,
            provenance: String::new(),
        }
    }

    fn mem(backend: BackendKind, n: usize, mode: StartMode, m_used_kib: i64) -> MemorySample {
        MemorySample {
            backend,
            n,
            mode,
            ready: n,
            used_before_kib: 0,
            used_after_kib: m_used_kib.max(0) as u64,
            m_used_kib,
            settle_s: 1.0,
            guests: vec![],
            hostd_pss_kib: 0,
            checks: Default::default(),
            provenance: String::new(),
        }
    }

    #[test]
    fn t_startup_and_the_memory_fit() {
        let (u, c, h) = (BackendKind::Uml, StartMode::Cold, StartMode::Hot);
        let mut s = vec![
            up(u, 1, c, 0, 0.8),
            up(u, 2, c, 0, 1.0),
            up(u, 2, c, 1, 1.5),
            up(u, 1, h, 0, 0.3),
        ];
        s.extend((0..4).map(|i| up(u, 4, c, i, 1.0 + i as f64)));
        // M_used(n) = 20 MiB·n + 100 MiB, exactly, cold.
        let m = vec![mem(u, 1, c, 120 * 1024), mem(u, 2, c, 140 * 1024), mem(u, 4, c, 180 * 1024)];
        let f = GuestFailure {
            index: 2,
            name: "g2".into(),
            kind: FailureKind::Timeout,
            error: "x".into(),
            console_tail: None,
        };
        let sum = analyse(
            crate::provenance::Provenance::collect(Default::default()),
            s,
            m,
            vec![(u, 3, c, f)],
        );
        let row = |n: usize, mode: StartMode| {
            sum.rows.iter().find(|r| r.n == n && r.mode == mode).unwrap()
        };
        assert_eq!(row(2, c).t_startup_s, Some(1.5));
        assert_eq!(row(4, c).t_startup_s, Some(4.0));
        assert_eq!((row(4, c).ready, row(4, c).failed), (4, 0));
        assert!((row(4, c).ready_times.as_ref().unwrap().mean - 2.5).abs() < 1e-12);
        assert!((row(4, c).guest_boot.as_ref().unwrap().median - 1.25).abs() < 1e-12);
        assert_eq!(row(1, h).t_startup_s, Some(0.3));
        assert_eq!(row(1, h).m_used_mib, None);
        // A fleet where no guest came up: no T_startup, one failure.
        assert_eq!((row(3, c).t_startup_s, row(3, c).ready, row(3, c).failed), (None, 0, 1));
        let fit = sum.memory_fit["uml cold"];
        assert!(
            (fit.slope - 20.0).abs() < 1e-9
                && (fit.intercept - 100.0).abs() < 1e-9
                && fit.points == 3,
            "{fit:?}"
        );
        // One size hot: no fit.
        assert!(!sum.memory_fit.contains_key("uml hot"));
    }
}
