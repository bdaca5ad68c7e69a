//! Why a launch failed: one error per step ([`LaunchError`] and the [`PrepareError`] and
//! [`SpawnError`] it carries), and why a hypervisor's unseen memory could not be read.

use std::path::PathBuf;

use super::{launch, oci, qemu, xen};

/// Why the memory a hypervisor below the host hands out could not be read
/// ([`Backend::unseen_used_kib`](super::Backend::unseen_used_kib)).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum UnseenError {
    #[error(transparent)]
    Xen(#[from] xen::XenMemoryError),
}

/// A launch that failed, named after the step that failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum LaunchError {
    #[error("preparing {what}: {source}")]
    Prepare { what: String, source: PrepareError },
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("attaching to the fleet network: {0}")]
    Network(#[from] crate::netlab::NetError),
    #[error("starting {program}: {source}")]
    Spawn { program: String, source: SpawnError },
    #[error("connecting the control channel: {0}")]
    Channel(String),
}

/// Why preparing something for a launch failed ([`LaunchError::Prepare`] names what).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum PrepareError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Images(#[from] launch::ImageError),
    #[error(transparent)]
    Tool(#[from] launch::ToolError),
    #[error(transparent)]
    Accel(#[from] qemu::AccelError),
    #[error(transparent)]
    DomainType(#[from] xen::DomainTypeError),
    #[error(transparent)]
    Template(#[from] oci::TemplateError),
    #[error(transparent)]
    OciConfig(#[from] oci::ConfigError),
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    #[error(transparent)]
    NulByte(#[from] super::ns::NulByteError),
    /// A file or program the launch needs is not there.
    #[error("{0}")]
    Missing(&'static str),
    /// What was asked for is something this backend cannot do.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A value that cannot go where it must (a path on a command line, a config string).
    #[error("{0}")]
    Invalid(String),
}

/// Why starting a guest's process failed ([`LaunchError::Spawn`] names the program).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum SpawnError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A step of the launch, named, failed with an OS error.
    #[error("{step}: {source}")]
    Step { step: String, source: std::io::Error },
    #[error("{waiting} within {after:?}")]
    TimedOut { waiting: &'static str, after: std::time::Duration },
    /// The program exited unsuccessfully; the tail of what it printed.
    #[error("{status}: {output}")]
    Exited { status: std::process::ExitStatus, output: String },
    #[error("garbled failure report from the guest's child ({0} bytes)")]
    GarbledReport(usize),
    #[error("pid file {}: {source}", path.display())]
    PidFileUnreadable { path: PathBuf, source: std::io::Error },
    #[error("pid file {}: no pid in {text:?}", path.display())]
    NoPid { path: PathBuf, text: String },
}

/// [`LaunchError::Prepare`] for `what`.
pub(crate) fn prepare(
    what: impl std::fmt::Display,
    source: impl Into<PrepareError>,
) -> LaunchError {
    LaunchError::Prepare { what: what.to_string(), source: source.into() }
}
