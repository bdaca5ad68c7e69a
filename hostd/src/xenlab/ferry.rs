//! What crosses between the host and dom0: [`LabMsg`]s in the agent protocol's frames over
//! the lab's serial line (noise from Xen's and dom0's consoles is skipped by the decoder),
//! the [`LabJob`] sent in and the [`LabReport`] sent back.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vb_protocol::frame::{Event, FrameDecoder};

use crate::backend::rootdisk::InitMode;
use crate::backend::xen::DomainInfo;
use crate::provenance::Provenance;
use crate::startup::FleetBoot;
use crate::suite::BenchSample;

/// What dom0 is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabJob {
    pub guests: usize,
    pub mem_mib: u32,
    pub vcpus: u32,
    pub cpu_rounds: u64,
    /// The domU kernel's recorded command line (kernel-pv's manifest; dom0 has no store).
    pub domu_cmdline: String,
    pub boot_timeout_s: u64,
    pub settle_s: u64,
    /// The system image the domUs boot (`--system`), or None: the agent's initramfs alone.
    #[serde(default)]
    pub system: Option<LabSystem>,
}

/// A system image as the host's store knows it. dom0 gets its ext4 as the lab machine's
/// read-only virtio disk with serial [`SYSTEM_SERIAL`] and boots it only if the disk's
/// size and sha256 are these (dom0 trusts nothing it is sent: `sysdisk::find`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabSystem {
    /// Its recipe's name.
    pub name: String,
    /// sha256 of its `rootfs.ext4` (the store's manifest).
    pub ext4_sha256: String,
    /// Its size in bytes.
    pub ext4_bytes: u64,
    /// Its file system UUID (the agent finds the root device by it: `vb.root=`).
    pub ext4_uuid: String,
    /// Who is PID 1 in the domUs.
    pub init: InitMode,
    /// The image's init as its manifest records it (None: it has no usable one).
    pub image_init: Option<String>,
}

/// The serial number of the lab machine's system disk (`/sys/block/vd*/serial` in dom0).
pub const SYSTEM_SERIAL: &str = "vbsys";

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
    /// Each ready guest's root as its hello described it (None: no system image).
    #[serde(default)]
    pub roots: Vec<GuestRoot>,
    /// dom0's check of the system disk, when the job had a system image.
    #[serde(default)]
    pub system_disk: Option<SystemDisk>,
}

/// One guest's root as its agent said in its hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestRoot {
    pub guest: String,
    pub root: Option<vb_protocol::msg::RootInfo>,
}

/// The system disk dom0 found and checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemDisk {
    /// Its device in dom0 (`/dev/vda`).
    pub device: String,
    /// Its sha256 as dom0 read it (equal to the job's, or dom0 refused it).
    pub sha256: String,
    /// Seconds dom0 took to hash it.
    pub hash_s: f64,
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

pub(super) fn frame(msg: &LabMsg) -> Result<Vec<u8>> {
    let payload = serde_json::to_vec(msg)?;
    Ok(vb_protocol::frame::encode(&payload, vb_protocol::MAX_PAYLOAD)?)
}

/// Reads frames until one decodes as a [`LabMsg`]; noise (Xen's and dom0's console, tty
/// echo) is skipped by the decoder. None: the stream ended.
pub(super) async fn next_msg(
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

pub(super) async fn send(w: &mut (impl AsyncWrite + Unpin), msg: &LabMsg) -> Result<()> {
    w.write_all(&frame(msg)?).await.context("writing to the lab's control channel")
}
