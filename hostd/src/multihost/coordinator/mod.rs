//! The coordinator of `hostd boot --engine slurm`: inside a Slurm allocation it starts one
//! `hostd worker` per node with `srun`, authenticates them by a random token, checks they
//! boot the same images, measures each one's clock offset, splits the fleet, schedules T0,
//! merges their startups into one results directory with per-host provenance, and tears
//! down everywhere. A worker that disconnects, dies or misbehaves loses its guests; the
//! others' results stand.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::clock::{self, mono_ns, real_ns, Offset, Round};
use super::link::Link;
use super::plan;
use super::proto::{Booted, FromWorker, Hello, NetPlan, Slice, SliceFleet, SlicePart, ToWorker};
use crate::backend::BackendKind;
use crate::startup::{FleetBoot, StartMode};

mod calls;
mod campaign;
mod held;
mod images;
mod merge;
mod reach;
mod ring;
mod suite;
mod teardown;
pub use calls::HostCaller;
pub use campaign::{
    run_campaign, BackendMissing, CampaignOptions, CampaignOutcome, CampaignRecord,
};
pub use held::{status_of, up, GuestRef, GuestState, Held, HostGuest, HostStatus};
use images::check_images;
#[cfg(test)]
use images::same_images;
use merge::Merged;
pub use merge::{shortfalls, HostRecord, MultiHost};
pub use ring::{RingOptions, RingSummary};
pub use suite::{check_name, without_ring, SingleHost, SuiteOptions};
use teardown::{hold, tear_down_reporting, teardown_within};

/// What `hostd boot --engine slurm` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The fleet's groups (one for `boot` and `run`), each split over the hosts.
    pub groups: Vec<plan::FleetGroup>,
    pub mode: StartMode,
    pub parallelism: usize,
    pub boot_timeout: Duration,
    pub network: bool,
    /// Per-guest cgroup limits on every host (`hostd up`'s fleet file `[limits]`).
    pub limits: super::proto::SliceLimits,
    /// The emulated network of the whole fleet (`hostd up`'s fleet file `[net]`): each
    /// worker shapes its own guests' links by it.
    pub topology: Option<crate::netem::Topology>,
    /// Hosts (nodes of the allocation) to use.
    pub hosts: usize,
    /// Per-host weights of the split (empty: even).
    pub weights: Vec<f64>,
    /// Address workers connect to (None: the one the first node's route uses).
    pub listen: Option<IpAddr>,
    /// Parent of the results directory.
    pub results: PathBuf,
    /// The hostd binary the workers run (the nodes must see it at this path).
    pub exe: PathBuf,
    /// The coordinator's own image hashes, when it has images: every worker must match.
    pub images: Option<BTreeMap<String, String>>,
    /// How long the fleet stays up on every host once all have reported, before teardown;
    /// a host whose link drops meanwhile has its guests counted lost.
    pub hold: Duration,
    /// Check that every ready guest exchanges data with a guest on each other host.
    pub reach: bool,
    /// A worker that sends nothing, not even a heartbeat, for this long is lost; the
    /// workers tear down after the same silence from us (`link.rs`).
    pub lost_after: Duration,
    /// Measure the ring across hosts once the fleet is up (`hostd run --engine slurm`).
    pub ring: Option<RingOptions>,
    /// What the results directory's name says after its date (e.g. `boot-slurm-ns`).
    pub label: String,
    /// Notes for the provenance (what the run did and did not measure).
    pub notes: Vec<String>,
}

impl Options {
    /// Guests in all.
    pub fn n(&self) -> usize {
        self.groups.iter().map(|g| g.guests).sum()
    }

    /// The backend of a one-group fleet (`boot` and `run`, whose results name one
    /// backend); the first group's otherwise.
    pub fn backend(&self) -> BackendKind {
        self.groups.first().map_or(BackendKind::Ns, |g| g.backend)
    }

    /// Every group's system image, once each, in group order.
    pub fn systems(&self) -> Vec<String> {
        once_each(self.groups.iter().filter_map(|g| g.system.as_ref()).map(|(n, _)| n.clone()))
    }

    /// Every group's backend, once each, in group order.
    pub fn backends(&self) -> Vec<BackendKind> {
        once_each(self.groups.iter().map(|g| g.backend))
    }
}

/// Each item once, in first-seen order.
fn once_each<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    items.fold(Vec::new(), |mut out, i| {
        if !out.contains(&i) {
            out.push(i);
        }
        out
    })
}

/// Clock pings per worker.
const ROUNDS: u32 = 8;
/// How long workers have to connect and say hello after srun starts them.
const CONNECT_WITHIN: Duration = Duration::from_secs(120);
/// T0 after the slices are sent: room for each worker to make its network and, for a cold
/// start, sync and drop its page cache (2 s left workers 0.5 s late on this loaded machine).
const LEAD: Duration = Duration::from_secs(5);
/// A reply to a ping, or a teardown report, within this.
const REPLY_WITHIN: Duration = Duration::from_secs(60);

struct Worker {
    hello: Hello,
    link: Link<FromWorker>,
    rec: HostRecord,
    /// Calls to its guests while its fleet is held (`hostd exec`, `cp`, commands).
    caller: HostCaller,
}

impl Worker {
    fn name(&self) -> &str {
        &self.hello.hostname
    }

    /// Records why the worker is lost and closes its link: if it is only frozen, it finds
    /// the link closed when it wakes and tears down by itself.
    fn set_lost(&mut self, why: String) {
        self.link.abandon();
        self.caller.lose(&why);
        self.rec.lost = Some(why);
    }
}

/// A worker's message in an error: its start, escaped (Debug), at most 200 characters (a
/// report can be megabytes).
fn brief(m: &FromWorker) -> String {
    let t = format!("{m:?}");
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t,
    }
}

/// Why a connection did not become a worker.
enum HelloError {
    /// It did not prove it is one of ours (no hello, not our token): refused and ignored.
    Refused(anyhow::Error),
    /// One of our workers (it had the token) sent a hello that breaks the rules: the run
    /// stops, naming it.
    Invalid(anyhow::Error),
}

/// A token: 32 random bytes, hex.
pub fn new_token() -> Result<String> {
    let mut b = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom for the workers' token")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Equal in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn output(cmd: &str, args: &[&str]) -> Result<String> {
    let o = std::process::Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !o.status.success() {
        bail!(
            "{cmd} {}: {}: {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The address of the interface the first node of the allocation is reached through.
fn default_listen() -> Result<IpAddr> {
    let list = std::env::var("SLURM_JOB_NODELIST").context("SLURM_JOB_NODELIST is not set")?;
    let names = output("scontrol", &["show", "hostnames", &list])?;
    let first = names.lines().next().context("the allocation has no nodes")?.trim().to_string();
    let node = output("scontrol", &["show", "node", "-o", &first])?;
    let addr = node
        .split_whitespace()
        .find_map(|f| f.strip_prefix("NodeAddr="))
        .with_context(|| format!("no NodeAddr for node {first}"))?;
    let route = output("ip", &["-o", "route", "get", addr])?;
    let mut words = route.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            if let Some(a) = words.next().and_then(|a| a.parse().ok()) {
                return Ok(a);
            }
        }
    }
    bail!("`ip route get {addr}` (node {first}) names no source address: pass --listen")
}

async fn hello_of(s: TcpStream, token: &str, lost_after: Duration) -> Result<Worker, HelloError> {
    let refused = |e: anyhow::Error| HelloError::Refused(e);
    let peer = s.peer_addr().map_err(|e| refused(e.into()))?;
    let mut link = s
        .into_std()
        .and_then(|s| Link::new::<ToWorker>(s, lost_after))
        .map_err(|e| refused(anyhow::anyhow!("{peer}: serving its link: {e}")))?;
    let m = timeout(REPLY_WITHIN, link.recv())
        .await
        .map_err(|_| refused(anyhow::anyhow!("{peer}: no hello within {REPLY_WITHIN:?}")))?
        .map_err(|e| refused(anyhow::anyhow!("{peer}: {e}")))?;
    let FromWorker::Hello(hello) = m else {
        return Err(refused(anyhow::anyhow!("{peer}: the first message was not a hello")));
    };
    if !same(&hello.token, token) {
        return Err(refused(anyhow::anyhow!("{peer}: wrong token (not a worker of this run)")));
    }
    hello
        .validate()
        .map_err(|e| HelloError::Invalid(anyhow::anyhow!("worker at {peer}: bad hello: {e}")))?;
    let rec = HostRecord {
        hostname: hello.hostname.clone(),
        node_id: hello.node_id,
        node_name: hello.node_name.clone(),
        addr: hello.addr,
        cpus: hello.cpus,
        mem_mib: hello.mem_mib,
        images: hello.images.clone(),
        parts: Vec::new(),
        count: 0,
        clock: None,
        booted: None,
        start_vs_coordinator_s: None,
        serve_failed: Vec::new(),
        reach: None,
        teardown: None,
        teardown_error: None,
        ring_failed: Vec::new(),
        lost: None,
    };
    let caller = HostCaller::new(hello.hostname.clone(), link.sender());
    Ok(Worker { hello, link, rec, caller })
}

/// Waits for `k` authenticated workers (or fails once srun has exited or the time is up).
async fn accept(
    l: &TcpListener,
    k: usize,
    token: &str,
    lost_after: Duration,
    srun: &mut tokio::process::Child,
) -> Result<Vec<Worker>> {
    let mut got: Vec<Worker> = Vec::new();
    let mut pending = futures::stream::FuturesUnordered::new();
    let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
    use futures::StreamExt;
    while got.len() < k {
        tokio::select! {
            c = l.accept() => {
                let (s, _) = c.context("accepting a worker")?;
                pending.push(hello_of(s, token, lost_after));
            }
            Some(h) = pending.next() => match h {
                Ok(w) => {
                    if let Some(o) = got.iter().find(|o| o.hello.hostname == w.hello.hostname) {
                        bail!("two workers say they are host {} ({} and {})", o.name(), o.hello.addr, w.hello.addr);
                    }
                    eprintln!("hostd: worker on {} ({}) connected", w.name(), w.hello.addr);
                    got.push(w);
                }
                // A connection that is not one of our workers: say so, go on.
                Err(HelloError::Refused(e)) => eprintln!("hostd: refused a connection: {e:#}"),
                Err(HelloError::Invalid(e)) => return Err(e),
            },
            st = srun.wait() => bail!("srun exited ({}) with {} of {k} workers connected", st?, got.len()),
            _ = tokio::time::sleep_until(deadline) => {
                bail!("only {} of {k} workers connected within {CONNECT_WITHIN:?}", got.len())
            }
        }
    }
    Ok(got)
}

/// NTP-style offset of one worker's CLOCK_MONOTONIC against ours.
async fn measure_clock(w: &mut Worker) -> Result<Offset> {
    let mut rounds = Vec::new();
    for seq in 0..ROUNDS {
        let t1 = mono_ns();
        w.link.send(&ToWorker::Ping { seq })?;
        let m = timeout(REPLY_WITHIN, w.link.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no answer to a clock ping within {REPLY_WITHIN:?}"))??;
        let t2 = mono_ns();
        match m {
            FromWorker::Pong { seq: s, mono_ns } if s == seq => {
                rounds.push(Round { t1, worker: mono_ns, t2 })
            }
            other => bail!("answered ping {seq} with {}", brief(&other)),
        }
    }
    clock::estimate(&rounds).context("no usable clock round")
}

async fn await_booted(w: &mut Worker, slice: &Slice, within: Duration) -> Result<Booted> {
    let m = timeout(within, w.link.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no startup report within {within:?}"))??;
    match m {
        FromWorker::Booted(b) => {
            b.validate(slice).map_err(|e| anyhow::anyhow!("bad startup report: {e}"))?;
            Ok(b)
        }
        FromWorker::Error { message } => bail!("its slice could not start: {message:.4096}"),
        other => bail!("sent {} instead of its startup report", brief(&other)),
    }
}

/// One request to a worker and its answer within `within`.
async fn ask_within(w: &mut Worker, m: &ToWorker, within: Duration) -> Result<FromWorker> {
    w.link.send(m)?;
    timeout(within, w.link.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {within:?}"))?
        .map_err(Into::into)
}

/// What the run produced.
pub struct Outcome {
    pub multihost: MultiHost,
    pub results: PathBuf,
    pub boot: FleetBoot,
}

/// Runs the whole multi-host boot inside the current Slurm allocation.
pub async fn run(o: &Options) -> Result<Outcome> {
    merge::write_one(o, fleet(o).await?)
}

/// One fleet across the allocation's hosts, from its job step of workers to their
/// teardown: merged, not yet written.
async fn fleet(o: &Options) -> Result<Merged> {
    if o.groups.len() != 1 {
        // Its results (samples, boot.json) are one backend's fleet.
        bail!("a measured boot across hosts is one group of guests, not {}", o.groups.len());
    }
    let job = std::env::var("SLURM_JOB_ID").ok();
    let (listener, token, mut srun) = launch(o).await?;
    let merged = coordinate(o, &listener, &token, &mut srun, job).await;
    end_step(srun, o.n()).await;
    merged
}

/// Listens for the workers and starts them, one per node, as one job step: the listener,
/// their token and srun.
async fn launch(o: &Options) -> Result<(TcpListener, String, tokio::process::Child)> {
    let listen = match o.listen {
        Some(a) => a,
        None => default_listen().context("choosing the address workers connect to")?,
    };
    let listener = TcpListener::bind(SocketAddr::new(listen, 0))
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let at = listener.local_addr()?;
    let token = new_token()?;
    let k = o.hosts.to_string();
    let backends: Vec<&str> = o.backends().iter().map(|b| b.name()).collect();
    eprintln!("hostd: coordinator on {at}: starting {k} workers with srun");
    let srun = tokio::process::Command::new("srun")
        .args(["--ntasks-per-node=1", "-N", &k, "-n", &k, "--kill-on-bad-exit=0", "--"])
        .arg(&o.exe)
        .args(["worker", "--connect", &at.to_string(), "--backend", &backends.join(",")])
        .args(["--lost-after", &o.lost_after.as_secs_f64().to_string()])
        // Each worker reports these images' hashes too, checked like the others'.
        .args(if o.systems().is_empty() {
            vec![]
        } else {
            vec!["--systems".to_string(), o.systems().join(",")]
        })
        .env("VIRTBENCH_WORKER_TOKEN", &token)
        .stdin(Stdio::null())
        // Not killed with the coordinator (Ctrl-C): Slurm would then end the step and kill
        // the workers KillWait seconds later, maybe halfway through their teardown. Their
        // links drop instead, they tear down, and srun ends with them.
        .kill_on_drop(false)
        .spawn()
        .context("starting the workers with srun")?;
    Ok((listener, token, srun))
}

/// Waits for the workers' step to end once they were told to tear down (or lost).
async fn end_step(mut srun: tokio::process::Child, n: usize) {
    // Workers exit once torn down (or once their link drops: a lost host's worker is still
    // tearing its guests down); srun with them. Cancelled sooner, a host of 5000 guests was
    // killed halfway and left them to the next hostd's orphan reaping.
    let grace = teardown_within(n); // no host holds more than the fleet
    match timeout(grace, srun.wait()).await {
        Ok(Ok(st)) if !st.success() => eprintln!("hostd: srun exited {st}"),
        Ok(_) => {}
        Err(_) => {
            eprintln!("hostd: srun still running {grace:?} after teardown: cancelling the step");
            let _ = srun.kill().await;
        }
    }
}

/// Time a worker is given to report its slice of `guests` guests started: T0's lead, one
/// guest's boot timeout (each guest's counts from its own launch), a minute for the memory
/// reading and the report, and [`STARTUP_PER_GUEST`] for each launch, which the worker makes
/// one after another on its host's CPUs. A worker that dies or freezes meanwhile is found by
/// its heartbeats (`--lost-after`), not by this bound.
fn startup_within(boot_timeout: Duration, guests: usize) -> Duration {
    LEAD + boot_timeout + Duration::from_secs(60) + STARTUP_PER_GUEST * guests as u32
}

/// Per guest of a slice's start: hostd spent up to 12.6 ms of CPU per launch at 5000 ns
/// guests on one host (docs/benchmarks.md); 10,000 ns guests on two emulated hosts of this
/// 2-core machine, beside other builds (load average 50-70), had not reported after 365 s
/// (the bound without this term).
const STARTUP_PER_GUEST: Duration = Duration::from_millis(50);

/// A fleet started on every host: the workers (each with its startup report, or lost),
/// their slices and T0 on both of our clocks.
struct Started {
    ws: Vec<Worker>,
    t0_unix_ns: u64,
    t0_mono: u64,
}

/// Connects the workers, sends their slices and waits for every startup report.
async fn start(
    o: &Options,
    listener: &TcpListener,
    token: &str,
    srun: &mut tokio::process::Child,
) -> Result<Started> {
    let mut ws = connect(o, listener, token, srun).await?;
    let (slices, t0_unix_ns, t0_mono) = send_slices(o, &mut ws, token).await?;
    let reports = futures::future::join_all(ws.iter_mut().zip(&slices).map(|(w, s)| async move {
        if w.rec.lost.is_some() {
            return;
        }
        match await_booted(w, s, startup_within(o.boot_timeout, SlicePart::total(&s.parts))).await {
            Ok(b) => w.rec.booted = Some(b),
            Err(e) => w.set_lost(format!("{e:#}")),
        }
    }));
    reports.await;
    Ok(Started { ws, t0_unix_ns, t0_mono })
}

async fn coordinate(
    o: &Options,
    listener: &TcpListener,
    token: &str,
    srun: &mut tokio::process::Child,
    job: Option<String>,
) -> Result<Merged> {
    let Started { mut ws, t0_unix_ns, t0_mono } = start(o, listener, token, srun).await?;
    if o.reach {
        reach::reach(&mut ws).await;
    }
    let ring = match &o.ring {
        Some(r) => {
            eprintln!("hostd: measuring the ring across hosts");
            Some(ring::run(&mut ws, o.backend(), r).await)
        }
        None => None,
    };
    let up = ws.iter().filter(|w| w.rec.lost.is_none()).count();
    eprintln!(
        "hostd: {up} of {} hosts reported their slice; holding the fleet for {:?}",
        ws.len(),
        o.hold
    );
    futures::future::join_all(ws.iter_mut().map(|w| hold(w, o.hold))).await;
    for w in ws.iter_mut() {
        if let (Some(b), Some(c)) = (&w.rec.booted, &w.rec.clock) {
            let start_here = b.start_mono_ns as f64 / 1e9 - c.offset_s;
            w.rec.start_vs_coordinator_s = Some(start_here - t0_mono as f64 / 1e9);
        }
        if let Some(l) = &w.rec.lost {
            eprintln!("hostd: host {}: its {} guests are lost: {l}", w.name(), w.rec.count);
        }
    }
    futures::future::join_all(ws.iter_mut().map(tear_down_reporting)).await;
    Ok(merge::merge(o, ws.into_iter().map(|w| w.rec).collect(), t0_unix_ns, job, ring))
}

/// The workers, connected, sorted by node, checked (same images, the backend available)
/// and with their clock offsets measured.
async fn connect(
    o: &Options,
    listener: &TcpListener,
    token: &str,
    srun: &mut tokio::process::Child,
) -> Result<Vec<Worker>> {
    let mut ws = accept(listener, o.hosts, token, o.lost_after, srun).await?;
    ws.sort_by(|a, b| {
        (a.hello.node_id, &a.hello.hostname).cmp(&(b.hello.node_id, &b.hello.hostname))
    });
    check_images(&ws, o.images.as_ref(), &o.groups)?;
    for b in o.backends() {
        if let Some(w) = ws.iter().find(|w| !w.hello.backends.contains(&b)) {
            return Err(BackendMissing { host: w.name().to_string(), backend: b }.into());
        }
    }
    for w in ws.iter_mut() {
        let c = measure_clock(w)
            .await
            .with_context(|| format!("host {}: measuring its clock", w.name()))?;
        eprintln!(
            "hostd: host {}: clock offset {:+.6} s ± {:.6} s",
            w.name(),
            c.offset_s,
            c.bound_s
        );
        w.rec.clock = Some(c);
    }
    Ok(ws)
}

/// Splits the fleet by the weights and sends each worker its slice with T0 [`LEAD`] from
/// now (a worker the slice cannot be sent to is lost). The slices, T0 on CLOCK_REALTIME
/// and T0 on our CLOCK_MONOTONIC.
async fn send_slices(
    o: &Options,
    ws: &mut [Worker],
    token: &str,
) -> Result<(Vec<Slice>, u64, u64)> {
    let weights = if o.weights.is_empty() { vec![1.0; ws.len()] } else { o.weights.clone() };
    if weights.len() != ws.len() {
        bail!("--weights has {} weights for {} hosts", weights.len(), ws.len());
    }
    let parts = plan::split_groups(&o.groups, &weights).map_err(anyhow::Error::msg)?;
    let vni = u32::from_str_radix(&token[..6], 16).unwrap_or(1).max(1);
    let t0_unix_ns = real_ns() + LEAD.as_nanos() as u64;
    let t0_mono = mono_ns() + LEAD.as_nanos() as u64;
    let addrs: Vec<Ipv4Addr> = ws.iter().map(|w| w.hello.addr).collect();
    let mut slices = Vec::new();
    for (slot, (w, parts)) in ws.iter_mut().zip(parts).enumerate() {
        let s = Slice {
            parts,
            fleet: SliceFleet {
                parallelism: o.parallelism,
                boot_timeout_s: o.boot_timeout.as_secs(),
                cold: o.mode == StartMode::Cold,
                limits: o.limits.clone(),
                topology: o.topology.clone(),
                net: o.network.then(|| NetPlan {
                    slot: slot as u16,
                    hosts: addrs.len() as u16,
                    vni,
                    peers: addrs
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != slot)
                        .map(|(_, a)| *a)
                        .collect(),
                }),
            },
            t0_unix_ns,
        };
        (w.rec.parts, w.rec.count) = (s.parts.clone(), SlicePart::total(&s.parts));
        if let Err(e) = w.link.send(&ToWorker::Slice(s.clone())) {
            w.set_lost(format!("sending its slice: {e}"));
        }
        slices.push(s);
    }
    Ok((slices, t0_unix_ns, t0_mono))
}

#[cfg(test)]
mod tests;
