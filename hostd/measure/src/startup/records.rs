//! The records a startup run stores (samples.jsonl): readable from older results, so new
//! fields get `#[serde(default)]`.

use super::*;

hostd_backends::named_set! {
    #[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
    #[serde(rename_all = "snake_case")]
    /// Whether a fleet starts with what its launches read out of the page cache.
    pub enum StartMode {
        /// Page cache emptied of what the launch reads before the fleet starts.
        Cold,
        /// Right after a cold start of the same fleet: what the launch reads is cached.
        Hot,
    }
}

impl StartMode {
    /// The mode as results and reports name it ("cold", "hot").
    pub fn name(self) -> &'static str {
        match self {
            StartMode::Cold => "cold",
            StartMode::Hot => "hot",
        }
    }
}

/// One guest's startup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StartupSample {
    /// The backend.
    pub backend: BackendKind,
    /// Its fleet's size.
    pub n: usize,
    /// Cold or hot.
    pub mode: StartMode,
    /// The guest's index.
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MemorySample {
    /// The backend.
    pub backend: BackendKind,
    /// Guests started.
    pub n: usize,
    /// Cold or hot.
    pub mode: StartMode,
    /// Ready guests the sample covers (n minus failures).
    pub ready: usize,
    /// The host's used memory before the fleet, KiB.
    pub used_before_kib: u64,
    /// The host's used memory with the fleet up, after settling, KiB.
    pub used_after_kib: u64,
    /// M_used(n) = used_after − used_before (can be slightly negative on a noisy host).
    pub m_used_kib: i64,
    /// How long the fleet settled before the reading, s.
    pub settle_s: f64,
    /// Each ready guest's own memory.
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// hostd's RSS with the fleet booted, KiB.
    pub hostd_rss_after_kib: Option<u64>,
    #[serde(default)]
    /// hostd's PSS before the fleet, KiB.
    pub hostd_pss_before_kib: Option<u64>,
    /// tmpfs the fleet wrote (its scratch directory: console logs, sockets, runtime state),
    /// counted in the host's used memory but not the guests' own; None when the scratch
    /// directory is on a disk-backed file system.
    #[serde(default)]
    pub scratch_tmpfs_kib: Option<u64>,
    /// hostd's open descriptors before the fleet and with it booted.
    #[serde(default)]
    pub hostd_fds_before: Option<u64>,
    /// hostd's open descriptors with the fleet booted.
    #[serde(default)]
    pub hostd_fds_after: Option<u64>,
    /// CPU time (user + system, all threads) hostd spent starting the fleet: from the start
    /// request until every guest was ready or failed, seconds.
    #[serde(default)]
    pub hostd_cpu_start_s: Option<f64>,
    /// How long some task stalled on CPU, memory or I/O over the same window (host-wide
    /// PSI): what ran short while the fleet started.
    #[serde(default)]
    pub pressure: Option<crate::pressure::Pressure>,
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
    /// hostd's descriptors per ready guest (its growth with the fleet ÷ guests).
    pub fn hostd_fds_per_guest(&self) -> Option<f64> {
        let grew = self.checks.hostd_fds_after? as f64 - self.checks.hostd_fds_before? as f64;
        (self.ready > 0).then(|| grew / self.ready as f64)
    }

    /// hostd's resident memory growth over the fleet's boot, KiB.
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
