//! Helper programs a backend runs to their end (xl, xenstore-read,
//! version queries): within a deadline, killed if they overrun, their failure a
//! [`ToolError`] that callers can branch on (not found, timed out, what it said).

use std::ffi::OsStr;
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use super::Reaped;

/// Why a helper program gave no answer.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ToolError {
    #[error("{program} not found")]
    NotFound { program: String },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{command}` did not finish within {} s", timeout.as_secs())]
    TimedOut { command: String, timeout: Duration },
    /// It ran and failed; `said` is its standard error (or output, when that is empty).
    #[error("`{command}` failed ({status}): {said}")]
    Failed { command: String, status: ExitStatus, said: String },
}

impl ToolError {
    /// The program could not be started at all (missing, not executable).
    pub fn not_runnable(&self) -> bool {
        matches!(self, ToolError::NotFound { .. } | ToolError::Spawn { .. })
    }

    /// What a program that ran and failed said (empty for the other cases).
    pub fn said(&self) -> &str {
        match self {
            ToolError::Failed { said, .. } => said,
            _ => "",
        }
    }
}

/// Probes and launch errors carry reasons as text.
impl From<ToolError> for String {
    fn from(e: ToolError) -> String {
        e.to_string()
    }
}

fn describe<S: AsRef<OsStr>>(program: &OsStr, args: &[S]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(AsRef::as_ref))
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args` with no input and returns whatever it printed and its status,
/// success or not. Err: it could not be started, or did not finish within `timeout` (it is
/// then killed).
pub async fn run_output<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: &[S],
    timeout: Duration,
) -> Result<Output, ToolError> {
    use tokio::io::AsyncReadExt;
    let program = program.as_ref();
    let name = || program.to_string_lossy().into_owned();
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => Reaped::new(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ToolError::NotFound { program: name() })
        }
        Err(source) => return Err(ToolError::Spawn { program: name(), source }),
    };
    // Killed and reaped, at the deadline or if this future is dropped: see Reaped.
    let c = child.child();
    let (mut out, mut err) = (c.stdout.take(), c.stderr.take());
    let run = async {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let read_out = async {
            match out.as_mut() {
                Some(o) => o.read_to_end(&mut stdout).await.map(|_| ()),
                None => Ok(()),
            }
        };
        let read_err = async {
            match err.as_mut() {
                Some(e) => e.read_to_end(&mut stderr).await.map(|_| ()),
                None => Ok(()),
            }
        };
        let (o, e, status) = tokio::join!(read_out, read_err, child.child().wait());
        o?;
        e?;
        Ok::<_, std::io::Error>(Output { status: status?, stdout, stderr })
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(ToolError::TimedOut { command: describe(program, args), timeout }),
        Ok(Err(source)) => Err(ToolError::Spawn { program: name(), source }),
        Ok(Ok(out)) => Ok(out),
    }
}

/// Runs `program args` and returns its standard output; a failing exit is
/// [`ToolError::Failed`] with what it said.
pub async fn run_tool<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: &[S],
    timeout: Duration,
) -> Result<String, ToolError> {
    let program = program.as_ref();
    let out = run_output(program, args, timeout).await?;
    if !out.status.success() {
        let said = if out.stderr.is_empty() { &out.stdout } else { &out.stderr };
        return Err(ToolError::Failed {
            command: describe(program, args),
            status: out.status,
            said: String::from_utf8_lossy(said).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first line a version query (`program args`, within 10 s) printed, on its standard
/// output or, for programs that print it there, its standard error.
pub async fn tool_version(program: impl AsRef<OsStr>, args: &[&str]) -> Result<String, ToolError> {
    let program = program.as_ref();
    let out = run_output(program, args, Duration::from_secs(10)).await?;
    let text = if out.stdout.is_empty() { &out.stderr } else { &out.stdout };
    let first = String::from_utf8_lossy(text).lines().next().unwrap_or("").trim().to_string();
    if !out.status.success() || first.is_empty() {
        return Err(ToolError::Failed {
            command: describe(program, args),
            status: out.status,
            said: first,
        });
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_outcome_is_typed() {
        let none: [&str; 0] = [];
        let e = run_tool("/nonexistent/tool", &none, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, ToolError::NotFound { .. }) && e.not_runnable(), "{e}");
        let e = run_tool("sh", &["-c", "echo oops >&2; exit 3"], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.said(), "oops");
        assert!(e.to_string().starts_with("`sh -c echo oops >&2; exit 3` failed"), "{e}");
        let e = run_tool("sleep", &["5"], Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(e, ToolError::TimedOut { .. }), "{e}");
        assert_eq!(run_tool("echo", &["hi"], Duration::from_secs(5)).await.unwrap(), "hi\n");
        let v = tool_version("sh", &["-c", "echo 'v 1.2' >&2"]).await.unwrap();
        assert_eq!(v, "v 1.2");
    }
}
