//! The paper's four microbenchmarks (section II.A): what the host asks for and what the
//! guest reports. The guest reports raw counts and its own elapsed time; the host derives
//! rates from them in one place ([`InstanceResult::figure`]) after checking them.

use serde::{Deserialize, Serialize};

/// Most concurrent copies of one benchmark a request may ask for.
pub const MAX_INSTANCES: u32 = 64;

/// Furthest ahead of its receipt a request's start instant may lie: a guest refuses a
/// later one rather than wait (for ever, with a wrong or hostile clock offset).
pub const MAX_START_AHEAD_NS: u64 = 60_000_000_000;

/// The `bench` command: one microbenchmark in `instances` concurrent copies, optionally
/// started at a common instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchRequest {
    /// The benchmark and its parameters.
    pub spec: BenchSpec,
    /// Concurrent copies (the isolation test runs 2 in one guest). 1..=MAX_INSTANCES.
    pub instances: u32,
    /// When every instance begins its timed work, on the **guest's** CLOCK_MONOTONIC (ns):
    /// the host translates one common instant into each guest's clock (docs/protocol.md).
    /// Preparation (allocation, opening, connecting) happens before it. None: as soon as
    /// all instances are prepared. At most [`MAX_START_AHEAD_NS`] after the request's receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ns: Option<u64>,
}

/// One microbenchmark with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "bench", rename_all = "snake_case", deny_unknown_fields)]
pub enum BenchSpec {
    /// CPU: `rounds` Newton iterations x ← (x + 2/x)/2 from x = 1, an iterative estimate
    /// of √2. One dependent chain of divisions in registers: no memory traffic.
    Cpu {
        /// Iterations, at least 8 (the estimate converges after 5).
        rounds: u64,
    },
    /// Memory: `C[i][j] = A[i][j] + B[i][j] + C[i][j]` on n×n f64 matrices, `passes` times,
    /// with A = B = i + j and C = 0 initially.
    Memory {
        /// Side of each matrix; the three take 24·n² bytes, at most 4 GiB.
        n: u32,
        /// Sweeps over the matrices, at least 1.
        passes: u32,
    },
    /// Disk: sequential read of `path` in `block_size` blocks (dd-style), O_DIRECT unless
    /// `direct` is false, at most `max_bytes` (whole file/device when absent).
    Disk {
        /// The guest file or block device to read.
        path: String,
        /// Bytes a read: a multiple of 512, from 512 to 64 MiB (O_DIRECT needs whole,
        /// aligned blocks).
        block_size: u32,
        /// Most bytes to read (more than 0), rounded down to whole blocks.
        max_bytes: Option<u64>,
        /// Read with O_DIRECT, so every block comes from the (virtual) disk and not from
        /// the guest's page cache.
        direct: bool,
    },
    /// Network: netperf TCP_STREAM-style, send `msg_size` writes to `peer` for
    /// `duration_ms`; the receiver's byte count is the result.
    NetStream {
        /// `ip:port` of the receiver, a server started with `net_serve`.
        peer: String,
        /// How long to send, in ms (more than 0).
        duration_ms: u32,
        /// Bytes a write, 1 to 16 MiB.
        msg_size: u32,
    },
    /// Network: netperf TCP_RR-style, one `size`-byte request and response at a time
    /// for `duration_ms`.
    NetRr {
        /// `ip:port` of the responder, a server started with `net_serve`.
        peer: String,
        /// How long to keep exchanging, in ms (more than 0).
        duration_ms: u32,
        /// Bytes of each request and of each response, 1 to 1 MiB.
        size: u32,
    },
}

impl BenchSpec {
    /// The resource this benchmark measures (both network benchmarks: the network).
    pub fn resource(&self) -> Resource {
        match self {
            BenchSpec::Cpu { .. } => Resource::Cpu,
            BenchSpec::Memory { .. } => Resource::Memory,
            BenchSpec::Disk { .. } => Resource::Disk,
            BenchSpec::NetStream { .. } | BenchSpec::NetRr { .. } => Resource::Network,
        }
    }

    /// Stable short name used in results (`cpu`, `memory`, `disk`, `net_stream`, `net_rr`).
    pub fn name(&self) -> &'static str {
        match self {
            BenchSpec::Cpu { .. } => "cpu",
            BenchSpec::Memory { .. } => "memory",
            BenchSpec::Disk { .. } => "disk",
            BenchSpec::NetStream { .. } => "net_stream",
            BenchSpec::NetRr { .. } => "net_rr",
        }
    }

    /// Parameter sanity, checked by both sides before any work starts.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            BenchSpec::Cpu { rounds } => {
                if *rounds < 8 {
                    return Err("cpu: rounds must be >= 8 (the estimate converges after 5)".into());
                }
            }
            BenchSpec::Memory { n, passes } => {
                if *n == 0 || *passes == 0 {
                    return Err("memory: n and passes must be > 0".into());
                }
                // 3 matrices of n² f64 must fit comfortably in a small guest.
                if (*n as u64) * (*n as u64) * 24 > 4 << 30 {
                    return Err(format!("memory: n = {n} needs more than 4 GiB"));
                }
                // Values stay exact in f64 only below 2^53.
                if 2.0 * (*passes as f64) * 2.0 * (*n as f64) >= 9.0e15 {
                    return Err("memory: passes × n too large for exact checking".into());
                }
            }
            BenchSpec::Disk { path, block_size, max_bytes, .. } => {
                if path.is_empty() {
                    return Err("disk: path is empty".into());
                }
                if *block_size < 512 || *block_size > 64 << 20 || block_size % 512 != 0 {
                    return Err(format!(
                        "disk: block_size {block_size} must be a multiple of 512 in 512..=64 MiB"
                    ));
                }
                if *max_bytes == Some(0) {
                    return Err("disk: max_bytes must be > 0".into());
                }
            }
            BenchSpec::NetStream { peer, duration_ms, msg_size } => {
                check_peer(peer)?;
                if *duration_ms == 0 || *msg_size == 0 || *msg_size > 16 << 20 {
                    return Err("net_stream: duration_ms > 0 and msg_size in 1..=16 MiB".into());
                }
            }
            BenchSpec::NetRr { peer, duration_ms, size } => {
                check_peer(peer)?;
                if *duration_ms == 0 || *size == 0 || *size > 1 << 20 {
                    return Err("net_rr: duration_ms > 0 and size in 1..=1 MiB".into());
                }
            }
        }
        Ok(())
    }
}

fn check_peer(peer: &str) -> Result<(), String> {
    peer.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("network peer {peer:?} is not an ip:port address"))
}

impl BenchRequest {
    /// Parameter sanity of the whole request: 1 to [`MAX_INSTANCES`] instances and a valid
    /// spec ([`BenchSpec::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.instances == 0 || self.instances > MAX_INSTANCES {
            return Err(format!("instances must be 1..={MAX_INSTANCES}, got {}", self.instances));
        }
        self.spec.validate()
    }

    /// The guest's side of the start instant: given its clock when the request arrived,
    /// the instant to wait for (None: start at once), or why it refuses to wait.
    pub fn start_instant(&self, received_ns: u64) -> Result<Option<u64>, String> {
        match self.start_at_ns {
            None => Ok(None),
            Some(at) if at.saturating_sub(received_ns) > MAX_START_AHEAD_NS => Err(format!(
                "start instant {at} ns is {} ns after the request arrived ({received_ns} ns), more than the {MAX_START_AHEAD_NS} ns allowed",
                at - received_ns
            )),
            Some(at) => Ok(Some(at)),
        }
    }
}

/// What a benchmark stresses; results are grouped by it, as in the paper's four
/// microbenchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Processor time ([`BenchSpec::Cpu`]).
    Cpu,
    /// Memory bandwidth ([`BenchSpec::Memory`]).
    Memory,
    /// Sequential disk reads ([`BenchSpec::Disk`]).
    Disk,
    /// TCP throughput and latency ([`BenchSpec::NetStream`], [`BenchSpec::NetRr`]).
    Network,
}

impl Resource {
    /// Every resource, in declaration order (which is also their sort order).
    pub const ALL: [Resource; 4] =
        [Resource::Cpu, Resource::Memory, Resource::Disk, Resource::Network];
    /// Stable short name used in results (`cpu`, `memory`, `disk`, `network`), the same as
    /// its serde name.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Disk => "disk",
            Resource::Network => "network",
        }
    }
}

/// All instances of one request, and the guest's view of when it ran (its CLOCK_MONOTONIC,
/// ns): the host maps these to its own clock to measure start skew and overlap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchReport {
    /// One result per requested instance.
    pub instances: Vec<InstanceResult>,
    /// When the agent read the request.
    pub received_ns: u64,
    /// When the last instance finished its preparation (every start comes after it).
    pub prepared_ns: u64,
}

/// One copy's result, timed inside the guest with CLOCK_MONOTONIC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceResult {
    /// When its timed work began, in ns: the start instant if the instance was ready by
    /// then, else when it was ready (every instance prepared); the lateness is start skew.
    pub start_ns: u64,
    /// When its timed work ended, in ns (network clients: the receiver's acknowledgement or
    /// the last response); after `start_ns`.
    pub end_ns: u64,
    /// What it did.
    pub work: Work,
}

/// What the instance did, in raw counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Work {
    /// The final estimate must be √2.
    Cpu {
        /// Iterations run; must equal the request's.
        rounds: u64,
        /// The final x; must be within 1e-15 of √2.
        estimate: f64,
    },
    /// `checked`: every `C[i][j]` equalled 2·passes·(i+j) afterwards.
    Memory {
        /// Side of each matrix; must equal the request's.
        n: u32,
        /// Sweeps made; must equal the request's.
        passes: u32,
        /// Whether the result matrix passed the check (made outside the timed region).
        checked: bool,
        /// Bytes moved: three 8-byte reads and one write per element and pass
        /// (32·n²·passes).
        bytes: u64,
    },
    /// A sequential read of the disk.
    Disk {
        /// Bytes read: more than 0, at most the request's `max_bytes`.
        bytes: u64,
        /// Bytes a read.
        block_size: u32,
        /// Whether the reads used O_DIRECT.
        direct: bool,
    },
    /// Bytes the receiver acknowledged.
    NetStream {
        /// Bytes the receiver counted (the agent checks they equal those sent); more than 0.
        bytes: u64,
    },
    /// Request/response exchanges made.
    NetRr {
        /// Exchanges completed: at least one; the last one ends at or past `duration_ms`.
        transactions: u64,
    },
}

/// A rate derived from a result: the number a table shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    /// The number, in `unit`.
    pub value: f64,
    /// `s`, `MB/s` (10⁶ bytes a second) or `us/transaction`.
    pub unit: &'static str,
    /// Whether larger is better (bandwidth) or smaller (time).
    pub higher_is_better: bool,
}

impl InstanceResult {
    /// Seconds from `start_ns` to `end_ns` (0 when they are out of order).
    pub fn elapsed_s(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }

    /// Checks an untrusted result against the request it answers.
    pub fn check(&self, spec: &BenchSpec) -> Result<(), String> {
        if self.end_ns <= self.start_ns {
            return Err(format!(
                "non-positive elapsed time ({} → {} ns)",
                self.start_ns, self.end_ns
            ));
        }
        match (spec, &self.work) {
            (BenchSpec::Cpu { rounds, .. }, Work::Cpu { rounds: r, estimate }) => {
                if r != rounds {
                    return Err(format!("cpu: asked {rounds} rounds, guest reports {r}"));
                }
                if (estimate - std::f64::consts::SQRT_2).abs() > 1e-15 {
                    return Err(format!("cpu: estimate {estimate} is not √2"));
                }
            }
            (BenchSpec::Memory { n, passes }, Work::Memory { n: gn, passes: gp, checked, .. }) => {
                if gn != n || gp != passes {
                    return Err("memory: guest reports other dimensions than asked".into());
                }
                if !checked {
                    return Err("memory: result matrix failed its check".into());
                }
            }
            (BenchSpec::Disk { max_bytes, .. }, Work::Disk { bytes, .. }) => {
                if *bytes == 0 {
                    return Err("disk: read 0 bytes".into());
                }
                if let Some(m) = max_bytes {
                    if bytes > m {
                        return Err(format!("disk: read {bytes} bytes, more than the {m} asked"));
                    }
                }
            }
            (BenchSpec::NetStream { .. }, Work::NetStream { bytes }) => {
                if *bytes == 0 {
                    return Err("net_stream: receiver got 0 bytes".into());
                }
            }
            (BenchSpec::NetRr { .. }, Work::NetRr { transactions }) => {
                if *transactions == 0 {
                    return Err("net_rr: 0 transactions".into());
                }
            }
            (s, w) => return Err(format!("{} request answered with a {w:?} result", s.name())),
        }
        Ok(())
    }

    /// The headline figure of this result: execution time for CPU and memory (the paper
    /// plots time), bandwidth for disk and stream, latency for request/response.
    pub fn figure(&self) -> Figure {
        let secs = self.elapsed_s();
        match &self.work {
            Work::Cpu { .. } | Work::Memory { .. } => {
                Figure { value: secs, unit: "s", higher_is_better: false }
            }
            Work::Disk { bytes, .. } | Work::NetStream { bytes } => {
                Figure { value: *bytes as f64 / 1e6 / secs, unit: "MB/s", higher_is_better: true }
            }
            Work::NetRr { transactions } => Figure {
                value: secs / *transactions as f64 * 1e6,
                unit: "us/transaction",
                higher_is_better: false,
            },
        }
    }
}

impl BenchReport {
    /// Checks the whole report: one result per requested instance, each plausible, and
    /// its times in order: received ≤ prepared ≤ every start, and no start before the
    /// requested instant.
    pub fn check(&self, req: &BenchRequest) -> Result<(), String> {
        if self.instances.len() != req.instances as usize {
            return Err(format!(
                "asked {} instances, guest reports {}",
                req.instances,
                self.instances.len()
            ));
        }
        self.instances.iter().try_for_each(|i| i.check(&req.spec))?;
        if self.prepared_ns < self.received_ns {
            return Err(format!(
                "prepared at {} ns, before the request arrived at {} ns",
                self.prepared_ns, self.received_ns
            ));
        }
        for i in &self.instances {
            if i.start_ns < self.prepared_ns {
                return Err(format!(
                    "an instance started at {} ns, before preparation ended at {} ns",
                    i.start_ns, self.prepared_ns
                ));
            }
            if let Some(at) = req.start_at_ns {
                if i.start_ns < at {
                    return Err(format!(
                        "an instance started at {} ns, before the requested instant {at} ns",
                        i.start_ns
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_req() -> BenchRequest {
        BenchRequest { spec: BenchSpec::Cpu { rounds: 100 }, instances: 2, start_at_ns: None }
    }

    fn report(instances: Vec<InstanceResult>) -> BenchReport {
        BenchReport { instances, received_ns: 1, prepared_ns: 5 }
    }

    fn cpu_result(estimate: f64) -> InstanceResult {
        InstanceResult {
            start_ns: 10,
            end_ns: 2_000_000_010,
            work: Work::Cpu { rounds: 100, estimate },
        }
    }

    #[test]
    fn untrusted_reports_are_checked() {
        let ok = report(vec![cpu_result(std::f64::consts::SQRT_2); 2]);
        assert!(ok.check(&cpu_req()).is_ok());
        let short = report(vec![cpu_result(std::f64::consts::SQRT_2)]);
        assert!(short.check(&cpu_req()).unwrap_err().contains("asked 2 instances"));
        let wrong = report(vec![cpu_result(1.5); 2]);
        assert!(wrong.check(&cpu_req()).unwrap_err().contains("not √2"));
        let mut backwards = cpu_result(std::f64::consts::SQRT_2);
        backwards.end_ns = 5;
        assert!(backwards.check(&cpu_req().spec).unwrap_err().contains("elapsed"));
        let mismatched =
            InstanceResult { start_ns: 1, end_ns: 2, work: Work::NetStream { bytes: 5 } };
        assert!(mismatched.check(&cpu_req().spec).is_err());
        let unchecked = InstanceResult {
            start_ns: 1,
            end_ns: 2,
            work: Work::Memory { n: 4, passes: 1, checked: false, bytes: 1 },
        };
        assert!(unchecked
            .check(&BenchSpec::Memory { n: 4, passes: 1 })
            .unwrap_err()
            .contains("failed its check"));
    }

    #[test]
    fn report_times_are_checked_against_the_start_instant() {
        let ok = report(vec![cpu_result(std::f64::consts::SQRT_2); 2]);
        // Instances start at 10 ns.
        assert!(ok.check(&BenchRequest { start_at_ns: Some(10), ..cpu_req() }).is_ok());
        let early = ok.check(&BenchRequest { start_at_ns: Some(11), ..cpu_req() }).unwrap_err();
        assert!(early.contains("before the requested instant 11"), "{early}");
        let backwards = BenchReport { prepared_ns: 0, ..ok.clone() };
        assert!(backwards.check(&cpu_req()).unwrap_err().contains("before the request arrived"));
        let unprepared = BenchReport { prepared_ns: 11, ..ok };
        assert!(unprepared.check(&cpu_req()).unwrap_err().contains("before preparation ended"));
    }

    #[test]
    fn the_guest_refuses_to_wait_too_long() {
        let at = |a| BenchRequest { start_at_ns: a, ..cpu_req() };
        assert_eq!(at(None).start_instant(100), Ok(None));
        assert_eq!(
            at(Some(100 + MAX_START_AHEAD_NS)).start_instant(100),
            Ok(Some(100 + MAX_START_AHEAD_NS))
        );
        // An instant already past: start at once (the host sees the lateness as skew).
        assert_eq!(at(Some(5)).start_instant(100), Ok(Some(5)));
        assert!(at(Some(101 + MAX_START_AHEAD_NS))
            .start_instant(100)
            .unwrap_err()
            .contains("more than"));
        assert!(at(Some(u64::MAX)).start_instant(0).is_err());
    }

    #[test]
    fn figures_and_units() {
        let r = cpu_result(std::f64::consts::SQRT_2);
        assert_eq!(r.figure().unit, "s");
        assert!((r.figure().value - 2.0).abs() < 1e-9);
        let d = InstanceResult {
            start_ns: 0,
            end_ns: 1_000_000_000,
            work: Work::Disk { bytes: 5_000_000, block_size: 4096, direct: true },
        };
        assert_eq!((d.figure().value, d.figure().unit), (5.0, "MB/s"));
        let rr = InstanceResult {
            start_ns: 0,
            end_ns: 1_000_000_000,
            work: Work::NetRr { transactions: 20_000 },
        };
        assert_eq!((rr.figure().value, rr.figure().unit), (50.0, "us/transaction"));
    }

    #[test]
    fn parameters_are_validated() {
        assert!(BenchRequest {
            spec: BenchSpec::Cpu { rounds: 100 },
            instances: 0,
            start_at_ns: None
        }
        .validate()
        .is_err());
        assert!(BenchRequest {
            spec: BenchSpec::Cpu { rounds: 100 },
            instances: MAX_INSTANCES + 1,
            start_at_ns: None
        }
        .validate()
        .is_err());
        assert!(BenchSpec::Cpu { rounds: 3 }.validate().is_err());
        assert!(BenchSpec::Memory { n: 1 << 20, passes: 1 }.validate().is_err());
        assert!(BenchSpec::Disk {
            path: "/x".into(),
            block_size: 1000,
            max_bytes: None,
            direct: true
        }
        .validate()
        .is_err());
        assert!(BenchSpec::NetStream { peer: "host:1".into(), duration_ms: 10, msg_size: 10 }
            .validate()
            .unwrap_err()
            .contains("host:1"));
        assert!(BenchSpec::NetRr { peer: "10.0.0.1:5".into(), duration_ms: 10, size: 1 }
            .validate()
            .is_ok());
    }

    proptest::proptest! {
        /// Whatever times a guest reports, the check never panics, and a report it accepts
        /// has them in order: received ≤ prepared ≤ start (≥ the instant) < end.
        #[test]
        fn accepted_times_are_ordered(recv in proptest::prelude::any::<u64>(), prep in proptest::prelude::any::<u64>(),
                                      start in proptest::prelude::any::<u64>(), end in proptest::prelude::any::<u64>(),
                                      at in proptest::prelude::any::<Option<u64>>()) {
            let rep = BenchReport {
                instances: vec![InstanceResult { start_ns: start, end_ns: end, work: Work::Cpu { rounds: 100, estimate: std::f64::consts::SQRT_2 } }],
                received_ns: recv,
                prepared_ns: prep,
            };
            let req = BenchRequest { spec: BenchSpec::Cpu { rounds: 100 }, instances: 1, start_at_ns: at };
            let _ = req.start_instant(recv);
            if rep.check(&req).is_ok() {
                proptest::prop_assert!(recv <= prep && prep <= start && start < end);
                proptest::prop_assert!(at.is_none_or(|a| a <= start));
            }
        }
    }
}
