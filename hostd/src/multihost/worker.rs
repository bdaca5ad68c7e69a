//! `hostd worker`: one per node of a multi-host run, started by the coordinator as a Slurm
//! job step. It connects back, says who it is, answers clock pings, starts its slice of the
//! fleet at T0, reports, and holds the fleet until told to tear down — or until the link to
//! the coordinator drops or goes silent past the bound (the coordinator died, was
//! interrupted, froze or its host vanished): then it tears down alone.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::TcpStream;

use super::clock::{mono_ns, real_ns};
use super::link::Link;
use super::proto::{self, FromWorker, Hello, Slice, SlicePart, ToWorker, TornDown};
use super::slice::{self, Running};
use crate::backend::{BackendKind, BackendOptions, Images};
use crate::fleet::FleetConfig;
use crate::guest::StopLaunching;
use crate::netlab::{FleetNet, HostPlan, NetMode};
use crate::runstate::RunState;

/// What a worker is started with.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The coordinator, `ADDR:PORT`.
    pub connect: String,
    /// The coordinator's token.
    pub token: String,
    /// Backends to probe and report.
    pub backends: Vec<BackendKind>,
    pub images: Images,
    pub backend_opts: BackendOptions,
    /// A coordinator that sends nothing, not even a heartbeat, for this long is gone.
    pub lost_after: Duration,
    /// System images whose hashes the hello reports (the fleet's groups boot them).
    pub systems: Vec<String>,
}

/// How long a guest may take to power off at teardown before it is killed.
const GRACE: Duration = Duration::from_secs(10);

/// Text a worker sends: one line, no control characters, bounded.
fn clean(s: &str) -> String {
    let t: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut t = t.trim().to_string();
    if t.len() > proto::MAX_TEXT {
        let mut cut = proto::MAX_TEXT;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
    }
    if t.is_empty() {
        t.push('?');
    }
    t
}

fn mem_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()))
        })
        .map_or(1, |k| (k / 1024).max(1))
}

async fn hello(o: &WorkerOptions, addr: std::net::Ipv4Addr) -> Hello {
    let report = crate::probe::probe(&o.backends, &o.images, &o.backend_opts).await;
    let backends = report.backends.iter().filter(|b| b.available).map(|b| b.backend).collect();
    for b in report.backends.iter().filter(|b| !b.available) {
        eprintln!("hostd worker: {} unavailable: {}", b.backend, b.detail);
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Hello {
        token: o.token.clone(),
        hostname: clean(
            &nix::unistd::gethostname().map_or("?".into(), |h| h.to_string_lossy().into_owned()),
        ),
        node_id: env("SLURM_NODEID").and_then(|v| v.parse().ok()),
        node_name: env("SLURMD_NODENAME").map(|n| clean(&n)),
        cpus: report.host.cpus.clamp(1, 1 << 20) as u32,
        mem_mib: mem_mib(),
        backends,
        images: with_systems(&o.images, &o.systems)
            .iter()
            .take(proto::MAX_IMAGES)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        addr,
    }
}

/// The images' hashes with those of each system image (one this host lacks is left out,
/// and said in its log: the coordinator names it missing here).
fn with_systems(images: &Images, systems: &[String]) -> BTreeMap<String, String> {
    let mut hashes = images.hashes.clone();
    for name in systems {
        let mut im = images.clone();
        match crate::images::add_system(&mut im, name, Default::default()) {
            Ok(()) => hashes.extend(im.hashes),
            Err(e) => eprintln!("hostd worker: system image {name}: {e:#}"),
        }
    }
    hashes
}

/// Runs the worker until its fleet is torn down.
pub async fn run(o: WorkerOptions) -> Result<()> {
    let stream = TcpStream::connect(&o.connect)
        .await
        .with_context(|| format!("connecting to the coordinator at {}", o.connect))?;
    let std::net::IpAddr::V4(addr) = stream.local_addr()?.ip() else {
        bail!("the coordinator {} is reached over IPv6: the fleet network needs IPv4", o.connect);
    };
    // Probed before the link beats: the hello is the first line the coordinator reads.
    let hello = hello(&o, addr).await;
    let mut link = stream
        .into_std()
        .and_then(|s| Link::<ToWorker>::new::<FromWorker>(s, o.lost_after))
        .context("serving the link to the coordinator")?;
    link.send(&FromWorker::Hello(hello))?;
    for c in crate::runstate::reap_orphans() {
        eprintln!("hostd worker: cleaned up after a previous hostd that did not finish: {c}");
    }
    let r = loop {
        match link.recv().await {
            Ok(ToWorker::Ping { seq }) => {
                link.send(&FromWorker::Pong { seq, mono_ns: mono_ns() })?
            }
            Ok(ToWorker::Slice(s)) => break slice(&o, s, addr, &mut link).await,
            Ok(ToWorker::Teardown) => break Ok(()),
            Ok(other) => {
                break Err(anyhow::anyhow!(
                    "coordinator {}: sent {other:?} before a slice",
                    o.connect
                ))
            }
            Err(e) => break Err(anyhow::anyhow!("coordinator {}: {e}", o.connect)),
        }
    };
    // What is queued (the last report) goes out before the process exits.
    link.close().await;
    r
}

async fn slice(
    o: &WorkerOptions,
    s: Slice,
    addr: std::net::Ipv4Addr,
    link: &mut Link<ToWorker>,
) -> Result<()> {
    let run = RunState::create("worker", None)?;
    // Installed before the start: from now on SIGTERM (Slurm ending the step) no longer
    // kills us; it stops the launches, and we tear down.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (running, started, stopped) = match start_at_t0(o, &run, &s, addr, link, &mut term).await {
        Ok(x) => x,
        Err(e) => {
            let cleaned = run.finish();
            let _ = link.send(&FromWorker::Error { message: clean(&format!("{e:#}; {cleaned}")) });
            return Err(e);
        }
    };
    let why = match stopped {
        Some(why) => why,
        None => match report(&running, &run, &s, link, &started) {
            Err(message) => {
                let (_, _, left) = running.teardown(GRACE).await;
                let cleaned = run.finish();
                let left: String = left.iter().map(|l| format!("; left: {l}")).collect();
                let message = clean(&format!("{message}{left}; {cleaned}"));
                let _ = link.send(&FromWorker::Error { message: message.clone() });
                bail!(message);
            }
            Ok(Some(failed)) => failed,
            // Hold the fleet until the coordinator says so, its link drops, or Slurm ends
            // the step.
            Ok(None) => hold(&running, link, &mut term).await,
        },
    };
    if !why.is_empty() {
        eprintln!("hostd worker: tearing down: {why}");
    }
    let (clean_n, killed, left) = running.teardown(GRACE).await;
    let cleaned = run.finish();
    let mut leftovers: Vec<String> = left.iter().map(|e| clean(e)).collect();
    leftovers.extend(cleaned.errors.iter().map(|e| clean(e)));
    let done = TornDown { clean: clean_n, killed, leftovers };
    if why.is_empty() {
        link.send(&FromWorker::TornDown(done))?;
    } else if !done.leftovers.is_empty() {
        // No coordinator to tell: the step's log says it.
        eprintln!("hostd worker: left after teardown: {}", done.leftovers.join("; "));
    }
    Ok(())
}

/// After the timed start: shapes the links (as on one machine; a host that cannot shape
/// keeps no guest: the error), then sends the startup report (why the link failed, if it
/// did).
fn report(
    running: &Running,
    run: &RunState,
    s: &Slice,
    link: &mut Link<ToWorker>,
    started: &Started,
) -> Result<Option<String>, String> {
    if let Some(Err(e)) = s.fleet.topology.as_ref().map(|t| running.shape(run, t)) {
        return Err(format!("the fleet's network ([net]): {e}"));
    }
    let (lateness, start, before) = (started.lateness_s, started.start_mono_ns, &started.before);
    let booted = running.booted(run, lateness, start, before.as_ref(), clean);
    Ok(link
        .send(&FromWorker::Booted(booted))
        .err()
        .map(|e| format!("the coordinator's link failed ({e})")))
}

/// A slice started at T0: its start's lateness (s), its start on CLOCK_MONOTONIC, and what
/// its memory is measured against.
struct Started {
    lateness_s: f64,
    start_mono_ns: u64,
    before: Option<super::memory::Before>,
}

/// Checks every part, makes this host's part of the fleet network, empties the page cache
/// for a cold start, waits for T0 and starts every part, watching the link meanwhile. The
/// slice running, its start, and why its start was stopped if it was (as [`hold`] says it).
async fn start_at_t0(
    o: &WorkerOptions,
    run: &RunState,
    s: &Slice,
    addr: std::net::Ipv4Addr,
    link: &mut Link<ToWorker>,
    term: &mut tokio::signal::unix::Signal,
) -> Result<(Running, Started, Option<String>)> {
    s.fleet.limits.check().map_err(|e| anyhow::anyhow!("the slice's limits: {e}"))?;
    let (raise, stop) = StopLaunching::new();
    let planned = slice::plan(s, &o.images, &o.backend_opts, |p| FleetConfig {
        n: p.count,
        mem_mib: p.mem_mib,
        vcpus: p.vcpus,
        parallelism: s.fleet.parallelism,
        network: s.fleet.net.is_some(),
        boot_timeout: Duration::from_secs(s.fleet.boot_timeout_s),
        limits: s.fleet.limits.limits(),
        stop: Some(stop.clone()),
        ..Default::default()
    })?;
    let net = host_net(run, s, addr)?;
    if s.fleet.cold {
        if let Err(e) = crate::startup::drop_caches() {
            if let Some(n) = net {
                let _ = n.destroy();
            }
            return Err(anyhow::Error::from(e).context("emptying the page cache for a cold start"));
        }
    }
    let wait = s.t0_unix_ns.saturating_sub(real_ns());
    tokio::time::sleep(Duration::from_nanos(wait)).await;
    let start_mono_ns = mono_ns();
    let lateness_s = (real_ns() as i128 - s.t0_unix_ns as i128) as f64 / 1e9;
    // Read in well under a millisecond: the start stays on T0.
    let started = Started { lateness_s, start_mono_ns, before: super::memory::Before::now() };
    let start = Running::start(planned, run, net);
    tokio::pin!(start);
    // A worker whose coordinator is gone stops launching (a slice of thousands of guests
    // took minutes to finish launching otherwise), then tears down what started.
    let why = tokio::select! {
        r = &mut start => return Ok((r?, started, None)),
        m = link.recv() => match m {
            Ok(ToWorker::Teardown) => String::new(),
            Ok(other) => format!("the coordinator sent {:.200} while the slice started", format!("{other:?}")),
            Err(e) => format!("the coordinator's link: {e}"),
        },
        _ = term.recv() => "SIGTERM".to_string(),
        _ = tokio::signal::ctrl_c() => "SIGINT".to_string(),
    };
    let _ = raise.send(true);
    let running = start.await?;
    eprintln!(
        "hostd worker: stopped launching ({}): {} of {} guests had started; tearing them down",
        if why.is_empty() { "the coordinator said to tear down" } else { &why },
        running.ready(),
        SlicePart::total(&s.parts),
    );
    Ok((running, started, Some(why)))
}

/// The one place the fleet network is made: this host's part of the network across hosts
/// (its slot's bridge, a VXLAN port to every peer), if the slice has a network.
fn host_net(run: &RunState, s: &Slice, addr: std::net::Ipv4Addr) -> Result<Option<FleetNet>> {
    let Some(p) = &s.fleet.net else { return Ok(None) };
    let plan = HostPlan {
        slot: p.slot,
        hosts: p.hosts,
        vni: p.vni,
        local: addr,
        underlay_dev: HostPlan::underlay_dev_of(addr)?,
        peers: p.peers.clone(),
    };
    Ok(Some(FleetNet { mode: NetMode::Private, ..FleetNet::create_on_host(&run.run, &plan)? }))
}

/// One call of the coordinator's to guest `guest` (global index) of this slice, answered
/// with `id` on `out` (the link may be gone by then: the answer is then dropped).
fn call_guest(
    running: &Running,
    id: u64,
    guest: usize,
    wait_ms: u64,
    call: proto::GuestCall,
    out: super::link::Sender,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let conn = running.guest(guest).map(|g| g.conn.clone());
    async move {
        let error =
            |e: &dyn std::fmt::Display| FromWorker::GuestError { id, error: clean(&e.to_string()) };
        let answer = match (conn, call.check()) {
            (None, _) => error(&format!("g{guest} is not a ready guest of this host")),
            (_, Err(e)) => error(&e),
            (Some(conn), Ok(())) => {
                let wait = Duration::from_millis(wait_ms.min(proto::MAX_CALL_WAIT_MS));
                match conn.request(call.into_command(), wait).await {
                    Ok(reply) => FromWorker::GuestReply { id, reply },
                    Err(e) => error(&e),
                }
            }
        };
        let _ = out.send(&answer);
    }
}

/// Holds the fleet, answering the reach check and calls to its guests, until the
/// coordinator says to tear down (then ""), its link drops or goes silent past the bound, or
/// Slurm ends the step: why it ended otherwise.
async fn hold(
    running: &Running,
    link: &mut Link<ToWorker>,
    term: &mut tokio::signal::unix::Signal,
) -> String {
    // The ring's rounds learn how long their guests need to get ready (as on one host).
    let mut starter = crate::suite::Starter::default();
    loop {
        let m = tokio::select! {
            m = link.recv() => m,
            _ = term.recv() => break "SIGTERM".to_string(),
            _ = tokio::signal::ctrl_c() => break "SIGINT".to_string(),
        };
        let answer = match m {
            Ok(ToWorker::Teardown) => break String::new(),
            Ok(ToWorker::Guest { id, guest, wait_ms, call }) => {
                // Answered by a task of its own: one slow guest or a long program holds up
                // neither the other calls nor the link.
                tokio::spawn(call_guest(running, id, guest, wait_ms, call, link.sender()));
                continue;
            }
            Ok(ToWorker::Serve) => FromWorker::Serving {
                failed: running.serve().await.iter().map(|f| clean(f)).collect(),
            },
            Ok(ToWorker::Reach { pairs }) => {
                FromWorker::Reached(running.reach(&pairs, clean).await)
            }
            // The coordinator runs the ring on one-group fleets only (`hostd run`).
            Ok(ToWorker::RingServe | ToWorker::RingRound(_)) if running.only().is_none() => {
                break "the coordinator asked for the ring of a slice of several groups".into()
            }
            Ok(ToWorker::RingServe) => {
                super::ring::serve(running.only().expect("one part"), clean).await
            }
            Ok(ToWorker::RingRound(rr)) => {
                let fleet = running.only().expect("one part");
                super::ring::round(fleet, &rr, &mut starter, clean).await
            }
            Ok(other) => {
                break format!(
                    "the coordinator sent {:.200} while the fleet ran",
                    format!("{other:?}")
                )
            }
            Err(e) => break format!("the coordinator's link: {e}"),
        };
        if let Err(e) = link.send(&answer) {
            break format!("the coordinator's link failed ({e})");
        }
    }
}
