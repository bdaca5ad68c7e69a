//! A booted guest: its processes plus the connected agent. Shared by every measurement.

use std::time::{Duration, Instant};

use vb_protocol::msg::{Command, Hello};

use crate::backend::{AnyBackend, Backend, Exit, GuestProcess, GuestSpec};
use crate::channel::{AgentConn, ChannelError};

/// How much of a failed guest's console output an error report quotes.
const LOG_TAIL: usize = 2000;

pub struct RunningGuest {
    pub spec: GuestSpec,
    pub conn: AgentConn,
    pub hello: Hello,
    pub process: GuestProcess,
    /// Host time from the launch request to the ready message.
    pub startup: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("guest {guest}: launch failed: {source}")]
    Launch { guest: String, source: crate::backend::LaunchError },
    #[error("guest {guest}: {source}{tail}")]
    Ready { guest: String, source: ChannelError, tail: String },
}

/// Launches one guest and waits for its agent's hello. A guest that never becomes ready
/// is killed before the error is returned.
pub async fn boot(backend: &AnyBackend, spec: GuestSpec, hello_timeout: Duration) -> Result<RunningGuest, BootError> {
    let t0 = Instant::now();
    let launched = backend.launch(&spec).await.map_err(|source| BootError::Launch { guest: spec.name.clone(), source })?;
    let mut process = launched.guest;
    match AgentConn::establish(launched.reader, launched.writer, hello_timeout).await {
        Ok((conn, hello)) => Ok(RunningGuest { startup: t0.elapsed(), spec, conn, hello, process }),
        Err(source) => {
            // Before stop: stop releases the work directory the log lives in.
            let tail = process.log_tail(LOG_TAIL).map(|t| format!("; its output ends with:\n{t}")).unwrap_or_default();
            backend.stop(&mut process, Duration::ZERO).await;
            Err(BootError::Ready { guest: spec.name, source, tail })
        }
    }
}

impl RunningGuest {
    /// Asks the agent to power off, then waits up to `grace` before killing.
    pub async fn shutdown(mut self, backend: &AnyBackend, grace: Duration) -> Exit {
        let asked = self.conn.request(Command::Poweroff, grace.max(Duration::from_secs(1))).await.is_ok();
        match backend.stop(&mut self.process, if asked { grace } else { Duration::ZERO }).await {
            // Gone before the wait started, after answering poweroff: a clean stop.
            Exit::Exited(_) if asked => Exit::Clean,
            e => e,
        }
    }
}
