//! The records a run appends to its `samples.jsonl`: raw measurements, one per line, from
//! which every summary and figure can be rebuilt.

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::fleet::GuestFailure;
use crate::startup::{MemorySample, StartMode, StartupSample};
use crate::suite::BenchSample;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Startup(StartupSample),
    Memory(MemorySample),
    Failure { backend: BackendKind, n: usize, mode: StartMode, failure: GuestFailure },
    /// Written last for a fleet: marks the measurement complete (a resumed run skips it).
    FleetDone { backend: BackendKind, n: usize, mode: StartMode, ready: usize, failed: usize, t_startup_s: Option<f64> },
    /// One timed benchmark instance of the suite.
    Bench(BenchSample),
    /// A campaign step finished; a resumed campaign skips it.
    StepDone { key: String },
    /// A campaign step failed; a resumed campaign retries it.
    StepFailed { key: String, error: String },
    /// A backend could not run here, and why.
    BackendUnavailable { backend: BackendKind, reason: String },
    /// What a backend's probe said when it ran (e.g. the accelerator chosen).
    BackendProbe { backend: BackendKind, description: String },
    /// A guest failed during a measurement step (crashed, hung, panicked, ran out of
    /// memory, broke the protocol) and was taken out of its fleet.
    GuestLost { backend: BackendKind, step: String, failure: GuestFailure },
}
