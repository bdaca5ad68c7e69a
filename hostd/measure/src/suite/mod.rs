//! The performance suite of paper section II.A, per resource: overhead (II.A.1), linearity
//! (II.A.2), performance isolation (II.A.3) and inter-guest communication (II.A.4). Each
//! module measures one of them on fleets and records raw samples; formulas are in
//! docs/methodology.md with the paper's numbering.

pub mod command;
pub mod conditions;
pub mod isolation;
pub mod linearity;
pub mod overhead;
pub mod ring;
pub mod step;
pub mod sync;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::{BenchSpec, Resource};

use crate::backend::BackendKind;
use crate::guest::RunningGuest;
use crate::netlab::NetPath;
pub use sync::{run_together, StartSync, Starter, Timed};

/// The microbenchmarks' sizes: by default one native run lasts about a second or more
/// (timer and scheduling noise stay small next to it) and the memory benchmark's working set
/// is at least 4 × the host's last-level cache ([`crate::fidelity`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workloads {
    /// CPU: Newton steps towards √2. Default 200 000 000 (about 1.1 s natively on the
    /// reference host, docs/campaigns.md).
    #[serde(default = "d_cpu_rounds")]
    pub cpu_rounds: u64,
    /// Memory: matrix side (three n×n f64 matrices), or "auto" (stored as
    /// [`crate::fidelity::AUTO`]): the smallest side whose working set is at least 4 × the
    /// host's last-level cache, resolved when the campaign runs. Default "auto".
    #[serde(default = "d_mem_n", with = "crate::fidelity::auto_u32")]
    pub mem_n: u32,
    /// Memory: passes of C = A + B + C. Default 12 (about 1.2 s natively at the "auto" size
    /// on the reference host).
    #[serde(default = "d_mem_passes")]
    pub mem_passes: u32,
    /// Disk: bytes read per run, MiB (the data disk must be at least this large). Default
    /// 1024: about 1 s of O_DIRECT reads natively on an ordinary SSD or virtual disk, and
    /// more than a default guest's memory.
    #[serde(default = "d_disk_mib")]
    pub disk_mib: u64,
    /// Disk: block size, KiB. Default 256.
    #[serde(default = "d_disk_block")]
    pub disk_block_kib: u32,
    /// Network: duration of each stream or request/response run, ms. Default 1000.
    #[serde(default = "d_net_ms")]
    pub net_duration_ms: u32,
    /// Network: stream write size, bytes. Default 65536.
    #[serde(default = "d_net_msg")]
    pub net_msg_size: u32,
    /// Users' commands timed as workloads beside the four microbenchmarks
    /// (`[[workloads.commands]]`, [`command`]). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<command::UserCommand>,
}

fn d_cpu_rounds() -> u64 {
    crate::defaults::CPU_ROUNDS
}
fn d_mem_n() -> u32 {
    crate::fidelity::AUTO
}
fn d_mem_passes() -> u32 {
    crate::defaults::MEM_PASSES
}
fn d_disk_mib() -> u64 {
    crate::defaults::DISK_MIB
}
fn d_disk_block() -> u32 {
    crate::defaults::DISK_BLOCK_KIB
}
fn d_net_ms() -> u32 {
    crate::defaults::NET_DURATION_MS
}
fn d_net_msg() -> u32 {
    crate::defaults::NET_MSG_SIZE
}

impl Workloads {
    /// The parameters that set a resource's workload, as text: samples carry it, so a
    /// backend's figures are only ever compared with a host baseline of the same workload.
    pub fn params(&self, r: Resource) -> String {
        match r {
            Resource::Cpu => format!("rounds={}", self.cpu_rounds),
            Resource::Memory => format!("n={} passes={}", self.mem_n, self.mem_passes),
            Resource::Disk => format!("mib={} block_kib={}", self.disk_mib, self.disk_block_kib),
            Resource::Network => format!("ms={} msg={}", self.net_duration_ms, self.net_msg_size),
        }
    }
}

impl Default for Workloads {
    fn default() -> Self {
        Self {
            cpu_rounds: d_cpu_rounds(),
            mem_n: d_mem_n(),
            mem_passes: d_mem_passes(),
            disk_mib: d_disk_mib(),
            disk_block_kib: d_disk_block(),
            net_duration_ms: d_net_ms(),
            net_msg_size: d_net_msg(),
            commands: Vec::new(),
        }
    }
}

/// Where a guest finds the data disk and the network peer.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Host path of the data disk for a guest launched without one of its own (each
    /// campaign guest gets its own copy: [`guest_spec`] uses that).
    pub disk: PathBuf,
    /// The network benchmarks' server (a native agent on the fleet bridge).
    pub peer: SocketAddr,
}

/// One benchmark step of the suite (overhead, linearity, isolation) as a campaign or the
/// Xen lab asks for it: the resource, its workload sizes and targets, the discarded warm-up
/// runs, the counted repetitions and each run's deadline.
#[derive(Debug, Clone, Copy)]
pub struct StepPlan<'a> {
    /// The resource whose benchmark runs.
    pub resource: Resource,
    /// The benchmarks' sizes.
    pub workloads: &'a Workloads,
    /// The data disk and network peer.
    pub targets: &'a Targets,
    /// Runs discarded before the counted ones.
    pub warmup: u32,
    /// Counted runs.
    pub reps: u32,
    /// Each run's deadline.
    pub timeout: Duration,
}

/// The benchmark that exercises `r` in a guest of `kind`.
pub fn spec_for(r: Resource, w: &Workloads, kind: BackendKind, t: &Targets) -> BenchSpec {
    match r {
        Resource::Cpu => BenchSpec::Cpu { rounds: w.cpu_rounds },
        Resource::Memory => BenchSpec::Memory { n: w.mem_n, passes: w.mem_passes },
        Resource::Disk => BenchSpec::Disk {
            path: kind.guest_disk(&t.disk),
            // Campaign checks keep both in range; saturated, the guest refuses them too.
            block_size: w.disk_block_kib.saturating_mul(1024),
            max_bytes: Some(crate::limits::mib_to_bytes(w.disk_mib).unwrap_or(u64::MAX)),
            direct: true,
        },
        Resource::Network => BenchSpec::NetStream {
            peer: t.peer.to_string(),
            duration_ms: w.net_duration_ms,
            msg_size: w.net_msg_size,
        },
    }
}

/// The benchmark of `r` for guest `g`: its own data disk copy when it has one.
pub fn guest_spec(
    r: Resource,
    w: &Workloads,
    kind: BackendKind,
    g: &RunningGuest,
    t: &Targets,
) -> BenchSpec {
    match &g.spec.data_disk {
        Some(own) if r == Resource::Disk => {
            spec_for(r, w, kind, &Targets { disk: own.clone(), ..t.clone() })
        }
        _ => spec_for(r, w, kind, t),
    }
}

/// For a disk benchmark, evicts the readers' data disks from the host page cache and
/// measures what stayed (right before the request goes out); `None` for other resources.
pub fn before_reads(
    kind: BackendKind,
    r: Resource,
    readers: &[&RunningGuest],
) -> Result<Option<Vec<crate::datadisk::ReadPrep>>, String> {
    if r != Resource::Disk {
        return Ok(None);
    }
    let files: Vec<(usize, &std::path::Path)> = readers
        .iter()
        .map(|g| {
            g.spec
                .data_disk
                .as_deref()
                .map(|p| (g.spec.index, p))
                .ok_or_else(|| format!("{}: no data disk", g.spec.name))
        })
        .collect::<Result<_, _>>()?;
    crate::datadisk::before_reads(kind, &files).map(Some).map_err(|e| e.to_string())
}

/// Records each disk sample's cache policy and pre-read residency from `preps`.
pub fn mark_reads(samples: &mut [BenchSample], preps: Option<&[crate::datadisk::ReadPrep]>) {
    for s in samples {
        if let Some(p) = preps.and_then(|ps| ps.iter().find(|p| p.guest == s.guest)) {
            s.cache_policy = p.policy.to_string();
            s.resident_before = Some(p.residency.fraction());
        }
    }
}

/// A native O_DIRECT read of the run's reference copy, taken by hostd right before a
/// non-native backend's disk read: the disk's speed at that moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedRead {
    /// Its bandwidth, MB/s.
    pub mbps: f64,
    /// How long it took, s.
    pub elapsed_s: f64,
    /// When the read ended.
    pub done: std::time::Instant,
}

/// For a non-native backend's disk benchmark in a fleet with per-guest copies, reads the
/// run's native reference copy as the native backend would (O_DIRECT, the workload's block
/// size and bytes, the copy levelled first like the guests' copies) and times it; `None`
/// for other resources, for native itself and for fleets without copies. Call it right
/// before the backend's read: a shared disk's speed drifts over minutes (other I/O on the
/// host or below it), so only an adjacent native read is a fair reference for this read.
pub fn paired_read(
    fleet: &crate::fleet::Fleet,
    r: Resource,
    w: &Workloads,
) -> Result<Option<PairedRead>, String> {
    if r != Resource::Disk || fleet.backend == BackendKind::Native {
        return Ok(None);
    }
    let Some(copies) = &fleet.config.data_copies else { return Ok(None) };
    let bytes = crate::limits::mib_to_bytes(w.disk_mib).unwrap_or(u64::MAX);
    let block = w.disk_block_kib.saturating_mul(1024) as usize;
    let path = copies.reference().map_err(|e| e.to_string())?;
    crate::datadisk::level(&path).map_err(|e| e.to_string())?;
    let (read, secs) =
        crate::datadisk::timed_read(&path, block, bytes).map_err(|e| e.to_string())?;
    Ok(Some(PairedRead {
        mbps: read as f64 / 1e6 / secs,
        elapsed_s: secs,
        done: std::time::Instant::now(),
    }))
}

/// Records the paired native reads in each of a run's disk samples: `before`, taken right
/// before the backend's read was requested at `sent`, and `after`, right after it ended
/// (A/B/A: the reference is their mean, so a drift during the read cancels to first order,
/// and their disagreement says how far the disk moved around it).
pub fn mark_paired(
    samples: &mut [BenchSample],
    before: Option<&PairedRead>,
    after: Option<&PairedRead>,
    sent: std::time::Instant,
) {
    let Some(p) = before else { return };
    for s in samples.iter_mut().filter(|s| s.resource == Resource::Disk) {
        s.paired_native_mbps = Some(p.mbps);
        s.paired_native_s = Some(p.elapsed_s);
        s.paired_gap_s = Some(sent.saturating_duration_since(p.done).as_secs_f64());
        s.paired_native_after_mbps = after.map(|a| a.mbps);
        s.paired_native_after_s = after.map(|a| a.elapsed_s);
    }
}

hostd_backends::named_set! {
    /// Which part of the suite a sample belongs to.
    #[serde(rename_all = "snake_case")]
    pub enum Test {
        /// T_avn: one guest runs it while n − 1 guests idle.
        Overhead,
        /// All n guests run it at once.
        Linearity,
        /// Guest 1 runs one copy, guest 2 two copies.
        Isolation,
        /// Every guest of a ring streams to its neighbour.
        Ring,
        /// Request/response latency around the ring.
        RingLatency,
    }
}

/// One timed benchmark instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BenchSample {
    /// The backend.
    pub backend: BackendKind,
    /// The test.
    pub test: Test,
    #[schemars(schema_with = "crate::samples::resource_schema")]
    /// The resource.
    pub resource: Resource,
    /// Guests running in the fleet when measured.
    pub n: usize,
    /// Counted repetition, from 0.
    pub rep: u32,
    /// Guest index within the fleet.
    pub guest: usize,
    /// Instance within the guest's request.
    pub instance: usize,
    /// The instance's headline figure (s for cpu/memory, MB/s for disk/network, µs for
    /// latency); the suite compares times for fixed-work benchmarks (`elapsed_s`) and
    /// bandwidth for fixed-duration ones, see [`suite_metric`].
    pub value: f64,
    /// `value`'s unit (s, MB/s, µs…).
    pub unit: String,
    /// Guest-side elapsed seconds of the instance.
    pub elapsed_s: f64,
    /// The workload's parameters ([`Workloads::params`]).
    #[serde(default)]
    pub params: String,
    /// Disk: how the host page cache was kept out of the read ([`crate::datadisk::cache_policy`]);
    /// empty for other resources and in samples older than the policy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cache_policy: String,
    /// Disk: the share (0..=1) of the guest's data disk copy resident in the host page cache
    /// just before the read, measured with mincore after eviction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_before: Option<f64>,
    /// Disk samples of a backend other than native: the host's own O_DIRECT read of the
    /// run's native reference copy (same size and block size), taken right before this read
    /// ([`paired_read`]), MB/s. The shared disk's speed drifts over a run (other I/O on a
    /// shared or virtual disk); the report compares each read with this adjacent one.
    /// None for other samples and in results older than the pairing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired_native_mbps: Option<f64>,
    /// The paired native read's elapsed seconds (same bytes as this read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired_native_s: Option<f64>,
    /// Seconds from the end of the paired native read to this read's request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired_gap_s: Option<f64>,
    /// The second paired native read, taken right after this read ended (same size and
    /// block size), MB/s: with the one before, it brackets this read ([`mark_paired`]).
    /// None in results older than the bracket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired_native_after_mbps: Option<f64>,
    /// The second paired native read's elapsed seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired_native_after_s: Option<f64>,
    /// Network samples: the kind of path the traffic took (absent in older results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_path: Option<NetPath>,
    /// Network samples: the path's MTU, measured on the host side of the guest's link
    /// (the shared stack's loopback for local paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Runs of several instances at once: start skew and overlap ([`sync`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<StartSync>,
    /// Host CPUs the guest's processes could run on when measured: its cpuset's size, else
    /// every CPU hostd could use. None in results older than this field: the report then
    /// takes the host's CPU count from the provenance, and says so.
    #[serde(default)]
    pub cpus: Option<usize>,
    /// The guest's vCPUs, for a guest with a kernel of its own (UML's is uniprocessor: 1).
    /// None with `cpus` recorded: no vCPU bound (a host process or container); None without
    /// `cpus`: not recorded (older results).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Id of the provenance it was measured under ([`crate::provenance::Provenance::id`]);
    /// empty in older results (their `provenance.json`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provenance: String,
}

/// How many CPUs a cpuset list names ("0", "0-3,6"); None for a malformed list.
pub fn cpuset_count(list: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in list.trim().split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?),
            None => {
                let a = part.trim().parse::<usize>().ok()?;
                (a, a)
            }
        };
        if b < a {
            return None;
        }
        n = n.checked_add(b - a + 1)?;
    }
    Some(n)
}

/// The CPUs a guest could use: (host CPUs its processes may run on, its vCPUs if it runs
/// a kernel of its own). A cpuset hostd cannot read counts as every CPU (never fewer than
/// the guest may really have had).
pub fn placement(kind: BackendKind, spec: &crate::backend::GuestSpec) -> (usize, Option<u32>) {
    let cpus =
        spec.limits.cpuset.and_then(cpuset_count).filter(|&c| c > 0).unwrap_or_else(host_cores);
    let vcpus = match kind {
        // UML kernels are uniprocessor whatever was asked (backend/uml.rs warns).
        BackendKind::Uml => Some(1),
        k if k.own_kernel() => Some(spec.vcpus),
        _ => None,
    };
    (cpus, vcpus)
}

/// The host CPUs a set of samples' guests could run on, and where the count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpus {
    /// How many.
    pub count: usize,
    /// false: the samples did not record it (results older than the record) and the host's
    /// CPU count from the provenance stood in.
    pub recorded: bool,
}

impl Cpus {
    /// The largest count any sample recorded (the guests of one fleet share one setting);
    /// `host` where none did. Never 0: every model divides by it.
    pub fn of(samples: &[&BenchSample], host: usize) -> Cpus {
        match samples.iter().filter_map(|s| s.cpus).max() {
            Some(c) => Cpus { count: c.clamp(1, 1 << 16), recorded: true },
            None => Cpus { count: host.clamp(1, 1 << 16), recorded: false },
        }
    }
}

/// Records in each sample the CPUs its guest had (matched by guest index in the fleet).
pub fn place(mut samples: Vec<BenchSample>, fleet: &crate::fleet::Fleet) -> Vec<BenchSample> {
    for s in &mut samples {
        if let Some(g) = fleet.guests.iter().find(|g| g.spec.index == s.guest) {
            let (cpus, vcpus) = placement(fleet.backend, &g.spec);
            s.cpus = Some(cpus);
            s.vcpus = vcpus;
        }
    }
    samples
}

impl BenchSample {
    /// The sample's path, for tables: `veth+bridge, MTU 1500`.
    pub fn path_label(&self) -> Option<String> {
        let p = self.net_path?;
        Some(match self.mtu {
            Some(m) => format!("{p}, MTU {m}"),
            None => format!("{p}, MTU unknown"),
        })
    }
}

/// Samples from one guest's answer to a run; `net`: the fleet's network path and MTU
/// ([`crate::fleet::Fleet::net_label`]), recorded on network samples.
#[allow(clippy::too_many_arguments)]
pub fn samples_of(
    backend: BackendKind,
    test: Test,
    resource: Resource,
    params: &str,
    n: usize,
    rep: u32,
    guest: usize,
    timed: &Timed,
    net: Option<(NetPath, Option<u32>)>,
) -> Vec<BenchSample> {
    let net = net.filter(|_| resource == Resource::Network);
    timed
        .report
        .instances
        .iter()
        .enumerate()
        .map(|(instance, r)| {
            let f = r.figure();
            BenchSample {
                backend,
                test,
                resource,
                n,
                rep,
                guest,
                instance,
                value: f.value,
                unit: f.unit.to_string(),
                elapsed_s: r.elapsed_s(),
                params: params.to_string(),
                cache_policy: String::new(),
                resident_before: None,
                paired_native_mbps: None,
                paired_native_s: None,
                paired_gap_s: None,
                paired_native_after_mbps: None,
                paired_native_after_s: None,
                net_path: net.map(|n| n.0),
                mtu: net.and_then(|n| n.1),
                sync: timed.sync.as_ref().and_then(|s| s.get(instance).copied()),
                cpus: None,
                vcpus: None,
                provenance: String::new(),
            }
        })
        .collect()
}

/// The figure the suite compares for a resource: (value, unit, higher is better). Fixed
/// work (cpu, memory, disk: the paper timed dd) is compared by time, the fixed-duration
/// network stream by bandwidth.
pub fn suite_metric(s: &BenchSample) -> (f64, &'static str, bool) {
    match s.resource {
        Resource::Network => (s.value, "MB/s", true),
        _ => (s.elapsed_s, "s", false),
    }
}

/// Cores available to guests on this host (the paper's host had one).
pub fn host_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Hand-made samples for tests here and in the report's crate.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::*;

    /// A hand-made sample: `value` is the metric (seconds, or MB/s for network).
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        backend: BackendKind,
        test: Test,
        resource: Resource,
        n: usize,
        rep: u32,
        guest: usize,
        instance: usize,
        value: f64,
    ) -> BenchSample {
        BenchSample {
            backend,
            test,
            resource,
            n,
            rep,
            guest,
            instance,
            value,
            unit: if resource == Resource::Network { "MB/s".into() } else { "s".into() },
            elapsed_s: value,
            params: "p".into(),
            cpus: None,
            vcpus: None,
            cache_policy: String::new(),
            resident_before: None,
            paired_native_mbps: None,
            paired_native_s: None,
            paired_gap_s: None,
            paired_native_after_mbps: None,
            paired_native_after_s: None,
            provenance: String::new(),
            net_path: None,
            mtu: None,
            sync: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuset_lists() {
        assert_eq!(cpuset_count("0"), Some(1));
        assert_eq!(cpuset_count("0-3,6"), Some(5));
        assert_eq!(cpuset_count(" 2-2 , 4-5 "), Some(3));
        assert_eq!(cpuset_count("3-1"), None);
        assert_eq!(cpuset_count("a"), None);
        assert_eq!(cpuset_count(""), None);
    }

    #[test]
    fn cpus_recorded_or_host() {
        let mut a =
            testing::sample(BackendKind::Native, Test::Linearity, Resource::Cpu, 2, 0, 0, 0, 1.0);
        let b = a.clone();
        assert_eq!(Cpus::of(&[&a, &b], 8), Cpus { count: 8, recorded: false });
        a.cpus = Some(1);
        assert_eq!(Cpus::of(&[&a, &b], 8), Cpus { count: 1, recorded: true });
        assert_eq!(Cpus::of(&[], 0), Cpus { count: 1, recorded: false });
    }
}
