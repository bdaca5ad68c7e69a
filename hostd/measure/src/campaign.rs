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
    pub guest: GuestSection,
    #[serde(default)]
    pub startup: StartupSection,
    #[serde(default)]
    pub overhead: OverheadSection,
    #[serde(default)]
    pub isolation: IsolationSection,
    #[serde(default)]
    pub ring: RingSection,
    #[serde(default)]
    pub workloads: Workloads,
    #[serde(default)]
    pub xen: XenSection,
    #[serde(default)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSection {
    /// Guest memory, MiB. Default 128.
    #[serde(default = "d_mem")]
    pub mem_mib: u32,
    /// vCPUs per guest. Default 1.
    #[serde(default = "d_one")]
    pub vcpus: u32,
    /// Seconds from launch to ready before a guest counts as failed. Default 300.
    #[serde(default = "d_boot_timeout")]
    pub boot_timeout_s: u64,
    /// Seconds one benchmark request may take. Default 600.
    #[serde(default = "d_bench_timeout")]
    pub bench_timeout_s: u64,
    /// Pin every guest (all its host processes) to CPU 0, reproducing the paper's one-CPU
    /// host. Default false.
    #[serde(default)]
    pub pin_one_core: bool,
    /// Guest memory of the memory benchmark's fleets, MiB. Default: `mem_mib` plus the
    /// working set of every copy a guest runs at once (one in overhead and linearity, two in
    /// isolation's guest 2). A value too small for that is refused before anything boots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_bench_mib: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartupSection {
    /// Fleet sizes for concurrent startup and memory occupation. Default [1, 10, 50].
    #[serde(default = "d_startup_sizes")]
    pub sizes: Vec<usize>,
    /// Default ["cold", "hot"].
    #[serde(default = "d_modes")]
    pub modes: Vec<StartMode>,
    /// Seconds the booted fleet idles before memory is read. Default 3.
    #[serde(default = "d_settle")]
    pub settle_s: u64,
    /// Each guest boots its own copies of the images (the paper's setting), made on a
    /// disk-backed file system for the fleet and removed after it. Default false: all
    /// guests share one copy.
    #[serde(default)]
    pub image_copies: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverheadSection {
    /// Fleet sizes n for overhead (1 busy + n − 1 idle) and linearity (n busy). Default [1, 2, 5, 10].
    #[serde(default = "d_overhead_sizes")]
    pub sizes: Vec<usize>,
    /// Fleet sizes for the memory resource, whose guests hold the working set (their own
    /// fleet, `guest.mem_bench_mib` each). Default: `sizes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_sizes: Option<Vec<usize>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationSection {
    /// Run the two-guest isolation test. Default true.
    #[serde(default = "d_true")]
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingSection {
    /// Guests in the ring (paper: 10); 0 disables the test. Default 10.
    #[serde(default = "d_ring")]
    pub guests: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XenSection {
    /// Where this host is not dom0 of a Xen host, measure the `xen` backend in the Xen lab
    /// (Xen under QEMU, `hostd xen-lab`): cold startup, memory and the CPU benchmark at each
    /// startup size up to `lab_max_guests`, marked as measured inside an emulated host.
    /// false: record xen as unavailable there. Default true.
    #[serde(default = "d_true")]
    pub lab: bool,
    /// Largest fleet the lab boots (its emulated host gets memory for it). Default 10.
    #[serde(default = "d_lab_max")]
    pub lab_max_guests: usize,
}

/// Network paths measured besides every backend's own (docs/methodology.md, "Network paths").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Also measure the host baseline on loopback (agent and peer in one network stack) at
    /// n = 1: a second reference, next to the veth+bridge one the guests are compared with.
    /// Default true.
    #[serde(default = "d_true")]
    pub native_loopback: bool,
    /// Network modes of the ns backend's network tests, in order: "private" (each guest
    /// its own network namespace on a veth pair, the path containers use) and/or "shared"
    /// (guests share one network stack, as the paper's Vserver had no network
    /// virtualization; labelled host-stack). Default ["private", "shared"].
    #[serde(default = "d_ns_modes")]
    pub ns_modes: Vec<crate::netlab::NetMode>,
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self { native_loopback: true, ns_modes: d_ns_modes() }
    }
}

fn d_ns_modes() -> Vec<crate::netlab::NetMode> {
    vec![crate::netlab::NetMode::Private, crate::netlab::NetMode::Shared]
}

/// What a backend may change. Absent fields keep the campaign's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub startup_sizes: Option<Vec<usize>>,
    pub overhead_sizes: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_sizes: Option<Vec<usize>>,
    pub ring_guests: Option<usize>,
    pub mem_mib: Option<u32>,
    pub workloads: Option<Workloads>,
}

fn d_name() -> String {
    "campaign".into()
}
fn d_backends() -> Vec<String> {
    ["native", "ns", "oci", "uml", "qemu-microvm", "qemu-full", "xen"].map(String::from).to_vec()
}
fn d_resources() -> Vec<Resource> {
    Resource::ALL.to_vec()
}
fn d_reps() -> u32 {
    3
}
fn d_one() -> u32 {
    1
}
fn d_mem() -> u32 {
    128
}
fn d_boot_timeout() -> u64 {
    300
}
fn d_bench_timeout() -> u64 {
    600
}
fn d_startup_sizes() -> Vec<usize> {
    vec![1, 10, 50]
}
fn d_modes() -> Vec<StartMode> {
    vec![StartMode::Cold, StartMode::Hot]
}
fn d_settle() -> u64 {
    3
}
fn d_overhead_sizes() -> Vec<usize> {
    vec![1, 2, 5, 10]
}
fn d_true() -> bool {
    true
}
fn d_ring() -> usize {
    10
}
fn d_lab_max() -> usize {
    10
}

impl Default for GuestSection {
    fn default() -> Self {
        Self {
            mem_mib: d_mem(),
            vcpus: 1,
            boot_timeout_s: d_boot_timeout(),
            bench_timeout_s: d_bench_timeout(),
            pin_one_core: false,
            mem_bench_mib: None,
        }
    }
}
impl Default for StartupSection {
    fn default() -> Self {
        Self {
            sizes: d_startup_sizes(),
            modes: d_modes(),
            settle_s: d_settle(),
            image_copies: false,
        }
    }
}
impl Default for OverheadSection {
    fn default() -> Self {
        Self { sizes: d_overhead_sizes(), memory_sizes: None }
    }
}
impl Default for IsolationSection {
    fn default() -> Self {
        Self { enabled: true }
    }
}
impl Default for XenSection {
    fn default() -> Self {
        Self { lab: true, lab_max_guests: d_lab_max() }
    }
}
impl Default for RingSection {
    fn default() -> Self {
        Self { guests: d_ring() }
    }
}

/// The campaign shipped in the repository (`hostd/campaigns/default.toml`).
pub const DEFAULT: &str = include_str!("../../campaigns/default.toml");
/// The paper's sizes (`hostd/campaigns/paper.toml`).
pub const PAPER: &str = include_str!("../../campaigns/paper.toml");

/// The settings one backend runs with, overrides applied.
#[derive(Debug, Clone)]
pub struct BackendPlan {
    pub kind: BackendKind,
    pub startup_sizes: Vec<usize>,
    pub overhead_sizes: Vec<usize>,
    /// Sizes of the memory resource's own fleet.
    pub memory_sizes: Vec<usize>,
    pub ring_guests: usize,
    pub mem_mib: u32,
    /// Guest memory of the memory fleets ("auto" resolved in [`Campaign::resolved_plans`]).
    pub mem_bench_mib: Option<u32>,
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
    pub mem_total_kib: u64,
    pub llc: Option<fidelity::Llc>,
}

impl HostFacts {
    pub fn here() -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            mem_total_kib: crate::memory::meminfo_field(&meminfo, "MemTotal").unwrap_or(0),
            llc: fidelity::llc(),
        }
    }
}

impl Campaign {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let c: Campaign = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        c.check().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(c)
    }

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

    /// Every value checked, errors naming the field.
    pub fn check(&self) -> Result<(), String> {
        let bad = |field: &str, why: String| Err(format!("field `{field}`: {why}"));
        if self.name.is_empty()
            || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("name", format!("{:?} must be letters, digits, - and _", self.name));
        }
        if self.backends.is_empty() {
            return bad("backends", "needs at least one backend".into());
        }
        for b in &self.backends {
            if let Err(e) = b.parse::<BackendKind>() {
                return bad("backends", e);
            }
        }
        if self.resources.is_empty() {
            return bad("resources", "needs at least one resource".into());
        }
        self.netem.check()?;
        limits::REPS.field("reps", self.reps)?;
        limits::WARMUP.field("warmup", self.warmup)?;
        limits::MEM_MIB.field("guest.mem_mib", self.guest.mem_mib)?;
        limits::VCPUS.field("guest.vcpus", self.guest.vcpus)?;
        limits::BOOT_TIMEOUT_S.field("guest.boot_timeout_s", self.guest.boot_timeout_s)?;
        limits::BENCH_TIMEOUT_S.field("guest.bench_timeout_s", self.guest.bench_timeout_s)?;
        limits::SETTLE_S.field("startup.settle_s", self.startup.settle_s)?;
        check_sizes("startup.sizes", &self.startup.sizes)?;
        if self.startup.modes.is_empty() {
            return bad("startup.modes", "needs cold, hot or both".into());
        }
        check_sizes("overhead.sizes", &self.overhead.sizes)?;
        if let Some(s) = &self.overhead.memory_sizes {
            check_sizes("overhead.memory_sizes", s)?;
        }
        if let Some(m) = self.guest.mem_bench_mib {
            limits::MEM_MIB.field("guest.mem_bench_mib", m)?;
        }
        check_ring("ring.guests", self.ring.guests)?;
        check_workloads("workloads", &self.workloads)?;
        limits::LAB_GUESTS.field("xen.lab_max_guests", self.xen.lab_max_guests)?;
        let m = &self.network.ns_modes;
        if m.is_empty() || (1..m.len()).any(|i| m[..i].contains(&m[i])) {
            return bad(
                "network.ns_modes",
                format!("{m:?}: needs \"private\", \"shared\" or both, each once"),
            );
        }
        for (b, o) in &self.overrides {
            if let Err(e) = b.parse::<BackendKind>() {
                return bad(&format!("overrides.{b}"), e);
            }
            if let Some(s) = &o.startup_sizes {
                check_sizes(&format!("overrides.{b}.startup_sizes"), s)?;
            }
            if let Some(s) = &o.overhead_sizes {
                check_sizes(&format!("overrides.{b}.overhead_sizes"), s)?;
            }
            if let Some(s) = &o.memory_sizes {
                check_sizes(&format!("overrides.{b}.memory_sizes"), s)?;
            }
            if let Some(r) = o.ring_guests {
                check_ring(&format!("overrides.{b}.ring_guests"), r)?;
            }
            if let Some(m) = o.mem_mib {
                limits::MEM_MIB.field(&format!("overrides.{b}.mem_mib"), m)?;
            }
            if let Some(w) = &o.workloads {
                check_workloads(&format!("overrides.{b}.workloads"), w)?;
            }
        }
        Ok(())
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

    /// Whether this host can run the campaign: every guest of a memory fleet holds the
    /// working sets it runs, and every fleet fits in the host's memory less
    /// [`fidelity::HOST_RESERVE_MIB`]. Fleets count at their guests' full memory: a VM keeps
    /// the pages its guest once touched. Errors name the field to change.
    pub fn check_host(&self, host: &HostFacts) -> Result<(), String> {
        let have = (host.mem_total_kib / 1024).saturating_sub(fidelity::HOST_RESERVE_MIB);
        let memory = self.resources.contains(&Resource::Memory);
        let fit = |field: &str, what: String, n: usize, each: u64| -> Result<(), String> {
            let need = each.saturating_mul(n as u64);
            if need > have {
                return Err(format!(
                    "field `{field}`: {what}: {n} guests × {each} MiB = {need} MiB do not fit in this host's {have} MiB (MemTotal {} MiB less {} MiB kept for the host); lower the size",
                    host.mem_total_kib / 1024,
                    fidelity::HOST_RESERVE_MIB
                ));
            }
            Ok(())
        };
        for p in self.resolved_plans(host.llc) {
            let b = p.kind;
            let ws = fidelity::mem_working_set(p.workloads.mem_n).div_ceil(1 << 20);
            let ws_text = format!(
                "a {ws} MiB working set (workloads.mem_n = {}{})",
                p.workloads.mem_n,
                if self.workloads.mem_n == fidelity::AUTO {
                    format!(", \"auto\": 4 × LLC {}", host.llc.unwrap_or(fidelity::LLC_FALLBACK))
                } else {
                    String::new()
                }
            );
            if let Some(n) = p.startup_sizes.last() {
                fit("startup.sizes", format!("{b}'s startup fleet"), *n, p.mem_mib as u64)?;
            }
            if self.resources.iter().any(|&r| r != Resource::Memory) {
                if let Some(n) = p.overhead_sizes.last() {
                    fit(
                        "overhead.sizes",
                        format!("{b}'s overhead and linearity fleet"),
                        *n,
                        p.mem_mib as u64,
                    )?;
                }
            }
            if p.ring_guests >= 2 {
                fit("ring.guests", format!("{b}'s ring"), p.ring_guests, p.mem_mib as u64)?;
            }
            if !memory {
                continue;
            }
            let copies = if self.isolation.enabled { 2 } else { 1 };
            if let Some(m) = p.mem_bench_mib {
                let need = fidelity::mem_guest_mib(p.mem_mib, p.workloads.mem_n, copies);
                if (m as u64) < need {
                    return Err(format!(
                        "field `guest.mem_bench_mib`: {m} MiB cannot hold the memory benchmark on {b}: {copies} cop{} of {ws_text} plus {} MiB for the guest itself (guest.mem_mib) need {need} MiB; raise it, or lower workloads.mem_n",
                        if copies == 1 { "y" } else { "ies" },
                        p.mem_mib
                    ));
                }
            }
            if let Some(n) = p.memory_sizes.last() {
                fit(
                    "overhead.memory_sizes",
                    format!(
                        "{b}'s memory fleet (guests of {} MiB: {ws_text})",
                        p.mem_for_copies(1)
                    ),
                    *n,
                    p.mem_for_copies(1),
                )?;
            }
            if self.isolation.enabled {
                fit(
                    "isolation.enabled",
                    format!(
                        "{b}'s memory isolation pair (guests of {} MiB: two copies of {ws_text})",
                        p.mem_for_copies(2)
                    ),
                    2,
                    p.mem_for_copies(2),
                )?;
            }
        }
        Ok(())
    }

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

fn check_sizes(field: &str, s: &[usize]) -> Result<(), String> {
    limits::check_sizes(s).map_err(|e| format!("field `{field}`: {e}"))
}

/// A ring: 0 (off), or at least two guests of a fleet's range.
fn check_ring(field: &str, n: usize) -> Result<(), String> {
    if n == 0 {
        return Ok(());
    }
    if n == 1 {
        return Err(format!(
            "field `{field}`: 1 guest is not a ring (0 turns it off, 2 is the least)"
        ));
    }
    limits::GUESTS.field(field, n).map(|_| ())
}

fn check_workloads(field: &str, w: &Workloads) -> Result<(), String> {
    use vb_protocol::bench::BenchSpec;
    let probes = [
        BenchSpec::Cpu { rounds: w.cpu_rounds },
        // "auto" is resolved on the host, within the agent's limit (fidelity::MEM_N_MAX).
        BenchSpec::Memory {
            n: if w.mem_n == fidelity::AUTO { 8 } else { w.mem_n },
            passes: w.mem_passes,
        },
        BenchSpec::Disk {
            path: "/x".into(),
            block_size: w.disk_block_kib.saturating_mul(1024),
            max_bytes: limits::mib_to_bytes(w.disk_mib),
            direct: true,
        },
        BenchSpec::NetStream {
            peer: "10.0.0.1:1".into(),
            duration_ms: w.net_duration_ms,
            msg_size: w.net_msg_size,
        },
    ];
    for p in probes {
        p.validate().map_err(|e| format!("field `{field}`: {e}"))?;
    }
    limits::DISK_MIB.field(&format!("{field}.disk_mib"), w.disk_mib)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Campaign, String> {
        let c: Campaign = toml::from_str(t).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse("").unwrap();
        assert_eq!(c.reps, 3);
        let plans = c.plans();
        assert_eq!(plans[0].kind, BackendKind::Native);
        assert_eq!(plans.len(), 7);
        assert_eq!(plans[6].kind, BackendKind::Xen);
        assert_eq!(c.xen, XenSection { lab: true, lab_max_guests: 10 });
        let c = parse(
            "backends = [\"uml\"]\n[overrides.uml]\noverhead_sizes = [1, 3]\nring_guests = 4\n",
        )
        .unwrap();
        let p = c.plans();
        assert_eq!(
            p.iter().map(|p| p.kind).collect::<Vec<_>>(),
            [BackendKind::Native, BackendKind::Uml]
        );
        assert_eq!((p[1].overhead_sizes.clone(), p[1].ring_guests), (vec![1, 3], 4));
        assert_eq!(p[0].ring_guests, 10);
    }

    #[test]
    fn shipped_campaign_and_quick_variant_are_valid() {
        let c = Campaign::default_campaign();
        assert_eq!(c.name, "default");
        let q = c.quick();
        q.check().unwrap();
        assert_eq!(
            q.plans()
                .iter()
                .find(|p| p.kind == BackendKind::QemuFull)
                .unwrap()
                .workloads
                .cpu_rounds,
            2_000_000
        );
        assert_eq!(
            q.plans().iter().find(|p| p.kind == BackendKind::QemuFull).unwrap().overhead_sizes,
            vec![1, 2]
        );
        assert_eq!(
            q.plans().iter().find(|p| p.kind == BackendKind::Xen).unwrap().startup_sizes,
            vec![1],
            "one Xen lab in a quick run"
        );
    }

    fn host(mem_gib: u64) -> HostFacts {
        HostFacts {
            mem_total_kib: mem_gib << 20,
            llc: Some(fidelity::Llc { level: 3, size_kib: 300 << 10 }),
        }
    }

    #[test]
    fn paper_campaign_is_at_the_papers_sizes_and_fits_the_reference_host() {
        let c: Campaign = toml::from_str(PAPER).unwrap();
        c.check().unwrap();
        // The reference host: 24 GiB (MemTotal 24151 MiB), L3 300 MiB.
        c.check_host(&HostFacts { mem_total_kib: 24_731_400, ..host(0) }).unwrap();
        assert_eq!(c.departures_from_paper(host(24).llc), ["memory overhead and linearity up to n = 15, where the working sets fit in host memory: native, ns, oci, uml, qemu-microvm, qemu-full, xen", "startup up to n = 50 (paper: up to 100): xen"]);
        for p in c.resolved_plans(host(24).llc) {
            assert_eq!(
                (p.overhead_sizes.last(), p.ring_guests, p.workloads.mem_n),
                (Some(&100), 10, 7248),
                "{}",
                p.kind
            );
        }
    }

    #[test]
    fn default_campaign_departures_are_listed() {
        let c = Campaign::default_campaign();
        let d = c.departures_from_paper(host(24).llc);
        assert!(d.contains(&"ring of 4 guests (paper: 10): qemu-full".to_string()), "{d:#?}");
        assert!(
            d.contains(
                &"overhead and linearity up to n = 10 (paper: 1 to 100): native, ns, oci, uml"
                    .to_string()
            ),
            "{d:#?}"
        );
        assert!(!d.iter().any(|l| l.contains("cache-resident")), "{d:#?}");
        c.check_host(&HostFacts { mem_total_kib: 24_731_400, ..host(0) }).unwrap();
        let q = c.quick();
        let d = q.departures_from_paper(host(24).llc);
        assert!(
            d.iter().any(|l| l.starts_with(
                "memory benchmark (n=128 passes=4): cache-resident: working set 384 KiB"
            )),
            "{d:#?}"
        );
        assert!(d.iter().any(|l| l.starts_with("quick variant")), "{d:#?}");
    }

    #[test]
    fn host_checks_name_what_does_not_fit() {
        let c = parse("backends = [\"uml\"]\n[overhead]\nsizes = [1, 20]\n").unwrap();
        // 20 memory guests of 128 + 1203 MiB on a 24 GiB host: 26620 MiB > 22528 MiB.
        let e = c.check_host(&host(24)).unwrap_err();
        assert!(
            e.starts_with(
                "field `overhead.memory_sizes`: native's memory fleet (guests of 1331 MiB"
            ),
            "{e}"
        );
        assert!(
            e.contains("20 guests × 1331 MiB = 26620 MiB do not fit in this host's 22528 MiB"),
            "{e}"
        );
        let c =
            parse("backends = [\"uml\"]\n[overhead]\nsizes = [1, 20]\nmemory_sizes = [1, 10]\n")
                .unwrap();
        c.check_host(&host(24)).unwrap();
        let c = parse("[guest]\nmem_bench_mib = 2048\n").unwrap();
        let e = c.check_host(&host(24)).unwrap_err();
        assert!(e.starts_with("field `guest.mem_bench_mib`: 2048 MiB cannot hold the memory benchmark on native: 2 copies of a 1203 MiB working set (workloads.mem_n = 7248, \"auto\": 4 × LLC L3 300 MiB) plus 128 MiB"), "{e}");
        // Enough for two copies, but ten guests of 2600 MiB are too many for 24 GiB.
        let e =
            parse("[guest]\nmem_bench_mib = 2600\n").unwrap().check_host(&host(24)).unwrap_err();
        assert!(e.contains("10 guests × 2600 MiB = 26000 MiB"), "{e}");
        assert!(parse("[guest]\nmem_bench_mib = 2600\n[overhead]\nmemory_sizes = [1, 5]\n")
            .unwrap()
            .check_host(&host(24))
            .is_ok());
        let e = parse("[startup]\nsizes = [1, 100]\n").unwrap().check_host(&host(8)).unwrap_err();
        assert!(
            e.starts_with("field `startup.sizes`: native's startup fleet: 100 guests × 128 MiB"),
            "{e}"
        );
        // Without the memory resource, no working set is needed.
        parse("resources = [\"cpu\"]\n[overhead]\nsizes = [1, 20]\n")
            .unwrap()
            .check_host(&host(24))
            .unwrap();
    }

    #[test]
    fn mem_n_is_a_number_or_auto() {
        assert_eq!(parse("[workloads]\nmem_n = \"auto\"").unwrap().workloads.mem_n, fidelity::AUTO);
        assert_eq!(parse("[workloads]\nmem_n = 64").unwrap().workloads.mem_n, 64);
        assert!(parse("[workloads]\nmem_n = 0").unwrap_err().contains("\"auto\""));
        assert!(parse("[workloads]\nmem_n = \"big\"").unwrap_err().contains("mem_n"));
        let t = toml::to_string(&Campaign::default_campaign()).unwrap();
        assert!(t.contains("mem_n = \"auto\""), "{t}");
        assert_eq!(toml::from_str::<Campaign>(&t).unwrap(), Campaign::default_campaign());
    }

    #[test]
    fn errors_name_the_field() {
        let e = |t: &str| parse(t).unwrap_err();
        assert!(e("colour = 1").contains("colour"));
        assert!(e("backends = [\"vmware\"]").contains("`backends`"));
        assert!(e("reps = 0").contains("`reps`"));
        assert!(e("[startup]\nsizes = [10, 1]").contains("`startup.sizes`"));
        assert!(e("[overhead]\nsizes = [0]").contains("`overhead.sizes`"));
        assert!(e("[ring]\nguests = 1").contains("`ring.guests`"));
        assert!(e("[workloads]\ncpu_rounds = 1").contains("`workloads`"));
        assert!(e("[overrides.bogus]\nring_guests = 3").contains("overrides.bogus"));
        assert!(e("[overrides.uml]\nwhat = 3").contains("what"));
        assert!(e("[guest]\nmem_mib = 4").contains("`guest.mem_mib`"));
        assert!(e("resources = [\"gpu\"]").contains("gpu"));
        assert!(e("[xen]\nlab_max_guests = 0").contains("`xen.lab_max_guests`"));
        assert!(e("[xen]\nlab = \"yes\"").contains("lab"));
        assert!(e("[network]\nns_modes = []").contains("`network.ns_modes`"));
        assert!(e("[network]\nns_modes = [\"shared\", \"shared\"]").contains("`network.ns_modes`"));
        assert!(e("[network]\nns_modes = [\"bridged\"]").contains("bridged"));
    }

    #[test]
    fn absurd_durations_sizes_and_counts_are_refused() {
        let e = |t: &str| parse(t).unwrap_err();
        // Near 2^63 s: `Instant::now() + deadline` would overflow.
        assert!(
            e("[guest]\nboot_timeout_s = 9223372036854775807").contains("`guest.boot_timeout_s`")
        );
        assert!(e("[guest]\nbench_timeout_s = 0").contains("`guest.bench_timeout_s`"));
        assert!(e("[guest]\nvcpus = 0").contains("`guest.vcpus`"));
        assert!(e("[startup]\nsettle_s = 9223372036854775807").contains("`startup.settle_s`"));
        assert!(e("[startup]\nsizes = [1, 100000]").contains("`startup.sizes`"));
        // 2^44 MiB is 2^64 bytes: shifted, it would wrap to 0.
        assert!(e("[workloads]\ndisk_mib = 17592186044416").contains("`workloads.disk_mib`"));
        assert!(e("[overrides.uml]\nmem_mib = 0").contains("`overrides.uml.mem_mib`"));
        assert!(e("[ring]\nguests = 100000").contains("`ring.guests`"));
        assert!(parse("[ring]\nguests = 0").is_ok(), "0 turns the ring off");
    }
}
