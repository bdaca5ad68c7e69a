//! The client side: `hostd status`, `down`, `exec` and `cp` asking a fleet's daemon, and
//! how their answers are printed.

use super::*;

/// `hostd cp`: copies a file into (`host` to `guest_path`) or out of (`to_host`) a
/// `hostd up` fleet's guests through its daemon.
pub async fn request_copy(
    run: &RunState,
    guest: Option<String>,
    host: PathBuf,
    guest_path: String,
    to_host: bool,
) -> anyhow::Result<Vec<GuestCopy>> {
    let req = if to_host {
        ControlRequest::CopyOut { guest, src: guest_path, dst: host }
    } else {
        ControlRequest::CopyIn { guest, src: host, dst: guest_path }
    };
    // The daemon bounds every chunk (CHUNK_WAIT); 64 MiB over a slow console channel
    // (UML reads it a byte per system call) can take many minutes.
    let wait = Duration::from_secs(3600);
    match ask_within(run, &req, wait).await? {
        ControlAnswer::Copied { results } => Ok(results),
        ControlAnswer::Error { error } => anyhow::bail!("daemon: {error}"),
        ControlAnswer::GoingDown => anyhow::bail!("daemon is going down"),
        _ => anyhow::bail!("unexpected answer"),
    }
}

/// `hostd exec`: runs a program in a `hostd up` fleet's guests through its daemon.
pub async fn request_exec(
    run: &RunState,
    guest: Option<String>,
    exec: ExecRequest,
) -> anyhow::Result<Vec<GuestExec>> {
    exec.check().map_err(anyhow::Error::msg)?;
    let wait = Duration::from_millis(exec.timeout_ms) + Duration::from_secs(60);
    match ask_within(run, &ControlRequest::Exec { guest, exec }, wait).await? {
        ControlAnswer::Exec { results } => Ok(results),
        ControlAnswer::Error { error } => anyhow::bail!("daemon: {error}"),
        ControlAnswer::GoingDown => anyhow::bail!("daemon is going down"),
        _ => anyhow::bail!("unexpected answer"),
    }
}

/// `/run/virtbench/fleets/<name>` → the run's scratch directory.
pub fn fleet_link(name: &str) -> PathBuf {
    Path::new(RUN_ROOT).join("fleets").join(name)
}

/// Runs of live `hostd up` daemons: (name, state).
pub fn live_fleets() -> Vec<(String, RunState)> {
    let Ok(rd) = std::fs::read_dir(Path::new(RUN_ROOT).join("fleets")) else { return Vec::new() };
    let mut v: Vec<(String, RunState)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let st: RunState =
                serde_json::from_slice(&std::fs::read(e.path().join("state.json")).ok()?).ok()?;
            st.owner_alive().then_some((name, st))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

async fn ask(run: &RunState, req: &ControlRequest) -> anyhow::Result<ControlAnswer> {
    ask_within(run, req, Duration::from_secs(10)).await
}

async fn ask_within(
    run: &RunState,
    req: &ControlRequest,
    wait: Duration,
) -> anyhow::Result<ControlAnswer> {
    let mut s = UnixStream::connect(socket_path(run)).await?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line).await?;
    let mut answer = String::new();
    tokio::time::timeout(wait, BufReader::new(s).read_line(&mut answer)).await??;
    Ok(serde_json::from_str(answer.trim())?)
}

pub async fn query_status(run: &RunState) -> anyhow::Result<Status> {
    match ask(run, &ControlRequest::Status).await? {
        ControlAnswer::Status(s) => Ok(s),
        ControlAnswer::Error { error } => anyhow::bail!("daemon: {error}"),
        ControlAnswer::GoingDown => anyhow::bail!("daemon is going down"),
        _ => anyhow::bail!("unexpected answer"),
    }
}

/// Asks the daemon to tear down and waits (up to `wait`) until it has exited.
pub async fn request_down(run: &RunState, wait: Duration) -> anyhow::Result<()> {
    match ask(run, &ControlRequest::Down).await? {
        ControlAnswer::GoingDown => {}
        ControlAnswer::Error { error } => anyhow::bail!("daemon: {error}"),
        _ => anyhow::bail!("unexpected answer"),
    }
    let start = std::time::Instant::now();
    while run.owner_alive() {
        if start.elapsed() > wait {
            anyhow::bail!("daemon {} still running after {wait:?}", run.hostd_pid);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub fn format_status(s: &Status) -> String {
    if let Some(h) = &s.hosts {
        return hosts::format_hosts(s, h);
    }
    let mut out = format!(
        "fleet {} (run {}, backend {}, daemon pid {}){}\n",
        s.name,
        s.run,
        s.backend,
        s.daemon_pid,
        s.netns
            .as_ref()
            .map(|n| format!(", guests reachable with `ip netns exec {n} …`"))
            .unwrap_or_default()
    );
    // A mixed fleet's guests also show their group and backend.
    let mixed = s.backend.contains('+') || s.guests.iter().any(|g| g.group != g.backend);
    out.push_str(&format!(
        "{:<8} {:<18} {:>9} {:>6} {:>10}  {}{}\n",
        "guest",
        "address",
        "host pid",
        "alive",
        "ready s",
        if mixed { format!("{:<12} {:<13} ", "group", "backend") } else { String::new() },
        "kernel"
    ));
    for g in &s.guests {
        out.push_str(&format!(
            "{:<8} {:<18} {:>9} {:>6} {:>10.3}  {}{}\n",
            g.name,
            g.addr.as_deref().unwrap_or("-"),
            g.host_pid,
            if g.alive { "yes" } else { "NO" },
            g.ready_after_s,
            if mixed { format!("{:<12} {:<13} ", g.group, g.backend) } else { String::new() },
            g.kernel
        ));
    }
    for f in &s.failures {
        out.push_str(&format!(
            "{:<8} failed ({:?}): {}\n",
            f.name,
            f.kind,
            f.error.lines().next().unwrap_or("")
        ));
    }
    out
}
