//! hostd: boots guests through the backends, measures them the way the paper does
//! (Quétier, Neri, Cappello), and keeps the results. This crate holds the drivers of the
//! commands; the binary in `main.rs` only parses arguments and prints. The library crates
//! below are re-exported so every module has one path, `hostd::…`.

#![allow(async_fn_in_trait)]

pub use hostd_report::*;

pub mod bootrun;
pub mod daemon;
pub mod estimate;
pub mod multihost;
pub mod net;
pub mod progress;
pub mod runner;
pub mod xenlab;
