//! Campaign files: which backends, which fleet sizes, which workloads. Every field is
//! documented with its default in docs/campaigns.md; unknown keys are errors, and bad
//! values are rejected before anything boots, naming the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::Resource;

use crate::backend::BackendKind;
use crate::fidelity;
use crate::limits;
use crate::startup::StartMode;
use crate::suite::Workloads;

/// A campaign file: which backends, which tests and sizes, which workloads ([`Campaign::load`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// Name used in the results directory. Default "campaign".
    #[serde(default = "d_name")]
    pub name: String,
    /// Backends in the order they run. `native` (the host reference T_a) always runs first,
    /// whether listed or not. Default: native, ns, oci, uml, qemu-microvm, qemu-full, xen.
    #[serde(default = "d_backends")]
    pub backends: Vec<String>,
    /// Resources of the suite. Default all four.
    #[serde(default = "d_resources")]
    pub resources: Vec<Resource>,
    /// Counted repetitions of every measurement. Default 3.
    #[serde(default = "d_reps")]
    pub reps: u32,
    /// Discarded warm-up runs before them. Default 1.
    #[serde(default = "d_one")]
    pub warmup: u32,
    #[serde(default)]
    /// `[guest]`: each guest's size.
    pub guest: GuestSection,
    #[serde(default)]
    /// `[startup]`: fleet sizes and settle time of the startup and memory steps.
    pub startup: StartupSection,
    #[serde(default)]
    /// `[overhead]`: the overhead and linearity fleets.
    pub overhead: OverheadSection,
    #[serde(default)]
    /// `[isolation]`: the isolation test.
    pub isolation: IsolationSection,
    #[serde(default)]
    /// `[ring]`: the ring's guests.
    pub ring: RingSection,
    #[serde(default)]
    /// `[workloads]`: the benchmarks' parameters.
    pub workloads: Workloads,
    #[serde(default)]
    /// `[xen]`: how the `xen` backend is measured (here or in the lab).
    pub xen: XenSection,
    #[serde(default)]
    /// `[network]`: the network paths measured.
    pub network: NetworkSection,
    /// The emulated network's accuracy step (docs/campaigns.md, `[netem]`). Default off.
    #[serde(default)]
    pub netem: crate::netem_accuracy::NetemSection,
    /// Per-backend changes (e.g. fewer guests for emulated VMs), keyed by backend name.
    #[serde(default)]
    pub overrides: BTreeMap<String, Override>,
    /// Facts about the campaign the report shows with its departures from the paper (the
    /// quick variant says it is shortened). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The campaign shipped in the repository (`hostd/campaigns/default.toml`).
pub const DEFAULT: &str = include_str!("../../../campaigns/default.toml");
/// The paper's sizes (`hostd/campaigns/paper.toml`).
pub const PAPER: &str = include_str!("../../../campaigns/paper.toml");

/// The settings one backend runs with, overrides applied.
#[derive(Debug, Clone)]
pub struct BackendPlan {
    /// The backend.
    pub kind: BackendKind,
    /// Fleet sizes of the startup and memory steps.
    pub startup_sizes: Vec<usize>,
    /// Fleet sizes of the overhead and linearity steps.
    pub overhead_sizes: Vec<usize>,
    /// Sizes of the memory resource's own fleet.
    pub memory_sizes: Vec<usize>,
    /// Guests in the ring (0 or 1: no ring).
    pub ring_guests: usize,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// Guest memory of the memory fleets ("auto" resolved in [`Campaign::resolved_plans`]).
    pub mem_bench_mib: Option<u32>,
    /// The benchmarks' parameters.
    pub workloads: Workloads,
}

impl BackendPlan {
    /// Guest memory for a guest running `copies` memory benchmarks at once: the campaign's
    /// `guest.mem_bench_mib` if set, else `mem_mib` plus the working sets.
    pub fn mem_for_copies(&self, copies: u32) -> u64 {
        match self.mem_bench_mib {
            Some(m) => m as u64,
            None => fidelity::mem_guest_mib(self.mem_mib, self.workloads.mem_n, copies),
        }
    }
}

/// What the host offers a campaign: its memory and last-level cache.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts {
    /// MemTotal, KiB.
    pub mem_total_kib: u64,
    /// The last-level cache, if sysfs describes one.
    pub llc: Option<fidelity::Llc>,
}

impl HostFacts {
    /// This host's: MemTotal from /proc/meminfo and the last-level cache.
    pub fn here() -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            mem_total_kib: crate::memory::meminfo_field(&meminfo, "MemTotal").unwrap_or(0),
            llc: fidelity::llc(),
        }
    }
}

impl Campaign {
    /// Reads, parses and checks the campaign file `path`.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let path_buf = || path.to_path_buf();
        let text = std::fs::read_to_string(path)
            .map_err(|source| LoadError::Read { path: path_buf(), source })?;
        let c: Campaign = toml::from_str(&text)
            .map_err(|source| LoadError::Parse { path: path_buf(), source })?;
        c.check().map_err(|source| LoadError::Check { path: path_buf(), source })?;
        Ok(c)
    }

    /// The campaign shipped in the repository ([`DEFAULT`]).
    pub fn default_campaign() -> Self {
        let c: Campaign = toml::from_str(DEFAULT).expect("the shipped campaign parses");
        c.check().expect("the shipped campaign is valid");
        c
    }

    /// The `--quick` variant: same backends and tests, every size and workload cut down so
    /// the whole campaign takes a few minutes (used by the tests).
    pub fn quick(mut self) -> Self {
        self.name = format!("{}-quick", self.name);
        self.reps = 2;
        self.warmup = 1;
        self.startup = StartupSection {
            sizes: vec![1, 2],
            modes: vec![StartMode::Cold, StartMode::Hot],
            settle_s: 1,
            ..self.startup.clone()
        };
        self.overhead = OverheadSection { sizes: vec![1, 2], memory_sizes: None };
        self.ring = RingSection { guests: 3 };
        self.guest.mem_bench_mib = None;
        self.workloads = Workloads {
            cpu_rounds: 2_000_000,
            mem_n: 128,
            mem_passes: 4,
            // Half the default's ~1 s native read, still more than a 128 MiB guest's memory:
            // shorter reads drown in this shared host's noise.
            disk_mib: 512,
            disk_block_kib: 256,
            net_duration_ms: 200,
            net_msg_size: 65536,
            // The user's own commands stay as they are: their cost is theirs to size.
            commands: self.workloads.commands.clone(),
        };
        for o in self.overrides.values_mut() {
            *o = Override {
                workloads: o.workloads.as_ref().map(|_| self.workloads.clone()),
                mem_mib: o.mem_mib,
                ..Default::default()
            };
        }
        self.notes.push(
            "quick variant: CPU and memory workloads cut to about a tenth of a second natively, a cache-resident memory working set (384 KiB) and 512 MiB disk reads, for testing; its figures time noise and cache, not what the paper measured".into(),
        );
        // Off a Xen host every startup size is a whole Xen lab (~25 s): one is enough here.
        if self.backends.iter().any(|b| b == "xen") {
            self.overrides.entry("xen".into()).or_default().startup_sizes = Some(vec![1]);
        }
        self
    }

    /// Backends in run order, native first.
    pub fn plans(&self) -> Vec<BackendPlan> {
        let mut kinds: Vec<BackendKind> = vec![BackendKind::Native];
        for b in &self.backends {
            let k: BackendKind = b.parse().expect("checked");
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        kinds
            .into_iter()
            .map(|kind| {
                let o = self.overrides.get(kind.name()).cloned().unwrap_or_default();
                let overhead_sizes =
                    o.overhead_sizes.unwrap_or_else(|| self.overhead.sizes.clone());
                // The campaign's memory sizes, within this backend's overhead range.
                let top = overhead_sizes.last().copied().unwrap_or(0);
                let memory_sizes =
                    o.memory_sizes.unwrap_or_else(|| match &self.overhead.memory_sizes {
                        Some(m) => m.iter().copied().filter(|&n| n <= top).collect(),
                        None => overhead_sizes.clone(),
                    });
                BackendPlan {
                    kind,
                    startup_sizes: o.startup_sizes.unwrap_or_else(|| self.startup.sizes.clone()),
                    overhead_sizes,
                    memory_sizes,
                    ring_guests: o.ring_guests.unwrap_or(self.ring.guests),
                    mem_mib: o.mem_mib.unwrap_or(self.guest.mem_mib),
                    mem_bench_mib: self.guest.mem_bench_mib,
                    workloads: o.workloads.unwrap_or_else(|| self.workloads.clone()),
                }
            })
            .collect()
    }
}

impl Campaign {
    /// [`Campaign::plans`] with every "auto" workload size resolved for a host with this
    /// last-level cache.
    pub fn resolved_plans(&self, llc: Option<fidelity::Llc>) -> Vec<BackendPlan> {
        let mut p = self.plans();
        for plan in &mut p {
            plan.workloads = fidelity::resolve(&plan.workloads, llc);
        }
        p
    }
}

mod check;
mod paper;
mod sections;
#[cfg(test)]
mod tests;

pub use self::check::{CheckError, HostCheckError};
pub use self::sections::*;

/// Why a campaign file could not be used; each names the file.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The campaign file.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not a campaign (TOML syntax, unknown key, wrong type).
    #[error("{}: {source}", path.display())]
    Parse {
        /// The campaign file.
        path: std::path::PathBuf,
        /// What went wrong.
        source: toml::de::Error,
    },
    /// A value cannot run ([`Campaign::check`]).
    #[error("{}: {source}", path.display())]
    Check {
        /// The campaign file.
        path: std::path::PathBuf,
        /// What went wrong.
        source: CheckError,
    },
}
