//! `hostd probe`: what works on this host and why (in the spirit of `virt-host-validate` and
//! `kata-runtime check`). Each backend's own probe answers — the same check a run makes
//! before using it — and the host facts that shape results are read from /sys and /proc.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::{AnyBackend, Backend, BackendKind, BackendOptions, Images};

/// The version of `hostd probe --json`'s shape; raised when a field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// One backend's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendCheck {
    /// The backend.
    pub backend: BackendKind,
    /// Whether its probe passed.
    pub available: bool,
    /// Available: what it will run (VMM/runtime version, accelerator and why, images).
    /// Unavailable: why not.
    pub detail: String,
}

/// Host facts that change what a figure means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Transparent huge pages: the selected mode of /sys/kernel/mm/transparent_hugepage/enabled.
    pub thp: String,
    /// Kernel same-page merging: "running" or "stopped" (it shrinks M_used of identical guests).
    pub ksm: String,
    /// cpufreq governor of CPU 0, or why there is none.
    pub governor: String,
    /// Simultaneous multithreading: whether sibling threads are on (they share a core).
    pub smt: String,
    /// The cgroup hierarchy hostd will put guests in, or why none works.
    pub cgroup: String,
    /// Whether /dev/kvm exists; whether QEMU can use it is its backends' probe (a real boot).
    pub kvm_device: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// `hostd probe`'s answer: the host's facts and every backend's probe.
pub struct ProbeReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Facts about the host.
    pub host: HostFacts,
    /// One per backend.
    pub backends: Vec<BackendCheck>,
}

/// The bracketed choice of a sysfs "a [b] c" line, or the whole line.
fn selected(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .map(str::to_string)
        .unwrap_or_else(|| line.trim().to_string())
}

fn read(root: &Path, p: &str) -> Option<String> {
    std::fs::read_to_string(root.join(p)).ok().map(|s| s.trim().to_string())
}

/// Host facts under `root` (`/` on a live host; a fake tree in tests).
pub fn host_facts_in(root: &Path) -> HostFacts {
    let unknown = |what: &str| format!("unknown (no {what})");
    HostFacts {
        kernel: read(root, "proc/sys/kernel/osrelease")
            .unwrap_or_else(|| unknown("/proc/sys/kernel/osrelease")),
        cpus: crate::suite::host_cores(),
        thp: read(root, "sys/kernel/mm/transparent_hugepage/enabled")
            .map(|l| selected(&l))
            .unwrap_or_else(|| unknown("transparent_hugepage in sysfs")),
        ksm: match read(root, "sys/kernel/mm/ksm/run").as_deref() {
            Some("1") => "running".into(),
            Some("0") => "stopped".into(),
            Some("2") => "stopped, merged pages unmerged".into(),
            Some(other) => format!("unknown state {other:?}"),
            None => unknown("ksm in sysfs"),
        },
        governor: read(root, "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
            .unwrap_or_else(|| {
                "none (no cpufreq: frequency set by the platform or hypervisor)".into()
            }),
        smt: match read(root, "sys/devices/system/cpu/smt/active").as_deref() {
            Some("1") => "on".into(),
            Some("0") => "off".into(),
            Some(other) => format!("unknown state {other:?}"),
            None => unknown("smt in sysfs"),
        },
        cgroup: match crate::cgroup::detect() {
            Ok(crate::cgroup::Mode::V2) => "v2 (unified)".into(),
            Ok(crate::cgroup::Mode::V1) => "v1 (memory controller in its own hierarchy)".into(),
            Err(e) => format!("none usable: {e}"),
        },
        kvm_device: root.join("dev/kvm").exists(),
    }
}

/// Probes `kinds` one after the other (QEMU's accelerator probe boots a guest: running them
/// together would slow each and change nothing).
pub async fn probe(kinds: &[BackendKind], images: &Images, opts: &BackendOptions) -> ProbeReport {
    let mut backends = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        let b = AnyBackend::new(kind, images, opts);
        let check = match b.probe().await {
            Ok(d) => BackendCheck { backend: kind, available: true, detail: d },
            Err(e) => {
                BackendCheck { backend: kind, available: false, detail: e.reason.to_string() }
            }
        };
        backends.push(check);
    }
    ProbeReport { schema_version: SCHEMA_VERSION, host: host_facts_in(Path::new("/")), backends }
}

/// The human table: one line per backend, then the host facts.
pub fn table(r: &ProbeReport) -> String {
    let w = r.backends.iter().map(|b| b.backend.name().len()).max().unwrap_or(0);
    let mut s = String::new();
    for b in &r.backends {
        let mark = if b.available { "yes" } else { "no " };
        s.push_str(&format!("{:w$}  {mark}  {}\n", b.backend.name(), b.detail));
    }
    let h = &r.host;
    s.push_str(&format!(
        "\nhost: kernel {}, {} CPUs, SMT {}, THP {}, KSM {}, governor {}, cgroups {}, /dev/kvm {}\n",
        h.kernel,
        h.cpus,
        h.smt,
        h.thp,
        h.ksm,
        h.governor,
        h.cgroup,
        if h.kvm_device { "present (usable only if the QEMU rows say kvm)" } else { "absent" }
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_from_a_fake_tree() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, v: &str| {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        w("proc/sys/kernel/osrelease", "6.1.0-test\n");
        w("sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n");
        w("sys/kernel/mm/ksm/run", "1\n");
        w("sys/devices/system/cpu/smt/active", "0\n");
        let f = host_facts_in(d.path());
        assert_eq!(f.kernel, "6.1.0-test");
        assert_eq!(f.thp, "madvise");
        assert_eq!(f.ksm, "running");
        assert_eq!(f.smt, "off");
        assert!(f.governor.starts_with("none"), "{}", f.governor);
        assert!(!f.kvm_device);
        w("sys/kernel/mm/ksm/run", "7\n");
        assert_eq!(host_facts_in(d.path()).ksm, "unknown state \"7\"");
    }

    #[test]
    fn table_marks_each_backend() {
        let r = ProbeReport {
            schema_version: SCHEMA_VERSION,
            host: host_facts_in(Path::new("/nonexistent")),
            backends: vec![
                BackendCheck {
                    backend: BackendKind::Native,
                    available: true,
                    detail: "agent /a".into(),
                },
                BackendCheck {
                    backend: BackendKind::Firecracker,
                    available: false,
                    detail: "firecracker is not on PATH".into(),
                },
            ],
        };
        let t = table(&r);
        assert!(t.contains("native       yes  agent /a"), "{t}");
        assert!(t.contains("firecracker  no   firecracker is not on PATH"), "{t}");
        assert!(t.contains("THP unknown"), "{t}");
    }
}
