//! `hostd bench`: the four microbenchmarks in one guest, repeated, summarised. On the
//! `native` backend this is the paper's reference time T_a (section II.A.1).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vb_protocol::bench::{BenchReport, BenchRequest, BenchSpec, Resource};
use vb_protocol::msg::{Command, Hello, ReplyBody, Role};

use crate::backend::{AnyBackend, Backend, BackendKind, BackendOptions, GuestSpec, Images};
use crate::channel::AgentConn;
use crate::fleet::{self, FleetConfig};
use crate::guest::{boot, RunningGuest};
use crate::peer::Peer;
use crate::provenance::Provenance;
use crate::runstate::RunState;
use crate::stats::Summary;

/// Why `hostd bench`, or one benchmark request ([`run_once`]), failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum BenchError {
    /// No counted repetition asked for.
    #[error("--reps must be at least 1")]
    NoReps,
    /// A host-side step (files, run state, fleet, peer, page cache), named.
    #[error("{what}: {error}")]
    Host { what: String, error: Box<dyn std::error::Error + Send + Sync> },
    /// The backend cannot run on this host (its probe says why).
    #[error(transparent)]
    Unavailable(#[from] crate::backend::Unavailable),
    /// The guest did not boot.
    #[error(transparent)]
    Boot(#[from] crate::guest::BootError),
    /// The one-guest fleet did not start.
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    /// The network benchmarks' far end did not start.
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    /// The disk benchmark's data file could not be made.
    #[error(transparent)]
    DataDisk(#[from] crate::datadisk::DataDiskError),
    /// The disk benchmark's file could not be evicted from the page cache.
    #[error(transparent)]
    PageCache(#[from] crate::pagecache::PageCacheError),
    /// The run's state on disk.
    #[error(transparent)]
    RunState(std::io::Error),
    /// Any of these, said to be from a backend.
    #[error("{backend} backend: {error}")]
    Backend { backend: String, error: Box<BenchError> },
    /// The control channel to the agent failed.
    #[error(transparent)]
    Channel(#[from] crate::channel::ChannelError),
    /// The guest's report failed the checks against its request.
    #[error("guest result rejected: {0}")]
    Rejected(String),
    /// The agent answered a request with something else than its answer.
    #[error("{request} answered with {answer}")]
    Answer { request: &'static str, answer: String },
    /// Any of these, said to be from one benchmark.
    #[error("{bench} benchmark: {error}")]
    Bench { bench: String, error: Box<BenchError> },
    /// The request itself is out of range (the flags' values).
    #[error("{0}")]
    Invalid(String),
    /// The disk benchmark's file stayed cached after its eviction.
    #[error("{}: {bytes} bytes stay in the page cache after eviction (mapped by a process?): the read would not come from the disk", path.display())]
    StillCached { path: PathBuf, bytes: u64 },
    /// A benchmark ran but recorded nothing.
    #[error("no samples")]
    NoSamples,
    /// The one-guest fleet has no guest: its failure.
    #[error("{0}")]
    NoGuest(String),
}

type Result<T, E = BenchError> = std::result::Result<T, E>;

/// [`BenchError::Host`] for a failed step named `what`.
fn host<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> BenchError {
    move |e| BenchError::Host { what: what.into(), error: Box::new(e) }
}

/// The benchmarks `hostd bench` can run, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum), clap(rename_all = "snake_case"))]
#[serde(rename_all = "snake_case")]
pub enum BenchName {
    /// Newton steps towards √2 (paper: CPU).
    Cpu,
    /// Passes of C = A + B + C over three n×n f64 matrices (paper: memory).
    Memory,
    /// Sequential O_DIRECT read of the data disk, as dd (paper: disk).
    Disk,
    /// TCP stream bandwidth to the peer, as netperf TCP_STREAM (paper: network).
    NetStream,
    /// TCP request/response latency to the peer, as netperf TCP_RR.
    NetRr,
}

/// Parameters of one `hostd bench` run. Defaults are the CLI's.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The backend to run the benchmarks on.
    pub backend: BackendKind,
    /// The images it boots.
    pub images: Images,
    /// The backend's own options (binaries, accelerator).
    pub backend_opts: BackendOptions,
    /// The benchmarks to run, in order.
    pub benches: Vec<BenchName>,
    /// Counted repetitions of each benchmark.
    pub reps: u32,
    /// Discarded runs before the counted ones.
    pub warmup: u32,
    /// Concurrent copies in the guest.
    pub instances: u32,
    /// CPU benchmark: rounds of its work.
    pub cpu_rounds: u64,
    /// Memory benchmark: the matrix size.
    pub mem_n: u32,
    /// Memory benchmark: passes over it.
    pub mem_passes: u32,
    /// File the disk benchmark reads; created (disk_mib MiB) in the work directory if absent.
    pub disk_file: Option<PathBuf>,
    /// Size of the disk file, MiB.
    pub disk_mib: u64,
    /// Disk benchmark: block size, KiB.
    pub disk_block_kib: u32,
    /// Network benchmarks: how long each runs, ms.
    pub net_duration_ms: u32,
    /// Network stream: message size, bytes.
    pub net_msg_size: u32,
    /// Network request/response: request and response size, bytes.
    pub rr_size: u32,
    /// How long the guest may take to say hello.
    pub hello_timeout: Duration,
    /// How long one benchmark may take.
    pub bench_timeout: Duration,
    /// Where the guest's files and the disk file go.
    pub workdir: PathBuf,
}

/// One benchmark's repetitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// The benchmark.
    pub bench: BenchName,
    /// The resource it loads.
    pub resource: Resource,
    /// What was measured, with its parameters, in words.
    pub measures: String,
    /// The request's benchmark, with its parameters.
    pub spec: BenchSpec,
    /// Concurrent copies in the guest.
    pub instances: u32,
    /// Runs discarded before the measured ones.
    pub warmup: u32,
    /// samples: one per instance per counted repetition.
    #[serde(flatten)]
    pub summary: Summary,
}

/// What `hostd bench` measured: per benchmark a summary, with the guest and provenance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRun {
    /// The backend.
    pub backend: BackendKind,
    /// What it was measured with.
    pub provenance: Provenance,
    /// The agent's hello: its version and what the guest saw.
    pub guest: Hello,
    /// One per benchmark.
    pub results: Vec<BenchResult>,
}

/// Runs `opts.benches` in one guest (two processes on the host for `native`), warm-ups
/// then `opts.reps` counted runs each; `progress` gets a line per run.
pub async fn run(opts: &BenchOptions, progress: &mut dyn Write) -> Result<BenchRun> {
    if opts.reps == 0 {
        return Err(BenchError::NoReps);
    }
    let mut artifacts = opts.images.hashes.clone();
    let mut notes = opts.images.notes.clone();
    artifacts.insert(
        "agent".to_string(),
        imagegen::hash::sha256_file(&opts.images.agent)
            .map(|(h, _)| h)
            .map_err(host(format!("reading agent {}", opts.images.agent.display())))?,
    );
    let backend = AnyBackend::new(opts.backend, &opts.images, &opts.backend_opts);
    backend.probe().await?;
    std::fs::create_dir_all(&opts.workdir)
        .map_err(host(format!("creating {}", opts.workdir.display())))?;
    let disk_path = if opts.benches.contains(&BenchName::Disk) {
        Some(disk_file(opts, &mut notes)?)
    } else {
        None
    };
    let (hello, results) = if opts.backend == BackendKind::Native {
        on_host(&backend, disk_path, opts, progress).await?
    } else {
        in_fleet(&backend, disk_path, opts, progress).await.map_err(|e| in_backend(opts, e))?
    };
    let mut provenance = Provenance::collect(artifacts);
    provenance.notes = notes;
    Ok(BenchRun { backend: opts.backend, provenance, guest: hello, results })
}

/// `e`, said to be from `opts.backend`.
fn in_backend(opts: &BenchOptions, e: BenchError) -> BenchError {
    BenchError::Backend { backend: opts.backend.name().to_string(), error: Box::new(e) }
}

/// Whether a network benchmark is asked for (it needs a peer).
fn wants_net(opts: &BenchOptions) -> bool {
    opts.benches.iter().any(|b| matches!(b, BenchName::NetStream | BenchName::NetRr))
}

/// The file the disk benchmark reads: the one given, the image's, or one written in the work
/// directory; `notes` says which and how it is cached.
fn disk_file(opts: &BenchOptions, notes: &mut Vec<String>) -> Result<PathBuf> {
    let p = match opts.disk_file.as_ref().or(opts.images.disk.as_ref()) {
        Some(p) => p.clone(),
        None => {
            let p = opts.workdir.join("disk-bench.bin");
            write_data_file(&p, opts.disk_mib)
                .map_err(host("creating the disk benchmark's file"))?;
            p
        }
    };
    let len =
        std::fs::metadata(&p).map_err(host(format!("disk benchmark file {}", p.display())))?.len();
    notes.push(format!(
        "disk benchmark reads {} ({len} bytes){}, cache policy {}",
        p.display(),
        if p.is_file() { ", evicted from the host page cache before each run" } else { "" },
        crate::datadisk::cache_policy(opts.backend)
    ));
    Ok(p)
}

/// The host reference: two plain processes on the host's loopback, exactly what dd and
/// iperf3 are compared with (scripts/compare-native.sh).
async fn on_host(
    backend: &AnyBackend,
    disk_path: Option<PathBuf>,
    opts: &BenchOptions,
    progress: &mut dyn Write,
) -> Result<(Hello, Vec<BenchResult>)> {
    let boot_failed = |e: crate::guest::BootError| in_backend(opts, BenchError::Boot(e));
    let spec = |index: usize, name: &str| GuestSpec {
        index,
        name: name.into(),
        vcpus: 1,
        mem_mib: 256,
        data_disk: disk_path.clone(),
        workdir: opts.workdir.join(name),
        run: "bench".into(),
        net: None,
        cgroup: None,
        limits: Default::default(),
        images: None,
    };
    let guest = boot(backend, spec(0, "bench0"), opts.hello_timeout).await.map_err(boot_failed)?;
    // netperf's client and server are two processes (two machines in the paper).
    let peer = if wants_net(opts) {
        match boot(backend, spec(1, "bench-peer"), opts.hello_timeout).await {
            Ok(p) => Some(p),
            Err(e) => {
                guest.shutdown(backend, Duration::ZERO).await;
                return Err(boot_failed(e));
            }
        }
    } else {
        None
    };
    let peer_addr = match &peer {
        Some(p) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], net_serve(&p.conn).await?))),
        None => None,
    };
    let disk = disk_path.as_ref().map(|d| d.display().to_string());
    let result = run_benches(&guest, peer_addr, disk.as_deref(), opts, progress).await;
    let grace = Duration::from_secs(5);
    if let Some(p) = peer {
        p.shutdown(backend, grace).await;
    }
    let hello = guest.hello.clone();
    guest.shutdown(backend, grace).await;
    Ok((hello, result?))
}

/// A one-guest fleet on its own network, the peer on the fleet's bridge.
async fn in_fleet(
    backend: &AnyBackend,
    disk_path: Option<PathBuf>,
    opts: &BenchOptions,
    progress: &mut dyn Write,
) -> Result<(Hello, Vec<BenchResult>)> {
    for c in crate::runstate::reap_orphans() {
        let _ = writeln!(progress, "cleaned up after a previous hostd that did not finish: {c}");
    }
    let run = RunState::create("bench", None).map_err(BenchError::RunState)?;
    let r = async {
        let mut cfg = FleetConfig {
            n: 1,
            data_disk: disk_path.clone(),
            boot_timeout: opts.hello_timeout,
            ..Default::default()
        };
        // Room for every concurrent copy's working set besides what the guest needs idle.
        if opts.benches.contains(&BenchName::Memory) {
            let need = crate::fidelity::mem_guest_mib(cfg.mem_mib, opts.mem_n, opts.instances);
            cfg.mem_mib =
                u32::try_from(need).map_err(host("guest memory for the memory benchmark"))?;
        }
        let fleet = fleet::start(backend, &run, &cfg, |_| {}).await?;
        let r = async {
            let Some(guest) = fleet.guests.first() else {
                let why = fleet.failures.first().map(|f| f.error.clone()).unwrap_or_default();
                return Err(BenchError::NoGuest(why));
            };
            let net = fleet.net.as_ref().expect("network on");
            let peer = if wants_net(opts) {
                Some(Peer::start(&opts.images, &opts.backend_opts, &run, net).await?)
            } else {
                None
            };
            let disk = disk_path.as_ref().map(|d| opts.backend.guest_disk(d));
            let result =
                run_benches(guest, peer.as_ref().map(|p| p.addr), disk.as_deref(), opts, progress)
                    .await;
            if let Some(p) = peer {
                p.stop().await;
            }
            Ok((guest.hello.clone(), result?))
        }
        .await;
        fleet.teardown(backend, Duration::from_secs(10)).await;
        r
    }
    .await;
    run.finish();
    r
}

async fn run_benches(
    guest: &RunningGuest,
    peer: Option<std::net::SocketAddr>,
    disk: Option<&str>,
    opts: &BenchOptions,
    progress: &mut dyn Write,
) -> Result<Vec<BenchResult>> {
    let mut results = Vec::new();
    for &b in &opts.benches {
        let spec = match b {
            BenchName::Cpu => BenchSpec::Cpu { rounds: opts.cpu_rounds },
            BenchName::Memory => BenchSpec::Memory { n: opts.mem_n, passes: opts.mem_passes },
            BenchName::Disk => BenchSpec::Disk {
                path: disk.expect("disk file prepared").to_string(),
                block_size: opts.disk_block_kib.saturating_mul(1024),
                max_bytes: None,
                direct: true,
            },
            BenchName::NetStream => BenchSpec::NetStream {
                peer: peer.expect("peer started").to_string(),
                duration_ms: opts.net_duration_ms,
                msg_size: opts.net_msg_size,
            },
            BenchName::NetRr => BenchSpec::NetRr {
                peer: peer.expect("peer started").to_string(),
                duration_ms: opts.net_duration_ms,
                size: opts.rr_size,
            },
        };
        let req = BenchRequest { spec, instances: opts.instances, start_at_ns: None };
        req.validate().map_err(|e| BenchError::Invalid(e.to_string()))?;
        // The disk file is evicted from the host page cache before each disk run, as in a
        // campaign; a block device given by hand is read as it is.
        let evict = guest.spec.data_disk.as_deref().filter(|p| b == BenchName::Disk && p.is_file());
        results.push(repeat(&guest.conn, b, &req, evict, opts, progress).await?);
    }
    Ok(results)
}

async fn net_serve(conn: &AgentConn) -> Result<u16> {
    match conn.request(Command::NetServe { port: 0 }, Duration::from_secs(10)).await? {
        ReplyBody::Listening { port } if port != 0 => Ok(port),
        other => Err(BenchError::Answer { request: "net_serve", answer: format!("{other:?}") }),
    }
}

async fn repeat(
    conn: &AgentConn,
    b: BenchName,
    req: &BenchRequest,
    evict: Option<&std::path::Path>,
    opts: &BenchOptions,
    progress: &mut dyn Write,
) -> Result<BenchResult> {
    let mut samples = Vec::new();
    let mut unit = "";
    for i in 0..opts.warmup + opts.reps {
        let counted = i >= opts.warmup;
        if let Some(p) = evict {
            crate::datadisk::level(p)?;
            let left = crate::pagecache::evict(p)?;
            if left.resident_bytes > 0 {
                return Err(BenchError::StillCached {
                    path: p.to_path_buf(),
                    bytes: left.resident_bytes,
                });
            }
        }
        let t0 = Instant::now();
        let report = run_once(conn, req, opts.bench_timeout).await.map_err(|e| {
            BenchError::Bench { bench: req.spec.name().to_string(), error: Box::new(e) }
        })?;
        let _ = writeln!(
            progress,
            "  {:<10} {} {}/{} done in {:.2} s",
            req.spec.name(),
            if counted { "run" } else { "warm-up" },
            if counted { i - opts.warmup + 1 } else { i + 1 },
            if counted { opts.reps } else { opts.warmup },
            t0.elapsed().as_secs_f64()
        );
        if counted {
            for inst in &report.instances {
                let f = inst.figure();
                unit = f.unit;
                samples.push(f.value);
            }
        }
    }
    let summary = Summary::of(req.spec.name(), unit, samples).ok_or(BenchError::NoSamples)?;
    Ok(BenchResult {
        bench: b,
        resource: req.spec.resource(),
        measures: describe(&req.spec),
        spec: req.spec.clone(),
        instances: req.instances,
        warmup: opts.warmup,
        summary,
    })
}

/// Sends one benchmark request and checks the (untrusted) report against it.
pub async fn run_once(
    conn: &AgentConn,
    req: &BenchRequest,
    timeout: Duration,
) -> Result<BenchReport> {
    match conn.request(Command::Bench(req.clone()), timeout).await? {
        ReplyBody::Bench(report) => {
            report.check(req).map_err(|e| BenchError::Rejected(e.to_string()))?;
            Ok(report)
        }
        other => Err(BenchError::Answer { request: "bench", answer: format!("{other:?}") }),
    }
}

/// The measured quantity in words, parameters included.
pub fn describe(spec: &BenchSpec) -> String {
    match spec {
        BenchSpec::Cpu { rounds } => format!("time of {rounds} Newton steps towards √2"),
        BenchSpec::Memory { n, passes } => {
            format!("time of {passes} passes C=A+B+C on {n}×{n} f64 matrices")
        }
        BenchSpec::Disk { block_size, direct, max_bytes, .. } => format!(
            "sequential {}read{}, {} KiB blocks, bandwidth",
            if *direct { "O_DIRECT " } else { "" },
            max_bytes.map(|m| format!(" of {} MiB", m >> 20)).unwrap_or_default(),
            block_size / 1024
        ),
        BenchSpec::NetStream { peer, duration_ms, msg_size } => {
            format!("TCP stream to {peer} for {duration_ms} ms, {msg_size}-byte writes, received bandwidth")
        }
        BenchSpec::NetRr { peer, duration_ms, size } => format!(
            "TCP request/response with {peer}, {size} byte each way, {duration_ms} ms, latency"
        ),
    }
}

/// Why the disk benchmark's data file could not be written.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum DataFileError {
    #[error("disk benchmark file {}: its size must be at least 1 MiB (0 asked)", path.display())]
    ZeroSize { path: PathBuf },
    #[error("writing disk benchmark file {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Writes `mb` MiB of non-zero data and syncs it, so reads really come from the disk
/// (a sparse file would be served from holes without I/O).
pub fn write_data_file(path: &Path, mb: u64) -> Result<(), DataFileError> {
    if mb == 0 {
        return Err(DataFileError::ZeroSize { path: path.to_path_buf() });
    }
    let tmp = path.with_extension("partial");
    let write = |source| DataFileError::Write { path: tmp.clone(), source };
    let mut f = std::fs::File::create(&tmp).map_err(write)?;
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] | 1;
    }
    for _ in 0..mb {
        f.write_all(&block).map_err(write)?;
    }
    f.sync_all().map_err(write)?;
    std::fs::rename(&tmp, path)
        .map_err(|source| DataFileError::Write { path: path.to_path_buf(), source })
}

/// The human-readable table, provenance first.
pub fn table(run: &BenchRun) -> String {
    let mut out = String::new();
    for l in run.provenance.lines() {
        out.push_str(&format!("# {l}\n"));
    }
    let g = &run.guest;
    let boot = match g.role {
        Role::Init => {
            format!(", ready {:.3} s after its kernel started", g.clock.boottime_ns as f64 / 1e9)
        }
        Role::Process => ", a host process".to_string(),
    };
    out.push_str(&format!(
        "# guest: backend {}, {} (kernel {}, {} CPUs, agent {}{boot})\n",
        run.backend.name(),
        g.hostname,
        g.kernel_release,
        g.cpus,
        g.agent_version,
    ));
    out.push_str(&format!(
        "{:<11} {:>4} {:>4} {:>13} {:>12} {:>13} {:>13}  {:<15} {}\n",
        "benchmark", "reps", "inst", "mean", "std_dev", "min", "max", "unit", "measures"
    ));
    for r in &run.results {
        let s = &r.summary;
        out.push_str(&format!(
            "{:<11} {:>4} {:>4} {:>13.4} {:>12.4} {:>13.4} {:>13.4}  {:<15} {}\n",
            s.name,
            s.samples.len() as u32 / r.instances.max(1),
            r.instances,
            s.mean,
            s.std_dev,
            s.min,
            s.max,
            s.unit,
            r.measures
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero-sized data file is refused by name, before anything is written.
    #[test]
    fn zero_sized_data_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.bin");
        let e = write_data_file(&p, 0).unwrap_err();
        assert!(matches!(&e, DataFileError::ZeroSize { path } if *path == p), "{e:?}");
        assert!(e.to_string().contains("disk.bin"), "{e}");
        assert!(!p.exists() && !p.with_extension("partial").exists());
        let e = write_data_file(&d.path().join("no/such/dir.bin"), 1).unwrap_err();
        assert!(matches!(e, DataFileError::Write { .. }), "{e:?}");
    }
}
