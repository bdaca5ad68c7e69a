//! `hostd xen-lab`: the `xen` backend measured on a Xen host that is itself a QEMU guest,
//! for machines that are not Xen hosts. KVM where a probe guest really boots under it
//! (`-cpu host`), TCG otherwise (here: nested KVM crashes unmodified guests).
//!
//! The host side boots Debian's Xen hypervisor under QEMU (`-M pc`; under TCG `-cpu
//! Haswell-noTSX`: with `-cpu max` dom0 crashes early) with the dom0 kernel and the `xen-lab-dom0` initramfs as
//! multiboot modules. dom0's /init starts Xen's daemons and then this same hostd as the
//! lab's dom0 side (`hostd xen-lab --in-dom0 /dev/ttyS1`). The two talk over QEMU's second
//! serial port (dom0's ttyS1; Xen keeps COM1 for its console, which is the lab's log), with
//! the agent protocol's framing and [`LabMsg`] messages: dom0 says [`LabMsg::Ready`], the
//! host sends the [`LabJob`], dom0 answers with progress lines and one [`LabReport`], then
//! powers off, which ends QEMU.
//!
//! The dom0 side measures exactly what `hostd boot` does for one fleet (a cold start of n
//! guests: startup, then memory after a settle time), adds Xen's own memory accounting,
//! runs the CPU benchmark in every guest at once, tears the fleet down and checks that
//! `xl list` has nothing but dom0 left. The host writes it all as a results directory like
//! `hostd boot`'s, every figure marked as measured inside an emulated host.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vb_protocol::bench::Resource;
use vb_protocol::frame::{Event, FrameDecoder};

use crate::backend::xen::{self, DomainInfo, RawTty};
use crate::backend::{AnyBackend, Backend, BackendKind, BackendOptions, Images, Kernel};
use crate::bootrun;
use crate::fleet::{self, FleetConfig, FleetEvent, Teardown};
use crate::limits;
use crate::memory;
use crate::provenance::Provenance;
use crate::results::ResultsDir;
use crate::runstate::RunState;
use crate::samples::Record;
use crate::startup::{FleetBoot, MemorySample, StartMode};
use crate::suite::{linearity, BenchSample, Targets, Workloads};

/// Where the dom0 image (recipes/xen-lab-dom0.toml) keeps what the dom0 side boots.
pub const DOM0_AGENT: &str = "/usr/lib/virtbench/guest-agent";
pub const DOM0_DOMU_KERNEL: &str = "/usr/lib/virtbench/vmlinux-xen";
pub const DOM0_DOMU_INITRAMFS: &str = "/usr/lib/virtbench/initramfs.cpio.gz";
/// dom0's end of the lab's control channel (QEMU's second serial port).
pub const DOM0_CTL: &str = "/dev/ttyS1";
/// The CPU QEMU emulates: the lab's measured configuration (`max` crashes dom0 early).
pub const LAB_CPU: &str = "Haswell-noTSX";
/// What every figure of the lab carries.
pub const EMULATED_NOTE: &str = "measured inside an emulated host: Xen and its guests ran in a QEMU virtual machine (TCG or KVM: see the provenance), so every figure includes that machine's cost and is not that of a real Xen host";

/// How the lab's QEMU runs the emulated host's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabAccel {
    /// `-accel kvm -cpu host`: Xen runs on the host's CPU model, PV guests need no nesting.
    Kvm,
    /// `-accel tcg -cpu Haswell-noTSX`.
    Tcg,
}

impl LabAccel {
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            LabAccel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            LabAccel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", LAB_CPU],
        }
    }
}

/// The KVM probe's verdict, once per process (a campaign boots several labs).
static KVM_VERDICT: tokio::sync::OnceCell<Result<f64, String>> = tokio::sync::OnceCell::const_new();

/// The lab's accelerator and why: `asked` (kvm or tcg), else KVM if a probe guest reaches
/// the agent's hello under it (the qemu backend's probe), else TCG.
pub async fn choose_accel(
    asked: Option<&str>,
    qemu: &str,
    images: &Images,
) -> Result<(LabAccel, String)> {
    match asked {
        Some("kvm") => return Ok((LabAccel::Kvm, "KVM (asked for)".into())),
        Some("tcg") => return Ok((LabAccel::Tcg, "TCG (asked for)".into())),
        Some(other) => bail!("--accel {other:?}: expected kvm or tcg"),
        None => {}
    }
    let (Some(kernel), Some(initramfs)) = (&images.kernel_microvm, &images.initramfs) else {
        return Ok((
            LabAccel::Tcg,
            "TCG (no kernel-microvm or initramfs to probe KVM with: run `imagegen build`)".into(),
        ));
    };
    let verdict = KVM_VERDICT
        .get_or_init(|| async {
            let d = crate::backend::qemu::KVM_PROBE_DEADLINE;
            crate::backend::qemu::kvm_boot_probe(
                qemu,
                crate::backend::qemu::Profile::Microvm,
                kernel,
                initramfs,
                d,
            )
            .await
            .map(|t| t.as_secs_f64())
        })
        .await;
    Ok(match verdict {
        Ok(t) => {
            (LabAccel::Kvm, format!("KVM (probe guest reached the agent's hello in {t:.2} s)"))
        }
        Err(why) => (LabAccel::Tcg, format!("TCG (KVM probe failed: {why})")),
    })
}

#[derive(clap::Args, Debug, Clone)]
pub struct LabArgs {
    /// domUs to start together (1-64).
    #[arg(long, default_value_t = 3, value_parser = limits::LAB_GUESTS.cli::<usize>())]
    pub guests: usize,
    /// Memory of each domU, MiB (32-1048576).
    #[arg(long, default_value_t = 128, value_parser = limits::MEM_MIB.cli::<u32>())]
    pub mem_mib: u32,
    /// vCPUs of each domU (1-64).
    #[arg(long, default_value_t = 1, value_parser = limits::VCPUS.cli::<u32>())]
    pub vcpus: u32,
    /// CPU benchmark: Newton steps towards √2 in each guest.
    #[arg(long, default_value_t = 5_000_000)]
    pub cpu_rounds: u64,
    /// Memory of the emulated Xen host, MiB (dom0 gets 512) [default: enough for the
    /// fleet, at least 2048].
    #[arg(long)]
    pub host_mib: Option<u32>,
    /// Seconds the whole lab may take (1-172800 s; seconds or e.g. 15m, 2h).
    #[arg(long, default_value_t = 900, value_parser = limits::LAB_TIMEOUT_S.cli_secs())]
    pub timeout: u64,
    /// The QEMU system emulator.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: String,
    /// Parent directory of the results directory.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// How QEMU runs the emulated host: kvm or tcg [default: KVM if a probe guest boots
    /// under it, else TCG].
    #[arg(long)]
    pub accel: Option<String>,
    /// Run as the lab's dom0 side, talking to the host on this tty (dom0's /init does).
    #[arg(long, hide = true)]
    pub in_dom0: Option<PathBuf>,
}

/// What dom0 is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabJob {
    pub guests: usize,
    pub mem_mib: u32,
    pub vcpus: u32,
    pub cpu_rounds: u64,
    /// The domU kernel's recorded command line (kernel-xen's manifest; dom0 has no store).
    pub domu_cmdline: String,
    pub boot_timeout_s: u64,
    pub settle_s: u64,
}

/// Xen's own memory accounting around the fleet (dom0's /proc/meminfo does not see domU
/// RAM). The lab's memory sample counts the machine: dom0's used memory plus what Xen has
/// handed out (total − free), so M_used includes the domUs' RAM as it does for every VMM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XenMemory {
    pub total_mib: u64,
    /// `xl info` free_memory before the fleet started and with it booted and idle.
    pub free_before_mib: u64,
    pub free_after_mib: u64,
    /// What the fleet took from Xen: free_before − free_after.
    pub used_by_fleet_mib: i64,
    /// `xl list` with the fleet booted and idle (dom0 included).
    pub domains: Vec<DomainInfo>,
}

/// Host-clock timings of the dom0 side, seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dom0Timings {
    /// dom0's uptime when its hostd said ready (Xen's and dom0's boot, daemons started).
    pub dom0_uptime_at_ready_s: f64,
    /// The fleet's start request to its last guest's hello (T_startup).
    pub fleet_ready_s: f64,
    /// The CPU benchmark in every guest at once, request to last reply.
    pub bench_s: f64,
    pub teardown_s: f64,
}

/// Everything dom0 measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabReport {
    /// dom0's provenance (its kernel, CPU as emulated, memory).
    pub provenance: Provenance,
    /// The xen backend's probe in dom0.
    pub probe: String,
    /// Startup and memory, as `hostd boot` records them.
    pub boot: FleetBoot,
    pub xen_memory: XenMemory,
    /// dom0's own used memory (/proc/meminfo) before the fleet and with it idle, KiB.
    pub dom0_used_before_kib: u64,
    pub dom0_used_after_kib: u64,
    /// The CPU benchmark, every guest at once (the suite's linearity samples at n guests).
    pub bench: Vec<BenchSample>,
    pub bench_error: Option<String>,
    /// Domains besides dom0 that `xl list` still showed after the teardown.
    pub leftover_domains: Vec<String>,
    pub timings: Dom0Timings,
}

impl LabReport {
    /// The samples of the lab's fleet, as `hostd boot` records a fleet: startups, failures,
    /// memory, the fleet's completion, then the CPU benchmark's samples.
    pub fn records(&self) -> Vec<Record> {
        let b = &self.boot;
        let mut out: Vec<Record> = b.startups.iter().cloned().map(Record::Startup).collect();
        out.extend(b.failures.iter().map(|f| Record::Failure {
            backend: b.backend,
            n: b.n,
            mode: b.mode,
            failure: f.clone(),
        }));
        out.extend(b.memory.clone().map(Record::Memory));
        out.push(Record::FleetDone {
            backend: b.backend,
            n: b.n,
            mode: b.mode,
            ready: b.startups.len(),
            failed: b.failures.len(),
            t_startup_s: b.t_startup(),
        });
        out.extend(self.bench.iter().cloned().map(Record::Bench));
        out
    }
}

/// The lab's messages (inside the agent protocol's frames).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "lab", rename_all = "snake_case")]
pub enum LabMsg {
    /// dom0 → host, first: hostd runs in dom0 and waits for its job.
    Ready {
        dom0_uptime_s: f64,
        kernel: String,
        hostd_version: String,
    },
    /// host → dom0.
    Job(LabJob),
    /// dom0 → host: what is going on, for a person watching.
    Progress {
        line: String,
    },
    /// dom0 → host, last.
    Done(Box<LabReport>),
    Failed {
        error: String,
    },
}

fn frame(msg: &LabMsg) -> Result<Vec<u8>> {
    let payload = serde_json::to_vec(msg)?;
    Ok(vb_protocol::frame::encode(&payload, vb_protocol::MAX_PAYLOAD)?)
}

/// Reads frames until one decodes as a [`LabMsg`]; noise (Xen's and dom0's console, tty
/// echo) is skipped by the decoder. None: the stream ended.
async fn next_msg(
    r: &mut (impl AsyncRead + Unpin),
    dec: &mut FrameDecoder,
    queue: &mut Vec<Vec<u8>>,
) -> Result<Option<LabMsg>> {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        if !queue.is_empty() {
            let p = queue.remove(0);
            return Ok(Some(serde_json::from_slice(&p).context("undecodable lab message")?));
        }
        let n = r.read(&mut buf).await.context("reading the lab's control channel")?;
        if n == 0 {
            return Ok(None);
        }
        for ev in dec.feed(&buf[..n]) {
            if let Event::Frame(p) = ev {
                queue.push(p);
            }
        }
    }
}

/// The lab machine's boot images and size.
pub struct LabMachine<'a> {
    pub xen: &'a Path,
    pub xen_cmdline: String,
    pub dom0_kernel: &'a Path,
    pub dom0_cmdline: &'a str,
    pub dom0_initramfs: &'a Path,
    pub host_mib: u64,
    pub accel: LabAccel,
}

/// The QEMU command line (after the program) of the lab VM.
pub fn qemu_args(m: &LabMachine<'_>, log: &Path, ctl_fd: i32) -> Vec<String> {
    // Multiboot modules are separated by commas (a literal one is doubled), each a path
    // followed by its command line.
    let esc = |s: &str| s.replace(',', ",,");
    let modules = format!(
        "{} {},{}",
        esc(&m.dom0_kernel.display().to_string()),
        esc(m.dom0_cmdline),
        esc(&m.dom0_initramfs.display().to_string())
    );
    let (xen, xen_cmdline, host_mib) = (m.xen, m.xen_cmdline.as_str(), m.host_mib);
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-name", "xen-lab", "-M", "pc"]);
    push(&m.accel.qemu_args());
    push(&["-smp", "2"]);
    push(&[
        "-m",
        &format!("{host_mib}M"),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ]);
    push(&["-kernel", &xen.display().to_string(), "-append", xen_cmdline, "-initrd", &modules]);
    // COM1: Xen's console (and through it dom0's hvc0) into the lab log; COM2: the channel.
    push(&[
        "-chardev",
        &format!("file,id=con,path={},append=on", log.display().to_string().replace(',', ",,")),
        "-serial",
        "chardev:con",
    ]);
    push(&["-chardev", &format!("socket,id=ctl,fd={ctl_fd}"), "-serial", "chardev:ctl"]);
    a
}

/// Xen's command line in the lab: its console on COM1 with boot-relative timestamps; dom0
/// gets 512 MiB (fixed, so the rest is Xen's free memory for the domUs) and both CPUs. Two
/// things only cost time under TCG: scrubbing free memory at boot (it competes with dom0 for
/// the CPUs, and a lab machine has no previous tenant) and the page-table isolation Xen
/// turns on for PV guests of the emulated Haswell, which it takes for Meltdown-affected
/// (XPTI made domU boots three times slower; a current CPU is not affected and runs without
/// it). The other mitigations stay: with `spec-ctrl=no` Xen switches the FPU lazily, and
/// concurrent guests' CPU benchmarks then computed NaN under TCG.
pub fn xen_cmdline() -> String {
    "console=com1 com1=115200,8n1 console_timestamps=boot bootscrub=off xpti=false pv-l1tf=false dom0_mem=512M,max:512M dom0_max_vcpus=2 loglvl=warning guest_loglvl=warning".into()
}

/// The least memory an emulated Xen host needs for `n` domUs of `mem_mib`, MiB: dom0's
/// fixed 512, 256 for Xen itself, and each domain's RAM plus 16 for its page tables and
/// Xen's per-domain structures.
pub fn host_mib_needed(n: usize, mem_mib: u32) -> u64 {
    768 + n as u64 * (mem_mib as u64 + 16)
}

/// The lab's default host memory: what the fleet needs with some room, never below the
/// 2 GiB the lab was measured with.
pub fn host_mib_for(n: usize, mem_mib: u32) -> u64 {
    (host_mib_needed(n, mem_mib) + 256).max(2048)
}

/// What a lab run produced.
pub struct LabOutcome {
    pub dir: PathBuf,
    pub report: LabReport,
    /// QEMU start → dom0's ready message, host clock.
    pub lab_boot_s: f64,
    pub total_s: f64,
    pub summary: bootrun::BootSummary,
}

/// The host side: boots the lab, drives dom0, writes the results.
pub async fn run(a: &LabArgs, say: &mut dyn FnMut(String)) -> Result<LabOutcome> {
    if a.guests == 0 {
        bail!("--guests needs at least 1");
    }
    let host_mib = a.host_mib.map(u64::from).unwrap_or_else(|| host_mib_for(a.guests, a.mem_mib));
    let needed = host_mib_needed(a.guests, a.mem_mib);
    if host_mib < needed {
        bail!("--host-mib {host_mib} is too small for {} domUs of {} MiB (dom0 takes 512): give at least {needed}", a.guests, a.mem_mib);
    }
    let t_start = Instant::now();
    let images = crate::images::resolve(None).context("resolving the images")?;
    let artifact = |recipe: &str, output: &str| {
        crate::images::store_artifact(recipe, output)
            .with_context(|| format!("the Xen lab needs {recipe}: run `imagegen build`"))
    };
    let (xen_path, xen_sha, _) = artifact("xen-hypervisor", "file")?;
    let (dom0_kernel, dom0_kernel_sha, dom0_cmdline) = artifact("kernel-dom0", "file")?;
    let (dom0_initramfs, dom0_initramfs_sha, _) = artifact("xen-lab-dom0", "initramfs")?;
    let (_, _, domu_cmdline) = artifact("kernel-xen", "kernel")?;
    // What the lab booted: the hypervisor, dom0 and what dom0 boots (its hostd included).
    let mut artifacts: std::collections::BTreeMap<String, String> = images
        .hashes
        .iter()
        .filter(|(k, _)| ["agent", "initramfs", "kernel-xen"].iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    artifacts.insert("hostd-static".into(), artifact("hostd-static", "agent")?.1);
    artifacts.insert("xen-hypervisor".into(), xen_sha);
    artifacts.insert("kernel-dom0".into(), dom0_kernel_sha);
    artifacts.insert("xen-lab-dom0".into(), dom0_initramfs_sha);
    let qemu_version = qemu_version(&a.qemu).await?;
    let (accel, accel_why) = choose_accel(a.accel.as_deref(), &a.qemu, &images).await?;

    let run = RunGuard(
        RunState::create("xen-lab", Some(a.results.clone())).context("creating the run's state")?,
    );
    let run = &run.0;
    let result = async {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "-");
        let mut results = ResultsDir::create_unique(&a.results, &format!("{stamp}-xen-lab-{}", run.run)).context("creating the results directory")?;
        // Kept with the results: Xen's and dom0's boot, for whoever reads the figures.
        let log = results.path.join("lab-console.log");
        let (host_end, qemu_end) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .context("the lab's control socketpair")?;
        const CTL_FD: i32 = 3;
        let machine = LabMachine {
            xen: &xen_path,
            xen_cmdline: xen_cmdline(),
            dom0_kernel: &dom0_kernel,
            dom0_cmdline: &dom0_cmdline,
            dom0_initramfs: &dom0_initramfs,
            host_mib,
            accel,
        };
        let args = qemu_args(&machine, &log, CTL_FD);
        let out = std::fs::File::create(results.path.join("qemu.log")).context("QEMU's log")?;
        let mut cmd = tokio::process::Command::new(&a.qemu);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own group (a Ctrl-C reaches hostd, which shuts the lab down), and killed
            // when dropped; in the run's cgroup, so a later hostd reaps it if this one dies.
            .process_group(0)
            .kill_on_drop(true);
        crate::backend::pass_fd_in_child(&mut cmd, qemu_end.as_raw_fd(), CTL_FD);
        if let Ok(mode) = crate::cgroup::detect() {
            let cg = crate::cgroup::Cgroup::create(mode, &run.run, "lab", Default::default()).context("the lab's cgroup")?;
            crate::backend::join_cgroup_in_child(&mut cmd, &cg);
        }
        say(format!("xen-lab: booting Xen under QEMU, {accel_why} ({qemu_version}); lab log {}", log.display()));
        let t_qemu = Instant::now();
        let mut qemu = cmd.spawn().with_context(|| format!("starting {}", a.qemu))?;
        drop(cmd);
        drop(qemu_end);
        let (mut rd, mut wr) = crate::backend::native::split_socket(host_end).context("the lab's control socket")?;
        let deadline = Duration::from_secs(a.timeout);
        let lab_tail = || lab_log_tail(&log);
        let mut dec = FrameDecoder::default();
        let mut queue = Vec::new();
        let drive = async {
            let ready = next_msg(&mut rd, &mut dec, &mut queue).await?;
            let lab_boot_s = t_qemu.elapsed().as_secs_f64();
            match ready {
                Some(LabMsg::Ready { dom0_uptime_s, kernel, hostd_version }) => say(format!(
                    "xen-lab: dom0 ready after {lab_boot_s:.1} s (dom0 uptime {dom0_uptime_s:.1} s, kernel {kernel}, hostd {hostd_version})"
                )),
                Some(other) => bail!("dom0 spoke before it was ready: {other:?}"),
                None => bail!("the lab stopped before dom0 was ready"),
            }
            let job = LabJob {
                guests: a.guests,
                mem_mib: a.mem_mib,
                vcpus: a.vcpus,
                cpu_rounds: a.cpu_rounds,
                domu_cmdline: domu_cmdline.clone(),
                boot_timeout_s: a.timeout,
                settle_s: 2,
            };
            wr.write_all(&frame(&LabMsg::Job(job))?).await.context("sending dom0 its job")?;
            loop {
                match next_msg(&mut rd, &mut dec, &mut queue).await? {
                    Some(LabMsg::Progress { line }) => say(format!("xen-lab: dom0: {line}")),
                    Some(LabMsg::Done(report)) => return Ok((*report, lab_boot_s)),
                    Some(LabMsg::Failed { error }) => bail!("dom0 failed: {error}"),
                    Some(other) => bail!("unexpected message from dom0: {other:?}"),
                    None => bail!("the lab stopped before dom0 reported"),
                }
            }
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(deadline, drive) => match r {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("no report from dom0 within {} s", deadline.as_secs())),
            },
            status = qemu.wait() => Err(anyhow::anyhow!("QEMU exited ({}) before dom0 reported", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))),
        };
        let (report, lab_boot_s) = match outcome {
            Ok(x) => x,
            Err(e) => {
                let _ = qemu.start_kill();
                let _ = qemu.wait().await;
                return Err(e.context(format!("the Xen lab failed; its console ends with:\n{}", lab_tail())));
            }
        };
        // dom0 powers off once it has reported: Xen then switches the machine off.
        if tokio::time::timeout(Duration::from_secs(60), qemu.wait()).await.is_err() {
            say("xen-lab: the lab did not power off within 60 s; killing QEMU".into());
            let _ = qemu.start_kill();
            let _ = qemu.wait().await;
        }
        let total_s = t_start.elapsed().as_secs_f64();

        let mut provenance = report.provenance.clone();
        provenance.artifacts.extend(artifacts);
        provenance.notes.insert(0, EMULATED_NOTE.into());
        provenance.notes.push(format!(
            "emulated Xen host: {qemu_version}, -M pc {} -smp 2 -m {} on {} ({} CPUs), {accel_why}; Xen command line: {}",
            accel.qemu_args().join(" "),
            host_mib,
            crate::provenance::HostInfo::collect().cpu_model,
            crate::provenance::HostInfo::collect().cpus,
            xen_cmdline()
        ));
        provenance.notes.push(format!("backend xen: {}", report.probe));
        results.write_json("provenance.json", &provenance)?;
        results.append(&Record::BackendProbe { backend: BackendKind::Xen, description: format!("[emulated host] {}", report.probe) })?;
        for r in report.records() {
            results.append(&r)?;
        }
        let b = &report.boot;
        #[derive(Serialize)]
        struct LabFile<'a> {
            note: &'static str,
            lab_boot_s: f64,
            total_s: f64,
            report: &'a LabReport,
        }
        results.write_json("lab.json", &LabFile { note: EMULATED_NOTE, lab_boot_s, total_s, report: &report })?;
        let summary = bootrun::summarise(provenance, vec![bootrun::row(b)]);
        bootrun::write_outputs(&results, &summary)?;
        crate::report::write(&results.path, false).context("writing the lab's report")?;
        Ok(LabOutcome { dir: results.path.clone(), report, lab_boot_s, total_s, summary })
    }
    .await;
    result
}

/// Releases the lab run's resources (its QEMU's cgroup, scratch) however the run ends,
/// cancellation (Ctrl-C) included.
struct RunGuard(RunState);

impl Drop for RunGuard {
    fn drop(&mut self) {
        let cleaned = self.0.finish();
        if !cleaned.errors.is_empty() {
            tracing::warn!("xen-lab cleanup: {}", cleaned.errors.join("; "));
        }
    }
}

/// The end of the lab's console (Xen's and dom0's), for an error.
fn lab_log_tail(log: &Path) -> String {
    let data = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&data[data.len().saturating_sub(4000)..]).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// `hostd xen-lab`: either side, by `--in-dom0`.
pub async fn main(a: LabArgs) -> Result<()> {
    if let Some(tty) = &a.in_dom0 {
        return dom0_side(tty).await;
    }
    let bar = crate::progress::spinner("xen-lab");
    let mut say = |l: String| {
        crate::progress::line(&bar, &l);
        bar.set_message(l.trim().to_string());
    };
    // On Ctrl-C the lab's future is dropped first: that kills QEMU and releases the run.
    let done = tokio::select! {
        r = run(&a, &mut say) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    bar.finish_and_clear();
    let Some(o) = done else {
        eprintln!("hostd: interrupted; the Xen lab is shut down");
        std::process::exit(130);
    };
    let o = o?;
    print!("{}", bootrun::table(&o.summary));
    let r = &o.report;
    println!(
        "xen-lab (host clock, 1 run): Xen + dom0 boot {:.1} s (dom0 uptime {:.1} s); {}/{} domUs ready, T_startup {} s; CPU benchmark in all at once {:.1} s; teardown {:.1} s ({} left); total {:.1} s",
        o.lab_boot_s,
        r.timings.dom0_uptime_at_ready_s,
        r.boot.startups.len(),
        r.boot.n,
        r.boot.t_startup().map(|t| format!("{t:.2}")).unwrap_or_else(|| "-".into()),
        r.timings.bench_s,
        r.timings.teardown_s,
        r.leftover_domains.len(),
        o.total_s
    );
    let x = &r.xen_memory;
    println!(
        "xen-lab: memory: the fleet took {} MiB of Xen's {} MiB ({} → {} MiB free) and {:.1} MiB of dom0's",
        x.used_by_fleet_mib,
        x.total_mib,
        x.free_before_mib,
        x.free_after_mib,
        (r.dom0_used_after_kib as f64 - r.dom0_used_before_kib as f64) / 1024.0
    );
    for s in &r.bench {
        println!(
            "xen-lab: guest {} CPU benchmark (√2, {}, {} guests busy, 1 repetition, guest clock): {:.3} {}",
            s.guest, s.params, s.n, s.value, s.unit
        );
    }
    println!("xen-lab: {EMULATED_NOTE}");
    println!("xen-lab: results in {}", o.dir.display());
    if !r.leftover_domains.is_empty() {
        bail!("domains left after the teardown: {}", r.leftover_domains.join(", "));
    }
    Ok(())
}

/// The dom0 side: says ready, takes the job, measures, reports.
async fn dom0_side(tty: &Path) -> Result<()> {
    let mut ctl = RawTty::open(tty)
        .with_context(|| format!("opening the lab's control channel {}", tty.display()))?;
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    send(
        &mut ctl,
        &LabMsg::Ready {
            dom0_uptime_s: uptime,
            kernel,
            hostd_version: env!("CARGO_PKG_VERSION").into(),
        },
    )
    .await?;
    let mut dec = FrameDecoder::default();
    let mut queue = Vec::new();
    let job = match next_msg(&mut ctl, &mut dec, &mut queue).await? {
        Some(LabMsg::Job(j)) => j,
        other => bail!("expected the lab's job, got {other:?}"),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let measuring = measure(&job, uptime, tx);
    tokio::pin!(measuring);
    // Progress lines go out while the measurement runs.
    let result = loop {
        tokio::select! {
            r = &mut measuring => break r,
            Some(line) = rx.recv() => send(&mut ctl, &LabMsg::Progress { line }).await?,
        }
    };
    while let Ok(line) = rx.try_recv() {
        send(&mut ctl, &LabMsg::Progress { line }).await?;
    }
    let last = match result {
        Ok(report) => LabMsg::Done(Box::new(report)),
        Err(e) => LabMsg::Failed { error: format!("{e:#}") },
    };
    send(&mut ctl, &last).await?;
    ctl.drain().context("draining the control channel")?;
    Ok(())
}

async fn send(w: &mut (impl AsyncWrite + Unpin), msg: &LabMsg) -> Result<()> {
    w.write_all(&frame(msg)?).await.context("writing to the lab's control channel")
}

/// Boots the job's fleet through the xen backend and measures it (see the module doc).
async fn measure(
    job: &LabJob,
    uptime: f64,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<LabReport> {
    let say = |l: String| {
        let _ = progress.send(l);
    };
    let images = Images {
        agent: DOM0_AGENT.into(),
        initramfs: Some(DOM0_DOMU_INITRAMFS.into()),
        kernel_xen: Some(Kernel {
            path: DOM0_DOMU_KERNEL.into(),
            cmdline: job.domu_cmdline.clone(),
        }),
        ..Default::default()
    };
    let backend = AnyBackend::new(BackendKind::Xen, &images, &BackendOptions::default());
    let probe = backend.probe().await.map_err(anyhow::Error::msg)?;
    say(format!("probe: {probe}"));
    let mut provenance = Provenance::collect(Default::default());
    if let Ok(info) = xen::xl_info("xl").await {
        let g = |k: &str| info.get(k).cloned().unwrap_or_default();
        provenance.notes.push(format!(
            "Xen {} ({} physical CPUs, {} MiB); dom0 hostd in a {} MiB dom0",
            g("xen_version"),
            g("nr_cpus"),
            g("total_memory"),
            provenance.host.mem_total_kib / 1024
        ));
    }
    let run = RunState::create("xen-lab", None).context("creating the run's state")?;
    let result = async {
        let cfg = FleetConfig {
            n: job.guests,
            mem_mib: job.mem_mib,
            vcpus: job.vcpus,
            network: true,
            boot_timeout: Duration::from_secs(job.boot_timeout_s),
            ..Default::default()
        };
        crate::startup::drop_caches().context("dropping dom0's page cache for a cold start")?;
        let dom0_before = memory::host_used_kib_median(5, Duration::from_millis(100))
            .await
            .context("reading /proc/meminfo")?;
        let info_before = xen::xl_info("xl")
            .await
            .map_err(anyhow::Error::msg)
            .context("Xen's memory before the fleet")?;
        say(format!("starting {} PV domUs together", job.guests));
        let t0 = Instant::now();
        let fleet = fleet::start(&backend, &run, &cfg, |e| match e {
            FleetEvent::Ready { index, after } => {
                say(format!("g{index} ready after {:.2} s", after.as_secs_f64()))
            }
            FleetEvent::Failed(f) => say(format!(
                "{} failed ({:?}): {}",
                f.name,
                f.kind,
                f.error.lines().next().unwrap_or("")
            )),
        })
        .await?;
        let fleet_ready_s = t0.elapsed().as_secs_f64();
        let kind = BackendKind::Xen;
        let startups = crate::startup::startup_samples(kind, cfg.n, StartMode::Cold, &fleet);
        let settle = Duration::from_secs(job.settle_s);
        tokio::time::sleep(settle).await;
        let dom0_after = memory::host_used_kib_median(5, Duration::from_millis(100))
            .await
            .context("reading /proc/meminfo")?;
        let info_after = xen::xl_info("xl")
            .await
            .map_err(anyhow::Error::msg)
            .context("Xen's memory with the fleet up")?;
        let domains =
            xen::xl_list("xl").await.map_err(anyhow::Error::msg).context("listing the domains")?;
        let mib = |i: &std::collections::BTreeMap<String, String>, k: &str| -> Result<u64> {
            i.get(k).and_then(|v| v.parse().ok()).with_context(|| format!("`xl info` has no {k}"))
        };
        let xen_memory = XenMemory {
            total_mib: mib(&info_after, "total_memory")?,
            free_before_mib: mib(&info_before, "free_memory")?,
            free_after_mib: mib(&info_after, "free_memory")?,
            used_by_fleet_mib: mib(&info_before, "free_memory")? as i64
                - mib(&info_after, "free_memory")? as i64,
            domains,
        };
        // The host's used memory on a Xen host is the machine's: what dom0 uses of its
        // (fixed) allocation plus everything Xen has handed out. domU RAM is only in the latter.
        let xen_used =
            |i| xen::xen_used_kib(i).context("`xl info` lacks total_memory or free_memory");
        let (used_before, used_after) =
            (dom0_before + xen_used(&info_before)?, dom0_after + xen_used(&info_after)?);
        let mem = MemorySample {
            backend: kind,
            n: cfg.n,
            mode: StartMode::Cold,
            ready: fleet.guests.len(),
            used_before_kib: used_before,
            used_after_kib: used_after,
            m_used_kib: used_after as i64 - used_before as i64,
            settle_s: settle.as_secs_f64(),
            guests: fleet.guests.iter().map(|g| memory::guest_memory(&g.process)).collect(),
            hostd_pss_kib: memory::pss_kib(std::process::id()).unwrap_or(0),
            provenance: String::new(),
            checks: Default::default(),
        };
        say(format!(
            "CPU benchmark ({} rounds) in {} guests at once",
            job.cpu_rounds,
            fleet.guests.len()
        ));
        let w = Workloads { cpu_rounds: job.cpu_rounds, ..Default::default() };
        let targets = Targets {
            disk: PathBuf::from("/nonexistent"),
            peer: (crate::netlab::BRIDGE_ADDR, 0).into(),
        };
        let t_bench = Instant::now();
        let (bench, bench_error) = if fleet.guests.is_empty() {
            (Vec::new(), Some("no guest became ready".to_string()))
        } else {
            match linearity::measure(
                &fleet,
                Resource::Cpu,
                &w,
                &targets,
                0,
                1,
                Duration::from_secs(job.boot_timeout_s),
            )
            .await
            {
                Ok(s) => (s, None),
                Err(e) => (Vec::new(), Some(e)),
            }
        };
        let bench_s = t_bench.elapsed().as_secs_f64();
        let mut failures = fleet.failures.clone();
        let t_down = Instant::now();
        let Teardown { clean, killed, failed, .. } =
            fleet.teardown(&backend, Duration::from_secs(30)).await;
        failures.extend(failed);
        let teardown_s = t_down.elapsed().as_secs_f64();
        let leftover_domains = match xen::xl_list("xl").await {
            Ok(l) => l.into_iter().filter(|d| d.id != 0).map(|d| d.name).collect(),
            Err(e) => vec![format!("(xl list failed: {e})")],
        };
        say(format!(
            "torn down in {teardown_s:.1} s: {clean} clean, {killed} killed, {} domains left",
            leftover_domains.len()
        ));
        let boot = FleetBoot {
            backend: kind,
            n: cfg.n,
            mode: StartMode::Cold,
            startups,
            failures,
            memory: Some(mem),
            teardown_clean: clean,
            teardown_killed: killed,
            residency: None,
        };
        let fleet_ready_s = boot.t_startup().unwrap_or(fleet_ready_s);
        anyhow::Ok(LabReport {
            provenance,
            probe,
            boot,
            xen_memory,
            dom0_used_before_kib: dom0_before,
            dom0_used_after_kib: dom0_after,
            bench,
            bench_error,
            leftover_domains,
            timings: Dom0Timings {
                dom0_uptime_at_ready_s: uptime,
                fleet_ready_s,
                bench_s,
                teardown_s,
            },
        })
    }
    .await;
    let cleaned = run.finish();
    if !cleaned.errors.is_empty() {
        say(format!("cleanup: {}", cleaned.errors.join("; ")));
    }
    result
}

/// The first line of `qemu --version`.
async fn qemu_version(qemu: &str) -> Result<String> {
    let out = tokio::process::Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {qemu} (the Xen lab needs QEMU: qemu-system-x86)"))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("QEMU").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_qemu_command_line() {
        let m = LabMachine {
            xen: Path::new("/s/xen"),
            xen_cmdline: xen_cmdline(),
            dom0_kernel: Path::new("/s/vmlinuz"),
            dom0_cmdline: "console=hvc0 quiet",
            dom0_initramfs: Path::new("/s/dom0,1.cpio.gz"),
            host_mib: 2048,
            accel: LabAccel::Tcg,
        };
        let a = qemu_args(&m, Path::new("/run/virtbench/r1/lab-console.log"), 3);
        let expect = [
            "-name", "xen-lab", "-M", "pc", "-accel", "tcg,thread=multi", "-cpu", "Haswell-noTSX", "-smp", "2",
            "-m", "2048M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-kernel", "/s/xen",
            "-append", "console=com1 com1=115200,8n1 console_timestamps=boot bootscrub=off xpti=false pv-l1tf=false dom0_mem=512M,max:512M dom0_max_vcpus=2 loglvl=warning guest_loglvl=warning",
            "-initrd", "/s/vmlinuz console=hvc0 quiet,/s/dom0,,1.cpio.gz",
            "-chardev", "file,id=con,path=/run/virtbench/r1/lab-console.log,append=on", "-serial", "chardev:con",
            "-chardev", "socket,id=ctl,fd=3", "-serial", "chardev:ctl",
        ];
        assert_eq!(a, expect);
        // Under KVM the emulated host has the host's CPU model; nothing else changes.
        let k = qemu_args(
            &LabMachine { accel: LabAccel::Kvm, ..m },
            Path::new("/run/virtbench/r1/lab-console.log"),
            3,
        );
        assert_eq!(&k[4..8], ["-accel", "kvm", "-cpu", "host"]);
        assert_eq!((&k[..4], &k[8..]), (&a[..4], &a[8..]));
    }

    /// An asked-for accelerator is used as given; anything else is refused by name; with
    /// nothing to probe KVM with, TCG, saying why.
    #[tokio::test]
    async fn accelerator_choice() {
        let none = Images::default();
        assert_eq!(choose_accel(Some("kvm"), "qemu", &none).await.unwrap().0, LabAccel::Kvm);
        assert_eq!(choose_accel(Some("tcg"), "qemu", &none).await.unwrap().0, LabAccel::Tcg);
        assert!(choose_accel(Some("hvf"), "qemu", &none)
            .await
            .unwrap_err()
            .to_string()
            .contains("--accel \"hvf\": expected kvm or tcg"));
        let (a, why) = choose_accel(None, "qemu", &none).await.unwrap();
        assert_eq!(a, LabAccel::Tcg);
        assert!(why.contains("no kernel-microvm or initramfs"), "{why}");
    }

    #[tokio::test]
    async fn messages_survive_framing_and_noise() {
        let job = LabJob {
            guests: 3,
            mem_mib: 128,
            vcpus: 1,
            cpu_rounds: 7,
            domu_cmdline: "console=hvc0 quiet".into(),
            boot_timeout_s: 9,
            settle_s: 1,
        };
        let mut bytes = b"(XEN) noise\r\n[    1.0] dom0 kernel line\n".to_vec();
        bytes.extend(
            frame(&LabMsg::Ready {
                dom0_uptime_s: 4.5,
                kernel: "6.1".into(),
                hostd_version: "0".into(),
            })
            .unwrap(),
        );
        bytes.extend(b"more noise");
        bytes.extend(frame(&LabMsg::Job(job.clone())).unwrap());
        let mut r = &bytes[..];
        let (mut dec, mut q) = (FrameDecoder::default(), Vec::new());
        assert!(
            matches!(next_msg(&mut r, &mut dec, &mut q).await.unwrap(), Some(LabMsg::Ready { dom0_uptime_s, .. }) if dom0_uptime_s == 4.5)
        );
        match next_msg(&mut r, &mut dec, &mut q).await.unwrap() {
            Some(LabMsg::Job(j)) => assert_eq!(j, job),
            other => panic!("{other:?}"),
        }
        assert!(next_msg(&mut r, &mut dec, &mut q).await.unwrap().is_none());
    }

    /// The emulated host gets room for its fleet; a --host-mib too small for it, or no
    /// guests, is refused before anything boots.
    #[tokio::test]
    async fn lab_memory_fits_the_fleet() {
        assert_eq!(host_mib_for(3, 128), 2048);
        assert_eq!(host_mib_for(10, 128), 768 + 10 * 144 + 256);
        let a = LabArgs {
            guests: 3,
            mem_mib: 512,
            vcpus: 1,
            cpu_rounds: 1,
            host_mib: Some(1024),
            timeout: 1,
            qemu: "/nonexistent/qemu".into(),
            accel: None,
            results: "/nonexistent".into(),
            in_dom0: None,
        };
        let e = run(&a, &mut |_| {}).await.err().unwrap().to_string();
        assert!(
            e.contains("--host-mib 1024 is too small for 3 domUs of 512 MiB") && e.contains("2352"),
            "{e}"
        );
        let e = run(&LabArgs { guests: 0, ..a }, &mut |_| {}).await.err().unwrap().to_string();
        assert!(e.contains("--guests needs at least 1"), "{e}");
    }

    /// The dom0 image holds what the dom0 side expects, where it expects it.
    #[test]
    fn the_dom0_recipe_matches_the_paths() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../recipes/xen-lab-dom0.toml"
        ))
        .unwrap();
        for p in [DOM0_DOMU_KERNEL, DOM0_DOMU_INITRAMFS, "/usr/sbin/hostd"] {
            assert!(text.contains(&format!("dst = \"{p}\"")), "{p} missing from xen-lab-dom0.toml");
        }
        assert!(text.contains(&format!("agent_path = \"{DOM0_AGENT}\"")));
        let init = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../recipes/files/xen-lab-init"
        ))
        .unwrap();
        assert!(
            init.contains(&format!("hostd xen-lab --in-dom0 {DOM0_CTL}")),
            "the dom0 init starts the dom0 side on {DOM0_CTL}"
        );
    }
}
