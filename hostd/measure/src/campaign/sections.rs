//! The sections of a campaign file, each with its defaults (docs/campaigns.md).

use super::*;

/// `[guest]`: every guest's memory, vCPUs and timeouts.
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
    /// A system image (a root file system recipe in the image store) every guest boots
    /// instead of the agent's own image, as `hostd run --system` (which wins); native boots
    /// none. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// With `system`: PID 1 is the agent or the image's own init. Default "agent".
    #[serde(default, skip_serializing_if = "is_agent")]
    pub init: crate::backend::rootdisk::InitMode,
}

fn is_agent(i: &crate::backend::rootdisk::InitMode) -> bool {
    *i == crate::backend::rootdisk::InitMode::Agent
}

/// `[startup]`: the fleet sizes and modes of the startup test.
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

/// `[overhead]`: the fleet sizes of the overhead and linearity tests.
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

/// `[isolation]`: whether the isolation pair runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationSection {
    /// Run the two-guest isolation test. Default true.
    #[serde(default = "d_true")]
    pub enabled: bool,
}

/// `[ring]`: the ring of guests streaming to their neighbour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingSection {
    /// Guests in the ring (paper: 10); 0 disables the test. Default 10.
    #[serde(default = "d_ring")]
    pub guests: usize,
}

/// `[xen]`: the Xen lab, where this host is not Xen.
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

pub(super) fn d_ns_modes() -> Vec<crate::netlab::NetMode> {
    vec![crate::netlab::NetMode::Private, crate::netlab::NetMode::Shared]
}

/// What a backend may change. Absent fields keep the campaign's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Replaces `startup.sizes` for this backend.
    pub startup_sizes: Option<Vec<usize>>,
    /// Replaces `overhead.sizes`.
    pub overhead_sizes: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Replaces `startup.memory_sizes`.
    pub memory_sizes: Option<Vec<usize>>,
    /// Replaces `ring.guests`.
    pub ring_guests: Option<usize>,
    /// Replaces `guest.mem_mib`.
    pub mem_mib: Option<u32>,
    /// Replaces `[workloads]`.
    pub workloads: Option<Workloads>,
}

pub(super) fn d_name() -> String {
    "campaign".into()
}
pub(super) fn d_backends() -> Vec<String> {
    ["native", "ns", "oci", "uml", "qemu-microvm", "qemu-full", "xen"].map(String::from).to_vec()
}
pub(super) fn d_resources() -> Vec<Resource> {
    Resource::ALL.to_vec()
}
pub(super) fn d_reps() -> u32 {
    crate::defaults::REPS
}
pub(super) fn d_one() -> u32 {
    1
}
pub(super) fn d_mem() -> u32 {
    crate::defaults::MEM_MIB
}
pub(super) fn d_boot_timeout() -> u64 {
    crate::defaults::BOOT_TIMEOUT_S
}
pub(super) fn d_bench_timeout() -> u64 {
    crate::defaults::BENCH_TIMEOUT_S
}
pub(super) fn d_startup_sizes() -> Vec<usize> {
    crate::defaults::STARTUP_SIZES.to_vec()
}
pub(super) fn d_modes() -> Vec<StartMode> {
    vec![StartMode::Cold, StartMode::Hot]
}
pub(super) fn d_settle() -> u64 {
    crate::defaults::SETTLE_S
}
pub(super) fn d_overhead_sizes() -> Vec<usize> {
    vec![1, 2, 5, 10]
}
pub(super) fn d_true() -> bool {
    true
}
pub(super) fn d_ring() -> usize {
    10
}
pub(super) fn d_lab_max() -> usize {
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
            system: None,
            init: Default::default(),
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
