//! Running a user's program for the host (`exec`): empty stdin, the environment the host
//! gives, output read to the end but only the first `output_max` bytes of each stream kept,
//! killed at its timeout.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vb_protocol::msg::{ExecRequest, ExecResult};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Reads `r` to its end, keeping the first `max` bytes; whether any were dropped.
fn drain(mut r: impl Read, max: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut dropped = false;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                dropped |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (kept, dropped)
}

/// Lossy UTF-8, cut to `max` bytes at a character boundary.
fn text(bytes: &[u8], max: usize) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Waits for a child the reaper reaps (see `init::WATCHED`), killing it at `deadline`.
fn wait_watched(pid: i32, deadline: Instant, timed_out: &mut bool) -> (Option<i32>, Option<i32>) {
    use nix::sys::wait::WaitStatus;
    loop {
        {
            let Ok(mut w) = crate::init::WATCHED.lock() else { return (None, Some(9)) };
            let map = w.get_or_insert_with(Default::default);
            match map.get(&pid).copied().flatten() {
                Some(st) => {
                    map.remove(&pid);
                    return match st {
                        WaitStatus::Exited(_, c) => (Some(c), None),
                        WaitStatus::Signaled(_, s, _) => (None, Some(s as i32)),
                        _ => (None, Some(9)),
                    };
                }
                // Still unreaped while the lock is held: the pid is still this child's.
                None if Instant::now() >= deadline && !*timed_out => {
                    *timed_out = true;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                None => {}
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn run(req: &ExecRequest) -> Result<ExecResult, String> {
    req.check()?;
    let mut cmd = Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..]).env_clear().stdin(Stdio::null());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut env = req.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    for e in &env {
        let (k, v) = e.split_once('=').expect("checked: NAME=VALUE");
        cmd.env(k, v);
    }
    if let Some(d) = &req.cwd {
        cmd.current_dir(d);
    }
    let start = Instant::now();
    // As PID 1 the reaper reaps every child: the exit is learnt through it.
    let watched = crate::init::reaper_runs();
    let mut child = {
        let mut w = crate::init::WATCHED.lock().map_err(|_| "exec: watch list poisoned")?;
        let child = cmd.spawn().map_err(|e| format!("exec {:?}: {e}", req.argv[0]))?;
        if watched {
            w.get_or_insert_with(Default::default).insert(child.id() as i32, None);
        }
        child
    };
    let max = req.output_max as usize;
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || drain(out, max));
    let t_err = std::thread::spawn(move || drain(err, max));
    let deadline = start + Duration::from_millis(req.timeout_ms);
    let mut timed_out = false;
    let (code, signal) = if watched {
        wait_watched(child.id() as i32, deadline, &mut timed_out)
    } else {
        let st = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    let _ = child.kill();
                    break child
                        .wait()
                        .map_err(|e| format!("waiting for {:?}: {e}", req.argv[0]))?;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("waiting for {:?}: {e}", req.argv[0])),
            }
        };
        (st.code(), if st.code().is_some() { None } else { st.signal() })
    };
    let duration_ns = start.elapsed().as_nanos() as u64;
    // A child that left a background process holding the pipes open: its output so far.
    let (o, od) = t_out.join().unwrap_or_default();
    let (e, ed) = t_err.join().unwrap_or_default();
    Ok(ExecResult {
        status: code,
        signal,
        timed_out,
        stdout: text(&o, max),
        stderr: text(&e, max),
        truncated: od || ed,
        duration_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str], timeout_ms: u64, output_max: u32) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: None,
            timeout_ms,
            output_max,
        }
    }

    #[test]
    fn output_status_and_bounds() {
        let r = run(&req(&["sh", "-c", "echo hello; echo oops >&2; exit 3"], 10_000, 100)).unwrap();
        assert_eq!(
            (r.status, r.stdout.as_str(), r.stderr.as_str()),
            (Some(3), "hello\n", "oops\n")
        );
        assert!(!r.truncated && !r.timed_out);
        let r = run(&req(&["sh", "-c", "head -c 100000 /dev/zero"], 10_000, 10)).unwrap();
        assert_eq!(r.stdout.len(), 10);
        assert!(r.truncated);
        assert!(r.check(&req(&["x"], 10_000, 10)).is_ok());
        let e = run(&req(&["/no/such/program"], 1000, 10)).unwrap_err();
        assert!(e.contains("/no/such/program"), "{e}");
    }

    #[test]
    fn a_program_past_its_timeout_is_killed() {
        let r = run(&req(&["sleep", "30"], 200, 10)).unwrap();
        assert!(r.timed_out);
        assert_eq!(r.signal, Some(9));
        assert!(r.duration_ns < 20_000_000_000);
    }
}
