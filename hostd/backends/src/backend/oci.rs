//! `oci`: any OCI runtime (runc by default; crun, youki, runsc where installed) over the
//! imagegen bundle: a template `config.json` plus `rootfs/`.
//!
//! Per guest, in its work directory:
//! - `bundle/config.json`: the template edited through `oci-spec` ([`derive_config`]): the
//!   shared rootfs by absolute path (read-only, never copied), the hostname, the agent's
//!   `--net`, the guest's network namespace, `linux.cgroupsPath`, limits, the data disk;
//! - `state/`: the runtime's `--root`, so no guest ever meets another runtime user's (or
//!   another guest's) containers, and the state goes with the work directory;
//! - `console.log`: the runtime's and then the agent's stdout and stderr.
//!
//! Started with `<runtime> --root <workdir>/state run --detach --preserve-fds 1 --bundle
//! <workdir>/bundle <id>` with the control socket as fd 3 (`--preserve-fds N` passes fds
//! 3..3+N-1 on). With --detach the runtime exits once the agent runs, and the agent is
//! re-parented. hostd is a child subreaper (prctl PR_SET_CHILD_SUBREAPER) while a runtime
//! starts a container, so the agent becomes hostd's child: hostd reaps it and sees its real
//! exit (an init that does not reap — like the sandbox init on our test hosts — would
//! otherwise collect zombies). The pid comes from `<runtime> state <id>` and is watched
//! through a pidfd. Outside those windows hostd adopts nothing (see [`Subreaper`]); runc
//! orphans nothing but the container's init.
//!
//! The agent gets no `--hostname`: the runtime sets the container's hostname from
//! config.json, and the bundle withholds CAP_SYS_ADMIN, without which sethostname(2) fails.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder, Spec};

use super::native::{split_socket, AGENT_FD};
use super::rootdisk::{System, AGENT_IN_IMAGE};
use super::{
    pass_fd_in_child, prepare, Backend, BackendKind, BackendOptions, GuestSpec, Halves, Held,
    Images, LaunchError, LaunchFiles, Launched, Proc, Resource, Unavailable,
};
use crate::cgroup::{Cgroup, Limits};
use crate::console::{ConsoleLog, CONSOLE_CAP};
use crate::netlab;

/// Where the data disk appears in the guest.
const DISK_IN_GUEST: &str = "/data/disk.img";
/// A `run --detach` that takes longer than this is stuck.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The probe's whole test container.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Where the agent is in the image.
const AGENT_PATH: &str = "sbin/guest-agent";

pub struct Oci {
    runtime: String,
    bundle: Option<PathBuf>,
    /// A system image to run over (each guest on its own overlay), with the agent to add.
    system: Option<(System, PathBuf)>,
}

impl Oci {
    pub fn new(images: &Images, opts: &BackendOptions) -> Self {
        Self {
            runtime: opts.oci_runtime.clone(),
            bundle: images.bundle.clone(),
            system: images.system.clone().map(|s| (s, images.agent.clone())),
        }
    }

    pub fn with_images(&self, images: &Images) -> Self {
        Self {
            runtime: self.runtime.clone(),
            bundle: images.bundle.clone(),
            system: images.system.clone().map(|s| (s, images.agent.clone())),
        }
    }

    /// The runtime binary: a path, or a name looked up on PATH.
    fn runtime_path(&self) -> Option<PathBuf> {
        if self.runtime.contains('/') {
            let p = PathBuf::from(&self.runtime);
            return p.is_file().then_some(p);
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join(&self.runtime))
            .find(|p| p.is_file())
    }

    /// The bundle's template config and its rootfs (absolute, checked to hold the agent).
    fn template(&self) -> Result<(Spec, PathBuf), String> {
        let bundle = self.bundle.as_ref().ok_or("no OCI bundle (build the `oci-bundle` recipe)")?;
        let cfg = bundle.join("config.json");
        if !cfg.is_file() {
            return Err(format!("bundle template {} is missing", cfg.display()));
        }
        let spec =
            Spec::load(&cfg).map_err(|e| format!("bundle template {}: {e}", cfg.display()))?;
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| format!("bundle template {} has no root", cfg.display()))?;
        let rootfs = bundle.join(root.path());
        let rootfs = std::fs::canonicalize(&rootfs)
            .map_err(|e| format!("bundle rootfs {}: {e}", rootfs.display()))?;
        let agent = rootfs.join(AGENT_PATH);
        if !agent.is_file() {
            return Err(format!("bundle rootfs lacks the agent: {} is missing", agent.display()));
        }
        Ok((spec, rootfs))
    }
}

impl Backend for Oci {
    fn kind(&self) -> BackendKind {
        BackendKind::Oci
    }

    /// The bundle tree and the runtime.
    fn launch_files(&self) -> LaunchFiles {
        LaunchFiles {
            images: self
                .bundle
                .iter()
                .cloned()
                .chain(self.system.iter().flat_map(|(s, a)| [s.tree.clone(), a.clone()]))
                .collect(),
            programs: vec![self.runtime.clone()],
            data: Vec::new(),
        }
    }

    async fn probe(&self) -> Result<String, Unavailable> {
        let unavailable = |reason: String| Unavailable { backend: "oci", reason: reason.into() };
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Err(unavailable(format!(
                "needs root for its network namespaces, veths and cgroups (running as uid {euid})"
            )));
        }
        let runtime = self
            .runtime_path()
            .ok_or_else(|| unavailable(format!("OCI runtime {:?} not found", self.runtime)))?;
        let version = runtime_version(&runtime)
            .await
            .map_err(|e| unavailable(format!("{} --version: {e}", runtime.display())))?;
        let (template, rootfs) = self.template().map_err(unavailable)?;
        let ran = probe_run(&runtime, &template, &rootfs).await.map_err(|e| {
            unavailable(format!("{version} ({}): a test container failed: {e}", runtime.display()))
        })?;
        Ok(format!(
            "{version} ({}), bundle {}; test container said {ran:?}",
            runtime.display(),
            rootfs.display()
        ))
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        let mut held = Held::default();
        match self.start(spec, &mut held).await {
            Ok((halves, proc, console)) => Ok(held.launched(spec, halves, proc, console)),
            Err(e) => {
                held.release(&spec.name);
                Err(e)
            }
        }
    }
}

/// The guest's named network namespace (a file name under /run/netns).
pub fn netns_name(spec: &GuestSpec) -> String {
    format!("vbn-{}-{}", spec.run, spec.index)
}

/// `linux.cgroupsPath`: relative, so runc (cgroupfs driver) puts the container below its own
/// — that is hostd's — group in every hierarchy, exactly where [`Cgroup::create`] would.
fn cgroups_path(spec: &GuestSpec) -> PathBuf {
    Path::new("virtbench").join(&spec.run).join(&spec.name)
}

impl Oci {
    /// Everything up to a running container. Whatever it creates is recorded in `held`.
    async fn start(
        &self,
        spec: &GuestSpec,
        held: &mut Held,
    ) -> Result<(Halves, Proc, ConsoleLog), LaunchError> {
        let runtime = self.runtime_path().ok_or_else(|| {
            prepare(
                format!("OCI runtime {:?}", self.runtime),
                io::Error::new(io::ErrorKind::NotFound, "not found"),
            )
        })?;
        let (template, rootfs) =
            self.template().map_err(|e| prepare("the bundle template", io::Error::other(e)))?;
        std::fs::create_dir_all(&spec.workdir).map_err(|e| prepare(spec.workdir.display(), e))?;
        held.resources.push(Resource::Dir { path: spec.workdir.clone() });
        let workdir =
            std::fs::canonicalize(&spec.workdir).map_err(|e| prepare(spec.workdir.display(), e))?;
        // A system image: the guest's own overlay over its tree, instead of the bundle's rootfs.
        let rootfs = match &self.system {
            Some((sys, agent)) => sys.container_root(
                &workdir,
                agent,
                &["/dev", "/proc", "/sys", "/tmp", "/data"],
                &mut held.resources,
            )?,
            None => rootfs,
        };
        let bundle = workdir.join("bundle");
        let state = workdir.join("state");
        for d in [&bundle, &state] {
            std::fs::create_dir_all(d).map_err(|e| prepare(d.display(), e))?;
        }
        let disk = match &spec.data_disk {
            Some(d) => Some(
                std::fs::canonicalize(d)
                    .map_err(|e| prepare(format!("data disk {}", d.display()), e))?,
            ),
            None => None,
        };

        let netns = match &spec.net {
            Some(n) => {
                let name = netns_name(spec);
                netlab::ip(&["netns", "add", &name])?;
                held.resources.push(Resource::Netns { name: name.clone() });
                // A half-made pair goes when the namespace is deleted; a made one too,
                // which releasing the link tolerates.
                n.fleet.add_veth_to_netns(&n.link, &name)?;
                held.resources
                    .push(Resource::Link { netns: n.fleet.netns.clone(), name: n.link.clone() });
                Some(PathBuf::from("/run/netns").join(name))
            }
            None => None,
        };

        let rel = cgroups_path(spec);
        // Where the runtime will create the groups, so a failed start still removes the
        // parents it made; replaced below by what the container really joined.
        held.cgroup = expected_cgroup(&rel);
        if let Some(cg) = &held.cgroup {
            hold_run_groups(cg).map_err(LaunchError::Cgroup)?;
        }
        let config = derive_config(
            &template,
            &GuestConfig {
                rootfs: &rootfs,
                hostname: &spec.name,
                agent_args: spec
                    .net
                    .as_ref()
                    .map(|n| vec!["--net".to_string(), n.agent_arg()])
                    .unwrap_or_default(),
                netns,
                cgroups_path: rel.clone(),
                limits: spec.limits,
                data_disk: disk.as_deref(),
            },
        )
        .map_err(|e| prepare("the guest's config.json", io::Error::other(e)))?;
        let config = if self.system.is_some() {
            over_system(config)
                .map_err(|e| prepare("the guest's config.json", io::Error::other(e)))?
        } else {
            config
        };
        let cfg_path = bundle.join("config.json");
        config.save(&cfg_path).map_err(|e| prepare(cfg_path.display(), io::Error::other(e)))?;

        let log = workdir.join("console.log");
        let (console, out) = ConsoleLog::start(&log, CONSOLE_CAP)
            .map_err(|e| prepare(log.display(), io::Error::other(e)))?;
        let err = out.try_clone().map_err(|e| prepare(log.display(), e))?;
        let (host, guest) =
            socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
                .map_err(|e| prepare("control socketpair", e.into()))?;
        let id = format!("vb-{}-{}", spec.run, spec.name);
        let mut cmd = tokio::process::Command::new(&runtime);
        cmd.arg("--root")
            .arg(&state)
            .args(["run", "--detach", "--preserve-fds", "1", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // A Ctrl-C on hostd's terminal must not reach the runtime mid-start.
            .process_group(0)
            .kill_on_drop(true);
        pass_fd_in_child(&mut cmd, guest.as_raw_fd(), AGENT_FD);
        held.resources.push(Resource::Container {
            runtime: runtime.clone(),
            root: Some(state.clone()),
            id: id.clone(),
        });
        let program = format!("{} run {id}", runtime.display());
        let spawn_err = |source: io::Error| LaunchError::Spawn { program: program.clone(), source };
        let subreaper = Subreaper::hold();
        let status = tokio::time::timeout(RUN_TIMEOUT, cmd.status()).await;
        // The runtime has exited (or been killed): its orphans, if any, are adopted.
        drop(subreaper);
        drop(guest);
        match status {
            Err(_) => {
                return Err(spawn_err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no start within {RUN_TIMEOUT:?}"),
                )))
            }
            Ok(Err(e)) => return Err(spawn_err(e)),
            Ok(Ok(st)) if !st.success() => {
                // The runtime has exited, but a half-started container may still hold the pipe.
                drop(cmd);
                console.drained(Duration::from_millis(500)).await;
                let text = console.tail(4000);
                let text = text.trim();
                let mut cut = text.len().saturating_sub(2000);
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                return Err(spawn_err(io::Error::other(format!("{st}: {}", &text[cut..]))));
            }
            Ok(Ok(_)) => {}
        }
        let pid = state_pid(&runtime, &state, &id)
            .await
            .map_err(|e| spawn_err(io::Error::other(format!("state: {e}"))))?;
        // Ours to reap if we adopted it (see Subreaper); else the host's init reaps it.
        let mut proc =
            Proc::from_pid(pid, parent_of(pid) == Some(std::process::id())).map_err(&spawn_err)?;
        let proc_cgroup =
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // Path::ends_with compares whole components: `rel` is relative, so any prefix matches.
        match crate::cgroup::dirs_of(&proc_cgroup, &mountinfo, |p| {
            p.ends_with(&rel).then(|| p.to_path_buf())
        }) {
            Some(cg) => held.cgroup = Some(cg),
            None => {
                tracing::warn!(guest = %spec.name, "container {id} is not in a group ending {}", rel.display())
            }
        }
        match split_socket(host) {
            Ok(halves) => Ok((halves, proc, console)),
            Err(e) => {
                // `delete --force` (in `held`) stops the container; reap it here.
                proc.kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), proc.wait()).await;
                Err(prepare("control socket", e))
            }
        }
    }
}

/// Holds hostd as a child subreaper (prctl PR_SET_CHILD_SUBREAPER) while at least one
/// runtime is starting a container: the container's init, orphaned when the runtime exits,
/// is then adopted by hostd rather than by the host's init. Only for that window — as a
/// subreaper for good, hostd would also adopt (and never reap) every process orphaned
/// below it by other backends, e.g. a UML kernel's helpers.
struct Subreaper;

static STARTING: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

fn set_subreaper(on: bool) -> bool {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 0 or 1) takes plain integers and changes only a
    // flag of this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on as libc::c_ulong, 0, 0, 0) == 0 }
}

impl Subreaper {
    /// None if the kernel refused (the container's init then goes to the host's init).
    fn hold() -> Option<Subreaper> {
        let mut n = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        if *n == 0 && !set_subreaper(true) {
            return None;
        }
        *n += 1;
        Some(Subreaper)
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        let mut n = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            // Children adopted so far stay hostd's children.
            set_subreaper(false);
        }
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

async fn runtime_version(runtime: &Path) -> io::Result<String> {
    let out = tokio::process::Command::new(runtime)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().next() {
        Some(l) if out.status.success() && !l.trim().is_empty() => Ok(l.trim().to_string()),
        _ => Err(io::Error::other(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// The container's init pid, from `<runtime> state <id>`.
async fn state_pid(runtime: &Path, root: &Path, id: &str) -> io::Result<u32> {
    let out = tokio::process::Command::new(runtime)
        .arg("--root")
        .arg(root)
        .args(["state", id])
        .stdin(Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        return Err(io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(io::Error::other)?;
    v.get("pid")
        .and_then(|p| p.as_u64())
        .filter(|&p| p > 0 && p <= u32::MAX as u64)
        .map(|p| p as u32)
        .ok_or_else(|| {
            io::Error::other(format!("no pid in {}", String::from_utf8_lossy(&out.stdout).trim()))
        })
}

/// Runs the agent with `--version` in a throwaway container from the template, as a guest
/// would run (same runtime, config and cgroup driver); returns what it printed.
async fn probe_run(runtime: &Path, template: &Spec, rootfs: &Path) -> Result<String, String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!("vb-probe-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let dir = tempfile::Builder::new()
        .prefix("vb-oci-probe-")
        .tempdir()
        .map_err(|e| format!("temporary bundle: {e}"))?;
    let bundle = dir.path().join("bundle");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
    let g = GuestConfig {
        rootfs,
        hostname: "vb-probe",
        agent_args: Vec::new(),
        netns: None,
        // One level below hostd's own group: the runtime removes it when the container ends.
        cgroups_path: PathBuf::from(&id),
        limits: Limits::default(),
        data_disk: None,
    };
    let mut cfg = derive_config(template, &g)?;
    if let Some(p) = cfg.process_mut() {
        let agent = p
            .args()
            .as_ref()
            .and_then(|a| a.first().cloned())
            .unwrap_or_else(|| format!("/{AGENT_PATH}"));
        p.set_args(Some(vec![agent, "--version".into()]));
    }
    cfg.save(bundle.join("config.json")).map_err(|e| format!("writing the test config: {e}"))?;
    let mut cmd = tokio::process::Command::new(runtime);
    cmd.arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROBE_TIMEOUT, cmd.output()).await;
    // Whatever happened, leave no container state behind.
    let _ = Resource::Container { runtime: runtime.to_path_buf(), root: Some(state), id }.release();
    let out = match out {
        Err(_) => return Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("cannot run it: {e}")),
        Ok(Ok(o)) => o,
    };
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && stdout.contains("guest-agent") {
        return Ok(stdout.lines().next().unwrap_or_default().to_string());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(format!("{}: {}", out.status, if stderr.is_empty() { stdout } else { stderr }))
}

// ---------------------------------------------------------------------------------------
// The per-guest config.

/// A config for a guest over its own overlay of a system image: the root is writable (the
/// overlay's upper layer takes the writes) and the agent is the copy added to it.
fn over_system(mut s: Spec) -> Result<Spec, String> {
    let mut root = s.root().clone().ok_or("the template has no root")?;
    root.set_readonly(Some(false));
    s.set_root(Some(root));
    let process = s.process_mut().as_mut().ok_or("the template has no process")?;
    let mut args = process.args().clone().unwrap_or_default();
    let first = args.first_mut().ok_or("the template's process has no args")?;
    *first = AGENT_IN_IMAGE.to_string();
    args.push("--system-root".into());
    process.set_args(Some(args));
    Ok(s)
}

/// Per-guest settings applied to the bundle's template.
struct GuestConfig<'a> {
    /// The shared rootfs, absolute.
    rootfs: &'a Path,
    hostname: &'a str,
    /// Appended to the template's process args (`--net …`).
    agent_args: Vec<String>,
    /// A named network namespace to join (None: the template's, i.e. a fresh empty one).
    netns: Option<PathBuf>,
    cgroups_path: PathBuf,
    limits: Limits,
    /// Bound read-only at /data/disk.img.
    data_disk: Option<&'a Path>,
}

/// The template with this guest's fields set; everything else as the template has it.
/// The root is forced read-only: it is shared by every guest.
fn derive_config(template: &Spec, g: &GuestConfig) -> Result<Spec, String> {
    let mut s = template.clone();
    let mut root = s.root().clone().ok_or("the template has no root")?;
    root.set_path(g.rootfs.to_path_buf());
    root.set_readonly(Some(true));
    s.set_root(Some(root));
    s.set_hostname(Some(g.hostname.to_string()));

    let process = s.process_mut().as_mut().ok_or("the template has no process")?;
    let mut args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err("the template's process has no args".into());
    }
    args.extend(g.agent_args.iter().cloned());
    process.set_args(Some(args));

    let linux = s.linux_mut().as_mut().ok_or("the template has no linux section")?;
    if let Some(path) = &g.netns {
        let nss = linux.namespaces_mut().get_or_insert_with(Vec::new);
        match nss.iter_mut().find(|n| n.typ() == LinuxNamespaceType::Network) {
            Some(n) => {
                n.set_path(Some(path.clone()));
            }
            None => nss.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(path.clone())
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
        }
    }
    linux.set_cgroups_path(Some(g.cgroups_path.clone()));
    let l = g.limits;
    if l.memory_bytes.is_some() || l.cpus.is_some() || l.pids.is_some() || l.cpuset.is_some() {
        let r = linux.resources_mut().get_or_insert_with(Default::default);
        if let Some(m) = l.memory_bytes {
            let mut mem = r.memory().unwrap_or_default();
            mem.set_limit(Some(
                i64::try_from(m).map_err(|_| format!("memory limit {m} too large"))?,
            ));
            r.set_memory(Some(mem));
        }
        if l.cpus.is_some() || l.cpuset.is_some() {
            let mut cpu = r.cpu().clone().unwrap_or_default();
            if let Some(c) = l.cpus {
                // The same period Cgroup::create uses.
                cpu.set_period(Some(100_000));
                cpu.set_quota(Some((c * 100_000.0) as i64));
            }
            if let Some(set) = l.cpuset {
                cpu.set_cpus(Some(set.to_string()));
            }
            r.set_cpu(Some(cpu));
        }
        if let Some(p) = l.pids {
            let mut pids = r.pids().unwrap_or_default();
            pids.set_limit(i64::try_from(p).map_err(|_| format!("pids limit {p} too large"))?);
            r.set_pids(Some(pids));
        }
    }
    if let Some(disk) = g.data_disk {
        let mount = |dst: &str, typ: &str, src: &Path, opts: &[&str]| -> Result<Mount, String> {
            MountBuilder::default()
                .destination(dst)
                .typ(typ)
                .source(src)
                .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                .build()
                .map_err(|e| e.to_string())
        };
        let mounts = s.mounts_mut().get_or_insert_with(Vec::new);
        // A tiny tmpfs holds the mount-point file, so the shared image never gains one.
        mounts.push(mount(
            "/data",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "nodev", "noexec", "mode=755", "size=4k"],
        )?);
        mounts.push(mount(
            DISK_IN_GUEST,
            "bind",
            disk,
            &["bind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// The runtime's cgroups.

/// The guest's groups if the runtime creates them at `rel` below hostd's own group in every
/// hierarchy (what runc's cgroupfs driver does with a relative cgroupsPath).
fn expected_cgroup(rel: &Path) -> Option<Cgroup> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    crate::cgroup::dirs_of(&own, &mountinfo, |p| Some(p.join(rel)))
}

/// Creates the run's group (`virtbench/<run>`) in every hierarchy before the runtime runs.
/// Another run's teardown removes the shared `virtbench` directory once it looks empty; if
/// that happened between the runtime's mkdir of `virtbench` and of `virtbench/<run>`, the
/// start would fail. A `virtbench` holding our run's directory cannot be removed.
fn hold_run_groups(cg: &Cgroup) -> io::Result<()> {
    for leaf in &cg.dirs {
        let Some(run_dir) = leaf.parent() else { continue };
        let mut attempt = 0;
        loop {
            match create_groups(run_dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 3 => attempt += 1,
                r => break r?,
            }
        }
    }
    Ok(())
}

/// mkdir -p for cgroup directories: a new v1 cpuset group starts with no CPUs and no memory
/// nodes, so it gets its parent's (as Cgroup::create does).
fn create_groups(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent =
        dir.parent().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no parent"))?;
    create_groups(parent)?;
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        r => r?,
    }
    for f in ["cpuset.cpus", "cpuset.mems"] {
        if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
            std::fs::write(dir.join(f), v.trim())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Mode;

    /// imagegen's template (recipes/oci-bundle.toml), as it writes it.
    const TEMPLATE: &str = r#"{
  "hostname": "virtbench",
  "linux": {
    "maskedPaths": ["/proc/acpi", "/proc/kcore", "/sys/firmware"],
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
    "readonlyPaths": ["/proc/bus", "/proc/sys"]
  },
  "mounts": [
    {"destination": "/proc", "options": ["nosuid", "noexec", "nodev"], "source": "proc", "type": "proc"},
    {"destination": "/dev", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"], "source": "tmpfs", "type": "tmpfs"},
    {"destination": "/sys", "options": ["nosuid", "noexec", "nodev", "ro"], "source": "sysfs", "type": "sysfs"},
    {"destination": "/tmp", "options": ["nosuid", "nodev", "mode=1777"], "source": "tmpfs", "type": "tmpfs"}
  ],
  "ociVersion": "1.0.2",
  "process": {
    "args": ["/sbin/guest-agent", "--ctl", "fd:3"],
    "capabilities": {
      "ambient": [],
      "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"],
      "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"],
      "inheritable": [],
      "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"]
    },
    "cwd": "/",
    "env": ["PATH=/sbin:/bin"],
    "noNewPrivileges": true,
    "rlimits": [],
    "terminal": false,
    "user": {"gid": 0, "uid": 0}
  },
  "root": {"path": "rootfs", "readonly": true}
}"#;

    fn template() -> Spec {
        serde_json::from_str(TEMPLATE).unwrap()
    }

    fn guest<'a>(disk: Option<&'a Path>) -> GuestConfig<'a> {
        GuestConfig {
            rootfs: Path::new("/images/bundle/rootfs"),
            hostname: "g1",
            agent_args: vec!["--net".into(), "eth0=10.211.0.3/16".into()],
            netns: Some("/run/netns/vbn-r-1".into()),
            cgroups_path: "virtbench/r/g1".into(),
            limits: Limits {
                memory_bytes: Some(128 << 20),
                cpus: Some(0.5),
                pids: Some(32),
                cpuset: Some("0"),
            },
            data_disk: disk,
        }
    }

    #[test]
    fn per_guest_fields_are_set() {
        let s = derive_config(&template(), &guest(Some(Path::new("/d/disk.bin")))).unwrap();
        let root = s.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/images/bundle/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        assert_eq!(s.hostname().as_deref(), Some("g1"));
        let args = s.process().as_ref().unwrap().args().clone().unwrap();
        assert_eq!(args, ["/sbin/guest-agent", "--ctl", "fd:3", "--net", "eth0=10.211.0.3/16"]);
        let linux = s.linux().as_ref().unwrap();
        let net: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|n| n.typ() == LinuxNamespaceType::Network)
            .collect();
        assert_eq!(net.len(), 1);
        assert_eq!(net[0].path().as_deref(), Some(Path::new("/run/netns/vbn-r-1")));
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("virtbench/r/g1")));
        let r = linux.resources().as_ref().unwrap();
        assert_eq!(r.memory().unwrap().limit(), Some(128 << 20));
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.quota(), cpu.period(), cpu.cpus().as_deref()),
            (Some(50_000), Some(100_000), Some("0"))
        );
        assert_eq!(r.pids().unwrap().limit(), 32);
        let m = s.mounts().as_ref().unwrap();
        let data = &m[m.len() - 2];
        assert_eq!(
            (data.destination().as_path(), data.typ().as_deref()),
            (Path::new("/data"), Some("tmpfs"))
        );
        let disk = &m[m.len() - 1];
        assert_eq!(disk.destination(), Path::new("/data/disk.img"));
        assert_eq!(disk.source().as_deref(), Some(Path::new("/d/disk.bin")));
        let opts = disk.options().clone().unwrap();
        assert!(opts.contains(&"bind".to_string()) && opts.contains(&"ro".to_string()), "{opts:?}");
        // What the runtime reads back is what we meant.
        let back: Spec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn everything_else_is_preserved() {
        let t = template();
        let mut s = derive_config(&t, &guest(Some(Path::new("/d/disk.bin")))).unwrap();
        // Undo exactly the per-guest edits: what remains must be the template.
        s.set_root(t.root().clone());
        s.set_hostname(t.hostname().clone());
        let p = s.process_mut().as_mut().unwrap();
        p.set_args(t.process().as_ref().unwrap().args().clone());
        let l = s.linux_mut().as_mut().unwrap();
        l.set_cgroups_path(None);
        l.set_resources(None);
        for n in l.namespaces_mut().as_mut().unwrap() {
            n.set_path(None);
        }
        let m = s.mounts_mut().as_mut().unwrap();
        m.truncate(m.len() - 2);
        assert_eq!(s, t);
    }

    #[test]
    fn optional_fields_stay_unset_when_unused() {
        let mut g = guest(None);
        g.netns = None;
        g.agent_args.clear();
        g.limits = Limits::default();
        let s = derive_config(&template(), &g).unwrap();
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.resources().is_none(), "no limits, no resources section");
        assert!(linux.namespaces().as_ref().unwrap().iter().all(|n| n.path().is_none()));
        assert_eq!(s.mounts().as_ref().unwrap().len(), template().mounts().as_ref().unwrap().len());
        assert_eq!(
            s.process().as_ref().unwrap().args(),
            template().process().as_ref().unwrap().args()
        );
        // A template without a network namespace gains one when the guest has a network.
        let mut t = template();
        t.linux_mut()
            .as_mut()
            .unwrap()
            .namespaces_mut()
            .as_mut()
            .unwrap()
            .retain(|n| n.typ() != LinuxNamespaceType::Network);
        let s = derive_config(&t, &guest(None)).unwrap();
        let ns = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(
            ns.last().map(|n| (n.typ(), n.path().clone())),
            Some((LinuxNamespaceType::Network, Some("/run/netns/vbn-r-1".into())))
        );
        // A template without a process is refused with a reason.
        let mut t = template();
        t.set_process(None);
        assert!(derive_config(&t, &guest(None)).unwrap_err().contains("process"));
    }

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn container_groups_on_a_hybrid_host() {
        let pc = "\
9:name=systemd:/virtbench/r/g1
8:pids:/virtbench/r/g1
4:memory:/process_api/abc/virtbench/r/g1
2:cpu,cpuacct:/virtbench/r/g1
7:blkio:/virtbench/r/g1
0::/virtbench/r/g1
";
        let suffix = Path::new("virtbench/r/g1");
        let cg =
            crate::cgroup::dirs_of(pc, MOUNTINFO, |p| p.ends_with(suffix).then(|| p.to_path_buf()))
                .unwrap();
        assert_eq!(cg.mode, Mode::V1);
        let dirs: Vec<&str> = cg.dirs.iter().map(|d| d.to_str().unwrap()).collect();
        // blkio is not mounted in this mountinfo: skipped, not guessed.
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/memory/process_api/abc/virtbench/r/g1",
                "/sys/fs/cgroup/systemd/virtbench/r/g1",
                "/sys/fs/cgroup/pids/virtbench/r/g1",
                "/sys/fs/cgroup/cpu,cpuacct/virtbench/r/g1",
                "/sys/fs/cgroup/unified/virtbench/r/g1",
            ]
        );
        // Expected from hostd's own groups.
        let own = "4:memory:/process_api/abc\n8:pids:/\n0::/\n";
        let cg =
            crate::cgroup::dirs_of(own, MOUNTINFO, |p| Some(p.join("virtbench/r/g1"))).unwrap();
        assert_eq!(cg.dirs[0], Path::new("/sys/fs/cgroup/memory/process_api/abc/virtbench/r/g1"));
        assert_eq!(cg.dirs.len(), 3);
        // A group elsewhere is not the guest's.
        assert!(crate::cgroup::dirs_of("4:memory:/other\n", MOUNTINFO, |p| p
            .ends_with(suffix)
            .then(|| p.to_path_buf()))
        .is_none());
    }

    #[test]
    fn container_group_on_a_v2_host() {
        let mi = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let cg = crate::cgroup::dirs_of("0::/user.slice/virtbench/r/g1\n", mi, |p| {
            Some(p.to_path_buf())
        })
        .unwrap();
        assert_eq!(cg.mode, Mode::V2);
        assert_eq!(cg.dirs, [PathBuf::from("/sys/fs/cgroup/user.slice/virtbench/r/g1")]);
    }

    #[test]
    fn parent_pid_parsing_survives_odd_names() {
        // Our own parent, as a sanity check of the field position.
        assert_eq!(parent_of(std::process::id()), Some(nix::unistd::getppid().as_raw() as u32));
    }
}
