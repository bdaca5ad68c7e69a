//! Campaign files: which backends, which fleet sizes, which workloads. Every field is
//! documented with its default in docs/campaigns.md; unknown keys are errors, and bad
//! values are rejected before anything boots, naming the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::Resource;

use crate::backend::BackendKind;
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
    /// Per-backend changes (e.g. fewer guests for emulated VMs), keyed by backend name.
    #[serde(default)]
    pub overrides: BTreeMap<String, Override>,
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
        Self { mem_mib: d_mem(), vcpus: 1, boot_timeout_s: d_boot_timeout(), bench_timeout_s: d_bench_timeout(), pin_one_core: false }
    }
}
impl Default for StartupSection {
    fn default() -> Self {
        Self { sizes: d_startup_sizes(), modes: d_modes(), settle_s: d_settle(), image_copies: false }
    }
}
impl Default for OverheadSection {
    fn default() -> Self {
        Self { sizes: d_overhead_sizes() }
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
pub const DEFAULT: &str = include_str!("../campaigns/default.toml");

/// The settings one backend runs with, overrides applied.
#[derive(Debug, Clone)]
pub struct BackendPlan {
    pub kind: BackendKind,
    pub startup_sizes: Vec<usize>,
    pub overhead_sizes: Vec<usize>,
    pub ring_guests: usize,
    pub mem_mib: u32,
    pub workloads: Workloads,
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
        self.startup = StartupSection { sizes: vec![1, 2], modes: vec![StartMode::Cold, StartMode::Hot], settle_s: 1, ..self.startup.clone() };
        self.overhead = OverheadSection { sizes: vec![1, 2] };
        self.ring = RingSection { guests: 3 };
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
            *o = Override { workloads: o.workloads.as_ref().map(|_| self.workloads.clone()), mem_mib: o.mem_mib, ..Default::default() };
        }
        // Off a Xen host every startup size is a whole Xen lab (~25 s): one is enough here.
        if self.backends.iter().any(|b| b == "xen") {
            self.overrides.entry("xen".into()).or_default().startup_sizes = Some(vec![1]);
        }
        self
    }

    /// Every value checked, errors naming the field.
    pub fn check(&self) -> Result<(), String> {
        let bad = |field: &str, why: String| Err(format!("field `{field}`: {why}"));
        if self.name.is_empty() || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
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
        check_ring("ring.guests", self.ring.guests)?;
        check_workloads("workloads", &self.workloads)?;
        limits::LAB_GUESTS.field("xen.lab_max_guests", self.xen.lab_max_guests)?;
        let m = &self.network.ns_modes;
        if m.is_empty() || (1..m.len()).any(|i| m[..i].contains(&m[i])) {
            return bad("network.ns_modes", format!("{m:?}: needs \"private\", \"shared\" or both, each once"));
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
                BackendPlan {
                    kind,
                    startup_sizes: o.startup_sizes.unwrap_or_else(|| self.startup.sizes.clone()),
                    overhead_sizes: o.overhead_sizes.unwrap_or_else(|| self.overhead.sizes.clone()),
                    ring_guests: o.ring_guests.unwrap_or(self.ring.guests),
                    mem_mib: o.mem_mib.unwrap_or(self.guest.mem_mib),
                    workloads: o.workloads.unwrap_or_else(|| self.workloads.clone()),
                }
            })
            .collect()
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
        BenchSpec::Memory { n: w.mem_n, passes: w.mem_passes },
        BenchSpec::Disk {
            path: "/x".into(),
            block_size: w.disk_block_kib.saturating_mul(1024),
            max_bytes: limits::mib_to_bytes(w.disk_mib),
            direct: true,
        },
        BenchSpec::NetStream { peer: "10.0.0.1:1".into(), duration_ms: w.net_duration_ms, msg_size: w.net_msg_size },
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
        let c = parse("backends = [\"uml\"]\n[overrides.uml]\noverhead_sizes = [1, 3]\nring_guests = 4\n").unwrap();
        let p = c.plans();
        assert_eq!(p.iter().map(|p| p.kind).collect::<Vec<_>>(), [BackendKind::Native, BackendKind::Uml]);
        assert_eq!((p[1].overhead_sizes.clone(), p[1].ring_guests), (vec![1, 3], 4));
        assert_eq!(p[0].ring_guests, 10);
    }

    #[test]
    fn shipped_campaign_and_quick_variant_are_valid() {
        let c = Campaign::default_campaign();
        assert_eq!(c.name, "default");
        let q = c.quick();
        q.check().unwrap();
        assert_eq!(q.plans().iter().find(|p| p.kind == BackendKind::QemuFull).unwrap().workloads.cpu_rounds, 2_000_000);
        assert_eq!(q.plans().iter().find(|p| p.kind == BackendKind::QemuFull).unwrap().overhead_sizes, vec![1, 2]);
        assert_eq!(q.plans().iter().find(|p| p.kind == BackendKind::Xen).unwrap().startup_sizes, vec![1], "one Xen lab in a quick run");
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
