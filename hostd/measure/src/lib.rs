#![warn(missing_docs)]
//! hostd's fleets and measurements: n guests at once, startup and memory (paper II.B), the
//! suite (paper II.A), and the samples they record with their provenance. Knows no report
//! and no CLI.

#![allow(async_fn_in_trait)]

// The backends and host facilities, under the same paths as this crate's own modules.
pub use hostd_backends::*;

pub mod boot;
pub mod campaign;
pub mod capacity;
pub mod coldstart;
pub mod datadisk;
pub mod defaults;
pub mod fidelity;
pub mod fleet;
pub mod floor;
pub mod memory;
pub mod microbench;
pub mod netem_accuracy;
pub mod peer;
pub mod probe;
pub mod provenance;
pub mod reach;
pub mod samples;
pub mod scaling;
pub mod startup;
pub mod stats;
pub mod suite;
