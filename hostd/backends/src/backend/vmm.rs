//! What the VMM backends (`qemu.rs`, `uml.rs`, `firecracker.rs`, and `xen` for its command
//! line) share beyond the launch toolkit (`launch/`): a VMM spawned on a control socketpair,
//! the guest kernel command line, probe boots and console-log helpers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use vb_protocol::frame::{Event, FrameDecoder};
use vb_protocol::msg::{GuestMsg, Hello};

use super::launch::{control_pair, host_halves, GuestCommand, LaunchGuard};
use super::{stop_and_release, Exit, GuestProcess, GuestSpec, LaunchError, Launched, Proc};

/// Printed by a guest kernel asked to power off that cannot (microvm and Firecracker have no
/// ACPI; the agent reboots there instead, see `vb.poweroff=reboot`): the guest is done, only
/// the VMM is left.
const HALTED: &str = "System halted";

/// The descriptor number a VMM finds its end of the control socketpair on.
pub const CTL_FD: i32 = 3;

/// Starts a VMM (QEMU, UML's kernel) whose guest reaches the host over a socketpair end
/// passed as [`CTL_FD`] (open across exec: UML's fd channel needs that; QEMU's chardev
/// takes the number): its output into the guest's capped console log, its tap entered in
/// the child, its cgroup joined before exec, in its own process group (see
/// [`GuestCommand`]). `tmpdir` is where it keeps temporary files.
pub(super) fn spawn_vmm(
    mut g: LaunchGuard,
    spec: &GuestSpec,
    program: &Path,
    args: Vec<String>,
    tmpdir: &Path,
) -> Result<Launched, LaunchError> {
    let out = g.console(&spec.workdir.join("console.log"))?;
    let (host, guest) = control_pair()?;
    let netns = g.attach_tap(spec)?;
    let (reader, writer) = host_halves(host)?;
    let mut cmd = GuestCommand::new(program, &spec.workdir);
    cmd.args(args).env("TMPDIR", tmpdir).output(out)?.netns(netns).pass_fd(guest, CTL_FD);
    cmd.cgroup(g.make_cgroup(spec)?);
    let child = cmd.spawn()?;
    Ok(g.launched(reader, writer, Proc::child(child)))
}

/// The guest kernel command line as words: the recipe's `base` without the parameters
/// named in `drop`, then `extra`, then the agent's settings (`vb.*`).
pub(super) fn kernel_cmdline(
    base: &str,
    drop: &[&str],
    extra: &[String],
    ctl: &str,
    spec: &GuestSpec,
) -> Vec<String> {
    let mut words: Vec<String> = base
        .split_whitespace()
        .filter(|w| !drop.contains(&w.split_once('=').map_or(*w, |(k, _)| k)))
        .map(String::from)
        .collect();
    words.extend(extra.iter().cloned());
    words.push(format!("vb.ctl={ctl}"));
    words.push(format!("vb.hostname={}", spec.name));
    if let Some(net) = &spec.net {
        words.push(format!("vb.net={}", net.agent_arg()));
        // The guest's own kernel would keep Ethernet's 1500 on a fleet network that carries
        // less (across hosts, a VXLAN's 1450): frames to a guest on another host would be
        // dropped. Containers get it on their veth; a VM's agent sets it on its NIC.
        if let Some(m) = net.fleet.mtu.filter(|&m| m < 1500) {
            words.push(format!("vb.mtu={m}"));
        }
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

/// A probe guest's scratch directory could not be made.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
#[error("creating a scratch directory: {0}")]
pub struct ScratchDirError(#[source] pub std::io::Error);

/// /dev/kvm is missing or this process may not use it.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
#[error("/dev/kvm: {0}")]
pub struct KvmError(#[source] pub std::io::Error);

/// Why the agent's first message on a probe guest's channel was not its hello.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum HelloError {
    #[error("control channel: {0}")]
    Read(std::io::Error),
    #[error("the control channel closed before the agent's hello")]
    Closed,
    /// Another message came first (its debug form).
    #[error("expected the agent's hello, got {0}")]
    Unexpected(String),
    #[error("undecodable first message: {0}")]
    Undecodable(String),
    /// The caller's `failed` check ended the wait, with its reason.
    #[error("{0}")]
    Failed(String),
    #[error("no agent hello within {} s", .0.as_secs())]
    TimedOut(Duration),
}

/// Why a probe guest never said hello; the VMM's own error lines, when its log has any,
/// are part of the message.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ProbeBootError {
    /// The VMM logged the caller's fatal marker (these are the lines it logged).
    #[error("{0}")]
    Fatal(String),
    /// The VMM exited before the hello; `said` is ": " and its error lines, or empty.
    #[error("{vmm} exited ({status}) before the agent's hello{said}")]
    Exited { vmm: String, status: String, said: String },
    /// No hello, the VMM still running.
    #[error("{why}{said}")]
    NoHello { why: HelloError, said: String },
}

/// A scratch directory for a probe guest (removed when dropped).
pub(super) fn probe_dir(what: &str) -> Result<tempfile::TempDir, ScratchDirError> {
    tempfile::Builder::new().prefix(&format!("vb-{what}-")).tempdir().map_err(ScratchDirError)
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
) -> Result<Duration, ProbeBootError> {
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
        (Err(_), Some(fatal)) => Err(ProbeBootError::Fatal(fatal)),
        (Err(why), None) => {
            if let Some(c) = &l.guest.console {
                c.drained(Duration::from_secs(1)).await;
            }
            let said = errors_in(&console_text(&l.guest, 64 << 10))
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            // A closed channel usually means the VMM died; it said why on its stderr (the log).
            match tokio::time::timeout(Duration::from_secs(2), l.guest.proc.wait()).await {
                Ok(status) => Err(ProbeBootError::Exited { vmm: vmm.into(), status, said }),
                Err(_) => Err(ProbeBootError::NoHello { why, said }),
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
) -> Result<Hello, HelloError> {
    let mut dec = FrameDecoder::default();
    let mut buf = vec![0u8; 16 << 10];
    let end = crate::limits::deadline(deadline);
    loop {
        tokio::select! {
            r = reader.read(&mut buf) => {
                let n = r.map_err(HelloError::Read)?;
                if n == 0 {
                    return Err(HelloError::Closed);
                }
                for ev in dec.feed(&buf[..n]) {
                    if let Event::Frame(p) = ev {
                        match GuestMsg::decode(&p) {
                            Ok(GuestMsg::Hello(h)) => return Ok(h),
                            Ok(other) => return Err(HelloError::Unexpected(format!("{other:?}"))),
                            Err(e) => return Err(HelloError::Undecodable(e.to_string())),
                        }
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if let Some(why) = failed() {
                    return Err(HelloError::Failed(why));
                }
            }
            _ = tokio::time::sleep_until(end) => {
                return Err(HelloError::TimedOut(deadline));
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
pub(super) fn check_kvm() -> Result<(), KvmError> {
    OpenOptions::new().read(true).write(true).open("/dev/kvm").map(drop).map_err(KvmError)
}
