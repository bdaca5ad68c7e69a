//! `hostd up` / `status` / `down`: a fleet kept running for people who boot guests to run
//! their own emulation on them. The daemon writes its run state before any guest starts,
//! answers on a Unix control socket (`<scratch>/control.sock`, one JSON request and one JSON
//! answer per line), and on `down` (or SIGTERM/SIGINT) tears every guest down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use vb_protocol::msg::{Command, ExecRequest, ExecResult, ReplyBody};

use crate::backend::{AnyBackend, BackendKind, BackendOptions, Images};
use crate::cgroup::Limits;
use crate::fleet::{self, Fleet, FleetConfig, GuestFailure};
use crate::limits;
use crate::runstate::{RunState, RUN_ROOT};

/// A fleet file (`hostd up FILE`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// Name used by `hostd status NAME` / `hostd down NAME` ([a-z0-9-], ≤ 32). Required.
    pub name: String,
    /// Backend name (native, ns, oci, uml, qemu-microvm, qemu-full, firecracker). Required.
    pub backend: String,
    /// Number of guests. Required, in [`limits::GUESTS`].
    pub guests: usize,
    /// Guest memory in MiB. Default 128.
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

impl FleetFile {
    /// Parses and checks a fleet file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<(Self, BackendKind), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: FleetFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let bad =
            |field: &str, why: String| Err(format!("{}: field `{field}`: {why}", path.display()));
        if f.name.is_empty()
            || f.name.len() > 32
            || !f.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("name", format!("{:?} must be 1-32 characters of a-z, 0-9 and -", f.name));
        }
        let kind: BackendKind = match f.backend.parse() {
            Ok(k) => k,
            Err(e) => return bad("backend", e),
        };
        let checks = [
            limits::GUESTS.field("guests", f.guests).map(|_| ()),
            limits::MEM_MIB.field("mem_mib", f.mem_mib).map(|_| ()),
            limits::VCPUS.field("vcpus", f.vcpus).map(|_| ()),
            limits::PARALLELISM.field("parallelism", f.parallelism).map(|_| ()),
            limits::BOOT_TIMEOUT_S.field("boot_timeout_s", f.boot_timeout_s).map(|_| ()),
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
        if f.init.is_some() && f.system.is_none() {
            return bad("init", "needs `system` (the agent's own image has no other init)".into());
        }
        if kind == BackendKind::Native && f.system.is_some() {
            return bad("system", "native guests are host processes: they boot no image".into());
        }
        let mut f = f;
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
            if let Err(e) = net.resolve(f.guests, base) {
                return bad("net", e);
            }
        }
        Ok((f, kind))
    }

    /// The system image and init the guests boot, if the file names one.
    pub fn system(&self) -> Option<(String, crate::backend::rootdisk::InitMode)> {
        self.system.clone().map(|s| (s, self.init.unwrap_or_default()))
    }

    pub fn fleet_config(&self) -> FleetConfig {
        FleetConfig {
            n: self.guests,
            parallelism: self.parallelism,
            vcpus: self.vcpus,
            mem_mib: self.mem_mib,
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
    pub backend: BackendKind,
    pub daemon_pid: u32,
    /// `ip netns exec NETNS …` reaches the guests.
    pub netns: Option<String>,
    pub guests: Vec<GuestStatus>,
    pub failures: Vec<GuestFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestStatus {
    pub name: String,
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
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
enum ControlAnswer {
    Status(Status),
    GoingDown,
    Error { error: String },
    Exec { results: Vec<GuestExec> },
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

fn status_of(name: &str, run: &RunState, fleet: &mut Fleet) -> Status {
    Status {
        name: name.into(),
        run: run.run.clone(),
        backend: fleet.backend,
        daemon_pid: std::process::id(),
        netns: fleet.net.as_ref().map(|n| n.netns.clone()),
        guests: fleet
            .guests
            .iter_mut()
            .zip(&fleet.ready_at)
            .map(|(g, at)| GuestStatus {
                name: g.spec.name.clone(),
                addr: g.spec.net.as_ref().map(|n| format!("{}/{}", n.addr, n.prefix)),
                host_pid: g.process.pid(),
                alive: !g.process.proc.has_exited(),
                ready_after_s: at.as_secs_f64(),
                kernel: g.hello.kernel_release.clone(),
            })
            .collect(),
        failures: fleet.failures.clone(),
    }
}

/// The daemon: boots the fleet, reports readiness through `ready`, serves the control
/// socket until `down` or a termination signal, then tears down and cleans the run.
pub async fn serve(
    file: FleetFile,
    kind: BackendKind,
    images: Images,
    opts: BackendOptions,
    run: RunState,
    ready: impl FnOnce(Result<&Status, String>),
) -> anyhow::Result<()> {
    let backend = AnyBackend::new(kind, &images, &opts);
    let listener = UnixListener::bind(socket_path(&run))?;
    let name_link = fleet_link(&file.name);
    let mut fleet = match async {
        use crate::backend::Backend;
        backend.probe().await?;
        Ok::<_, anyhow::Error>(fleet::start(&backend, &run, &file.fleet_config(), |_| {}).await?)
    }
    .await
    {
        Ok(f) => f,
        Err(e) => {
            ready(Err(format!("{e:#}")));
            run.finish();
            return Err(e);
        }
    };
    if let Err(e) = shape(&file, &run, &fleet) {
        ready(Err(format!("the fleet's network ([net]): {e}")));
        fleet.teardown(&backend, Duration::from_secs(10)).await;
        run.finish();
        anyhow::bail!("the fleet's network ([net]): {e}");
    }
    let _ = std::fs::create_dir_all(name_link.parent().expect("has parent"));
    let _ = std::fs::remove_file(&name_link);
    let _ = std::os::unix::fs::symlink(&run.scratch, &name_link);
    ready(Ok(&status_of(&file.name, &run, &mut fleet)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Guests that die are taken out (their resources released) and listed as failed.
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = check.tick() => {
                for f in fleet.prune(&backend).await {
                    eprintln!("hostd: {}", f.to_string().lines().next().unwrap_or_default());
                }
            }
            conn = listener.accept() => {
                let Ok((conn, _)) = conn else { continue };
                if handle(conn, &file.name, &run, &mut fleet).await {
                    break;
                }
            }
        }
    }
    fleet.teardown(&backend, Duration::from_secs(10)).await;
    let _ = std::fs::remove_file(&name_link);
    run.finish();
    Ok(())
}

/// Applies the fleet file's `[net]` to every guest that came up.
fn shape(file: &FleetFile, run: &RunState, fleet: &Fleet) -> Result<(), String> {
    let (Some(net), Some(fnet)) = (&file.net, &fleet.net) else { return Ok(()) };
    let topo = net.resolve(file.guests, Path::new("/"))?;
    let indices: Vec<usize> = fleet.guests.iter().map(|g| g.spec.index).collect();
    crate::net::set(&run.scratch, &fnet.netns, &topo, &indices)
}

/// Answers one client; true when it asked the fleet to go down.
async fn handle(conn: UnixStream, name: &str, run: &RunState, fleet: &mut Fleet) -> bool {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    // A client gets one bounded request line (an exec's arguments at most, JSON-escaped)
    // and 5 s to send it.
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(r.take(4096 + 6 * vb_protocol::msg::MAX_EXEC_ARG_BYTES as u64))
            .read_line(&mut line),
    )
    .await;
    let req: Result<ControlRequest, String> = match read {
        Ok(Ok(_)) => serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}")),
        _ => Err("no request".into()),
    };
    let (answer, down) = match req {
        Ok(ControlRequest::Status) => (ControlAnswer::Status(status_of(name, run, fleet)), false),
        Ok(ControlRequest::Down) => (ControlAnswer::GoingDown, true),
        Ok(ControlRequest::Exec { guest, exec }) => {
            (exec_in(fleet, guest.as_deref(), &exec).await, false)
        }
        Err(error) => (ControlAnswer::Error { error }, false),
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    let _ = w.write_all(&out).await;
    down
}

use tokio::io::AsyncReadExt;

/// Runs `exec` in the named guest or every ready one, concurrently; each reply is checked
/// against the request (guests are untrusted) and a guest that does not answer within the
/// program's timeout and 30 s more is reported, not waited for.
async fn exec_in(fleet: &Fleet, guest: Option<&str>, exec: &ExecRequest) -> ControlAnswer {
    if let Err(error) = exec.check() {
        return ControlAnswer::Error { error };
    }
    let targets: Vec<_> =
        fleet.guests.iter().filter(|g| guest.is_none_or(|n| g.spec.name == n)).collect();
    if targets.is_empty() {
        let names: Vec<_> = fleet.guests.iter().map(|g| g.spec.name.as_str()).collect();
        return ControlAnswer::Error {
            error: format!(
                "no running guest named {:?} (running: {})",
                guest.unwrap_or(""),
                names.join(", ")
            ),
        };
    }
    let wait = Duration::from_millis(exec.timeout_ms) + Duration::from_secs(30);
    let results = futures::future::join_all(targets.into_iter().map(|g| async move {
        let result = match g.conn.request(Command::Exec(exec.clone()), wait).await {
            Ok(ReplyBody::Exited(r)) => r.check(exec).map(|()| r).map_err(|e| e.to_string()),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e.to_string()),
        };
        GuestExec { guest: g.spec.name.clone(), result }
    }))
    .await;
    ControlAnswer::Exec { results }
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
        ControlAnswer::Status(_) => anyhow::bail!("unexpected answer"),
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
        ControlAnswer::Exec { .. } => anyhow::bail!("unexpected answer"),
    }
}

/// Asks the daemon to tear down and waits (up to `wait`) until it has exited.
pub async fn request_down(run: &RunState, wait: Duration) -> anyhow::Result<()> {
    match ask(run, &ControlRequest::Down).await? {
        ControlAnswer::GoingDown => {}
        ControlAnswer::Error { error } => anyhow::bail!("daemon: {error}"),
        ControlAnswer::Status(_) | ControlAnswer::Exec { .. } => {
            anyhow::bail!("unexpected answer")
        }
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
    out.push_str(&format!(
        "{:<8} {:<18} {:>9} {:>6} {:>10}  {}\n",
        "guest", "address", "host pid", "alive", "ready s", "kernel"
    ));
    for g in &s.guests {
        out.push_str(&format!(
            "{:<8} {:<18} {:>9} {:>6} {:>10.3}  {}\n",
            g.name,
            g.addr.as_deref().unwrap_or("-"),
            g.host_pid,
            if g.alive { "yes" } else { "NO" },
            g.ready_after_s,
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

    fn load(text: &str) -> Result<(FleetFile, BackendKind), String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fleet.toml");
        std::fs::write(&p, text).unwrap();
        FleetFile::load(&p)
    }

    #[test]
    fn fleet_files_are_validated_with_field_names() {
        let (f, k) = load("name = \"lab\"\nbackend = \"native\"\nguests = 3\n").unwrap();
        assert_eq!((f.guests, f.mem_mib, f.network, k), (3, 128, true, BackendKind::Native));
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
        assert_eq!(
            (f.fleet_config().limits.memory_bytes, f.fleet_config().limits.pids),
            (Some(48 << 20), Some(64))
        );
    }
}
