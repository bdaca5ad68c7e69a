//! `hostd up` / `status` / `down`: a fleet kept running for people who boot guests to run
//! their own emulation on them. The daemon writes its run state before any guest starts,
//! answers on a Unix control socket (`<scratch>/control.sock`, one JSON request and one JSON
//! answer per line), and on `down` (or SIGTERM/SIGINT) tears every guest down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};

use vb_protocol::msg::{Command, ExecRequest, ExecResult, ReplyBody};

use crate::backend::{AnyBackend, BackendKind, BackendOptions, Images};
use crate::cgroup::Limits;
use crate::channel::{AgentConn, ChannelError};
use crate::fleet::{self, Fleet, FleetConfig, GuestFailure};
use crate::limits;
use crate::runstate::{RunState, RUN_ROOT};

/// A fleet file (`hostd up FILE`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// Name used by `hostd status NAME` / `hostd down NAME` ([a-z0-9-], ≤ 32). Required.
    pub name: String,
    /// Backend name (native, ns, oci, uml, qemu-microvm, qemu-full, firecracker). Required
    /// unless the file has `[[group]]`s, then not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Number of guests, in [`limits::GUESTS`]. Required unless the file has `[[group]]`s,
    /// then not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guests: Option<usize>,
    /// A mixed fleet: groups of guests, each with its own backend, count, memory and system,
    /// all on the one fleet network and numbered in file order (`g0`… across groups).
    #[serde(default, rename = "group", skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupFile>,
    /// Programs run in every guest once the fleet is up (each an argv, in order); one that
    /// does not exit 0 in some guest makes `hostd up` report that guest (exit status 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<Vec<String>>,
    /// Seconds each of `commands` may run in a guest. Default 300.
    #[serde(default = "default_boot_timeout")]
    pub command_timeout_s: u64,
    /// Guest memory in MiB (a group's default). Default 128.
    #[serde(default = "default_mem")]
    pub mem_mib: u32,
    /// vCPUs per guest. Default 1.
    #[serde(default = "default_one")]
    pub vcpus: u32,
    /// Attach guests to the fleet network (namespace `vb-<run>`). Default true.
    #[serde(default = "default_true")]
    pub network: bool,
    /// Most guests launching at once; 0 = all. Default 0.
    #[serde(default)]
    pub parallelism: usize,
    /// Seconds a guest may take to become ready. Default 300.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_s: u64,
    /// Per-guest cgroup limits. Default none.
    #[serde(default)]
    pub limits: LimitsFile,
    /// A system image (root file system recipe in the image store) the guests boot.
    #[serde(default)]
    pub system: Option<String>,
    /// With `system`: PID 1 is the agent (default) or the image's own init.
    #[serde(default)]
    pub init: Option<crate::backend::rootdisk::InitMode>,
    /// The emulated network: link properties, sites and the matrix between them, applied
    /// once every guest is up (`hostd net NAME set` changes it later). Default unshaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<crate::netem::TopologyFile>,
    /// The groups as checked by [`FleetFile::load`] (one, named after the backend, for a
    /// file without `[[group]]`).
    #[serde(skip)]
    pub resolved: Vec<Group>,
}

/// One `[[group]]` of a mixed fleet file. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// Unique in the file; a-z, 0-9, -; up to 32 characters. Required.
    pub name: String,
    /// Required.
    pub backend: String,
    /// Required, at least 1; all groups together at most [`limits::GUESTS`]' maximum.
    pub guests: usize,
    /// Default: the file's `mem_mib`.
    #[serde(default)]
    pub mem_mib: Option<u32>,
    /// Default: the file's `vcpus`.
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Default: the file's `system` (a native group boots no image and takes none).
    #[serde(default)]
    pub system: Option<String>,
    /// Default: the file's `init`.
    #[serde(default)]
    pub init: Option<crate::backend::rootdisk::InitMode>,
}

/// A checked group: its guests are `g<first>`..`g<first + guests - 1>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub kind: BackendKind,
    pub first: usize,
    pub guests: usize,
    pub mem_mib: u32,
    pub vcpus: u32,
    pub system: Option<(String, crate::backend::rootdisk::InitMode)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Memory limit in MiB. Default unlimited.
    pub memory_mib: Option<u64>,
    /// CPU bandwidth in CPUs (0.5 = half a CPU). Default unlimited.
    pub cpus: Option<f64>,
    /// Maximum processes. Default unlimited.
    pub pids: Option<u64>,
}

fn default_mem() -> u32 {
    128
}
fn default_one() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_boot_timeout() -> u64 {
    300
}

/// Bytes of each stream a fleet file's command keeps per guest (printed by `hostd up`).
pub const COMMAND_OUTPUT_MAX: u32 = 16 * 1024;

fn good_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl FleetFile {
    /// Parses and checks a fleet file; errors name the file, the group and the field.
    /// Everything is checked here, before any guest starts.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: FleetFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let bad =
            |field: &str, why: String| Err(format!("{}: field `{field}`: {why}", path.display()));
        if !good_name(&f.name) {
            return bad("name", format!("{:?} must be 1-32 characters of a-z, 0-9 and -", f.name));
        }
        let checks = [
            limits::MEM_MIB.field("mem_mib", f.mem_mib).map(|_| ()),
            limits::VCPUS.field("vcpus", f.vcpus).map(|_| ()),
            limits::PARALLELISM.field("parallelism", f.parallelism).map(|_| ()),
            limits::BOOT_TIMEOUT_S.field("boot_timeout_s", f.boot_timeout_s).map(|_| ()),
            limits::BOOT_TIMEOUT_S.field("command_timeout_s", f.command_timeout_s).map(|_| ()),
            f.limits.memory_mib.map_or(Ok(()), |m| {
                limits::LIMIT_MEMORY_MIB.field("limits.memory_mib", m).map(|_| ())
            }),
            f.limits
                .pids
                .map_or(Ok(()), |p| limits::LIMIT_PIDS.field("limits.pids", p).map(|_| ())),
            f.limits.cpus.map_or(Ok(()), |c| limits::check_cpus("limits.cpus", c).map(|_| ())),
        ];
        if let Some(e) = checks.into_iter().find_map(Result::err) {
            return Err(format!("{}: {e}", path.display()));
        }
        for (i, argv) in f.commands.iter().enumerate() {
            if let Err(e) = f.command_request(argv).check() {
                return bad(&format!("commands[{i}]"), e);
            }
        }
        let mut f = f;
        f.resolved = match (&f.backend, f.guests, f.groups.is_empty()) {
            (Some(backend), Some(guests), true) => {
                let kind: BackendKind = match backend.parse() {
                    Ok(k) => k,
                    Err(e) => return bad("backend", e.to_string()),
                };
                if let Err(e) = limits::GUESTS.field("guests", guests) {
                    return Err(format!("{}: {e}", path.display()));
                }
                if f.init.is_some() && f.system.is_none() {
                    return bad(
                        "init",
                        "needs `system` (the agent's own image has no other init)".into(),
                    );
                }
                if kind == BackendKind::Native && f.system.is_some() {
                    return bad(
                        "system",
                        "native guests are host processes: they boot no image".into(),
                    );
                }
                vec![Group {
                    name: kind.name().to_string(),
                    kind,
                    first: 0,
                    guests,
                    mem_mib: f.mem_mib,
                    vcpus: f.vcpus,
                    system: f.system(),
                }]
            }
            (None, None, false) => {
                f.check_groups().map_err(|e| format!("{}: {e}", path.display()))?
            }
            (_, _, false) => {
                return Err(format!(
                    "{}: a fleet file with [[group]] gives `backend` and `guests` in each group, \
                     not at the top",
                    path.display()
                ))
            }
            (None, _, true) => return bad("backend", "missing (or give [[group]]s)".into()),
            (_, None, true) => return bad("guests", "missing (or give [[group]]s)".into()),
        };
        let total = f.total_guests();
        if let Some(net) = &mut f.net {
            if !f.network {
                return bad("net", "needs network = true".into());
            }
            // Checked now, before any guest starts; a CSV is found next to the fleet file
            // (made absolute for the daemon, which resolves it again once guests are up).
            let base = path.parent().unwrap_or(Path::new("."));
            if let Some(csv) = &mut net.matrix_csv {
                *csv = base.join(&*csv);
            }
            if let Err(e) = net.resolve(total, base) {
                return bad("net", e.to_string());
            }
        }
        Ok(f)
    }

    /// Checks the `[[group]]`s (names unique, backends known, counts and memory in range,
    /// all of them together within the fleet limit) and numbers their guests.
    fn check_groups(&self) -> Result<Vec<Group>, String> {
        let mut out: Vec<Group> = Vec::new();
        let mut first = 0usize;
        for g in &self.groups {
            let at = |e: String| format!("group {:?}: {e}", g.name);
            if !good_name(&g.name) {
                return Err(at("field `name`: must be 1-32 characters of a-z, 0-9 and -".into()));
            }
            if out.iter().any(|o| o.name == g.name) {
                return Err(
                    at("a second group with this name (group names must be unique)".into()),
                );
            }
            let kind: BackendKind = g
                .backend
                .parse()
                .map_err(|e: crate::backend::UnknownBackend| at(format!("field `backend`: {e}")))?;
            limits::GUESTS.field("guests", g.guests).map_err(at)?;
            let mem_mib = g.mem_mib.unwrap_or(self.mem_mib);
            limits::MEM_MIB.field("mem_mib", mem_mib).map_err(at)?;
            let vcpus = g.vcpus.unwrap_or(self.vcpus);
            limits::VCPUS.field("vcpus", vcpus).map_err(at)?;
            let system = g.system.clone().or_else(|| self.system.clone());
            let init = g.init.or(self.init);
            if init.is_some() && system.is_none() {
                return Err(at(
                    "field `init`: needs `system` (the agent's own image has no other init)".into(),
                ));
            }
            // A native group ignores the file-wide system but refuses its own.
            let system = match kind {
                BackendKind::Native if g.system.is_some() => {
                    return Err(at(
                        "field `system`: native guests are host processes: they boot no image"
                            .into(),
                    ))
                }
                BackendKind::Native => None,
                _ => system.map(|s| (s, init.unwrap_or_default())),
            };
            out.push(Group {
                name: g.name.clone(),
                kind,
                first,
                guests: g.guests,
                mem_mib,
                vcpus,
                system,
            });
            first += g.guests;
        }
        if first > limits::GUESTS.max as usize {
            return Err(format!(
                "the groups hold {first} guests together, more than a fleet's {} (groups: {})",
                limits::GUESTS.max,
                out.iter()
                    .map(|g| format!("{} {}", g.name, g.guests))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(out)
    }

    /// Guests in all groups.
    pub fn total_guests(&self) -> usize {
        self.resolved.iter().map(|g| g.guests).sum()
    }

    /// The `exec` request of one of `commands`.
    pub fn command_request(&self, argv: &[String]) -> ExecRequest {
        ExecRequest {
            argv: argv.to_vec(),
            env: Vec::new(),
            cwd: None,
            timeout_ms: self.command_timeout_s.saturating_mul(1000),
            output_max: COMMAND_OUTPUT_MAX,
        }
    }

    /// The system image and init the guests boot, if the file names one.
    pub fn system(&self) -> Option<(String, crate::backend::rootdisk::InitMode)> {
        self.system.clone().map(|s| (s, self.init.unwrap_or_default()))
    }

    /// How `group`'s guests start.
    pub fn fleet_config(&self, group: &Group) -> FleetConfig {
        FleetConfig {
            n: group.guests,
            parallelism: self.parallelism,
            vcpus: group.vcpus,
            mem_mib: group.mem_mib,
            network: self.network,
            net_mode: Default::default(),
            data_disk: None,
            data_copies: None,
            boot_timeout: Duration::from_secs(self.boot_timeout_s),
            limits: Limits {
                // Checked by `load`; a value that would not fit in bytes is no limit at all
                // rather than a wrapped one.
                memory_bytes: self.limits.memory_mib.and_then(limits::mib_to_bytes),
                cpus: self.limits.cpus,
                pids: self.limits.pids,
                cpuset: None,
            },
            image_copies: Vec::new(),
        }
    }
}

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
    let commands = run_commands(&file, &run, &fleet).await;
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

/// Runs the file's `commands` in order, each in every guest at once, and records the
/// results in `<scratch>/commands.json`; a command that fails in a guest is reported with
/// the guest named and does not stop the next command.
async fn run_commands(file: &FleetFile, run: &RunState, fleet: &Running) -> CommandsRun {
    let mut out = CommandsRun { text: String::new(), failed: Vec::new() };
    let mut record = Vec::new();
    for argv in &file.commands {
        let req = file.command_request(argv);
        let shown = argv.join(" ");
        out.text.push_str(&format!("command `{shown}`:\n"));
        let results = match exec_in(fleet, None, &req).await {
            ControlAnswer::Exec { results } => results,
            ControlAnswer::Error { error } => {
                out.text.push_str(&format!("  not run: {error}\n"));
                out.failed.push(format!("`{shown}`: {error}"));
                continue;
            }
            _ => unreachable!("exec_in answers Exec or Error"),
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
    let guest = match &work {
        ControlRequest::Exec { guest, .. }
        | ControlRequest::CopyIn { guest, .. }
        | ControlRequest::CopyOut { guest, .. } => guest.clone(),
        ControlRequest::Status | ControlRequest::Down => unreachable!("answered above"),
    };
    let targets = match targets(fleet, guest.as_deref()) {
        Ok(t) => t,
        Err(error) => {
            answer(reply, ControlAnswer::Error { error }).await;
            return false;
        }
    };
    tokio::spawn(async move {
        let a = match work {
            ControlRequest::Exec { exec, .. } => exec_on(&targets, &exec).await,
            ControlRequest::CopyIn { src, dst, .. } => copy_in(&targets, &src, &dst).await,
            ControlRequest::CopyOut { src, dst, guest } => {
                copy_out(&targets, &src, &dst, guest.is_none()).await
            }
            ControlRequest::Status | ControlRequest::Down => unreachable!("answered above"),
        };
        answer(reply, a).await;
    });
    false
}

use tokio::io::AsyncReadExt;

/// A guest a request goes to: its name and its channel, apart from the fleet, so the
/// request is served off the control loop (a guest taken out meanwhile fails it).
struct Target {
    name: String,
    conn: Arc<AgentConn>,
}

/// The named guest or every ready one, or an error naming the running guests.
fn targets(fleet: &Running, guest: Option<&str>) -> Result<Vec<Target>, String> {
    let t: Vec<Target> = fleet
        .guests()
        .filter(|g| guest.is_none_or(|n| g.spec.name == n))
        .map(|g| Target { name: g.spec.name.clone(), conn: g.conn.clone() })
        .collect();
    if t.is_empty() {
        let names: Vec<_> = fleet.guests().map(|g| g.spec.name.as_str()).collect();
        return Err(format!(
            "no running guest named {:?} (running: {})",
            guest.unwrap_or(""),
            names.join(", ")
        ));
    }
    Ok(t)
}

/// A request's failure as `hostd exec`/`cp` print it: a guest that did not answer says so
/// (the daemon takes it out as failed within a second).
fn request_error(e: ChannelError) -> String {
    match e {
        ChannelError::ReplyTimeout { .. } => {
            format!("the guest did not answer: {e}; it is taken out as failed")
        }
        e => e.to_string(),
    }
}

/// Runs `exec` in the named guest or every ready one (see [`exec_on`]).
async fn exec_in(fleet: &Running, guest: Option<&str>, exec: &ExecRequest) -> ControlAnswer {
    match targets(fleet, guest) {
        Ok(t) => exec_on(&t, exec).await,
        Err(error) => ControlAnswer::Error { error },
    }
}

/// Runs `exec` in every target concurrently; each reply is checked against the request
/// (guests are untrusted) and a guest that does not answer within the program's timeout
/// and 30 s more is reported, not waited for.
async fn exec_on(targets: &[Target], exec: &ExecRequest) -> ControlAnswer {
    if let Err(error) = exec.check() {
        return ControlAnswer::Error { error };
    }
    let wait = Duration::from_millis(exec.timeout_ms) + Duration::from_secs(30);
    let results = futures::future::join_all(targets.iter().map(|g| async move {
        let result = match g.conn.request(Command::Exec(exec.clone()), wait).await {
            Ok(ReplyBody::Exited(r)) => r.check(exec).map(|()| r).map_err(|e| e.to_string()),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(request_error(e)),
        };
        GuestExec { guest: g.name.clone(), result }
    }))
    .await;
    ControlAnswer::Exec { results }
}

/// How long one file chunk may take a guest (a TCG guest on a busy host is slow).
const CHUNK_WAIT: Duration = Duration::from_secs(60);

/// Reads a host file to copy in: a regular file (a symlink is followed: it is the user's
/// own tree) of at most `MAX_FILE_BYTES`, with its permission bits.
fn read_host_file(src: &Path) -> Result<(Vec<u8>, u32), String> {
    use std::os::unix::fs::PermissionsExt;
    use vb_protocol::msg::MAX_FILE_BYTES;
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", src.display());
    let md = std::fs::metadata(src).map_err(|e| at(&e))?;
    if md.is_dir() {
        return Err(at(&"is a directory (hostd cp copies one file)"));
    }
    if !md.is_file() {
        return Err(at(&"not a regular file"));
    }
    if md.len() > MAX_FILE_BYTES {
        return Err(at(&format!(
            "{} bytes, more than the {MAX_FILE_BYTES} (64 MiB) a copy moves",
            md.len()
        )));
    }
    let data = std::fs::read(src).map_err(|e| at(&e))?;
    if data.len() as u64 > MAX_FILE_BYTES {
        return Err(at(&"grew past the copy limit while it was read"));
    }
    Ok((data, md.permissions().mode() & 0o7777))
}

/// `hostd cp` in: reads the host file, then sends it to every target in chunks of at
/// most `MAX_FILE_CHUNK`, concurrently; each reply is checked.
async fn copy_in(targets: &[Target], src: &Path, dst: &str) -> ControlAnswer {
    use vb_protocol::msg::{PutFile, MAX_FILE_CHUNK};
    if let Err(error) = PutFile::new(dst, 0, 0, &[], true).check() {
        return ControlAnswer::Error { error };
    }
    let path = src.to_path_buf();
    let read = tokio::task::spawn_blocking(move || read_host_file(&path)).await;
    let (data, mode) = match read {
        Ok(Ok(x)) => x,
        Ok(Err(error)) => return ControlAnswer::Error { error },
        Err(e) => return ControlAnswer::Error { error: format!("reading the file: {e}") },
    };
    let data = &data;
    let results = futures::future::join_all(targets.iter().map(|g| async move {
        let mut offset = 0usize;
        let result = loop {
            let end = (offset + MAX_FILE_CHUNK).min(data.len());
            let last = end == data.len();
            let put = PutFile::new(dst, mode, offset as u64, &data[offset..end], last);
            match g.conn.request(Command::PutFile(put), CHUNK_WAIT).await {
                Ok(ReplyBody::Put { size }) if size == end as u64 => {}
                Ok(ReplyBody::Put { size }) => {
                    break Err(format!("the guest says {size} bytes written, not {end}"))
                }
                Ok(other) => break Err(format!("unexpected reply {other:?}")),
                Err(e) => break Err(request_error(e)),
            }
            if last {
                break Ok((data.len() as u64, None));
            }
            offset = end;
        };
        GuestCopy { guest: g.name.clone(), result }
    }))
    .await;
    ControlAnswer::Copied { results }
}

/// Reads one guest file in chunks (each reply checked, the file's size fixed by the first
/// chunk); returns its bytes and permission bits.
async fn fetch_guest_file(g: &Target, src: &str) -> Result<(Vec<u8>, u32), String> {
    use vb_protocol::msg::{GetFile, MAX_FILE_CHUNK};
    let mut data = Vec::new();
    let mut size = None;
    loop {
        let req =
            GetFile { path: src.into(), offset: data.len() as u64, max: MAX_FILE_CHUNK as u32 };
        let d = match g.conn.request(Command::GetFile(req.clone()), CHUNK_WAIT).await {
            Ok(ReplyBody::FileData(d)) => d,
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(request_error(e)),
        };
        let bytes = d.check(&req).map_err(|e| e.to_string())?;
        if *size.get_or_insert(d.size) != d.size {
            return Err(format!("{src} changed size while it was copied"));
        }
        data.extend_from_slice(&bytes);
        if data.len() as u64 == d.size {
            return Ok((data, d.mode));
        }
    }
}

/// `hostd cp` out: reads the guest file from every target and writes it to `dst` (or
/// `dst/<name>` if `dst` is a directory), or with `several` guests to
/// `dst/<guest>/<name>` (`dst` an existing directory). Host files get the guest's
/// permission bits without set-id and sticky bits, written beside and renamed into place.
async fn copy_out(targets: &[Target], src: &str, dst: &Path, several: bool) -> ControlAnswer {
    use vb_protocol::msg::{GetFile, MAX_FILE_CHUNK};
    let probe = GetFile { path: src.into(), offset: 0, max: MAX_FILE_CHUNK as u32 };
    if let Err(error) = probe.check() {
        return ControlAnswer::Error { error };
    }
    let name = Path::new(src).file_name().map(|n| n.to_owned()).unwrap_or_else(|| "file".into());
    if several && !dst.is_dir() {
        return ControlAnswer::Error {
            error: format!(
                "{}: copying out of every guest needs an existing directory (each guest's \
                 copy goes to DIR/<guest>/{})",
                dst.display(),
                name.to_string_lossy()
            ),
        };
    }
    let results = futures::future::join_all(targets.iter().map(|g| {
        let name = name.clone();
        async move {
            let result = async {
                let (data, mode) = fetch_guest_file(g, src).await?;
                let out = if several {
                    dst.join(&g.name).join(&name)
                } else if dst.is_dir() {
                    dst.join(&name)
                } else {
                    dst.to_path_buf()
                };
                let len = data.len() as u64;
                let at = out.clone();
                tokio::task::spawn_blocking(move || write_host_file(&at, &data, mode & 0o777))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{}: {e}", out.display()))?;
                Ok((len, Some(out)))
            }
            .await;
            GuestCopy { guest: g.name.clone(), result }
        }
    }))
    .await;
    ControlAnswer::Copied { results }
}

/// Writes `data` beside `path` and renames it into place (a failed copy leaves no part).
fn write_host_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = path.with_file_name(format!(".{}.vb-part", name.to_string_lossy()));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn load_file(text: &str) -> Result<FleetFile, String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fleet.toml");
        std::fs::write(&p, text).unwrap();
        FleetFile::load(&p)
    }

    fn load(text: &str) -> Result<(FleetFile, BackendKind), String> {
        load_file(text).map(|f| {
            let k = f.resolved[0].kind;
            (f, k)
        })
    }

    #[test]
    fn fleet_files_are_validated_with_field_names() {
        let (f, k) = load("name = \"lab\"\nbackend = \"native\"\nguests = 3\n").unwrap();
        assert_eq!((f.guests, f.mem_mib, f.network, k), (Some(3), 128, true, BackendKind::Native));
        assert!(load("name = \"lab\"\nbackend = \"native\"\nguests = 3\ncolour = 1\n")
            .unwrap_err()
            .contains("colour"));
        assert!(load("name = \"lab\"\nbackend = \"vmware\"\nguests = 3\n")
            .unwrap_err()
            .contains("`backend`"));
        assert!(load("name = \"lab\"\nbackend = \"native\"\nguests = 0\n")
            .unwrap_err()
            .contains("`guests`"));
        assert!(load("name = \"Lab!\"\nbackend = \"native\"\nguests = 1\n")
            .unwrap_err()
            .contains("`name`"));
        assert!(load("name = \"lab\"\nbackend = \"native\"\n").unwrap_err().contains("guests"));
        assert!(load("name = \"lab\"\nbackend = \"native\"\nguests = 1\n[limits]\ncpus = -1.0\n")
            .unwrap_err()
            .contains("limits.cpus"));
    }

    #[test]
    fn absurd_limits_and_timeouts_are_refused() {
        let base = "name = \"lab\"\nbackend = \"native\"\nguests = 1\n";
        for (extra, field) in [
            // 2^44 MiB: shifted to bytes it wraps to a 0-byte limit.
            ("[limits]\nmemory_mib = 17592186044416\n", "`limits.memory_mib`"),
            ("[limits]\nmemory_mib = 0\n", "`limits.memory_mib`"),
            ("[limits]\npids = 0\n", "`limits.pids`"),
            ("[limits]\ncpus = nan\n", "`limits.cpus`"),
            // Near 2^63 s: `Instant::now() + deadline` would overflow.
            ("boot_timeout_s = 9223372036854775807\n", "`boot_timeout_s`"),
            ("boot_timeout_s = 0\n", "`boot_timeout_s`"),
            ("mem_mib = 0\n", "`mem_mib`"),
            ("vcpus = 0\n", "`vcpus`"),
            ("parallelism = 100000\n", "`parallelism`"),
        ] {
            let e = load(&format!("{base}{extra}")).unwrap_err();
            assert!(e.contains(field) && e.contains("fleet.toml"), "{extra}: {e}");
        }
        let (f, _) = load(&format!("{base}[limits]\nmemory_mib = 48\npids = 64\n")).unwrap();
        let cfg = f.fleet_config(&f.resolved[0]);
        assert_eq!((cfg.limits.memory_bytes, cfg.limits.pids), (Some(48 << 20), Some(64)));
    }

    const MIXED: &str = "name = \"mix\"\nmem_mib = 96\n\
        [[group]]\nname = \"c\"\nbackend = \"ns\"\nguests = 3\n\
        [[group]]\nname = \"u\"\nbackend = \"uml\"\nguests = 1\nmem_mib = 64\n\
        [[group]]\nname = \"q\"\nbackend = \"qemu-microvm\"\nguests = 2\nvcpus = 2\n";

    #[test]
    fn groups_are_numbered_across_the_fleet() {
        let f = load_file(MIXED).unwrap();
        let got: Vec<_> =
            f.resolved.iter().map(|g| (g.name.as_str(), g.kind, g.first, g.guests)).collect();
        assert_eq!(
            got,
            [
                ("c", BackendKind::Ns, 0, 3),
                ("u", BackendKind::Uml, 3, 1),
                ("q", BackendKind::QemuMicrovm, 4, 2)
            ]
        );
        assert_eq!(f.total_guests(), 6);
        assert_eq!((f.resolved[0].mem_mib, f.resolved[1].mem_mib), (96, 64));
        assert_eq!((f.resolved[1].vcpus, f.resolved[2].vcpus), (1, 2));
        let cfg = f.fleet_config(&f.resolved[2]);
        assert_eq!((cfg.n, cfg.vcpus, cfg.mem_mib), (2, 2, 96));
        // The single-backend form is one group named after its backend.
        let (one, _) = load("name = \"lab\"\nbackend = \"ns\"\nguests = 2\n").unwrap();
        assert_eq!((one.resolved[0].name.as_str(), one.resolved[0].first), ("ns", 0));
    }

    #[test]
    fn bad_groups_are_refused_naming_the_group() {
        let g = |name: &str, body: &str| format!("[[group]]\nname = \"{name}\"\n{body}");
        let ok = g("a", "backend = \"ns\"\nguests = 1\n");
        for (extra, want) in [
            (g("b", "backend = \"vmware\"\nguests = 1\n"), "group \"b\": field `backend`"),
            (g("b", "backend = \"ns\"\nguests = 0\n"), "group \"b\": field `guests`"),
            (g("a", "backend = \"uml\"\nguests = 1\n"), "group \"a\": a second group"),
            (g("b", "backend = \"ns\"\nguests = 25000\n"), "25001 guests together"),
            (g("b", "backend = \"ns\"\nguests = 1\nmem_mib = 1\n"), "group \"b\": field `mem_mib`"),
            (g("B!", "backend = \"ns\"\nguests = 1\n"), "field `name`"),
            (
                g("b", "backend = \"native\"\nguests = 1\nsystem = \"x\"\n"),
                "group \"b\": field `system`",
            ),
            (
                g("b", "backend = \"ns\"\nguests = 1\ninit = \"image\"\n"),
                "group \"b\": field `init`",
            ),
            (g("b", "backend = \"ns\"\nguests = 1\ncolour = 1\n"), "colour"),
        ] {
            let e = load_file(&format!("name = \"mix\"\n{ok}{extra}")).unwrap_err();
            assert!(e.contains(want) && e.contains("fleet.toml"), "{extra}: {e}");
        }
        let e = load_file(&format!("name = \"mix\"\nbackend = \"ns\"\n{ok}")).unwrap_err();
        assert!(e.contains("not at the top"), "{e}");
        let e = load_file("name = \"mix\"\n").unwrap_err();
        assert!(e.contains("`backend`"), "{e}");
        // A [net] is checked against all groups' guests together.
        let net = "[net]\nlink = { delay_ms = 1.0 }\n";
        assert!(load_file(&format!("name = \"mix\"\n{ok}{net}")).is_ok());
    }

    #[test]
    fn fleet_commands_are_checked() {
        let base = "name = \"lab\"\nbackend = \"ns\"\nguests = 1\n";
        let (f, _) =
            load(&format!("{base}commands = [[\"/bin/true\"], [\"cat\", \"/x\"]]\n")).unwrap();
        assert_eq!(f.commands.len(), 2);
        assert_eq!(f.command_request(&f.commands[1]).timeout_ms, 300_000);
        let e = load(&format!("{base}commands = [[]]\n")).unwrap_err();
        assert!(e.contains("`commands[0]`"), "{e}");
        let e = load(&format!("{base}command_timeout_s = 0\n")).unwrap_err();
        assert!(e.contains("`command_timeout_s`"), "{e}");
    }
}
