//! A fleet's launches as tasks on the async runtime's workers, one task per guest (its
//! launch, then its hello). Polled together on the fleet's one task, every launch's
//! synchronous preparation (oci: ≈ 24 ms of netns, veth, files on /run) ran before any
//! guest's hello was taken, on one thread (docs/benchmarks.md, issue 16). As tasks, at most
//! one preparation per worker runs at once (two on this 2-core host, not one thread per
//! launch), and a guest whose runtime has exited or whose hello has come is handled between
//! other guests' preparations.
//!
//! The set is cancel-safe like the launches in it: dropped, it aborts its tasks and waits
//! (bounded) until each has dropped its launch, whose `LaunchGuard` releases what the
//! launch made, so a caller's cleanup after the drop (the run's groups, its namespaces)
//! does not race the releases.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::backend::{AnyBackend, GuestSpec};
use crate::guest::{boot_since, stopped, BootError, RunningGuest, StopLaunching};

/// A guest's index, its boot, and its ready time from the fleet's start request.
pub(super) type Outcome = (usize, Result<RunningGuest, BootError>, Duration);

/// How long a dropped set waits for its aborted tasks to drop their launches. A task is
/// dropped at its next await, after at most one launch step.
const DROP_WAIT: Duration = Duration::from_secs(10);

/// What every launch of one fleet start shares.
pub(super) struct Shared {
    /// The backend, shared by the tasks (`tokio::spawn` wants `'static`).
    pub backend: Arc<AnyBackend>,
    /// Each guest's boot deadline.
    pub timeout: Duration,
    /// Launches at once.
    pub slots: Arc<Semaphore>,
    /// The fleet's stop signal.
    pub stop: Option<StopLaunching>,
    /// The fleet's start request, which ready times are measured from.
    pub t0: Instant,
}

/// The launches under way, each its own task.
pub(super) struct Launches {
    set: JoinSet<Outcome>,
    /// Each task holds a clone until its future is dropped: `gone` disconnects once all are.
    alive: Option<mpsc::Sender<()>>,
    gone: mpsc::Receiver<()>,
}

impl Launches {
    pub(super) fn new() -> Self {
        let (alive, gone) = mpsc::channel();
        Self { set: JoinSet::new(), alive: Some(alive), gone }
    }

    /// Starts booting `spec` on a task of its own.
    pub(super) fn push(&mut self, spec: GuestSpec, with: &Shared) {
        let alive = self.alive.clone();
        let requested = Instant::now();
        let (backend, slots, stop) = (with.backend.clone(), with.slots.clone(), with.stop.clone());
        let (timeout, t0) = (with.timeout, with.t0);
        self.set.spawn(async move {
            let _alive = alive;
            let index = spec.index;
            let r = launch(&backend, spec, timeout, slots, stop, requested).await;
            (index, r, t0.elapsed())
        });
    }

    /// The next launch to finish; None once all have.
    pub(super) async fn next(&mut self) -> Option<Outcome> {
        match self.set.join_next().await? {
            Ok(o) => Some(o),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only this set aborts its tasks, when it is dropped; a runtime shutting down
            // cancels them too, and then nothing waits here.
            Err(e) => panic!("a fleet launch task was cancelled while its fleet waited: {e}"),
        }
    }
}

impl Drop for Launches {
    fn drop(&mut self) {
        if self.set.is_empty() {
            return;
        }
        self.set.abort_all();
        self.alive = None;
        // On a multi-threaded runtime another thread drops the aborted tasks while this one
        // waits (block_in_place hands this worker's queue on). A current-thread runtime
        // drops them when this thread next runs it, after the caller's next await.
        let multi =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        if !multi {
            return;
        }
        let waited = tokio::task::block_in_place(|| self.gone.recv_timeout(DROP_WAIT));
        if let Err(mpsc::RecvTimeoutError::Timeout) = waited {
            tracing::warn!(
                "dropped fleet start: launches still under way after {} s release what they made when they stop",
                DROP_WAIT.as_secs()
            );
        }
    }
}

/// Boots one guest of a fleet once `slots` lets it, unless the fleet's start is stopped
/// first. Its own start is timed from `requested`, or from when it got its slot if it had
/// to wait for one (a wait for a parallelism slot is not the guest's).
async fn launch(
    backend: &AnyBackend,
    spec: GuestSpec,
    timeout: Duration,
    slots: Arc<Semaphore>,
    stop: Option<StopLaunching>,
    requested: Instant,
) -> Result<RunningGuest, BootError> {
    let (_permit, since) = match slots.clone().try_acquire_owned() {
        Ok(p) => (p, requested),
        Err(_) => {
            let p = tokio::select! {
                biased;
                () = stopped(stop.as_ref()) => return Err(BootError::Stopped { guest: spec.name }),
                p = slots.acquire_owned() => p.expect("semaphore never closed"),
            };
            (p, Instant::now())
        }
    };
    boot_since(backend, spec, timeout, stop.as_ref(), since).await
}
