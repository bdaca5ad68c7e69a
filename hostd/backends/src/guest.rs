//! A booted guest: its processes plus the connected agent. Shared by every measurement.
//!
//! Every phase has a deadline. Boot (the backend's launch, then the agent's hello) has one
//! deadline for both: a launch still running at the deadline is abandoned, and whatever it
//! had created is released (launches are cancel-safe); a guest that launched but said
//! nothing in time is killed. Each command has its own deadline ([`AgentConn::request`]);
//! a guest that missed one is hung, and is killed and recorded as timed out when its fleet
//! next checks its guests ([`RunningGuest::trouble`], [`RunningGuest::fail`]). A guest
//! whose process exits is noticed at once through a pidfd, mid-request or mid-boot.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use vb_protocol::msg::{Command, Hello};

use crate::backend::{AnyBackend, Backend, Exit, GuestProcess, GuestSpec};
use crate::channel::{AgentConn, ChannelError, ExitWatch};

/// How much of a failed guest's console output a failure record keeps.
pub const LOG_TAIL: usize = 2000;
/// How long a dead guest's console pipe may take to deliver its last bytes.
const CONSOLE_DRAIN: Duration = Duration::from_secs(2);
/// What a guest kernel prints when it panics.
const PANIC_MARK: &str = "Kernel panic";

/// Why a guest is not part of the running fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The backend could not start it.
    Launch,
    /// It missed a deadline: no ready message in time, or a command got no reply.
    Timeout,
    /// Its kernel panicked (seen in its console log).
    Panic,
    /// The kernel's OOM killer ended it (its cgroup reached its memory limit).
    OutOfMemory,
    /// It went away: its process exited or its channel closed.
    Crashed,
    /// It spoke, but broke the protocol.
    Protocol,
}

/// A guest that failed, as recorded with the results.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GuestFailure {
    /// Its index in the fleet.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// How it failed.
    pub kind: FailureKind,
    /// Why, in words.
    pub error: String,
    /// The end of its console output, when it had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_tail: Option<String>,
}

impl std::fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guest {} ({:?}): {}", self.name, self.kind, self.error)?;
        if let Some(t) = &self.console_tail {
            write!(f, "; its console output ends with:\n{t}")?;
        }
        Ok(())
    }
}

/// A guest that said hello: its spec, its connected agent and its host processes.
pub struct RunningGuest {
    /// What it was launched as.
    pub spec: GuestSpec,
    /// Its agent's control channel. Shared, so a fleet daemon can serve a slow request to
    /// this guest off its control loop; the channel's reader stops once the last holder
    /// drops it.
    pub conn: std::sync::Arc<AgentConn>,
    /// What the agent said in its hello.
    pub hello: Hello,
    /// Its host processes and resources.
    pub process: GuestProcess,
    /// Host time from the launch request to the ready message.
    pub startup: Duration,
}

#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum BootError {
    #[error("guest {guest}: launch failed: {source}")]
    Launch { guest: String, source: crate::backend::LaunchError },
    #[error("guest {guest}: launch not finished within the boot deadline of {after:?}; abandoned and cleaned up")]
    LaunchTimeout { guest: String, after: Duration },
    #[error("guest {guest}: {cause}{}", tail.as_ref().map(|t| format!("; its output ends with:\n{t}")).unwrap_or_default())]
    Ready { guest: String, kind: FailureKind, cause: ChannelError, tail: Option<String> },
    #[error("guest {guest}: not launched, or its launch dropped (what it made released): its fleet's start was stopped")]
    Stopped { guest: String },
}

impl BootError {
    /// The failure record for guest `index`.
    pub fn failure(&self, index: usize) -> GuestFailure {
        let (name, kind, tail, error) = match self {
            BootError::Launch { guest, .. } | BootError::Stopped { guest } => {
                (guest, FailureKind::Launch, None, self.to_string())
            }
            BootError::LaunchTimeout { guest, .. } => {
                (guest, FailureKind::Timeout, None, self.to_string())
            }
            BootError::Ready { guest, kind, cause, tail } => {
                (guest, kind.clone(), tail.clone(), format!("guest {guest}: {cause}"))
            }
        };
        GuestFailure { index, name: name.clone(), kind, error, console_tail: tail }
    }
}

/// A pidfd that becomes readable when `pid` exits (hostd's own children included: the
/// exit is seen without reaping, so the owner still waits for it).
pub fn exit_watch(pid: u32) -> Option<ExitWatch> {
    if pid == 0 {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor from pidfd_open, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open and unchanged until
    // it is dropped.
    let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()?;
    Some(Box::pin(async move {
        let _ = fd.readable().await;
    }))
}

/// The stop of a fleet's start (e.g. a worker whose coordinator's link dropped): once
/// raised, a guest not yet launching is not launched and a launch under way is dropped (its
/// launch guard releases what it made: launches are cancel-safe). A guest already waiting
/// for its hello finishes that wait within its deadline, so that whoever started it tears
/// it down as any other: that wait is not cancel-safe (the launched guest's resources are
/// released by its teardown, not on drop).
#[derive(Debug, Clone)]
pub struct StopLaunching(tokio::sync::watch::Receiver<bool>);

impl StopLaunching {
    /// The signal, and what raises it (`send(true)`; dropped unraised, it raises nothing).
    pub fn new() -> (tokio::sync::watch::Sender<bool>, StopLaunching) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, StopLaunching(rx))
    }

    /// Resolves once raised (never, if it never is).
    pub async fn raised(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|up| *up).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves once `stop` is raised; never without one.
pub async fn stopped(stop: Option<&StopLaunching>) {
    match stop {
        Some(s) => s.raised().await,
        None => std::future::pending().await,
    }
}

/// Launches one guest and waits for its agent's hello, all within `deadline`. A guest that
/// never becomes ready is killed (and its launch, if still running, abandoned and cleaned
/// up) before the error is returned.
pub async fn boot(
    backend: &AnyBackend,
    spec: GuestSpec,
    deadline: Duration,
) -> Result<RunningGuest, BootError> {
    boot_unless_stopped(backend, spec, deadline, None).await
}

/// [`boot`], but not launched, or its launch dropped, once `stop` is raised.
pub async fn boot_unless_stopped(
    backend: &AnyBackend,
    spec: GuestSpec,
    deadline: Duration,
    stop: Option<&StopLaunching>,
) -> Result<RunningGuest, BootError> {
    let t0 = Instant::now();
    // Saturating: a deadline no clock can represent waits (practically) forever, not panics.
    let end = crate::limits::deadline(deadline);
    let launch = tokio::time::timeout_at(end, backend.launch(&spec));
    let launched = tokio::select! {
        // Checked first: a raised stop launches nothing more.
        biased;
        () = stopped(stop) => return Err(BootError::Stopped { guest: spec.name.clone() }),
        r = launch => match r {
            Ok(r) => r.map_err(|source| BootError::Launch { guest: spec.name.clone(), source })?,
            Err(_) => {
                return Err(BootError::LaunchTimeout { guest: spec.name.clone(), after: deadline })
            }
        },
    };
    let launched_after = t0.elapsed();
    let mut process = launched.guest;
    let watch = process.proc.exit_watch();
    let left = end.saturating_duration_since(tokio::time::Instant::now());
    match AgentConn::establish_watched(launched.reader, launched.writer, left, watch).await {
        Ok((conn, hello)) => Ok(RunningGuest {
            startup: {
                let startup = t0.elapsed();
                // The split of each guest's own start (launch call, then the hello's wait).
                tracing::debug!(
                    guest = %spec.name,
                    "launch {:.3} ms, hello {:.3} ms after it",
                    launched_after.as_secs_f64() * 1e3,
                    (startup - launched_after).as_secs_f64() * 1e3
                );
                startup
            },
            spec,
            conn: std::sync::Arc::new(conn),
            hello,
            process,
        }),
        Err(cause) => {
            // The hello's wait was what remained of the boot deadline: name the deadline.
            let cause = if let ChannelError::HelloTimeout(_) = cause {
                ChannelError::HelloTimeout(deadline)
            } else {
                cause
            };
            let initial = match &cause {
                ChannelError::HelloTimeout(_) => FailureKind::Timeout,
                ChannelError::Protocol(_) => FailureKind::Protocol,
                _ => FailureKind::Crashed,
            };
            let (kind, tail, _) = stop_and_explain(backend, &mut process, initial).await;
            Err(BootError::Ready { guest: spec.name, kind, cause, tail })
        }
    }
}

/// Kills a failed guest, releases its resources, and refines why it failed from what it
/// left: a panic in its console, an OOM kill in its cgroup (with words saying so).
async fn stop_and_explain(
    backend: &AnyBackend,
    process: &mut GuestProcess,
    initial: FailureKind,
) -> (FailureKind, Option<String>, Option<&'static str>) {
    // Read before the stop removes the cgroup.
    let oom = process.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
    backend.stop(process, Duration::ZERO).await;
    if let Some(c) = &process.console {
        c.drained(CONSOLE_DRAIN).await;
    }
    let tail = process.log_tail(LOG_TAIL);
    if tail.as_deref().is_some_and(|t| t.contains(PANIC_MARK)) {
        (FailureKind::Panic, tail, Some("its kernel panicked"))
    } else if oom && initial != FailureKind::Protocol {
        (
            FailureKind::OutOfMemory,
            tail,
            Some("the kernel's OOM killer ended it: its cgroup reached its memory limit"),
        )
    } else {
        (initial, tail, None)
    }
}

impl RunningGuest {
    /// Asks the agent to power off, then waits up to `grace` before killing.
    pub async fn shutdown(mut self, backend: &AnyBackend, grace: Duration) -> Exit {
        let asked =
            self.conn.request(Command::Poweroff, grace.max(Duration::from_secs(1))).await.is_ok();
        match backend.stop(&mut self.process, if asked { grace } else { Duration::ZERO }).await {
            // Gone before the wait started, after answering poweroff: a clean stop.
            Exit::Exited(_) if asked => Exit::Clean,
            e => e,
        }
    }

    /// Why this guest can no longer be used, if it cannot: its channel failed (its process
    /// exited, its channel closed, it broke the protocol), a command missed its deadline,
    /// or its main process is gone.
    pub fn trouble(&mut self) -> Option<(FailureKind, String)> {
        if let Some(e) = self.conn.failure() {
            let kind = match e {
                ChannelError::Protocol(_) => FailureKind::Protocol,
                ChannelError::HelloTimeout(_) | ChannelError::ReplyTimeout { .. } => {
                    FailureKind::Timeout
                }
                _ => FailureKind::Crashed,
            };
            return Some((kind, e.to_string()));
        }
        if self.conn.stats.timeouts.load(Ordering::Relaxed) > 0 {
            let last = self.conn.stats.last_timeout.lock().expect("stats").clone();
            return Some((
                FailureKind::Timeout,
                last.map(|e| e.to_string()).unwrap_or_else(|| "a command timed out".into()),
            ));
        }
        if self.process.proc.has_exited() {
            return Some((FailureKind::Crashed, "the guest's process exited".into()));
        }
        None
    }

    /// Kills this (failed) guest, releases everything it held, and describes the failure:
    /// `kind` and `error` as [`trouble`](Self::trouble) gave them, refined by what the
    /// guest left (a kernel panic in its console, an OOM kill in its cgroup).
    pub async fn fail(
        mut self,
        backend: &AnyBackend,
        kind: FailureKind,
        error: String,
    ) -> GuestFailure {
        let (kind, console_tail, why) = stop_and_explain(backend, &mut self.process, kind).await;
        drop(self.conn);
        let error = match why {
            Some(w) => format!("{w} ({error})"),
            None => error,
        };
        GuestFailure { index: self.spec.index, name: self.spec.name, kind, error, console_tail }
    }
}
