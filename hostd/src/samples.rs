//! The records a run appends to its `samples.jsonl`: raw measurements, one per line, from
//! which every summary and figure can be rebuilt.

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::fleet::GuestFailure;
use crate::startup::{MemorySample, StartMode, StartupSample};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Startup(StartupSample),
    Memory(MemorySample),
    Failure { backend: BackendKind, n: usize, mode: StartMode, failure: GuestFailure },
    /// Written last for a fleet: marks the measurement complete (a resumed run skips it).
    FleetDone { backend: BackendKind, n: usize, mode: StartMode, ready: usize, failed: usize, t_startup_s: Option<f64> },
}
