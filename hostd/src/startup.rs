//! Concurrent startup (paper II.B.1, IV.A.1) and, on the same booted fleet, memory
//! occupation (II.B.2). T_startup(n) = max(startup[1..n]) where startup[i] runs from the
//! fleet's start request to guest i's ready message on the host clock. **Cold**: the page
//! cache is dropped first (images come from disk); **hot**: the same fleet again with the
//! images resident.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{AnyBackend, Backend, BackendKind};
use crate::fleet::{self, FleetConfig, FleetEvent, GuestFailure, Teardown};
use crate::memory::{self, GuestMemory};
use crate::runstate::RunState;
use crate::stats::Summary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StartMode {
    /// Page cache emptied of what the launch reads before the fleet starts.
    Cold,
    /// Right after a cold start of the same fleet: what the launch reads is cached.
    Hot,
}

impl StartMode {
    pub fn name(self) -> &'static str {
        match self {
            StartMode::Cold => "cold",
            StartMode::Hot => "hot",
        }
    }
}

/// One guest's startup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartupSample {
    pub backend: BackendKind,
    pub n: usize,
    pub mode: StartMode,
    pub index: usize,
    /// Fleet start request → this guest's hello, host clock, seconds.
    pub ready_s: f64,
    /// This guest's own launch call → its hello (excludes waiting for a parallelism slot).
    pub own_s: f64,
    /// The guest kernel's uptime at ready (CLOCK_BOOTTIME), for backends with a kernel of
    /// their own.
    pub guest_boot_s: Option<f64>,
    /// Of which the kernel's part (until init started), where the guest could tell.
    pub guest_kernel_s: Option<f64>,
    /// Id of the provenance it was measured under ([`crate::provenance::Provenance::id`]);
    /// empty in older results (their `provenance.json`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provenance: String,
}

/// The fleet's memory when every guest was booted and idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    pub backend: BackendKind,
    pub n: usize,
    pub mode: StartMode,
    /// Ready guests the sample covers (n minus failures).
    pub ready: usize,
    pub used_before_kib: u64,
    pub used_after_kib: u64,
    /// M_used(n) = used_after − used_before (can be slightly negative on a noisy host).
    pub m_used_kib: i64,
    pub settle_s: f64,
    pub guests: Vec<GuestMemory>,
    /// hostd's own PSS while the fleet ran (part of M_tool).
    pub hostd_pss_kib: u64,
    /// Id of the provenance it was measured under ([`crate::provenance::Provenance::id`]);
    /// empty in older results (their `provenance.json`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provenance: String,
}

/// Everything one fleet boot produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetBoot {
    pub backend: BackendKind,
    pub n: usize,
    pub mode: StartMode,
    pub startups: Vec<StartupSample>,
    pub failures: Vec<GuestFailure>,
    pub memory: Option<MemorySample>,
    pub teardown_clean: usize,
    pub teardown_killed: usize,
}

impl FleetBoot {
    /// T_startup(n): the last ready guest, seconds. None if no guest became ready.
    pub fn t_startup(&self) -> Option<f64> {
        self.startups.iter().map(|s| s.ready_s).fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
    }

    pub fn ready_summary(&self) -> Option<Summary> {
        Summary::of(format!("startup_{}", self.mode.name()), "s", self.startups.iter().map(|s| s.ready_s).collect())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("dropping the page cache for a cold start (needs root): {0}")]
    DropCaches(std::io::Error),
    #[error("reading /proc/meminfo")]
    Meminfo,
    #[error("reading the hypervisor's memory accounting: {0}")]
    Hypervisor(String),
    // Not a `source`: the message already says it, and error chains would say it twice.
    #[error("starting the fleet: {0}")]
    Network(crate::fleet::FleetError),
}

impl From<crate::fleet::FleetError> for StartupError {
    fn from(e: crate::fleet::FleetError) -> Self {
        StartupError::Network(e)
    }
}

/// Flushes dirty pages and drops the page cache, dentries and inodes.
pub fn drop_caches() -> std::io::Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}

/// The machine's used memory, KiB: the host kernel's (median of 5 readings) plus what a
/// hypervisor below it has handed out, so M_used includes guest RAM on every backend.
async fn machine_used_kib(backend: &AnyBackend) -> Result<u64, StartupError> {
    let host = memory::host_used_kib_median(5, Duration::from_millis(100)).await.ok_or(StartupError::Meminfo)?;
    Ok(host + backend.unseen_used_kib().await.map_err(StartupError::Hypervisor)?)
}

/// One startup sample per ready guest of a fleet of `n` started in `mode`, with the guest's
/// own clocks where it runs its own kernel.
pub fn startup_samples(kind: BackendKind, n: usize, mode: StartMode, fleet: &crate::fleet::Fleet) -> Vec<StartupSample> {
    let own_kernel = kind.own_kernel();
    fleet
        .guests
        .iter()
        .zip(&fleet.ready_at)
        .map(|(g, at)| {
            let c = &g.hello.clock;
            StartupSample {
                backend: kind,
                n,
                mode,
                index: g.spec.index,
                ready_s: at.as_secs_f64(),
                own_s: g.startup.as_secs_f64(),
                guest_boot_s: own_kernel.then_some(c.boottime_ns as f64 / 1e9),
                guest_kernel_s: if own_kernel { c.kernel_init_ns.or(c.agent_start_ns).map(|ns| ns as f64 / 1e9) } else { None },
                provenance: String::new(),
            }
        })
        .collect()
}

/// Boots a fleet, records startup and (after `settle`) memory, tears it down.
pub async fn boot_and_measure(
    backend: &AnyBackend,
    run: &RunState,
    cfg: &FleetConfig,
    mode: StartMode,
    settle: Duration,
    on_event: impl FnMut(FleetEvent),
) -> Result<FleetBoot, StartupError> {
    if mode == StartMode::Cold {
        drop_caches().map_err(StartupError::DropCaches)?;
    }
    let used_before = machine_used_kib(backend).await?;
    let fleet = fleet::start(backend, run, cfg, on_event).await?;
    let kind = backend.kind();
    let startups = startup_samples(kind, cfg.n, mode, &fleet);
    tokio::time::sleep(settle).await;
    let used_after = machine_used_kib(backend).await?;
    let memory = Some(MemorySample {
        backend: kind,
        n: cfg.n,
        mode,
        ready: fleet.guests.len(),
        used_before_kib: used_before,
        used_after_kib: used_after,
        m_used_kib: used_after as i64 - used_before as i64,
        settle_s: settle.as_secs_f64(),
        guests: fleet.guests.iter().map(|g| memory::guest_memory(&g.process)).collect(),
        hostd_pss_kib: memory::pss_kib(std::process::id()).unwrap_or(0),
        provenance: String::new(),
    });
    let mut failures = fleet.failures.clone();
    let Teardown { clean, killed, failed, .. } = fleet.teardown(backend, Duration::from_secs(10)).await;
    // Guests that became ready but died before the teardown.
    failures.extend(failed);
    Ok(FleetBoot { backend: kind, n: cfg.n, mode, startups, failures, memory, teardown_clean: clean, teardown_killed: killed })
}

/// A run's startup and memory summary from its records: per fleet (backend, n, mode),
/// T_startup = max ready time over the guests that came up ([`FleetBoot::t_startup`]), the
/// ready-time and guest-boot distributions and M_used (the fleet's last memory record), and
/// per backend and mode the fit M_used(n) = n·M_VM + M_tool ([`crate::bootrun::summarise`]).
pub fn analyse(
    provenance: crate::provenance::Provenance,
    startups: Vec<StartupSample>,
    memory: Vec<MemorySample>,
    failures: Vec<(BackendKind, usize, StartMode, GuestFailure)>,
) -> crate::bootrun::BootSummary {
    type Fleet = (Vec<StartupSample>, Vec<GuestFailure>, Option<MemorySample>);
    let mut fleets: std::collections::BTreeMap<(BackendKind, usize, StartMode), Fleet> = Default::default();
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
            crate::bootrun::row(&FleetBoot { backend, n, mode, startups, failures, memory, teardown_clean: 0, teardown_killed: 0 })
        })
        .collect();
    crate::bootrun::summarise(provenance, rows)
}

#[cfg(test)]
mod analyse_tests {
    use super::*;
    use crate::fleet::FailureKind;

    fn up(backend: BackendKind, n: usize, mode: StartMode, index: usize, ready_s: f64) -> StartupSample {
        StartupSample { backend, n, mode, index, ready_s, own_s: ready_s, guest_boot_s: Some(ready_s / 2.0), guest_kernel_s: None, provenance: String::new() }
    }

    fn mem(backend: BackendKind, n: usize, mode: StartMode, m_used_kib: i64) -> MemorySample {
        MemorySample { backend, n, mode, ready: n, used_before_kib: 0, used_after_kib: m_used_kib.max(0) as u64, m_used_kib, settle_s: 1.0, guests: vec![], hostd_pss_kib: 0, provenance: String::new() }
    }

    #[test]
    fn t_startup_and_the_memory_fit() {
        let (u, c, h) = (BackendKind::Uml, StartMode::Cold, StartMode::Hot);
        let mut s = vec![up(u, 1, c, 0, 0.8), up(u, 2, c, 0, 1.0), up(u, 2, c, 1, 1.5), up(u, 1, h, 0, 0.3)];
        s.extend((0..4).map(|i| up(u, 4, c, i, 1.0 + i as f64)));
        // M_used(n) = 20 MiB·n + 100 MiB, exactly, cold.
        let m = vec![mem(u, 1, c, 120 * 1024), mem(u, 2, c, 140 * 1024), mem(u, 4, c, 180 * 1024)];
        let f = GuestFailure { index: 2, name: "g2".into(), kind: FailureKind::Timeout, error: "x".into(), console_tail: None };
        let sum = analyse(crate::provenance::Provenance::collect(Default::default()), s, m, vec![(u, 3, c, f)]);
        let row = |n: usize, mode: StartMode| sum.rows.iter().find(|r| r.n == n && r.mode == mode).unwrap();
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
        assert!((fit.slope - 20.0).abs() < 1e-9 && (fit.intercept - 100.0).abs() < 1e-9 && fit.points == 3, "{fit:?}");
        // One size hot: no fit.
        assert!(!sum.memory_fit.contains_key("uml hot"));
    }
}
