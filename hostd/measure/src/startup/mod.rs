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

/// Everything one fleet boot produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetBoot {
    /// The backend.
    pub backend: BackendKind,
    /// Guests started together.
    pub n: usize,
    /// Cold or hot.
    pub mode: StartMode,
    /// One per ready guest.
    pub startups: Vec<StartupSample>,
    /// Guests that failed.
    pub failures: Vec<GuestFailure>,
    /// The fleet's memory occupation, if measured.
    pub memory: Option<MemorySample>,
    /// Guests that powered off when asked at teardown.
    pub teardown_clean: usize,
    /// Guests killed at teardown.
    pub teardown_killed: usize,
    /// The launches' files' residency just before the fleet started.
    #[serde(default)]
    pub residency: Option<StartResidency>,
    /// Whether each guest reached a neighbour on another bridge (`hostd boot --reach`),
    /// checked after the figures were taken.
    #[serde(default)]
    pub reach: Option<crate::reach::Reach>,
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

    /// The ready guests' startups, summarised (None when none was ready).
    pub fn ready_summary(&self) -> Option<Summary> {
        Summary::of(
            format!("startup_{}", self.mode.name()),
            "s",
            self.startups.iter().map(|s| s.ready_s).collect(),
        )
    }
}

/// Why a fleet's startup and memory could not be measured (the step that failed).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum StartupError {
    /// The page cache could not be dropped before a cold start.
    #[error("dropping the page cache for a cold start (needs root): {0}")]
    DropCaches(std::io::Error),
    /// What the launches read could not be evicted or checked.
    #[error("checking what the launches read for a cold start: {0}")]
    Residency(coldstart::ColdError),
    /// The per-guest image copies could not be made.
    #[error("making per-guest image copies: {0}")]
    Copies(coldstart::ColdError),
    /// The host's used memory could not be read.
    #[error("reading /proc/meminfo")]
    Meminfo,
    /// The hypervisor's own memory accounting could not be read.
    #[error("reading the hypervisor's memory accounting: {0}")]
    Hypervisor(String),
    /// The fleet (its network) did not start.
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
    let unseen =
        backend.unseen_used_kib().await.map_err(|e| StartupError::Hypervisor(e.to_string()))?;
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

/// How [`boot_and_measure`] starts and measures one fleet.
#[derive(Debug, Clone, Copy)]
pub struct BootPlan<'a> {
    /// Cold or hot.
    pub mode: StartMode,
    /// Wait after the fleet is up before its memory is read.
    pub settle: Duration,
    /// Each guest boots its own copies of these images (made under the run's disk directory
    /// and removed after the fleet).
    pub copy_images: Option<&'a Images>,
    /// The fleet's reachability checked ([`crate::reach`]) after its figures were taken,
    /// before its teardown.
    pub reach: bool,
}

/// Boots a fleet as `plan` says, records startup and (after its settle time) memory, tears
/// it down.
pub async fn boot_and_measure(
    backend: &AnyBackend,
    run: &RunState,
    cfg: &FleetConfig,
    plan: &BootPlan<'_>,
    on_event: impl FnMut(FleetEvent),
) -> Result<FleetBoot, StartupError> {
    let BootPlan { mode, settle, copy_images, reach } = *plan;
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
    let r = match start_and_measure(backend, run, &cfg, mode, settle, on_event).await {
        Ok((fleet, mut boot)) => {
            if reach {
                boot.reach = Some(crate::reach::check(&fleet).await);
            }
            tear_down(backend, fleet, &mut boot, Duration::from_secs(10)).await;
            Ok(boot)
        }
        Err(e) => Err(e),
    };
    if copy_images.is_some() {
        if let Err(e) = std::fs::remove_dir_all(&copies_dir) {
            tracing::warn!("removing the image copies {}: {e}", copies_dir.display());
        }
    }
    r
}

/// Starts a fleet in `mode` and measures it as every backend's is measured: its startup
/// samples, then (after `settle`, against a floor read just before the launches) its memory.
/// The fleet is left running for whatever else the caller measures on it (the Xen lab's
/// CPU benchmark); [`tear_down`] completes the record.
pub async fn start_and_measure(
    backend: &AnyBackend,
    run: &RunState,
    cfg: &FleetConfig,
    mode: StartMode,
    settle: Duration,
    on_event: impl FnMut(FleetEvent),
) -> Result<(crate::fleet::Fleet, FleetBoot), StartupError> {
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
    let (fds_before, cpu_before) = (memory::open_fds(), memory::own_cpu_s());
    let (psi_before, t0) = (crate::pressure::read(), std::time::Instant::now());
    let fleet = fleet::start(backend, run, cfg, on_event).await?;
    let pressure =
        crate::pressure::read().zip(psi_before).map(|(now, then)| now.since(&then, t0.elapsed()));
    let cpu_start = memory::own_cpu_s().zip(cpu_before).map(|(a, b)| a - b);
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
    let fds_after = memory::open_fds();
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
            hostd_fds_before: fds_before,
            hostd_fds_after: fds_after,
            hostd_cpu_start_s: cpu_start,
            pressure,
        },
    });
    let boot = FleetBoot {
        backend: kind,
        n: cfg.n,
        mode,
        startups,
        failures: fleet.failures.clone(),
        memory,
        teardown_clean: 0,
        teardown_killed: 0,
        residency: Some(residency),
        reach: None,
    };
    Ok((fleet, boot))
}

/// Tears down a fleet measured by [`start_and_measure`], waiting up to `grace` for each
/// guest, and records how it went.
pub async fn tear_down(
    backend: &AnyBackend,
    fleet: crate::fleet::Fleet,
    boot: &mut FleetBoot,
    grace: Duration,
) {
    let Teardown { clean, killed, failed, .. } = fleet.teardown(backend, grace).await;
    // Guests that became ready but died before the teardown.
    boot.failures.extend(failed);
    boot.teardown_clean = clean;
    boot.teardown_killed = killed;
}

mod analyse;
mod records;
#[cfg(test)]
mod tests;

pub use self::analyse::analyse;
pub use self::records::*;
