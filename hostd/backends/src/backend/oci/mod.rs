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

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use oci_spec::runtime::Spec;

use super::launch::{
    control_pair, host_halves, run_output, tool_version, GuestCommand, Halves, LaunchGuard, Reaped,
    Steps, ToolError,
};
use super::native::AGENT_FD;
use super::rootdisk::System;
use super::{
    prepare, Backend, BackendKind, BackendOptions, GuestSpec, Images, LaunchError, LaunchFiles,
    Launched, PrepareError, Proc, Resource, SpawnError, Unavailable,
};
use crate::cgroup::Limits;
use adopt::{parent_of, pid_from_file, Subreaper};

/// Where the data disk appears in the guest.
const DISK_IN_GUEST: &str = "/data/disk.img";
/// A `run --detach` that takes longer than this is stuck.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The probe's whole test container.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Where the agent is in the image.
const AGENT_PATH: &str = "sbin/guest-agent";

/// The oci backend: each guest a container of an OCI runtime, from the bundle's template.
pub struct Oci {
    runtime: String,
    bundle: Option<PathBuf>,
    /// A system image to run over (each guest on its own overlay), with the agent to add.
    system: Option<(System, PathBuf)>,
    /// The bundle's template and rootfs once read and checked ([`Oci::template`]): a fleet's
    /// launches share them instead of each parsing config.json again. Boxed: a Spec is
    /// kilobytes, and the backend is one variant of an enum.
    template: std::sync::OnceLock<Box<(Spec, PathBuf)>>,
}

/// Container mount points a system image's overlay must have (made in its upper layer
/// where the image lacks them).
const SYSTEM_MOUNT_POINTS: [&str; 5] = ["/dev", "/proc", "/sys", "/tmp", "/data"];

impl Oci {
    /// The backend over `images`, with the runtime `opts` names.
    pub fn new(images: &Images, opts: &BackendOptions) -> Self {
        Self {
            runtime: opts.oci_runtime.clone(),
            bundle: images.bundle.clone(),
            system: images.system.clone().map(|s| (s.for_container("oci"), images.agent.clone())),
            template: std::sync::OnceLock::new(),
        }
    }

    /// The same runtime over other images.
    pub fn with_images(&self, images: &Images) -> Self {
        Self {
            runtime: self.runtime.clone(),
            bundle: images.bundle.clone(),
            system: images.system.clone().map(|s| (s.for_container("oci"), images.agent.clone())),
            template: std::sync::OnceLock::new(),
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

    /// The bundle's template config and its rootfs (absolute, checked to hold the agent);
    /// read on first use, then kept.
    fn template(&self) -> Result<&(Spec, PathBuf), TemplateError> {
        if let Some(t) = self.template.get() {
            return Ok(t);
        }
        let t = self.read_template()?;
        Ok(self.template.get_or_init(|| Box::new(t)))
    }

    fn read_template(&self) -> Result<(Spec, PathBuf), TemplateError> {
        let bundle = self.bundle.as_ref().ok_or(TemplateError::NoBundle)?;
        let cfg = bundle.join("config.json");
        if !cfg.is_file() {
            return Err(TemplateError::Missing { cfg });
        }
        let spec = match Spec::load(&cfg) {
            Ok(spec) => spec,
            Err(source) => return Err(TemplateError::Load { cfg, source }),
        };
        let Some(root) = spec.root().as_ref() else { return Err(TemplateError::NoRoot { cfg }) };
        let rootfs = bundle.join(root.path());
        let rootfs = std::fs::canonicalize(&rootfs)
            .map_err(|source| TemplateError::Rootfs { rootfs, source })?;
        let agent = rootfs.join(AGENT_PATH);
        if !agent.is_file() {
            return Err(TemplateError::NoAgent { agent });
        }
        Ok((spec, rootfs))
    }
}

impl Oci {
    /// The floor of `hostd boot`: the runtime and a bundle in `dir` derived from the template
    /// like a guest's, but with nothing of hostd's (the template's fresh network namespace,
    /// no data disk, no limits), written here once so no run of the floor times it.
    pub fn floor_bundle(
        &self,
        dir: &Path,
        run: &str,
    ) -> Result<super::native::Wrap, FloorBundleError> {
        let runtime =
            self.runtime_path().ok_or_else(|| FloorBundleError::NoRuntime(self.runtime.clone()))?;
        let (template, rootfs) = self.template()?;
        std::fs::create_dir_all(dir)
            .map_err(|source| FloorBundleError::Dir { path: dir.to_path_buf(), source })?;
        let config = derive_config(
            template,
            &GuestConfig {
                rootfs,
                hostname: "floor",
                agent_args: Vec::new(),
                netns: None,
                cgroups_path: Path::new("virtbench").join(run).join("floor"),
                limits: Limits::default(),
                data_disk: None,
            },
        )?;
        let cfg = dir.join("config.json");
        config.save(&cfg).map_err(|source| FloorBundleError::Save { path: cfg, source })?;
        Ok(super::native::Wrap::Runtime { runtime, bundle: dir.to_path_buf() })
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
        let (template, rootfs) = self.template().map_err(|e| unavailable(e.to_string()))?;
        let ran = probe_run(&runtime, template, rootfs).await.map_err(|e| {
            unavailable(format!("{version} ({}): a test container failed: {e}", runtime.display()))
        })?;
        Ok(format!(
            "{version} ({}), bundle {}; test container said {ran:?}",
            runtime.display(),
            rootfs.display()
        ))
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Launched, LaunchError> {
        let mut g = LaunchGuard::new(spec)?;
        let ((reader, writer), proc) = self.start(spec, &mut g).await?;
        Ok(g.launched(reader, writer, proc))
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

/// A guest's container as its runtime knows it.
struct Container {
    runtime: PathBuf,
    /// The runtime's state directory (`--root`), private to the guest.
    state: PathBuf,
    bundle: PathBuf,
    id: String,
}

impl Container {
    /// Where `run --pid-file` writes the container's init pid (next to the bundle).
    fn pid_file(&self) -> PathBuf {
        self.bundle.with_file_name("container.pid")
    }

    fn program(&self) -> String {
        format!("{} run {}", self.runtime.display(), self.id)
    }

    fn spawn_err(&self, source: impl Into<SpawnError>) -> LaunchError {
        LaunchError::Spawn { program: self.program(), source: source.into() }
    }
}

impl Oci {
    /// Everything up to a running container. Whatever it creates is held by `g`.
    async fn start(
        &self,
        spec: &GuestSpec,
        g: &mut LaunchGuard,
    ) -> Result<(Halves, Proc), LaunchError> {
        let mut steps = Steps::start();
        let runtime = self.runtime_path().ok_or_else(|| {
            prepare(format!("OCI runtime {:?}", self.runtime), PrepareError::Missing("not found"))
        })?;
        let workdir =
            std::fs::canonicalize(&spec.workdir).map_err(|e| prepare(spec.workdir.display(), e))?;
        let c = Container {
            runtime,
            state: workdir.join("state"),
            bundle: workdir.join("bundle"),
            id: format!("vb-{}-{}", spec.run, spec.name),
        };
        let rel = cgroups_path(spec);
        steps.mark("paths");
        self.write_bundle(spec, g, &c, &rel, &workdir, &mut steps)?;
        let (host, guest) = control_pair()?;
        let log = g.console(&workdir.join("console.log"))?;
        steps.mark("console");
        self.run_detached(g, &c, guest, log).await?;
        steps.mark("runtime");
        let pid = pid_from_file(&c.pid_file()).map_err(|e| c.spawn_err(e))?;
        // Ours to reap if we adopted it (see Subreaper); else the host's init reaps it.
        let mut proc = Proc::from_pid(pid, parent_of(pid) == Some(std::process::id()))
            .map_err(|e| c.spawn_err(e))?;
        steps.mark("pid");
        adopt_cgroup(spec, g, &c, pid, &rel);
        steps.mark("adopt");
        match host_halves(host) {
            Ok(halves) => {
                steps.mark("halves");
                steps.log(&spec.name);
                Ok((halves, proc))
            }
            Err(e) => {
                // `delete --force` (held by `g`) stops the container; reap it here.
                proc.kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), proc.wait()).await;
                Err(e)
            }
        }
    }

    /// The bundle (config.json from the template, for this guest) and its network
    /// namespace; the groups the runtime will create are held from here on. With a system
    /// image, the root is the guest's own overlay of it in `workdir`, held by `g`.
    fn write_bundle(
        &self,
        spec: &GuestSpec,
        g: &mut LaunchGuard,
        c: &Container,
        rel: &Path,
        workdir: &Path,
        steps: &mut Steps,
    ) -> Result<(), LaunchError> {
        let (template, rootfs) = self.template().map_err(|e| prepare("the bundle template", e))?;
        steps.mark("template");
        let rootfs = match &self.system {
            Some((sys, agent)) => sys.container_root(workdir, agent, &SYSTEM_MOUNT_POINTS, g)?,
            None => rootfs.clone(),
        };
        for d in [&c.bundle, &c.state] {
            std::fs::create_dir_all(d).map_err(|e| prepare(d.display(), e))?;
        }
        let disk = match &spec.data_disk {
            Some(d) => Some(
                std::fs::canonicalize(d)
                    .map_err(|e| prepare(format!("data disk {}", d.display()), e))?,
            ),
            None => None,
        };
        steps.mark("dirs");
        let netns = match &spec.net {
            Some(n) => Some(g.private_netns(n, spec.index, &netns_name(spec))?.path()),
            None => None,
        };
        steps.mark("net");
        // Where the runtime will create the groups, so a failed start still removes the
        // parents it made; replaced by what the container really joined (adopt_cgroup).
        g.set_cgroup(expected_cgroup(rel));
        if let Some(cg) = g.cgroup() {
            hold_run_groups(cg).map_err(LaunchError::Cgroup)?;
        }
        steps.mark("groups");
        let config = derive_config(
            template,
            &GuestConfig {
                rootfs: &rootfs,
                hostname: &spec.name,
                agent_args: spec
                    .net
                    .as_ref()
                    .map(|n| vec!["--net".to_string(), n.agent_arg()])
                    .unwrap_or_default(),
                netns,
                cgroups_path: rel.to_path_buf(),
                limits: spec.limits,
                data_disk: disk.as_deref(),
            },
        )
        .and_then(|config| if self.system.is_some() { over_system(config) } else { Ok(config) })
        .map_err(|e| prepare("the guest's config.json", e))?;
        steps.mark("derive");
        let cfg_path = c.bundle.join("config.json");
        config.save(&cfg_path).map_err(|e| prepare(cfg_path.display(), ConfigError::from(e)))?;
        steps.mark("save");
        Ok(())
    }

    /// `<runtime> run --detach`, the channel's guest end as the agent's fd 3; Ok once the
    /// runtime has started the container and exited.
    async fn run_detached(
        &self,
        g: &mut LaunchGuard,
        c: &Container,
        guest: std::os::fd::OwnedFd,
        log: std::os::fd::OwnedFd,
    ) -> Result<(), LaunchError> {
        let mut cmd = GuestCommand::new(&c.runtime, &c.bundle);
        cmd.arg("--root")
            .arg(&c.state)
            .args(["run", "--detach", "--preserve-fds", "1", "--pid-file"])
            .arg(c.pid_file())
            .arg("--bundle")
            .arg(&c.bundle)
            .arg(&c.id)
            .output(log)?
            .pass_fd(guest, AGENT_FD);
        g.hold(Resource::Container {
            runtime: c.runtime.clone(),
            root: Some(c.state.clone()),
            id: c.id.clone(),
        });
        let mut cmd = cmd.build();
        let subreaper = Subreaper::hold();
        // Reaped even if this launch is abandoned at its deadline meanwhile (see Reaped).
        let status = match cmd.spawn() {
            Ok(child) => {
                let mut runtime = Reaped::new(child);
                tokio::time::timeout(RUN_TIMEOUT, runtime.child().wait()).await
            }
            Err(e) => Ok(Err(e)),
        };
        // The runtime has exited (or been killed): its orphans, if any, are adopted.
        drop(subreaper);
        // Closes hostd's copies of the channel's guest end and of the console pipe.
        drop(cmd);
        match status {
            Err(_) => {
                Err(c.spawn_err(SpawnError::TimedOut { waiting: "no start", after: RUN_TIMEOUT }))
            }
            Ok(Err(e)) => Err(c.spawn_err(e)),
            Ok(Ok(st)) if !st.success() => {
                // The runtime has exited, but a half-started container may still hold the pipe.
                let text = match g.console_log() {
                    Some(console) => {
                        console.drained(Duration::from_millis(500)).await;
                        console.tail(4000)
                    }
                    None => String::new(),
                };
                let text = text.trim();
                let mut cut = text.len().saturating_sub(2000);
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                Err(c.spawn_err(SpawnError::Exited { status: st, output: text[cut..].to_string() }))
            }
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// Holds the groups the container's init is really in (they end in `rel`) in place of the
/// expected ones.
fn adopt_cgroup(spec: &GuestSpec, g: &mut LaunchGuard, c: &Container, pid: u32, rel: &Path) {
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mountinfo = cgroups::cgroup_mounts().unwrap_or_default();
    // Path::ends_with compares whole components: `rel` is relative, so any prefix matches.
    match crate::cgroup::dirs_of(&proc_cgroup, mountinfo, |p| {
        p.ends_with(rel).then(|| p.to_path_buf())
    }) {
        Some(cg) => g.set_cgroup(Some(cg)),
        None => {
            tracing::warn!(guest = %spec.name, "container {} is not in a group ending {}", c.id, rel.display())
        }
    }
}

async fn runtime_version(runtime: &Path) -> Result<String, ToolError> {
    tool_version(runtime, &["--version"]).await
}

/// Runs the agent with `--version` in a throwaway container from the template, as a guest
/// would run (same runtime, config and cgroup driver); returns what it printed.
async fn probe_run(
    runtime: &Path,
    template: &Spec,
    rootfs: &Path,
) -> Result<String, ProbeRunError> {
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!("vb-probe-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let dir = tempfile::Builder::new()
        .prefix("vb-oci-probe-")
        .tempdir()
        .map_err(ProbeRunError::TempDir)?;
    let bundle = dir.path().join("bundle");
    let state = dir.path().join("state");
    if let Err(source) = std::fs::create_dir_all(&bundle) {
        return Err(ProbeRunError::Bundle { bundle, source });
    }
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
    cfg.save(bundle.join("config.json")).map_err(ProbeRunError::SaveConfig)?;
    let args = [
        OsStr::new("--root"),
        state.as_os_str(),
        OsStr::new("run"),
        OsStr::new("--bundle"),
        bundle.as_os_str(),
        OsStr::new(&id),
    ];
    let out = run_output(runtime, &args, PROBE_TIMEOUT).await;
    // Whatever happened, leave no container state behind.
    let _ = Resource::Container { runtime: runtime.to_path_buf(), root: Some(state), id }.release();
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && stdout.contains("guest-agent") {
        return Ok(stdout.lines().next().unwrap_or_default().to_string());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(ProbeRunError::Failed {
        status: out.status,
        said: if stderr.is_empty() { stdout } else { stderr },
    })
}

/// Why the floor's bundle ([`Oci::floor_bundle`]) could not be written, by step.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum FloorBundleError {
    #[error("OCI runtime {0:?} not found")]
    NoRuntime(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{}: {source}", path.display())]
    Save { path: PathBuf, source: oci_spec::OciSpecError },
}

/// Why the bundle's template cannot be used, by what is wrong.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum TemplateError {
    #[error("no OCI bundle (build the `oci-bundle` recipe)")]
    NoBundle,
    #[error("bundle template {} is missing", cfg.display())]
    Missing { cfg: PathBuf },
    #[error("bundle template {}: {source}", cfg.display())]
    Load { cfg: PathBuf, source: oci_spec::OciSpecError },
    #[error("bundle template {} has no root", cfg.display())]
    NoRoot { cfg: PathBuf },
    #[error("bundle rootfs {}: {source}", rootfs.display())]
    Rootfs { rootfs: PathBuf, source: io::Error },
    #[error("bundle rootfs lacks the agent: {} is missing", agent.display())]
    NoAgent { agent: PathBuf },
}

/// Why the probe's test container did not print the agent's version, by step.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ProbeRunError {
    #[error("temporary bundle: {0}")]
    TempDir(io::Error),
    #[error("{}: {source}", bundle.display())]
    Bundle { bundle: PathBuf, source: io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("writing the test config: {0}")]
    SaveConfig(oci_spec::OciSpecError),
    /// The runtime could not be run or did not finish.
    #[error(transparent)]
    Run(#[from] ToolError),
    /// The container ran and failed; `said` is its standard error, or output when empty.
    #[error("{status}: {said}")]
    Failed { status: std::process::ExitStatus, said: String },
}

mod adopt;
mod cgroups;
mod config;
#[cfg(test)]
mod tests;

use cgroups::{expected_cgroup, hold_run_groups};
pub use config::ConfigError;
use config::{derive_config, over_system, GuestConfig};
