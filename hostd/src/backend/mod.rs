//! Backends: one file each behind [`Backend`], dispatched over the closed set in
//! [`AnyBackend`]. A backend knows how to start a guest and give back its control channel
//! and the host processes that make it up; it knows nothing of metrics or reports.

pub mod native;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

/// The systems hostd can boot guests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// The agent as a plain host process: the paper's non-virtualized reference (T_a).
    Native,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(BackendKind::Native),
            other => Err(format!("unknown backend {other:?} (known: native)")),
        }
    }
}

/// What one guest should be.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Position in its fleet, from 0.
    pub index: usize,
    /// Unique within the run; used for host-side names (paths, interfaces, cgroups).
    pub name: String,
    pub vcpus: u32,
    pub mem_mib: u32,
    /// A file or device the disk benchmark reads inside the guest.
    pub data_disk: Option<PathBuf>,
    /// Per-guest scratch directory (sockets, console log); removed with the fleet.
    pub workdir: PathBuf,
}

/// The images a backend boots, resolved from the imagegen store or given by hand.
#[derive(Debug, Clone)]
pub struct Images {
    /// Static guest-agent binary.
    pub agent: PathBuf,
}

/// Why a backend cannot run on this host.
#[derive(Debug, Clone, thiserror::Error)]
#[error("backend {backend} unavailable: {reason}")]
pub struct Unavailable {
    pub backend: &'static str,
    pub reason: String,
}

/// A launch that failed, named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("preparing {what}: {source}")]
    Prepare { what: String, source: std::io::Error },
    #[error("starting {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
}

/// A started guest: the host side of its control channel plus what must be torn down.
pub struct Launched {
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
    pub guest: GuestProcess,
}

/// The host processes that make up a guest, for memory attribution and teardown.
#[derive(Debug)]
pub struct GuestProcess {
    pub name: String,
    pub child: tokio::process::Child,
    /// Where the guest's console output goes, if it has a console of its own.
    pub console_log: Option<PathBuf>,
}

impl GuestProcess {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last `max` bytes of the console log, for error reports.
    pub fn log_tail(&self, max: usize) -> Option<String> {
        let data = std::fs::read(self.console_log.as_ref()?).ok()?;
        let tail = &data[data.len().saturating_sub(max)..];
        let text = String::from_utf8_lossy(tail).trim().to_string();
        (!text.is_empty()).then_some(text)
    }
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Exit {
    /// Stopped on request within the grace period.
    Clean,
    /// Had to be killed after the grace period.
    Killed,
    /// Was already gone, with this status.
    Exited(String),
}

pub trait Backend {
    fn kind(&self) -> BackendKind;
    /// Checks that the backend can run here; the error says why not.
    async fn probe(&self) -> Result<String, Unavailable>;
    /// Starts one guest; returns as soon as its control channel exists (not when ready).
    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError>;
    /// Stops a guest that was asked to power off: waits up to `grace`, then kills it.
    async fn stop(&self, guest: &mut GuestProcess, grace: Duration) -> Exit;
    /// Host pids whose memory belongs to the guest.
    fn pids(&self, guest: &GuestProcess) -> Vec<u32>;
}

/// Enum dispatch over the closed set of backends.
pub enum AnyBackend {
    Native(native::Native),
}

impl AnyBackend {
    pub fn new(kind: BackendKind, images: &Images) -> Self {
        match kind {
            BackendKind::Native => AnyBackend::Native(native::Native::new(images.agent.clone())),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Native($b) => $e,
        }
    };
}

impl Backend for AnyBackend {
    fn kind(&self) -> BackendKind {
        dispatch!(self, b => b.kind())
    }
    async fn probe(&self) -> Result<String, Unavailable> {
        dispatch!(self, b => b.probe().await)
    }
    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        dispatch!(self, b => b.launch(spec).await)
    }
    async fn stop(&self, guest: &mut GuestProcess, grace: Duration) -> Exit {
        dispatch!(self, b => b.stop(guest, grace).await)
    }
    fn pids(&self, guest: &GuestProcess) -> Vec<u32> {
        dispatch!(self, b => b.pids(guest))
    }
}

/// Waits for a child up to `grace`, then SIGKILLs it and reaps it.
pub async fn wait_or_kill(child: &mut tokio::process::Child, grace: Duration) -> Exit {
    if let Ok(Some(st)) = child.try_wait() {
        return Exit::Exited(st.to_string());
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(_)) => Exit::Clean,
        _ => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Exit::Killed
        }
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
