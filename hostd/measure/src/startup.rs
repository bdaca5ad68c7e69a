//! Concurrent startup (paper II.B.1, IV.A.1) and, on the same booted fleet, memory
//! occupation (II.B.2). T_startup(n) = max(startup[1..n]) where startup[i] runs from the
//! fleet's start request to guest i's ready message on the host clock. **Cold**: the page
//! cache is dropped and every file the launches read evicted, then checked with `mincore`
//! (`crate::coldstart`): a start is labelled cold only if none of it was resident;
//! **hot**: the same fleet again, every file the launches read read just before (and its
//! residency checked too). With per-guest image copies each
//! guest boots its own copy (the paper's setting).
//!
//! M_used is a host-wide delta that any other process disturbs: the host's used memory is
//! read several times over a window before the fleet (its noise floor) and again after the
//! fleet settled; M_used is the median of the repeated differences, bounded by the windows'
//! ranges, and cross-checked with the guests' cgroup charges plus hostd's own growth. tmpfs
//! scratch the fleet writes (console logs, runtime state) is measured and reported apart.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{AnyBackend, Backend, BackendKind, Images};
use crate::coldstart::{self, start_label, StartResidency};
use crate::fleet::{self, FleetConfig, FleetEvent, GuestFailure, Teardown};
use crate::memory::{self, GuestMemory};
use crate::runstate::RunState;
use crate::stats::Summary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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
    /// What the launches read and how much of it was in the page cache just before the
    /// fleet started (the same for every guest of the fleet). None: recorded before the
    /// check existed.
    #[serde(default)]
    pub residency: Option<StartResidency>,
    /// Whether the guest booted its own image copies.
    #[serde(default)]
    pub image_copies: bool,
}

impl StartupSample {
    /// What was measured: "cold" (nothing resident), "hot" (all resident), "warm" (between);
    /// see [`start_label`].
    pub fn label(&self) -> &'static str {
        start_label(self.mode, self.residency.as_ref())
    }
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
    /// The noise floor, repeats, cross-check and hostd's and the scratch's shares (absent
    /// from older samples).
    #[serde(flatten, default)]
    pub checks: MemoryChecks,
}

/// What makes M_used trustworthy on a shared host (issue 11 items 14–15).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryChecks {
    /// The host's used memory before the fleet, with no fleet: the noise floor's readings.
    #[serde(default)]
    pub before_readings_kib: Vec<u64>,
    /// The readings with the fleet booted and idle.
    #[serde(default)]
    pub after_readings_kib: Vec<u64>,
    /// M_used repeated (each later reading minus the floor's median); `m_used_kib` is their
    /// median.
    #[serde(default)]
    pub m_used_repeats_kib: Vec<i64>,
    /// How far M_used can be off from the host's own drift ([`memory::noise_bound_kib`]).
    #[serde(default)]
    pub noise_kib: Option<u64>,
    /// The guests' cgroup charges (as used memory counts them) plus hostd's RSS growth:
    /// M_used seen from inside. None when a guest had no cgroup.
    #[serde(default)]
    pub cross_check_kib: Option<i64>,
    /// hostd's RSS before the fleet and with it booted (its growth is part of M_tool).
    #[serde(default)]
    pub hostd_rss_before_kib: Option<u64>,
    #[serde(default)]
    pub hostd_rss_after_kib: Option<u64>,
    #[serde(default)]
    pub hostd_pss_before_kib: Option<u64>,
    /// tmpfs the fleet wrote (its scratch directory: console logs, sockets, runtime state),
    /// counted in the host's used memory but not the guests' own; None when the scratch
    /// directory is on a disk-backed file system.
    #[serde(default)]
    pub scratch_tmpfs_kib: Option<u64>,
}

impl MemorySample {
    /// M_used without the fleet's tmpfs scratch, KiB: what the fit and tables use.
    pub fn fleet_kib(&self) -> i64 {
        self.m_used_kib - self.checks.scratch_tmpfs_kib.unwrap_or(0) as i64
    }

    /// The repeated figures without the scratch (the one figure for older samples).
    pub fn fleet_repeats_kib(&self) -> Vec<i64> {
        let scratch = self.checks.scratch_tmpfs_kib.unwrap_or(0) as i64;
        if self.checks.m_used_repeats_kib.is_empty() {
            vec![self.fleet_kib()]
        } else {
            self.checks.m_used_repeats_kib.iter().map(|m| m - scratch).collect()
        }
    }

    /// hostd's RSS growth while the fleet booted, KiB.
    pub fn hostd_growth_kib(&self) -> Option<i64> {
        Some(self.checks.hostd_rss_after_kib? as i64 - self.checks.hostd_rss_before_kib? as i64)
    }

    /// Whether the host-wide figure and the cross-check disagree beyond the noise bound.
    pub fn disagrees(&self) -> bool {
        match (self.checks.cross_check_kib, self.checks.noise_kib) {
            (Some(c), Some(b)) => memory::disagree(self.fleet_kib(), c, b),
            _ => false,
        }
    }
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
    /// The launches' files' residency just before the fleet started.
    #[serde(default)]
    pub residency: Option<StartResidency>,
}

impl FleetBoot {
    /// T_startup(n): the last ready guest, seconds. None if no guest became ready.
    pub fn t_startup(&self) -> Option<f64> {
        self.startups
            .iter()
            .map(|s| s.ready_s)
            .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
    }

    /// "cold", "hot" or "warm", from the measured residency ([`start_label`]).
    pub fn label(&self) -> &'static str {
        start_label(self.mode, self.residency.as_ref())
    }

    pub fn ready_summary(&self) -> Option<Summary> {
        Summary::of(
            format!("startup_{}", self.mode.name()),
            "s",
            self.startups.iter().map(|s| s.ready_s).collect(),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("dropping the page cache for a cold start (needs root): {0}")]
    DropCaches(std::io::Error),
    #[error("checking what the launches read for a cold start: {0}")]
    Residency(coldstart::ColdError),
    #[error("making per-guest image copies: {0}")]
    Copies(coldstart::ColdError),
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

/// Readings of the machine's used memory taken over `window`, KiB: the host kernel's plus
/// what a hypervisor below it has handed out, so M_used includes guest RAM on every backend.
async fn machine_used_readings(
    backend: &AnyBackend,
    window: Duration,
) -> Result<Vec<u64>, StartupError> {
    let gap = (window / (READINGS as u32 - 1)).max(Duration::from_millis(100));
    let host = memory::host_used_readings(READINGS, gap).await.ok_or(StartupError::Meminfo)?;
    let unseen = backend.unseen_used_kib().await.map_err(StartupError::Hypervisor)?;
    Ok(host.into_iter().map(|h| h + unseen).collect())
}

/// Readings per window (noise floor; fleet idle).
const READINGS: usize = 5;

/// One startup sample per ready guest of a fleet of `n` started in `mode`, with the guest's
/// own clocks where it runs its own kernel.
pub fn startup_samples(
    kind: BackendKind,
    n: usize,
    mode: StartMode,
    fleet: &crate::fleet::Fleet,
) -> Vec<StartupSample> {
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
                guest_kernel_s: if own_kernel {
                    c.kernel_init_ns.or(c.agent_start_ns).map(|ns| ns as f64 / 1e9)
                } else {
                    None
                },
                provenance: String::new(),
                residency: None,
                image_copies: false,
            }
        })
        .collect()
}

/// Boots a fleet, records startup and (after `settle`) memory, tears it down. With
/// `copy_images`, each guest boots its own copies of these images (made under the run's
/// disk directory and removed after the fleet).
pub async fn boot_and_measure(
    backend: &AnyBackend,
    run: &RunState,
    cfg: &FleetConfig,
    mode: StartMode,
    settle: Duration,
    copy_images: Option<&Images>,
    on_event: impl FnMut(FleetEvent),
) -> Result<FleetBoot, StartupError> {
    let kind = backend.kind();
    let copies_dir = run.disk_dir().join(format!("images-{kind}-n{}-{}", cfg.n, mode.name()));
    let mut cfg = cfg.clone();
    if let Some(images) = copy_images {
        let made = coldstart::copy_images(backend, images, &copies_dir, cfg.n);
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&copies_dir);
        }
        cfg.image_copies = made.map_err(StartupError::Copies)?;
    }
    let r = measure_fleet(backend, run, &cfg, mode, settle, on_event).await;
    if copy_images.is_some() {
        if let Err(e) = std::fs::remove_dir_all(&copies_dir) {
            tracing::warn!("removing the image copies {}: {e}", copies_dir.display());
        }
    }
    r
}

async fn measure_fleet(
    backend: &AnyBackend,
    run: &RunState,
    cfg: &FleetConfig,
    mode: StartMode,
    settle: Duration,
    on_event: impl FnMut(FleetEvent),
) -> Result<FleetBoot, StartupError> {
    let kind = backend.kind();
    let files = coldstart::fleet_files(backend, &cfg.image_copies, cfg.data_disk.as_deref())
        .map_err(StartupError::Residency)?;
    if mode == StartMode::Cold {
        drop_caches().map_err(StartupError::DropCaches)?;
    }
    // The noise floor: the host with no fleet, over as long as the fleet will settle.
    let before = machine_used_readings(backend, settle).await?;
    let me = std::process::id();
    let (rss_before, pss_before) = (memory::rss_kib(me), memory::pss_kib(me));
    // Checked last thing before the launches: the floor's wait gave other processes time to
    // read the files back.
    if mode == StartMode::Hot {
        coldstart::warm(&files).map_err(StartupError::Residency)?;
    }
    let residency =
        coldstart::check(&files, mode == StartMode::Cold).map_err(StartupError::Residency)?;
    let fleet = fleet::start(backend, run, cfg, on_event).await?;
    let copies = !cfg.image_copies.is_empty();
    let startups: Vec<StartupSample> = startup_samples(kind, cfg.n, mode, &fleet)
        .into_iter()
        .map(|s| StartupSample {
            residency: Some(residency.clone()),
            image_copies: copies && s.index < cfg.image_copies.len(),
            ..s
        })
        .collect();
    tokio::time::sleep(settle).await;
    let after = machine_used_readings(backend, settle).await?;
    let guests: Vec<GuestMemory> =
        fleet.guests.iter().map(|g| memory::guest_memory(&g.process)).collect();
    let (rss_after, pss_after) = (memory::rss_kib(me), memory::pss_kib(me));
    let scratch_tmpfs_kib = memory::tmpfs_usage_kib(&run.scratch);
    let repeats = memory::repeats_kib(&before, &after);
    let mut sorted = repeats.clone();
    sorted.sort_unstable();
    let growth = rss_after.zip(rss_before).map(|(a, b)| a as i64 - b as i64);
    let cgroups: Option<u64> = guests.iter().map(|g| g.cgroup_used_kib).sum();
    let cross_check_kib = cgroups.zip(growth).map(|(c, g)| c as i64 + g.max(0));
    let memory = Some(MemorySample {
        backend: kind,
        n: cfg.n,
        mode,
        ready: fleet.guests.len(),
        used_before_kib: memory::median(&before).unwrap_or(0),
        used_after_kib: memory::median(&after).unwrap_or(0),
        m_used_kib: sorted.get(sorted.len() / 2).copied().unwrap_or(0),
        settle_s: settle.as_secs_f64(),
        provenance: String::new(),
        guests,
        hostd_pss_kib: pss_after.unwrap_or(0),
        checks: MemoryChecks {
            noise_kib: Some(memory::noise_bound_kib(&before, &after)),
            before_readings_kib: before,
            after_readings_kib: after,
            m_used_repeats_kib: repeats,
            cross_check_kib,
            hostd_rss_before_kib: rss_before,
            hostd_rss_after_kib: rss_after,
            hostd_pss_before_kib: pss_before,
            scratch_tmpfs_kib,
        },
    });
    let mut failures = fleet.failures.clone();
    let Teardown { clean, killed, failed, .. } =
        fleet.teardown(backend, Duration::from_secs(10)).await;
    // Guests that became ready but died before the teardown.
    failures.extend(failed);
    Ok(FleetBoot {
        backend: kind,
        n: cfg.n,
        mode,
        startups,
        failures,
        memory,
        teardown_clean: clean,
        teardown_killed: killed,
        residency: Some(residency),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory record written before the checks existed.
    const OLD: &str = r#"{"backend":"uml","n":2,"mode":"cold","ready":2,"used_before_kib":1000,"used_after_kib":3000,"m_used_kib":2000,"settle_s":1.0,"guests":[{"cgroup_kib":900,"pss_kib":800,"processes":3}],"hostd_pss_kib":5000}"#;

    #[test]
    fn older_memory_samples_still_read() {
        let m: MemorySample = serde_json::from_str(OLD).unwrap();
        assert_eq!(m.checks, MemoryChecks::default());
        assert_eq!((m.fleet_kib(), m.fleet_repeats_kib()), (2000, vec![2000]));
        assert!(!m.disagrees());
        assert_eq!(m.guests[0].cgroup_used_kib, None);
        // And a new one round-trips with its checks.
        let mut n = m.clone();
        n.checks = MemoryChecks {
            noise_kib: Some(10),
            scratch_tmpfs_kib: Some(300),
            m_used_repeats_kib: vec![2000, 2010],
            ..Default::default()
        };
        let back: MemorySample = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn scratch_is_apart_and_disagreement_needs_more_than_the_bound() {
        let mut m: MemorySample = serde_json::from_str(OLD).unwrap();
        m.checks = MemoryChecks {
            m_used_repeats_kib: vec![2000, 2100, 1900],
            noise_kib: Some(200),
            scratch_tmpfs_kib: Some(500),
            cross_check_kib: Some(1700),
            hostd_rss_before_kib: Some(10_000),
            hostd_rss_after_kib: Some(10_600),
            ..Default::default()
        };
        assert_eq!(m.fleet_kib(), 1500);
        assert_eq!(m.fleet_repeats_kib(), vec![1500, 1600, 1400]);
        assert_eq!(m.hostd_growth_kib(), Some(600));
        // |1500 − 1700| = 200: within the bound.
        assert!(!m.disagrees());
        m.checks.cross_check_kib = Some(1701);
        assert!(m.disagrees());
    }
}

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
