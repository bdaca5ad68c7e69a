//! `hostd up` / `status` / `down`: a fleet kept running for people who boot guests to run
//! their own emulation on them. The daemon writes its run state before any guest starts,
//! answers on a Unix control socket (`<scratch>/control.sock`, one JSON request and one JSON
//! answer per line), and on `down` (or SIGTERM/SIGINT) tears every guest down.

mod client;
mod file;
mod guests;
mod hosts;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};

use vb_protocol::msg::{Command, ExecRequest, ExecResult, ReplyBody};

use crate::backend::{AnyBackend, BackendOptions, Images};
use crate::channel::{AgentConn, ChannelError};
use crate::fleet::{self, Fleet, FleetConfig, GuestFailure};
use crate::runstate::{RunState, RUN_ROOT};

pub use client::*;
pub use file::*;
use guests::{copy_in, copy_out, exec_on, targets, Target};
pub use hosts::{not_ready, serve_hosts, HostsFleet, SlurmState};

/// What `hostd status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub run: String,
    /// The backend, or a mixed fleet's backends joined with `+` in group order.
    pub backend: String,
    pub daemon_pid: u32,
    /// `ip netns exec NETNS …` reaches the guests.
    pub netns: Option<String>,
    pub guests: Vec<GuestStatus>,
    pub failures: Vec<GuestFailure>,
    /// A fleet across hosts (`hostd up --engine slurm`): its job and every host's guests
    /// (`guests` and `failures` are then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<HostsFleet>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestStatus {
    pub name: String,
    /// Its group (the backend's name for a fleet file without groups) and backend.
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub backend: String,
    pub addr: Option<String>,
    pub host_pid: u32,
    pub alive: bool,
    pub ready_after_s: f64,
    pub kernel: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum ControlRequest {
    Status,
    Down,
    /// Run a program in one guest (by name) or all.
    Exec {
        guest: Option<String>,
        exec: ExecRequest,
    },
    /// Copy a host file into one guest (by name) or all.
    CopyIn {
        guest: Option<String>,
        /// Absolute host path (the client resolves it).
        src: PathBuf,
        dst: String,
    },
    /// Copy a guest file out of one guest or all; `dst` is an absolute host path.
    CopyOut {
        guest: Option<String>,
        src: String,
        dst: PathBuf,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
enum ControlAnswer {
    Status(Status),
    GoingDown,
    Error { error: String },
    Exec { results: Vec<GuestExec> },
    Copied { results: Vec<GuestCopy> },
}

/// One guest's part of `hostd cp`: the bytes copied and the host file written (copy
/// out), or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestCopy {
    pub guest: String,
    pub result: Result<(u64, Option<PathBuf>), String>,
}

/// One guest's answer to `hostd exec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestExec {
    pub guest: String,
    /// The program's end and output, or why it could not run (an error from the guest,
    /// a reply that failed its checks, a guest that did not answer).
    pub result: Result<ExecResult, String>,
}

pub fn socket_path(run: &RunState) -> PathBuf {
    run.scratch.join("control.sock")
}

/// One group of a running fleet: its backend and its guests.
struct RunningGroup {
    name: String,
    backend: AnyBackend,
    fleet: Fleet,
}

/// A running fleet: its groups (one unless the file has `[[group]]`s), on one network.
struct Running {
    groups: Vec<RunningGroup>,
    /// The fleet network, destroyed once at teardown (the groups' fleets hold none).
    net: Option<crate::netlab::FleetNet>,
}

impl Running {
    fn guests(&self) -> impl Iterator<Item = &crate::guest::RunningGuest> {
        self.groups.iter().flat_map(|g| g.fleet.guests.iter())
    }

    async fn prune(&mut self) -> Vec<GuestFailure> {
        let mut out = Vec::new();
        for g in &mut self.groups {
            out.extend(g.fleet.prune(&g.backend).await);
        }
        out
    }

    /// Tears every group down concurrently, then the network.
    async fn teardown(self, grace: Duration) {
        futures::future::join_all(self.groups.into_iter().map(|g| async move {
            let RunningGroup { backend, fleet, .. } = g;
            fleet.teardown(&backend, grace).await
        }))
        .await;
        if let Some(n) = self.net {
            if let Err(e) = n.destroy() {
                eprintln!("hostd: removing the fleet network: {e}");
            }
        }
    }
}

fn status_of(name: &str, run: &RunState, fleet: &mut Running) -> Status {
    let mut failures: Vec<GuestFailure> =
        fleet.groups.iter().flat_map(|g| g.fleet.failures.iter().cloned()).collect();
    failures.sort_by_key(|f| f.index);
    Status {
        name: name.into(),
        run: run.run.clone(),
        backend: fleet.groups.iter().map(|g| g.fleet.backend.name()).collect::<Vec<_>>().join("+"),
        daemon_pid: std::process::id(),
        netns: fleet.net.as_ref().map(|n| n.netns.clone()),
        guests: fleet
            .groups
            .iter_mut()
            .flat_map(|grp| {
                let (group, backend) = (grp.name.clone(), grp.fleet.backend.name().to_string());
                grp.fleet.guests.iter_mut().zip(&grp.fleet.ready_at).map(move |(g, at)| {
                    GuestStatus {
                        name: g.spec.name.clone(),
                        group: group.clone(),
                        backend: backend.clone(),
                        addr: g.spec.net.as_ref().map(|n| format!("{}/{}", n.addr, n.prefix)),
                        host_pid: g.process.pid(),
                        alive: !g.process.proc.has_exited(),
                        ready_after_s: at.as_secs_f64(),
                        kernel: g.hello.kernel_release.clone(),
                    }
                })
            })
            .collect(),
        failures,
        hosts: None,
    }
}

/// Starts every group on one network: checks all of them (backend available, addresses,
/// descriptors) before anything starts, then boots the groups concurrently. An error
/// names the group; whatever had started is torn down.
async fn start_groups(
    file: &FleetFile,
    images: &[Images],
    opts: &BackendOptions,
    run: &RunState,
) -> anyhow::Result<Running> {
    use crate::backend::Backend;
    let backends: Vec<AnyBackend> = file
        .resolved
        .iter()
        .zip(images)
        .map(|(g, images)| AnyBackend::new(g.kind, images, opts))
        .collect();
    let named = |g: &Group, e: &dyn std::fmt::Display| {
        if file.groups.is_empty() {
            anyhow::anyhow!("{e:#}")
        } else {
            anyhow::anyhow!("group {:?} ({}): {e:#}", g.name, g.kind)
        }
    };
    for (g, b) in file.resolved.iter().zip(&backends) {
        b.probe().await.map_err(|e| named(g, &e))?;
        fleet::check(b, &file.fleet_config(g), g.first).map_err(|e| named(g, &e))?;
    }
    let net = if file.network { Some(crate::netlab::FleetNet::create(&run.run)?) } else { None };
    let configs: Vec<FleetConfig> = file.resolved.iter().map(|g| file.fleet_config(g)).collect();
    let started = futures::future::join_all(
        file.resolved
            .iter()
            .zip(&backends)
            .zip(&configs)
            .map(|((g, b), cfg)| fleet::start_on(b, run, cfg, net.clone(), g.first, |_| {})),
    )
    .await;
    let mut running = Running { groups: Vec::new(), net };
    let mut error = None;
    for ((g, b), r) in file.resolved.iter().zip(backends).zip(started) {
        match r {
            Ok(mut fleet) => {
                fleet.net = None;
                running.groups.push(RunningGroup { name: g.name.clone(), backend: b, fleet });
            }
            Err(e) => error = error.or(Some(named(g, &e))),
        }
    }
    if let Some(e) = error {
        running.teardown(Duration::from_secs(10)).await;
        return Err(e);
    }
    Ok(running)
}

/// The daemon: boots the fleet, runs the file's commands, reports through `ready` (the
/// text `hostd up` prints, and whether a command failed, or why the fleet did not start),
/// serves the control socket until `down` or a termination signal, then tears down and
/// cleans the run. `images[i]` are the images of the file's `resolved[i]` group.
pub async fn serve(
    file: FleetFile,
    images: Vec<Images>,
    opts: BackendOptions,
    run: RunState,
    ready: impl FnOnce(Result<Up, String>),
) -> anyhow::Result<()> {
    let listener = UnixListener::bind(socket_path(&run))?;
    let name_link = fleet_link(&file.name);
    let mut fleet = match start_groups(&file, &images, &opts, &run).await {
        Ok(f) => f,
        Err(e) => {
            ready(Err(format!("{e:#}")));
            run.finish();
            return Err(e);
        }
    };
    if let Err(e) = shape(&file, &run, &fleet) {
        ready(Err(format!("the fleet's network ([net]): {e}")));
        fleet.teardown(Duration::from_secs(10)).await;
        run.finish();
        anyhow::bail!("the fleet's network ([net]): {e}");
    }
    let _ = std::fs::create_dir_all(name_link.parent().expect("has parent"));
    let _ = std::fs::remove_file(&name_link);
    let _ = std::os::unix::fs::symlink(&run.scratch, &name_link);
    let commands = run_commands(&file, &run, || targets(&fleet, None)).await;
    let mut text = format_status(&status_of(&file.name, &run, &mut fleet));
    text.push_str(&commands.text);
    ready(Ok(Up { text, failed: commands.failed }));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Guests that die are taken out (their resources released) and listed as failed.
    let mut check = tokio::time::interval(Duration::from_secs(1));
    // Clients' request lines are read off this loop (a slow client costs it nothing) and
    // come back here; what needs guests is then served by its own task, so one slow guest
    // or a long copy never holds up status, down or requests to other guests.
    let (incoming_tx, mut incoming) = tokio::sync::mpsc::channel::<Incoming>(64);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = check.tick() => {
                for f in fleet.prune().await {
                    eprintln!("hostd: {}", f.to_string().lines().next().unwrap_or_default());
                }
            }
            conn = listener.accept() => {
                let Ok((conn, _)) = conn else { continue };
                tokio::spawn(read_request(conn, incoming_tx.clone()));
            }
            Some(inc) = incoming.recv() => {
                if dispatch(inc, &file.name, &run, &mut fleet).await {
                    break;
                }
            }
        }
    }
    fleet.teardown(Duration::from_secs(10)).await;
    let _ = std::fs::remove_file(&name_link);
    run.finish();
    Ok(())
}

/// What `hostd up` reports once the fleet is up.
#[derive(Debug, Clone)]
pub struct Up {
    /// The fleet's status and the file's commands' results, for printing.
    pub text: String,
    /// Guests where a command did not exit 0 (`g3: \`cmd\` exit 1`); the fleet stays up.
    pub failed: Vec<String>,
}

struct CommandsRun {
    text: String,
    failed: Vec<String>,
}

/// Runs the file's `commands` in order, each in every guest at once (`targets`: the ready
/// guests, asked again for each command), and records the results in
/// `<scratch>/commands.json`; a command that fails in a guest is reported with the guest
/// named and does not stop the next command.
async fn run_commands(
    file: &FleetFile,
    run: &RunState,
    targets: impl Fn() -> Result<Vec<Target>, String>,
) -> CommandsRun {
    let mut out = CommandsRun { text: String::new(), failed: Vec::new() };
    let mut record = Vec::new();
    for argv in &file.commands {
        let req = file.command_request(argv);
        let shown = argv.join(" ");
        out.text.push_str(&format!("command `{shown}`:\n"));
        let answer = match targets() {
            Ok(t) => exec_on(&t, &req).await,
            Err(error) => ControlAnswer::Error { error },
        };
        let results = match answer {
            ControlAnswer::Exec { results } => results,
            ControlAnswer::Error { error } => {
                out.text.push_str(&format!("  not run: {error}\n"));
                out.failed.push(format!("`{shown}`: {error}"));
                continue;
            }
            _ => unreachable!("exec_on answers Exec or Error"),
        };
        for r in &results {
            let line = format_exec(r);
            out.text.push_str(&format!("{line}\n"));
            if let Ok(x) = &r.result {
                for (what, s) in [("stdout", &x.stdout), ("stderr", &x.stderr)] {
                    for l in s.lines() {
                        out.text.push_str(&format!("   {what}| {l}\n"));
                    }
                }
            }
            if !exec_ok(r) {
                out.failed.push(format!(
                    "{}: `{shown}` {}",
                    r.guest,
                    line.trim_start_matches("== ").split_once(": ").map_or("", |x| x.1)
                ));
            }
        }
        record.push(serde_json::json!({ "argv": argv, "results": results }));
    }
    if !record.is_empty() {
        let _ = std::fs::write(
            run.scratch.join("commands.json"),
            serde_json::to_vec_pretty(&record).unwrap_or_default(),
        );
    }
    out
}

/// Whether a guest's program ran and exited 0.
pub fn exec_ok(r: &GuestExec) -> bool {
    matches!(&r.result, Ok(x) if x.status == Some(0) && !x.timed_out)
}

/// `== g3: exit 0 in 0.012 s` (with timed out / truncated notes), or `== g3: failed: why`.
pub fn format_exec(r: &GuestExec) -> String {
    match &r.result {
        Ok(x) => {
            let how = match (x.status, x.signal) {
                (Some(c), _) => format!("exit {c}"),
                (None, Some(s)) => format!("signal {s}"),
                (None, None) => "?".to_string(),
            };
            format!(
                "== {}: {how}{}{} in {:.3} s",
                r.guest,
                if x.timed_out { " (timed out)" } else { "" },
                if x.truncated { " (output truncated)" } else { "" },
                x.duration_ns as f64 / 1e9
            )
        }
        Err(e) => format!("== {}: failed: {e}", r.guest),
    }
}

/// Applies the fleet file's `[net]` to every guest that came up.
fn shape(file: &FleetFile, run: &RunState, fleet: &Running) -> Result<(), String> {
    let (Some(net), Some(fnet)) = (&file.net, &fleet.net) else { return Ok(()) };
    let topo = net.resolve(file.total_guests(), Path::new("/")).map_err(|e| e.to_string())?;
    let indices: Vec<usize> = fleet.guests().map(|g| g.spec.index).collect();
    crate::net::set(&run.scratch, &fnet.netns, &topo, &indices)
}

/// A client's request (or why it could not be read) and where its answer goes.
struct Incoming {
    req: Result<ControlRequest, String>,
    reply: OwnedWriteHalf,
}

/// Reads one client's request line and hands it to the control loop.
async fn read_request(conn: UnixStream, to_loop: tokio::sync::mpsc::Sender<Incoming>) {
    let (r, reply) = conn.into_split();
    let mut line = String::new();
    // A client gets one bounded request line (an exec's arguments at most, JSON-escaped)
    // and 5 s to send it.
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(r.take(4096 + 6 * vb_protocol::msg::MAX_EXEC_ARG_BYTES as u64))
            .read_line(&mut line),
    )
    .await;
    let req = match read {
        Ok(Ok(_)) => serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}")),
        _ => Err("no request".into()),
    };
    let _ = to_loop.send(Incoming { req, reply }).await;
}

/// Writes one answer line; a client that stopped reading is given up on after 5 s.
async fn answer(mut w: OwnedWriteHalf, answer: ControlAnswer) {
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(5), w.write_all(&out)).await;
}

/// Serves one request: status, down and errors at once; requests to guests in a task of
/// their own holding only those guests' channels. True when the fleet is to go down.
async fn dispatch(inc: Incoming, name: &str, run: &RunState, fleet: &mut Running) -> bool {
    let Incoming { req, reply } = inc;
    let work = match req {
        Ok(ControlRequest::Status) => {
            answer(reply, ControlAnswer::Status(status_of(name, run, fleet))).await;
            return false;
        }
        Ok(ControlRequest::Down) => {
            answer(reply, ControlAnswer::GoingDown).await;
            return true;
        }
        Err(error) => {
            answer(reply, ControlAnswer::Error { error }).await;
            return false;
        }
        Ok(req) => req,
    };
    let guest = request_guest(&work).expect("status and down are answered above");
    let targets = match targets(fleet, guest.as_deref()) {
        Ok(t) => t,
        Err(error) => {
            answer(reply, ControlAnswer::Error { error }).await;
            return false;
        }
    };
    tokio::spawn(on_guests(work, targets, reply));
    false
}

/// The guest named by an exec or cp request (None: every ready guest).
fn request_guest(r: &ControlRequest) -> Option<Option<String>> {
    match r {
        ControlRequest::Exec { guest, .. }
        | ControlRequest::CopyIn { guest, .. }
        | ControlRequest::CopyOut { guest, .. } => Some(guest.clone()),
        ControlRequest::Status | ControlRequest::Down => None,
    }
}

/// Serves an exec or cp request on its targets and answers the client.
async fn on_guests(work: ControlRequest, targets: Vec<Target>, reply: OwnedWriteHalf) {
    let a = match work {
        ControlRequest::Exec { exec, .. } => exec_on(&targets, &exec).await,
        ControlRequest::CopyIn { src, dst, .. } => copy_in(&targets, &src, &dst).await,
        ControlRequest::CopyOut { src, dst, guest } => {
            copy_out(&targets, &src, &dst, guest.is_none()).await
        }
        ControlRequest::Status | ControlRequest::Down => {
            ControlAnswer::Error { error: "not a request to guests".into() }
        }
    };
    answer(reply, a).await;
}
