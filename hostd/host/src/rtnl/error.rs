//! Why a network operation failed: the operation in `ip`'s words, and the cause.

use std::io;
use std::path::PathBuf;

/// A failed network operation: what was being done and why it failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
#[error("{what}: {source}")]
pub struct RtnlError {
    /// The operation, in `ip`'s words (e.g. "link add vbl3 type veth peer eth0 in vb-x-g3").
    pub what: String,
    #[source]
    pub source: RtnlCause,
}

/// Why a network operation failed: the kernel's (or the file system's) answer, or a case
/// found before or after asking it.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum RtnlCause {
    /// The kernel's answer (a netlink error, an ioctl's, setns's, a namespace file's).
    #[error(transparent)]
    Os(#[from] io::Error),
    #[error("bad interface name {name:?}: 1 to {} bytes, no NUL", libc::IFNAMSIZ - 1)]
    BadInterfaceName { name: String },
    #[error("bad network namespace name {name:?}: not empty, '.', '..' or with a '/'")]
    BadNamespaceName { name: String },
    #[error("link {link} has no MTU attribute")]
    NoMtu { link: String },
    #[error("no device in this namespace has address {addr}")]
    NoDeviceWithAddress { addr: std::net::Ipv4Addr },
    /// Turning IPv6 off in a namespace (`disable_ipv6`).
    #[error("{}: {source}", knob.display())]
    Sysctl { knob: PathBuf, source: io::Error },
    #[error("undecodable netlink reply: {0}")]
    BadReply(#[from] netlink_packet_core::DecodeError),
    /// The short-lived thread that entered the namespace panicked.
    #[error("the thread working in the network namespace panicked")]
    ThreadPanicked,
}

impl RtnlCause {
    /// The kernel's errno, if it was the kernel's answer.
    pub(super) fn errno(&self) -> Option<i32> {
        match self {
            RtnlCause::Os(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

impl RtnlError {
    /// The kernel said the device does not exist (ENODEV), as a deletion of a link already
    /// gone does.
    pub fn is_no_device(&self) -> bool {
        self.source.errno() == Some(libc::ENODEV)
    }
}

pub(super) fn err<E: Into<RtnlCause>>(what: impl Into<String>) -> impl FnOnce(E) -> RtnlError {
    let what = what.into();
    move |e| RtnlError { what, source: e.into() }
}
