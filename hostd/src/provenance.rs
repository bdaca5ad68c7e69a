//! Where a number came from: the artifacts' hashes, the host, the tool's revision, the date.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Artifact name → sha256 (agent, kernel, initramfs, recipe, …).
    pub artifacts: BTreeMap<String, String>,
    pub host: HostInfo,
    /// `git describe`-style revision of the hostd that measured ("-dirty" if modified).
    pub git_revision: String,
    pub hostd_version: String,
    /// RFC 3339, UTC.
    pub date: String,
    /// Other facts about the inputs (e.g. which file the disk benchmark read).
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: u32,
    pub mem_total_kib: u64,
}

impl Provenance {
    pub fn collect(artifacts: BTreeMap<String, String>) -> Self {
        Self {
            artifacts,
            host: HostInfo::collect(),
            git_revision: env!("VB_GIT_REVISION").to_string(),
            hostd_version: env!("CARGO_PKG_VERSION").to_string(),
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            notes: Vec::new(),
        }
    }

    /// One line per fact, for the head of a printed table.
    pub fn lines(&self) -> Vec<String> {
        let mut v = vec![
            format!("host: {} — {} ({} CPUs, {} MiB), kernel {}", self.host.hostname, self.host.cpu_model, self.host.cpus, self.host.mem_total_kib / 1024, self.host.kernel),
            format!("hostd {} at {}, measured {}", self.hostd_version, self.git_revision, self.date),
        ];
        v.extend(self.artifacts.iter().map(|(k, h)| format!("{k} sha256 {h}")));
        v.extend(self.notes.iter().cloned());
        v
    }
}

impl HostInfo {
    pub fn collect() -> Self {
        let uts = nix::sys::utsname::uname().ok();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            hostname: uts.as_ref().map(|u| u.nodename().to_string_lossy().into_owned()).unwrap_or_default(),
            kernel: uts.as_ref().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
                .unwrap_or_else(|| "unknown".into()),
            cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            mem_total_kib: crate::memory::meminfo_field(&meminfo, "MemTotal").unwrap_or(0),
        }
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
