#![warn(missing_docs)]
//! hostd's report, rebuilt from a run's stored samples alone: figures, HTML, the decision
//! table, comparisons and exports. Measures nothing and starts no guest.

// The measurements, backends and host facilities, under the same paths as this crate's own
// modules.
pub use hostd_measure::*;

pub mod bootreport;
pub mod compare;
pub mod decision;
pub mod export;
pub mod netem_report;
pub mod plot;
pub mod report;
