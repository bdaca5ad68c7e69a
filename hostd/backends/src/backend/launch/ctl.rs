//! The control channel: a connected socketpair, the host's end read and written by tokio,
//! the guest's end passed to the guest's program (see `docs/architecture.md`: no socket
//! paths, no connect races).

use std::os::fd::OwnedFd;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::backend::{prepare, LaunchError};

/// The host's halves of a control channel.
pub type Halves = (tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf);

/// (host end, guest end), both close-on-exec: the guest end reaches the guest's program
/// only where it is passed explicitly ([`GuestCommand::pass_fd`](super::GuestCommand)).
pub fn control_pair() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| prepare("control socketpair", std::io::Error::from(e)))
}

/// Turns a connected Unix socket into tokio read/write halves.
pub fn split_socket(fd: OwnedFd) -> std::io::Result<Halves> {
    let std_sock = std::os::unix::net::UnixStream::from(fd);
    std_sock.set_nonblocking(true)?;
    Ok(tokio::net::UnixStream::from_std(std_sock)?.into_split())
}

/// [`split_socket`] for a launch: the error names the control socket.
pub fn host_halves(host: OwnedFd) -> Result<Halves, LaunchError> {
    split_socket(host).map_err(|e| prepare("control socket", e))
}
