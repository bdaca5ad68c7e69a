//! hostd: boots guests through the backends, measures them the way the paper does
//! (Quétier, Neri, Cappello), and keeps the results. The binary in `main.rs` only parses
//! arguments and prints.

// Backends use `async fn` in a trait with enum dispatch: the futures' Send-ness is known at
// each concrete call, so the lint's concern (unnameable bounds for generic callers) does
// not apply.
#![allow(async_fn_in_trait)]

pub mod backend;
pub mod bootrun;
pub mod campaign;
pub mod cgroup;
pub mod channel;
pub mod coldstart;
pub mod compare;
pub mod console;
pub mod daemon;
pub mod datadisk;
pub mod decision;
pub mod defaults;
pub mod export;
pub mod fidelity;
pub mod fleet;
pub mod floor;
pub mod guest;
pub mod images;
pub mod integrity;
pub mod limits;
pub mod memory;
pub mod microbench;
pub mod netlab;
pub mod pagecache;
pub mod peer;
pub mod plot;
pub mod probe;
pub mod progress;
pub mod provenance;
pub mod report;
pub mod results;
pub mod runner;
pub mod runstate;
pub mod samples;
pub mod startup;
pub mod stats;
pub mod suite;
pub mod xenlab;
