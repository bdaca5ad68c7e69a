//! A fleet: n guests of one backend started concurrently (paper II.B.1: "all VMs being
//! started concurrently"), each with its own control channel, on one private network.
//! A guest that fails to launch or never becomes ready is recorded and torn down; the
//! others' results stand.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::backend::{AnyBackend, Backend, BackendKind, Exit, GuestNet, GuestSpec, Images};
use crate::cgroup::{self, Limits};
use crate::datadisk::{DataDiskError, DataDisks};
use crate::guest::{boot_unless_stopped, stopped, BootError, RunningGuest, StopLaunching};
pub use crate::guest::{FailureKind, GuestFailure};
use crate::netlab::{self, FleetNet, NetMode};
use crate::runstate::RunState;

/// How to start a fleet. Every field has the default shown in `Default`.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Guests to start.
    pub n: usize,
    /// Most guests launching at once; 0 starts all together (default 0).
    pub parallelism: usize,
    /// Default 1.
    pub vcpus: u32,
    /// Default 128 MiB.
    pub mem_mib: u32,
    /// Attach every guest to the fleet network (default true).
    pub network: bool,
    /// How guests attach to it (default private: a stack of their own on a veth or tap).
    /// `Shared` is for backends without a kernel of their own (native, ns).
    pub net_mode: NetMode,
    /// A file or device every guest gets for the disk benchmark (default none).
    pub data_disk: Option<PathBuf>,
    /// Per-guest copies of the data disk: when set, guest i gets its own copy (made on
    /// its first launch) instead of `data_disk` (default none).
    pub data_copies: Option<Arc<DataDisks>>,
    /// From the launch request to the agent's hello (default 120 s).
    pub boot_timeout: Duration,
    /// Resource limits on each guest's cgroup.
    pub limits: Limits,
    /// Guest i boots its own copies `image_copies[i]` of the images (the paper's "each VM
    /// its own image"); guests beyond the list, and every guest when it is empty (default),
    /// share the backend's.
    pub image_copies: Vec<Arc<Images>>,
    /// Once raised, guests not yet launched are not, launches under way are dropped, and
    /// the start returns the fleet of those that did start (the others failed, `Launch`,
    /// saying so) for its caller to tear down (default none).
    pub stop: Option<StopLaunching>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            n: 1,
            parallelism: 0,
            vcpus: 1,
            mem_mib: 128,
            network: true,
            net_mode: NetMode::Private,
            data_disk: None,
            data_copies: None,
            boot_timeout: Duration::from_secs(120),
            limits: Limits::default(),
            image_copies: Vec::new(),
            stop: None,
        }
    }
}

/// Boot phases as they happen, for progress displays.
#[derive(Debug, Clone)]
pub enum FleetEvent {
    /// A guest said hello.
    Ready {
        /// Its index.
        index: usize,
        /// From its launch to its hello.
        after: Duration,
    },
    /// A guest failed to start.
    Failed(GuestFailure),
}

/// n guests of one backend, started together; failed ones are taken out with their reason.
pub struct Fleet {
    /// The backend.
    pub backend: BackendKind,
    /// The fleet's network, if it has one.
    pub net: Option<FleetNet>,
    /// Ready guests, in index order.
    pub guests: Vec<RunningGuest>,
    /// Time from the fleet's start request to each ready guest's hello (same order as
    /// `guests`): the per-guest startup[i] of the paper's T_startup = max(startup[1..n]).
    pub ready_at: Vec<Duration>,
    /// Guests that failed, by index.
    pub failures: Vec<GuestFailure>,
    /// What the fleet was started with.
    pub config: FleetConfig,
}

/// Why a fleet could not start (or grow) at all. A guest that fails alone is a
/// [`GuestFailure`], not this.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum FleetError {
    #[error(transparent)]
    Network(#[from] netlab::NetError),
    #[error("{0} guests run their own kernel: they cannot share the fleet's network stack (net_mode = shared)")]
    SharedStack(BackendKind),
    #[error(
        "{guests} more guests need about {need} file descriptors in hostd, but only {free} of its limit of {limit} are free \
         (ulimit -n): raise the limit or boot fewer guests at once"
    )]
    Descriptors { guests: usize, need: u64, free: u64, limit: u64 },
    #[error(transparent)]
    DataDisk(#[from] DataDiskError),
}

/// Descriptors hostd holds per running guest: its control socket, console pipe and pidfd
/// (an ns or oci guest's one pidfd serves its exit watch too; a tokio child has tokio's
/// own besides). Measured and printed by `hostd boot` ("hostd per guest"): 3 for an idle
/// ns or oci guest.
pub fn fds_held(kind: BackendKind) -> u64 {
    match kind {
        BackendKind::Ns | BackendKind::Oci => 3,
        _ => 4,
    }
}
/// More descriptors a launch holds while in flight (sync and error pipes, the guest end of
/// the control pair, namespace and cgroup files, a netlink socket, a runtime's pipes), and
/// the console log file a guest keeps open until it has been quiet for a second.
pub const FDS_IN_FLIGHT: u64 = 12;
/// A running guest and its launch together: the leak test's budget (`hostd/tests/leaks.rs`).
pub const FDS_PER_GUEST: u64 = 16;
/// Descriptors kept free for everything else (results, cgroup files, tools' pipes).
const FD_RESERVE: u64 = 64;

/// Raises hostd's soft descriptor limit to the hard one (once), then checks that `guests`
/// more guests of `kind` fit: a fleet that would run out half-way is refused before it
/// starts. Returns how many launches may be in flight at once within the limit (at least
/// one): a fleet whose launches would not all fit together starts them in waves that do.
fn descriptor_budget(kind: BackendKind, guests: usize) -> Result<usize, FleetError> {
    let Some((limit, open)) = descriptors_now() else { return Ok(guests.max(1)) };
    budget(kind, guests, limit, open)
}

/// hostd's descriptor limit (its soft limit raised to the hard one, once) and the
/// descriptors it has open; None if the limit cannot be read.
fn descriptors_now() -> Option<(u64, u64)> {
    // hostd's main raised it at start; a library caller (the tests) gets it here.
    static RAISE: std::sync::Once = std::sync::Once::new();
    RAISE.call_once(|| {
        crate::limits::raise_nofile();
    });
    let (limit, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    Some((limit, open))
}

/// The most guests of `kind` hostd's descriptors allow now (its limit less what is open, a
/// reserve and one launch in flight), or None if the limit cannot be read.
pub fn descriptor_capacity(kind: BackendKind) -> Option<usize> {
    let (limit, open) = descriptors_now()?;
    let room = limit.saturating_sub(open + FD_RESERVE + FDS_IN_FLIGHT);
    Some((room / fds_held(kind)) as usize)
}

/// [`descriptor_budget`] for a limit of `limit` with `open` descriptors already open.
fn budget(kind: BackendKind, guests: usize, limit: u64, open: u64) -> Result<usize, FleetError> {
    let held = guests as u64 * fds_held(kind) + FD_RESERVE;
    let need = held + FDS_IN_FLIGHT;
    let free = limit.saturating_sub(open);
    if need > free {
        return Err(FleetError::Descriptors { guests, need, free, limit });
    }
    Ok((((free - held) / FDS_IN_FLIGHT) as usize).clamp(1, guests.max(1)))
}

/// Guests this process has launched in fleets (`hostd run`'s closing count of boots,
/// which its `--dry-run` predicts).
/// [`netlab::kernel_room`] for a fleet of `guests`, said as a warning when it changed the
/// host or could not.
fn kernel_room_said(guests: usize) {
    if let Some(w) = kernel_room_words(guests, &netlab::kernel_room(guests)) {
        tracing::warn!("{w}");
    }
}

/// What [`kernel_room_said`] says of `room`, if anything.
fn kernel_room_words(guests: usize, room: &netlab::KernelRoom) -> Option<String> {
    use netlab::{KernelRoom, Unraised};
    let name = |k: &str| k.trim_start_matches("/proc/sys/").replace('/', ".");
    let join = |v: Vec<String>| v.join(", ");
    let lost = "or broadcasts and connections between guests will be lost";
    match room {
        KernelRoom::Enough => None,
        KernelRoom::Raised(v) => Some(format!(
            "{guests} guests on one network need room in kernel limits shared by every network namespace: raised {} (host-wide, left so)",
            join(v.iter().map(|(k, old, new)| format!("{} from {old} to {new}", name(k))).collect())
        )),
        KernelRoom::Short(v) => {
            let mut said = Vec::new();
            let refused: Vec<String> = v
                .iter()
                .filter_map(|s| match &s.why {
                    Unraised::Refused { have, error } => Some(format!(
                        "{} is {have}, below the {} they need (writing it: {error})",
                        name(s.knob),
                        s.want
                    )),
                    Unraised::Unseen => None,
                })
                .collect();
            if !refused.is_empty() {
                said.push(format!(
                    "{guests} guests on one network need room in kernel limits shared by every network namespace: {}; raise it from the machine's initial network namespace as root (sysctl -w), {lost}",
                    join(refused)
                ));
            }
            let unseen: Vec<String> = v
                .iter()
                .filter(|s| s.why == Unraised::Unseen)
                .map(|s| format!("{} ≥ {}", name(s.knob), s.want))
                .collect();
            if !unseen.is_empty() {
                said.push(format!(
                    "{guests} guests on one network need {}, above the kernel's defaults; these limits are the machine's, set only from its initial network namespace, and hostd runs in another one (e.g. an emulated host) where they cannot be read or raised: make sure the machine has them, {lost}",
                    join(unseen)
                ));
            }
            Some(said.join("; "))
        }
    }
}

static LAUNCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many guests this process has launched in fleets so far.
pub fn launched() -> usize {
    LAUNCHED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Starts `cfg.n` guests. Fails as a whole only if the fleet network cannot be made or
/// hostd lacks the file descriptors for it.
pub async fn start(
    backend: &AnyBackend,
    run: &RunState,
    cfg: &FleetConfig,
    on_event: impl FnMut(FleetEvent),
) -> Result<Fleet, FleetError> {
    // Checked before anything exists, so a too-large fleet leaves nothing behind.
    check(backend, cfg, 0)?;
    let net = if cfg.network {
        Some(FleetNet { mode: cfg.net_mode, ..FleetNet::create(&run.run)? })
    } else {
        None
    };
    start_on(backend, run, cfg, net, 0, on_event).await
}

/// What `start` checks before anything exists: addresses and descriptors for guests
/// `first..first + cfg.n`, and a network mode the backend can use.
pub fn check(backend: &AnyBackend, cfg: &FleetConfig, first: usize) -> Result<(), FleetError> {
    FleetNet::guest_addr((first + cfg.n).saturating_sub(1))?;
    descriptor_budget(backend.kind(), cfg.n)?;
    if cfg.network && cfg.net_mode == NetMode::Shared && backend.kind().own_kernel() {
        return Err(FleetError::SharedStack(backend.kind()));
    }
    Ok(())
}

/// Starts `cfg.n` guests numbered from `first` (names `g<first>`…, addresses to match) on
/// the fleet network `net` made by the caller: one group of a mixed fleet, whose groups
/// (each its own backend) share one network and one numbering. The returned fleet holds a
/// copy of `net`; whoever made it destroys it once (take it out of all but one group
/// before their teardown).
pub async fn start_on(
    backend: &AnyBackend,
    run: &RunState,
    cfg: &FleetConfig,
    net: Option<FleetNet>,
    first: usize,
    on_event: impl FnMut(FleetEvent),
) -> Result<Fleet, FleetError> {
    check(backend, cfg, first)?;
    // Once the fleet is known to fit, before any guest: the host's shared limits (a check
    // changes nothing). Small fleets fit the kernel's defaults with room to spare.
    if cfg.network && first + cfg.n > 100 {
        kernel_room_said(first + cfg.n);
    }
    let mut fleet = Fleet {
        backend: backend.kind(),
        net,
        guests: Vec::new(),
        ready_at: Vec::new(),
        failures: Vec::new(),
        // `n` counts indices handed out: the next guest is `g<n>`.
        config: FleetConfig { n: first, ..cfg.clone() },
    };
    fleet.grow(backend, run, first + cfg.n, on_event).await?;
    Ok(fleet)
}

impl Fleet {
    /// Launches guests `config.n..to_n` concurrently (the ones already running stay), so a
    /// measurement over increasing n boots each guest once. `ready_at` of the new guests is
    /// measured from this call.
    pub async fn grow(
        &mut self,
        backend: &AnyBackend,
        run: &RunState,
        to_n: usize,
        mut on_event: impl FnMut(FleetEvent),
    ) -> Result<(), FleetError> {
        let from = self.config.n;
        if to_n <= from {
            return Ok(());
        }
        FleetNet::guest_addr(to_n - 1)?;
        let in_flight = descriptor_budget(backend.kind(), to_n - from + self.guests.len())?;
        let cfg = self.config.clone();
        let cg_mode = cgroup::detect().ok();
        let asked = if cfg.parallelism == 0 { to_n - from } else { cfg.parallelism };
        if in_flight < asked {
            tracing::info!(
                "{asked} launches at once would run out of descriptors: {in_flight} at a time"
            );
        }
        let sem = Arc::new(Semaphore::new(asked.min(in_flight)));
        // Each new guest's own data disk copy, made before any of them launches (copying
        // is disk-bound work that must not stretch the boot times measured below).
        let mut copies = std::collections::HashMap::new();
        if let Some(d) = &cfg.data_copies {
            let d = d.clone();
            let made = tokio::task::spawn_blocking(move || {
                (from..to_n).map(|i| d.copy_for(i).map(|p| (i, p))).collect::<Result<Vec<_>, _>>()
            })
            .await
            .expect("data disk copy task panicked")?;
            copies.extend(made);
        }
        LAUNCHED.fetch_add(to_n - from, std::sync::atomic::Ordering::Relaxed);
        let t0 = Instant::now();
        let mut pending = FuturesUnordered::new();
        for index in from..to_n {
            let name = format!("g{index}");
            let guest_net = match &self.net {
                Some(f) => Some(GuestNet {
                    fleet: f.clone(),
                    addr: FleetNet::guest_addr(index)?,
                    prefix: netlab::PREFIX,
                    link: netlab::link_name("vbl", index),
                }),
                None => None,
            };
            let spec = GuestSpec {
                index,
                workdir: run.scratch.join(&name),
                name,
                run: run.run.clone(),
                vcpus: cfg.vcpus,
                mem_mib: cfg.mem_mib,
                data_disk: copies.remove(&index).or_else(|| cfg.data_disk.clone()),
                net: guest_net,
                cgroup: cg_mode,
                limits: cfg.limits,
                images: cfg.image_copies.get(index).cloned(),
            };
            let sem = sem.clone();
            let timeout = cfg.boot_timeout;
            let stop = cfg.stop.clone();
            pending.push(async move {
                (index, launch(backend, spec, timeout, sem, stop).await, t0.elapsed())
            });
        }
        let mut ready = Vec::new();
        while let Some((index, r, at)) = pending.next().await {
            match r {
                Ok(g) => {
                    on_event(FleetEvent::Ready { index, after: at });
                    ready.push((index, g, at));
                }
                Err(e) => {
                    let f = e.failure(index);
                    on_event(FleetEvent::Failed(f.clone()));
                    self.failures.push(f);
                }
            }
        }
        ready.sort_by_key(|(i, _, _)| *i);
        self.failures.sort_by_key(|f| f.index);
        for (_, g, at) in ready {
            self.guests.push(g);
            self.ready_at.push(at);
        }
        self.config.n = to_n;
        Ok(())
    }
}

/// Boots one guest of a fleet once `sem` lets it, unless the fleet's start is stopped first.
async fn launch(
    backend: &AnyBackend,
    spec: GuestSpec,
    timeout: Duration,
    sem: Arc<Semaphore>,
    stop: Option<StopLaunching>,
) -> Result<RunningGuest, BootError> {
    let permit = tokio::select! {
        biased;
        () = stopped(stop.as_ref()) => None,
        p = sem.acquire_owned() => Some(p.expect("semaphore never closed")),
    };
    match permit {
        Some(_permit) => boot_unless_stopped(backend, spec, timeout, stop.as_ref()).await,
        None => Err(BootError::Stopped { guest: spec.name }),
    }
}

impl Fleet {
    /// Takes out every guest that can no longer be used (its process exited, it broke the
    /// protocol, or missed a command's deadline), kills it, releases what it held, and
    /// records why in `failures`; returns those new failures. Measurements call it after
    /// each step, so a failed guest's resources go as soon as its failure shows.
    pub async fn prune(&mut self, backend: &AnyBackend) -> Vec<GuestFailure> {
        let mut failed = Vec::new();
        let mut i = 0;
        while i < self.guests.len() {
            match self.guests[i].trouble() {
                Some((kind, error)) => {
                    let g = self.guests.remove(i);
                    self.ready_at.remove(i);
                    failed.push(g.fail(backend, kind, error).await);
                }
                None => i += 1,
            }
        }
        self.failures.extend(failed.iter().cloned());
        self.failures.sort_by_key(|f| f.index);
        failed
    }
}

/// What tearing a fleet down found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Teardown {
    /// Guests that powered off when asked.
    pub clean: usize,
    /// Guests killed after the grace period.
    pub killed: usize,
    /// Guests already gone before teardown.
    pub already_exited: usize,
    /// Guests found failed at teardown (and not recorded before).
    pub failed: Vec<GuestFailure>,
    /// What could not be released, in words.
    pub errors: Vec<String>,
}

impl Fleet {
    /// Records the guests that failed, then powers the others off (concurrently), kills
    /// what does not stop within `grace`, releases their resources, then removes the fleet
    /// network.
    pub async fn teardown(mut self, backend: &AnyBackend, grace: Duration) -> Teardown {
        let mut t = Teardown { failed: self.prune(backend).await, ..Default::default() };
        let exits: Vec<Exit> =
            futures::future::join_all(self.guests.into_iter().map(|g| g.shutdown(backend, grace)))
                .await;
        for e in exits {
            match e {
                Exit::Clean => t.clean += 1,
                Exit::Killed => t.killed += 1,
                Exit::Exited(_) => t.already_exited += 1,
            }
        }
        if let Some(n) = self.net {
            if let Err(e) = n.destroy() {
                t.errors.push(e.to_string());
            }
        }
        t
    }

    /// Where other guests reach ready guest `i` (by position in `guests`): its own fleet
    /// address, or for guests sharing the fleet namespace's stack (which have no address of
    /// their own) loopback, where that stack's listeners all are.
    pub fn addr(&self, i: usize) -> Option<std::net::Ipv4Addr> {
        let net = self.guests.get(i)?.spec.net.as_ref()?;
        Some(if net.fleet.mode == NetMode::Shared {
            std::net::Ipv4Addr::LOCALHOST
        } else {
            net.addr
        })
    }

    /// The kind of path this fleet's guests' traffic takes, and its MTU as measured on the
    /// host side (the guest's link on the bridge, or the shared stack's loopback).
    pub fn net_label(&self) -> Option<(netlab::NetPath, Option<u32>)> {
        let net = self.net.as_ref()?;
        let (path, dev) = match net.mode {
            NetMode::Shared if self.backend == BackendKind::Native => {
                (netlab::NetPath::Loopback, "lo".to_string())
            }
            NetMode::Shared => (netlab::NetPath::HostStack, "lo".to_string()),
            NetMode::Private => {
                let link = self.guests.first()?.spec.net.as_ref()?.link.clone();
                (
                    if self.backend.own_kernel() {
                        netlab::NetPath::TapBridge
                    } else {
                        netlab::NetPath::VethBridge
                    },
                    link,
                )
            }
        };
        match netlab::link_mtu(&net.netns, &dev) {
            Ok(mtu) => Some((path, Some(mtu))),
            Err(e) => {
                tracing::warn!("fleet network MTU of {dev}: {e}");
                Some((path, None))
            }
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn the_descriptor_capacity_is_a_fleet_the_budget_accepts() {
        let n = descriptor_capacity(BackendKind::Ns).expect("the limit is readable");
        assert!(n > 0);
        assert!(descriptor_budget(BackendKind::Ns, n).is_ok(), "{n} guests");
        assert!(descriptor_budget(BackendKind::Ns, n + 10).is_err(), "{} guests", n + 10);
    }

    #[test]
    fn descriptors_are_budgeted_per_guest_and_launches_in_waves_that_fit() {
        // 5000 ns guests under 20000: 3 each + 64 held, (19990 − 15064) / 12 = 410 at once.
        assert_eq!(budget(BackendKind::Ns, 5000, 20000, 10).unwrap(), 410);
        // Room for all: all together.
        assert_eq!(budget(BackendKind::Ns, 40, 1024, 10).unwrap(), 40);
        // 10000 need 30064 + 12: refused, saying so.
        match budget(BackendKind::Ns, 10_000, 20000, 10) {
            Err(FleetError::Descriptors { need, free, .. }) => {
                assert_eq!((need, free), (30_076, 19_990))
            }
            other => panic!("{other:?}"),
        }
        // A VMM's guest holds tokio's pidfd too.
        assert!(budget(BackendKind::Uml, 5000, 20000, 10).is_err());
    }
}

#[cfg(test)]
mod kernel_room_tests {
    use super::*;
    use netlab::{KernelRoom, ShortKnob, Unraised};

    #[test]
    fn kernel_limits_are_said_as_they_are() {
        assert_eq!(kernel_room_words(300, &KernelRoom::Enough), None);
        let raised =
            KernelRoom::Raised(vec![("/proc/sys/net/core/netdev_max_backlog", 1000, 2000)]);
        let w = kernel_room_words(1000, &raised).unwrap();
        assert!(w.contains("raised net.core.netdev_max_backlog from 1000 to 2000"), "{w}");
        // An emulated host (not the initial network namespace): nothing was tried, and
        // nothing is said to be below what is needed, since it cannot be read.
        let unseen = KernelRoom::Short(vec![ShortKnob {
            knob: "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
            want: 2400,
            why: Unraised::Unseen,
        }]);
        let w = kernel_room_words(300, &unseen).unwrap();
        assert!(w.contains("net.ipv4.neigh.default.gc_thresh3 ≥ 2400"), "{w}");
        assert!(w.contains("initial network namespace") && w.contains("cannot be read"), "{w}");
        assert!(!w.contains("could not be raised") && !w.contains("below"), "{w}");
        // Read, too low, and the write refused: the value, the need and the kernel's reason.
        let refused = KernelRoom::Short(vec![ShortKnob {
            knob: "/proc/sys/net/core/netdev_max_backlog",
            want: 2000,
            why: Unraised::Refused { have: 1000, error: "Permission denied".into() },
        }]);
        let w = kernel_room_words(1000, &refused).unwrap();
        assert!(w.contains("net.core.netdev_max_backlog is 1000, below the 2000"), "{w}");
        assert!(w.contains("Permission denied") && w.contains("initial network namespace"), "{w}");
    }
}
