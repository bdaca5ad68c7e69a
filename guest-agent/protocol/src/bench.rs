//! The paper's four microbenchmarks (section II.A): what the host asks for and what the
//! guest reports. The guest reports raw counts and its own elapsed time; the host derives
//! rates from them in one place ([`InstanceResult::figure`]) after checking them.

use serde::{Deserialize, Serialize};

/// Most concurrent copies of one benchmark a request may ask for.
pub const MAX_INSTANCES: u32 = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchRequest {
    pub spec: BenchSpec,
    /// Concurrent copies (the isolation test runs 2 in one guest). 1..=MAX_INSTANCES.
    pub instances: u32,
}

/// One microbenchmark with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "bench", rename_all = "snake_case", deny_unknown_fields)]
pub enum BenchSpec {
    /// CPU: `rounds` Newton iterations x ← (x + 2/x)/2 from x = 1, an iterative estimate
    /// of √2. One dependent chain of divisions in registers: no memory traffic.
    Cpu { rounds: u64 },
    /// Memory: C[i][j] = A[i][j] + B[i][j] + C[i][j] on n×n f64 matrices, `passes` times,
    /// with A = B = i + j and C = 0 initially.
    Memory { n: u32, passes: u32 },
    /// Disk: sequential read of `path` in `block_size` blocks (dd-style), O_DIRECT unless
    /// `direct` is false, at most `max_bytes` (whole file/device when absent).
    Disk { path: String, block_size: u32, max_bytes: Option<u64>, direct: bool },
    /// Network: netperf TCP_STREAM-style, send `msg_size` writes to `peer` for
    /// `duration_ms`; the receiver's byte count is the result.
    NetStream { peer: String, duration_ms: u32, msg_size: u32 },
    /// Network: netperf TCP_RR-style, one `size`-byte request and response at a time
    /// for `duration_ms`.
    NetRr { peer: String, duration_ms: u32, size: u32 },
}

impl BenchSpec {
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
                    return Err(format!("disk: block_size {block_size} must be a multiple of 512 in 512..=64 MiB"));
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
    pub fn validate(&self) -> Result<(), String> {
        if self.instances == 0 || self.instances > MAX_INSTANCES {
            return Err(format!("instances must be 1..={MAX_INSTANCES}, got {}", self.instances));
        }
        self.spec.validate()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Cpu,
    Memory,
    Disk,
    Network,
}

impl Resource {
    pub const ALL: [Resource; 4] = [Resource::Cpu, Resource::Memory, Resource::Disk, Resource::Network];
    pub fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Disk => "disk",
            Resource::Network => "network",
        }
    }
}

/// All instances of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchReport {
    pub instances: Vec<InstanceResult>,
}

/// One copy's result, timed inside the guest with CLOCK_MONOTONIC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceResult {
    pub start_ns: u64,
    pub end_ns: u64,
    pub work: Work,
}

/// What the instance did, in raw counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Work {
    /// The final estimate must be √2.
    Cpu { rounds: u64, estimate: f64 },
    /// `checked`: every C[i][j] equalled 2·passes·(i+j) afterwards.
    Memory { n: u32, passes: u32, checked: bool, bytes: u64 },
    Disk { bytes: u64, block_size: u32, direct: bool },
    /// Bytes the receiver acknowledged.
    NetStream { bytes: u64 },
    NetRr { transactions: u64 },
}

/// A rate derived from a result: the number a table shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    pub value: f64,
    pub unit: &'static str,
    /// Whether larger is better (bandwidth) or smaller (time).
    pub higher_is_better: bool,
}

impl InstanceResult {
    pub fn elapsed_s(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }

    /// Checks an untrusted result against the request it answers.
    pub fn check(&self, spec: &BenchSpec) -> Result<(), String> {
        if self.end_ns <= self.start_ns {
            return Err(format!("non-positive elapsed time ({} → {} ns)", self.start_ns, self.end_ns));
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
            Work::Cpu { .. } | Work::Memory { .. } => Figure { value: secs, unit: "s", higher_is_better: false },
            Work::Disk { bytes, .. } | Work::NetStream { bytes } => {
                Figure { value: *bytes as f64 / 1e6 / secs, unit: "MB/s", higher_is_better: true }
            }
            Work::NetRr { transactions } => {
                Figure { value: secs / *transactions as f64 * 1e6, unit: "us/transaction", higher_is_better: false }
            }
        }
    }
}

impl BenchReport {
    /// Checks the whole report: one result per requested instance, each plausible.
    pub fn check(&self, req: &BenchRequest) -> Result<(), String> {
        if self.instances.len() != req.instances as usize {
            return Err(format!("asked {} instances, guest reports {}", req.instances, self.instances.len()));
        }
        self.instances.iter().try_for_each(|i| i.check(&req.spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_req() -> BenchRequest {
        BenchRequest { spec: BenchSpec::Cpu { rounds: 100 }, instances: 2 }
    }

    fn cpu_result(estimate: f64) -> InstanceResult {
        InstanceResult { start_ns: 10, end_ns: 2_000_000_010, work: Work::Cpu { rounds: 100, estimate } }
    }

    #[test]
    fn untrusted_reports_are_checked() {
        let ok = BenchReport { instances: vec![cpu_result(std::f64::consts::SQRT_2); 2] };
        assert!(ok.check(&cpu_req()).is_ok());
        let short = BenchReport { instances: vec![cpu_result(std::f64::consts::SQRT_2)] };
        assert!(short.check(&cpu_req()).unwrap_err().contains("asked 2 instances"));
        let wrong = BenchReport { instances: vec![cpu_result(1.5); 2] };
        assert!(wrong.check(&cpu_req()).unwrap_err().contains("not √2"));
        let mut backwards = cpu_result(std::f64::consts::SQRT_2);
        backwards.end_ns = 5;
        assert!(backwards.check(&cpu_req().spec).unwrap_err().contains("elapsed"));
        let mismatched = InstanceResult { start_ns: 1, end_ns: 2, work: Work::NetStream { bytes: 5 } };
        assert!(mismatched.check(&cpu_req().spec).is_err());
        let unchecked = InstanceResult { start_ns: 1, end_ns: 2, work: Work::Memory { n: 4, passes: 1, checked: false, bytes: 1 } };
        assert!(unchecked.check(&BenchSpec::Memory { n: 4, passes: 1 }).unwrap_err().contains("failed its check"));
    }

    #[test]
    fn figures_and_units() {
        let r = cpu_result(std::f64::consts::SQRT_2);
        assert_eq!(r.figure().unit, "s");
        assert!((r.figure().value - 2.0).abs() < 1e-9);
        let d = InstanceResult { start_ns: 0, end_ns: 1_000_000_000, work: Work::Disk { bytes: 5_000_000, block_size: 4096, direct: true } };
        assert_eq!((d.figure().value, d.figure().unit), (5.0, "MB/s"));
        let rr = InstanceResult { start_ns: 0, end_ns: 1_000_000_000, work: Work::NetRr { transactions: 20_000 } };
        assert_eq!((rr.figure().value, rr.figure().unit), (50.0, "us/transaction"));
    }

    #[test]
    fn parameters_are_validated() {
        assert!(BenchRequest { spec: BenchSpec::Cpu { rounds: 100 }, instances: 0 }.validate().is_err());
        assert!(BenchRequest { spec: BenchSpec::Cpu { rounds: 100 }, instances: MAX_INSTANCES + 1 }.validate().is_err());
        assert!(BenchSpec::Cpu { rounds: 3 }.validate().is_err());
        assert!(BenchSpec::Memory { n: 1 << 20, passes: 1 }.validate().is_err());
        assert!(BenchSpec::Disk { path: "/x".into(), block_size: 1000, max_bytes: None, direct: true }.validate().is_err());
        assert!(BenchSpec::NetStream { peer: "host:1".into(), duration_ms: 10, msg_size: 10 }.validate().unwrap_err().contains("host:1"));
        assert!(BenchSpec::NetRr { peer: "10.0.0.1:5".into(), duration_ms: 10, size: 1 }.validate().is_ok());
    }
}
