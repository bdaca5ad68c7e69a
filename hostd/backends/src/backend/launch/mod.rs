//! The launch toolkit every backend starts its guests with, so that each backend holds only
//! what is its own (its command line, its config file, its channel's far end):
//!
//! - [`LaunchGuard`]: everything a launch has created so far (work directory, links,
//!   namespaces, containers, cgroup, console); released in reverse order when the launch
//!   fails or its future is dropped mid-way (launches are cancel-safe), handed to the
//!   guest's [`GuestProcess`](super::GuestProcess) when it started;
//! - [`GuestCommand`]: a guest's host program with the common setup (no stdin, its own
//!   process group, killed on drop, the fleet namespace entered, descriptors passed, the
//!   cgroup joined before exec);
//! - [`control_pair`] and [`host_halves`]: the control channel as a socketpair;
//! - [`run_tool`] and [`ToolError`]: a helper program (xl, a version
//!   query) run to its end within a deadline;
//! - [`boot_images`]: a VM backend's kernel and initramfs, checked before use, and
//!   [`vm_launch_files`]: what its launches read;
//! - [`Steps`]: the wall time of each launch step, logged per guest at debug level.

mod command;
mod ctl;
mod guard;
mod images;
mod reaped;
mod steps;
mod tool;

pub use command::GuestCommand;
pub use ctl::{control_pair, host_halves, split_socket, Halves};
pub use guard::LaunchGuard;
pub use images::{boot_images, vm_launch_files, ImageError};
pub use reaped::Reaped;
pub use steps::Steps;
pub use tool::{run_output, run_tool, tool_version, ToolError};
