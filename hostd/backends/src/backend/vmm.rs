//! Launch plumbing shared by the VMM backends (`qemu.rs`, `uml.rs`, `firecracker.rs`):
//! staging with cleanup on failure, tap attachment, the guest kernel command line, control
//! socketpairs, probe boots and console-log helpers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tokio::io::{AsyncRead, AsyncReadExt};
use vb_protocol::frame::{Event, FrameDecoder};
use vb_protocol::msg::{GuestMsg, Hello};

use super::{
    make_cgroup, release_all, stop_and_release, Exit, GuestProcess, GuestSpec, LaunchError,
    Launched, Proc, Resource,
};
use crate::cgroup::Cgroup;
use crate::console::{ConsoleLog, CONSOLE_CAP};

/// Printed by a guest kernel asked to power off that cannot (microvm and Firecracker have no
/// ACPI; the agent reboots there instead, see `vb.poweroff=reboot`): the guest is done, only
/// the VMM is left.
const HALTED: &str = "System halted";

/// The descriptor number a VMM finds its end of the control socketpair on.
pub const CTL_FD: i32 = 3;

/// Starts a VMM (QEMU, UML's kernel) whose guest reaches the host over a socketpair end
/// passed as [`CTL_FD`]: its output into the guest's capped console log, its tap entered in
/// the child, its cgroup joined before exec, in its own process group (a Ctrl-C on hostd's
/// terminal must not reach guests before hostd tears them down in order; UML's helpers stay
/// in that group, which its `stop` relies on). `tmpdir` is where it keeps temporary files.
pub(super) fn spawn_vmm(
    mut st: Staging,
    spec: &GuestSpec,
    program: &Path,
    args: Vec<String>,
    tmpdir: &Path,
) -> Result<Launched, LaunchError> {
    let log_path = spec.workdir.join("console.log");
    let (out, err) = st.console(&log_path)?;
    let (host, guest) = ctl_pair()?;
    let netns = st.attach_tap(spec)?;
    st.make_cgroup(spec)?;
    let (reader, writer) = super::native::split_socket(host)
        .map_err(|source| LaunchError::Prepare { what: "control socket".into(), source })?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("TMPDIR", tmpdir)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .current_dir(&spec.workdir)
        .process_group(0)
        .kill_on_drop(true);
    // Before pass_fd_in_child: its dup2 onto CTL_FD could replace the namespace fd.
    if let Some(ns) = netns {
        crate::netlab::enter_in_child(&mut cmd, ns);
    }
    // Open across exec (UML's fd channel needs that; QEMU's chardev takes the number).
    super::pass_fd_in_child(&mut cmd, std::os::fd::AsRawFd::as_raw_fd(&guest), CTL_FD);
    if let Some(cg) = &st.cgroup {
        super::join_cgroup_in_child(&mut cmd, cg);
    }
    let child = cmd
        .spawn()
        .map_err(|source| LaunchError::Spawn { program: program.display().to_string(), source })?;
    drop(guest);
    Ok(Launched {
        reader: Box::new(reader),
        writer: Box::new(writer),
        guest: st.finish(spec, Proc::Child(child), Some(log_path)),
    })
}

/// What a launch has created so far. Until [`Staging::finish`] hands it to the started
/// guest, dropping it (any `?` on the way) releases everything in reverse order.
pub(super) struct Staging {
    pub resources: Vec<Resource>,
    pub cgroup: Option<Cgroup>,
    console: Option<ConsoleLog>,
    armed: bool,
}

impl Staging {
    /// Creates the guest's work directory, released last.
    pub fn new(spec: &GuestSpec) -> Result<Self, LaunchError> {
        std::fs::create_dir_all(&spec.workdir).map_err(|source| LaunchError::Prepare {
            what: spec.workdir.display().to_string(),
            source,
        })?;
        Ok(Self {
            resources: vec![Resource::Dir { path: spec.workdir.clone() }],
            cgroup: None,
            console: None,
            armed: true,
        })
    }

    /// Creates (empties) `path` and opens it for appending: the VMM's output and, where it
    /// writes the console itself, its console file share it without overwriting each other.
    pub fn log_file(&self, path: &Path) -> Result<File, LaunchError> {
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .and_then(|_| OpenOptions::new().append(true).open(path))
            .map_err(|source| LaunchError::Prepare { what: path.display().to_string(), source })
    }

    /// The guest's console: a pipe hostd reads into the capped log at `path` (see
    /// `crate::console`). Returns the write end twice, for the VMM's stdout and stderr.
    pub fn console(&mut self, path: &Path) -> Result<(File, File), LaunchError> {
        let (log, wr) = ConsoleLog::start(path, CONSOLE_CAP).map_err(|e| LaunchError::Prepare {
            what: path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        self.console = Some(log);
        let out = File::from(wr);
        let err = self.clone_file(&out, path)?;
        Ok((out, err))
    }

    pub fn clone_file(&self, f: &File, path: &Path) -> Result<File, LaunchError> {
        f.try_clone()
            .map_err(|source| LaunchError::Prepare { what: path.display().to_string(), source })
    }

    /// Puts a tap for the guest on the fleet bridge and opens the fleet namespace, which the
    /// VMM must enter to open the tap by name. None: the guest has no network.
    pub fn attach_tap(&mut self, spec: &GuestSpec) -> Result<Option<OwnedFd>, LaunchError> {
        let Some(net) = &spec.net else { return Ok(None) };
        // Recorded first: a tap made by a half-failed add_tap is still removed.
        self.resources
            .push(Resource::Link { netns: net.fleet.netns.clone(), name: net.link.clone() });
        net.fleet.add_tap(&net.link)?;
        Ok(Some(net.fleet.open()?))
    }

    pub fn make_cgroup(&mut self, spec: &GuestSpec) -> Result<(), LaunchError> {
        self.cgroup = make_cgroup(spec)?;
        Ok(())
    }

    /// Hands everything to the started guest.
    pub fn finish(
        mut self,
        spec: &GuestSpec,
        proc: Proc,
        console_log: Option<PathBuf>,
    ) -> GuestProcess {
        self.armed = false;
        GuestProcess {
            name: spec.name.clone(),
            proc,
            cgroup: self.cgroup.take(),
            console_log,
            console: self.console.take(),
            resources: std::mem::take(&mut self.resources),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut rs = std::mem::take(&mut self.resources);
        if let Some(cg) = self.cgroup.take() {
            rs.insert(0, Resource::Cgroup(cg));
        }
        for e in release_all(&rs) {
            tracing::warn!("failed launch cleanup: {e}");
        }
    }
}

/// The control channel: (host end, guest end), both close-on-exec (the guest end is
/// passed to the VMM explicitly).
pub(super) fn ctl_pair() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| LaunchError::Prepare { what: "control socketpair".into(), source: e.into() })
}

/// The guest kernel command line as words: the recipe's `base` without the parameters
/// named in `drop`, then `extra`, then the agent's settings (`vb.*`).
pub(super) fn kernel_cmdline(
    base: &str,
    drop: &[&str],
    extra: &[String],
    ctl_tty: &str,
    spec: &GuestSpec,
) -> Vec<String> {
    let mut words: Vec<String> = base
        .split_whitespace()
        .filter(|w| !drop.contains(&w.split_once('=').map_or(*w, |(k, _)| k)))
        .map(String::from)
        .collect();
    words.extend(extra.iter().cloned());
    words.push(format!("vb.ctl=tty:{ctl_tty}"));
    words.push(format!("vb.hostname={}", spec.name));
    if let Some(net) = &spec.net {
        words.push(format!("vb.net={}", net.agent_arg()));
    }
    words
}

/// A locally administered MAC derived from the guest's fleet address ("vb" + its last
/// three octets), unique within the fleet.
pub fn guest_mac(addr: Ipv4Addr) -> String {
    let o = addr.octets();
    format!("02:76:62:{:02x}:{:02x}:{:02x}", o[1], o[2], o[3])
}

/// A path as a QEMU option value: commas are doubled (QEMU's escape).
pub(super) fn opt_value(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// A regular file exists at `path`.
pub(super) fn check_file(what: &str, path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{what} {} is not a file", path.display())),
        Err(e) => Err(format!("{what} {}: {e}", path.display())),
    }
}

/// Runs `program args` (briefly) and returns the first line it printed.
pub(super) async fn program_version(program: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(program).args(args).kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| format!("{program} {} did not answer within 10 s", args.join(" ")))?
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{program} not found"),
        _ => format!("cannot run {program}: {e}"),
    })?;
    let text =
        String::from_utf8_lossy(if out.stdout.is_empty() { &out.stderr } else { &out.stdout })
            .into_owned();
    let first = text.lines().next().unwrap_or("").trim().to_string();
    if !out.status.success() || first.is_empty() {
        return Err(format!("{program} {} failed ({}): {first}", args.join(" "), out.status));
    }
    Ok(first)
}

/// A scratch directory for a probe guest (removed when dropped).
pub(super) fn probe_dir(what: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(&format!("vb-{what}-"))
        .tempdir()
        .map_err(|e| format!("creating a scratch directory: {e}"))
}

/// The smallest guest: one vCPU, 128 MiB, no disk, network or cgroup.
pub(super) fn probe_spec(dir: &Path, name: &str) -> GuestSpec {
    GuestSpec {
        index: 0,
        name: name.into(),
        run: "probe".into(),
        vcpus: 1,
        mem_mib: 128,
        data_disk: None,
        workdir: dir.join(name),
        net: None,
        cgroup: None,
        limits: Default::default(),
        images: None,
    }
}

type StopFn = for<'a> fn(
    &'a mut GuestProcess,
    Duration,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Exit> + Send + 'a>>;

/// Waits for a probe guest's hello, then stops it with `stop`. Ok: the time from this call
/// to the hello. Err: why it never came, with what the VMM (`vmm`, for messages) said in
/// its log. `fatal` ends the wait as soon as it appears in the log: a VMM that pauses the
/// guest rather than exiting on failure.
pub(super) async fn probe_boot(
    mut l: Launched,
    vmm: &str,
    deadline: Duration,
    fatal: Option<&str>,
    stop: StopFn,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let guest = &mut l.guest;
    let mut fatal_seen = None;
    let r = first_hello(&mut l.reader, deadline, || {
        if let Some(marker) = fatal {
            if console_text(guest, 64 << 10).contains(marker) {
                fatal_seen = Some(
                    errors_in(&console_text(guest, 64 << 10)).unwrap_or_else(|| marker.to_string()),
                );
                return Some(String::new());
            }
        }
        guest.proc.has_exited().then(String::new)
    })
    .await;
    let r = match (r, fatal_seen) {
        (Ok(_), _) => Ok(t0.elapsed()),
        (Err(_), Some(fatal)) => Err(fatal),
        (Err(why), None) => {
            if let Some(c) = &l.guest.console {
                c.drained(Duration::from_secs(1)).await;
            }
            let said = errors_in(&console_text(&l.guest, 64 << 10))
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            // A closed channel usually means the VMM died; it said why on its stderr (the log).
            match tokio::time::timeout(Duration::from_secs(2), l.guest.proc.wait()).await {
                Ok(status) => {
                    Err(format!("{vmm} exited ({status}) before the agent's hello{said}"))
                }
                Err(_) => Err(format!("{why}{said}")),
            }
        }
    };
    stop(&mut l.guest, Duration::ZERO).await;
    r
}

/// Reads the control channel until the agent's hello. `failed` is polled while waiting
/// and ends the wait with its reason.
pub(super) async fn first_hello(
    reader: &mut (impl AsyncRead + Unpin),
    deadline: Duration,
    mut failed: impl FnMut() -> Option<String>,
) -> Result<Hello, String> {
    let mut dec = FrameDecoder::default();
    let mut buf = vec![0u8; 16 << 10];
    let end = crate::limits::deadline(deadline);
    loop {
        tokio::select! {
            r = reader.read(&mut buf) => {
                let n = r.map_err(|e| format!("control channel: {e}"))?;
                if n == 0 {
                    return Err("the control channel closed before the agent's hello".into());
                }
                for ev in dec.feed(&buf[..n]) {
                    if let Event::Frame(p) = ev {
                        match GuestMsg::decode(&p) {
                            Ok(GuestMsg::Hello(h)) => return Ok(h),
                            Ok(other) => return Err(format!("expected the agent's hello, got {other:?}")),
                            Err(e) => return Err(format!("undecodable first message: {e}")),
                        }
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if let Some(why) = failed() {
                    return Err(why);
                }
            }
            _ = tokio::time::sleep_until(end) => {
                return Err(format!("no agent hello within {} s", deadline.as_secs()));
            }
        }
    }
}

/// The newest `window` bytes of a guest's console: from hostd's capped log, or for a
/// backend that has the VMM write a file itself, from that file.
pub(super) fn console_text(guest: &GuestProcess, window: usize) -> String {
    match (&guest.console, &guest.console_log) {
        (Some(c), _) => c.tail(window),
        (None, Some(path)) => {
            let Ok(mut f) = File::open(path) else { return String::new() };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut data = Vec::new();
            if f.seek(SeekFrom::Start(len.saturating_sub(window as u64))).is_ok() {
                let _ = f.take(window as u64).read_to_end(&mut data);
            }
            String::from_utf8_lossy(&data).into_owned()
        }
        (None, None) => String::new(),
    }
}

/// The VMM's own error lines in a log that interleaves them with kernel messages: lines
/// that are not kernel log lines ("[    0.1] …") and mention an error, at most three.
pub(super) fn errors_in(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.starts_with('[')
                && (l.to_ascii_lowercase().contains("error") || l.contains("failure"))
        })
        .take(3)
        .collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

/// Waits up to `grace` for the VMM to exit (or its console log to report a halted guest),
/// then kills what is left and releases the guest's resources. A VMM that ends within the
/// grace period stopped cleanly, even if it was already gone when this was called: `stop`
/// gets a grace period only after the agent acknowledged the power-off.
pub(super) async fn stop_vmm(guest: &mut GuestProcess, grace: Duration) -> Exit {
    if guest.console.is_none() && guest.console_log.is_none() {
        return stop_and_release(guest, grace).await;
    }
    let deadline = crate::limits::std_deadline(grace);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return stop_and_release(guest, Duration::ZERO).await;
        }
        // Child::wait is cancel-safe: a timeout here loses nothing.
        let exited = tokio::time::timeout(
            (deadline - now).min(Duration::from_millis(25)),
            guest.proc.wait(),
        )
        .await
        .is_ok();
        if exited || console_text(guest, 4096).contains(HALTED) {
            stop_and_release(guest, Duration::ZERO).await;
            return Exit::Clean;
        }
    }
}

/// /dev/kvm exists and this process may use it.
pub(super) fn check_kvm() -> Result<(), String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm: {e}"))
}
