//! imagegen: builds the guest artifacts every backend boots (agent, initramfs, rootfs, OCI
//! bundle, data disk, kernels) from `recipes/*.toml`, bit-reproducibly, into a
//! content-addressed store. The binary in `main.rs` only parses arguments and prints; hostd
//! uses this library to find what was built:
//!
//! ```no_run
//! let store = imagegen::Store::open(imagegen::Config::from_env()?.store)?;
//! let kernel = store.current("kernel-pv")?;
//! let vmlinux = store.output_path(&kernel, "kernel")?;
//! let cmdline = kernel.cmdline.as_deref().unwrap_or("");
//! # let _ = (vmlinux, cmdline);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Layout of a store (and of the cache outside the clone, which has no `current/`):
//! `blobs/sha256/<hex>` (read-only artifacts), `builds/<input-hash>.json` (one manifest per
//! build), `current/<recipe>.json` (the manifest of each recipe's latest build) and
//! `trees/<hex>/` (tar blobs unpacked for container runtimes).

pub mod archive;
pub mod bench;
pub mod build;
mod config;
pub mod hash;
mod kinds;
pub use kinds::oci;
pub mod lock;
pub mod manifest;
pub mod materialize;
pub mod pin;
pub mod plan;
pub mod recipe;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// Looking into a root file system tree (a `debian-rootfs`, `rootfs-import` or `oci-image`
/// build unpacked by [`Store::materialize_system_tree`]) without following its symlinks out
/// of it.
pub mod rootfs {
    pub use crate::kinds::system::{find_init, resolve_in};
}

pub use build::{build, fetch, BuildError, Fetched, Outcome, Progress, Status};
pub use config::{Config, ConfigError, DEFAULT_CACHE, DEFAULT_SOURCE_DATE_EPOCH};
pub use manifest::{Manifest, Output};
pub use materialize::{extract_tar, MaterializeError};
pub use pin::{pin, PinChange, PinError};
pub use plan::PlanError;
pub use recipe::Kind;
pub use store::{Problem, ReadLock, Store, StoreError, VerifyReport};
