#![warn(missing_docs)]
//! hostd's backends behind the `Backend` trait, the guest control channel, a guest's boot
//! and shutdown, and the images they boot. Knows no measurement and no report: a backend
//! importing either does not compile.

// Backends use `async fn` in a trait with enum dispatch: the futures' Send-ness is known at
// each concrete call, so the lint's concern (unnameable bounds for generic callers) does
// not apply.
#![allow(async_fn_in_trait)]

// The host facilities, under the same paths as this crate's own modules (`crate::cgroup`).
pub use hostd_host::*;

pub mod backend;
pub mod channel;
pub mod guest;
pub mod images;
pub mod integrity;
