//! Where a number came from: the artifacts' hashes, the host, the tool's revision, the date.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
/// What a run measured with: artifacts' hashes, the host, hostd's own version.
pub struct Provenance {
    /// Artifact name → sha256 (agent, kernel, initramfs, recipe, …).
    pub artifacts: BTreeMap<String, String>,
    /// The host.
    pub host: HostInfo,
    /// `git describe`-style revision of the hostd that measured ("-dirty" if modified).
    pub git_revision: String,
    /// hostd's crate version.
    pub hostd_version: String,
    /// RFC 3339, UTC.
    pub date: String,
    /// Other facts about the inputs (e.g. which file the disk benchmark read).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Which part of a run these samples are, when a run measures its parts on different
    /// hosts by design (a campaign across Slurm hosts: the ring and fleets' startup across
    /// the hosts, the single-host steps on one node); none for a run on one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
/// The host a run measured on.
pub struct HostInfo {
    /// Its hostname.
    pub hostname: String,
    /// `uname -r`.
    pub kernel: String,
    /// The CPU model, from /proc/cpuinfo.
    pub cpu_model: String,
    /// Online CPUs.
    pub cpus: u32,
    /// MemTotal, KiB.
    pub mem_total_kib: u64,
    /// The last-level cache (sysfs), which sizes the memory benchmark's working set.
    #[serde(default)]
    pub llc: Option<crate::fidelity::Llc>,
}

impl Provenance {
    /// The provenance of a run here now, with these artifacts.
    pub fn collect(artifacts: BTreeMap<String, String>) -> Self {
        Self {
            artifacts,
            host: HostInfo::collect(),
            git_revision: env!("VB_GIT_REVISION").to_string(),
            hostd_version: env!("CARGO_PKG_VERSION").to_string(),
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            notes: Vec::new(),
            part: None,
        }
    }

    /// One line per fact, for the head of a printed table.
    pub fn lines(&self) -> Vec<String> {
        let mut v = vec![
            format!(
                "host: {} — {} ({} CPUs, {} MiB, last-level cache {}), kernel {}",
                self.host.hostname,
                self.host.cpu_model,
                self.host.cpus,
                self.host.mem_total_kib / 1024,
                self.host.llc.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()),
                self.host.kernel
            ),
            format!(
                "hostd {} at {}, measured {}",
                self.hostd_version, self.git_revision, self.date
            ),
        ];
        v.extend(self.artifacts.iter().map(|(k, h)| format!("{k} sha256 {h}")));
        v.extend(self.notes.iter().cloned());
        v
    }
}

impl Provenance {
    /// A short name for what must match for samples to be comparable: the artifacts'
    /// hashes, hostd's version and revision, and the host. Not the date, nor the notes.
    pub fn id(&self) -> String {
        let key = serde_json::json!({
            "artifacts": self.artifacts,
            "host": self.host,
            "git_revision": self.git_revision,
            "hostd_version": self.hostd_version,
        });
        hex::encode(&Sha256::digest(key.to_string().as_bytes())[..8])
    }

    /// What differs from `recorded` (a run's provenance) in `self` (now), one line each:
    /// artifacts added, gone or changed, hostd's version or revision, the host. Facts the
    /// recording did not have (an older hostd recorded no LLC) are not differences.
    pub fn differences(&self, recorded: &Provenance) -> Vec<String> {
        let mut d = Vec::new();
        let short = |h: &str| h.chars().take(12).collect::<String>();
        for (k, h) in &recorded.artifacts {
            match self.artifacts.get(k) {
                None => d.push(format!("artifact {k}: recorded sha256 {}…, now absent", short(h))),
                Some(now) if now != h => d.push(format!(
                    "artifact {k}: sha256 {}… recorded, {}… now",
                    short(h),
                    short(now)
                )),
                Some(_) => {}
            }
        }
        for (k, h) in &self.artifacts {
            if !recorded.artifacts.contains_key(k) {
                d.push(format!("artifact {k}: not recorded, now sha256 {}…", short(h)));
            }
        }
        let mut field = |what: &str, was: String, now: String| {
            if was != now {
                d.push(format!("{what}: {was:?} recorded, {now:?} now"));
            }
        };
        field("hostd version", recorded.hostd_version.clone(), self.hostd_version.clone());
        field("hostd revision", recorded.git_revision.clone(), self.git_revision.clone());
        let (r, n) = (&recorded.host, &self.host);
        field("host name", r.hostname.clone(), n.hostname.clone());
        field("host kernel", r.kernel.clone(), n.kernel.clone());
        field("host CPU", r.cpu_model.clone(), n.cpu_model.clone());
        field("host CPUs", r.cpus.to_string(), n.cpus.to_string());
        field("host memory (KiB)", r.mem_total_kib.to_string(), n.mem_total_kib.to_string());
        if r.llc.is_some() {
            field("host last-level cache", format!("{:?}", r.llc), format!("{:?}", n.llc));
        }
        d
    }
}

/// Which provenance each sample of a campaign's samples came from: the provenance in force
/// is named in each sample (untagged samples, from an older hostd, came from `base`, the
/// results directory's `provenance.json`). Lines for the report when a run mixes
/// provenances, with how many samples each one measured; nothing when it does not. A mix
/// whose every provenance names its part (a campaign across hosts) is said to be by design;
/// any other came from a resume with --force-mixed.
pub fn mixed_lines(records: &[crate::samples::Record], base: Option<&Provenance>) -> Vec<String> {
    use crate::samples::Record;
    let mut order: Vec<Seen> = Vec::new();
    let base_id = base.map(Provenance::id).unwrap_or_default();
    if let Some(b) = base {
        order.push(Seen::of(base_id.clone(), b, " (provenance.json)"));
    }
    for r in records {
        match r {
            Record::Provenance { id, provenance } if !order.iter().any(|s| s.id == *id) => {
                order.push(Seen::of(id.clone(), provenance, ""));
            }
            Record::Bench(_) | Record::Startup(_) | Record::Memory(_) => {
                let id =
                    r.provenance_id().filter(|i| !i.is_empty()).unwrap_or(&base_id).to_string();
                match order.iter_mut().find(|s| s.id == id) {
                    Some(e) => e.samples += 1,
                    None => order.push(Seen {
                        id,
                        what: "no provenance record names it".into(),
                        part: None,
                        samples: 1,
                    }),
                }
            }
            _ => {}
        }
    }
    order.retain(|s| s.samples > 0);
    if order.len() < 2 {
        return Vec::new();
    }
    let head = if order.iter().all(|s| s.part.is_some()) {
        format!(
            "this run's samples come from {} provenances by design, one per part of a campaign across hosts (each part measured on its own host)",
            order.len()
        )
    } else {
        format!(
            "this run mixes {} provenances (resumed with --force-mixed): figures combine samples measured with different artifacts, hostd or host",
            order.len()
        )
    };
    let mut v = vec![head];
    v.extend(order.into_iter().map(|s| {
        let id = if s.id.is_empty() { "(untagged)".to_string() } else { s.id };
        let part = s.part.map(|p| format!("{p}: ")).unwrap_or_default();
        let n = s.samples;
        format!("provenance {id}: {part}{}; {n} sample{}", s.what, if n == 1 { "" } else { "s" })
    }));
    v
}

/// A provenance met in a run's samples, for [`mixed_lines`].
struct Seen {
    id: String,
    what: String,
    part: Option<String>,
    samples: usize,
}

impl Seen {
    fn of(id: String, p: &Provenance, whence: &str) -> Seen {
        // The host is named when the part says where it was measured.
        let host =
            if p.part.is_some() { format!("host {}, ", p.host.hostname) } else { String::new() };
        Seen {
            id,
            what: format!(
                "{host}hostd {} at {}, recorded {}{whence}",
                p.hostd_version, p.git_revision, p.date
            ),
            part: p.part.clone(),
            samples: 0,
        }
    }
}

impl HostInfo {
    /// This host's facts now.
    pub fn collect() -> Self {
        let uts = nix::sys::utsname::uname().ok();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            hostname: uts
                .as_ref()
                .map(|u| u.nodename().to_string_lossy().into_owned())
                .unwrap_or_default(),
            kernel: uts
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| {
                    l.strip_prefix("model name")
                        .and_then(|r| r.split_once(':'))
                        .map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_else(|| "unknown".into()),
            cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            mem_total_kib: crate::memory::meminfo_field(&meminfo, "MemTotal").unwrap_or(0),
            llc: crate::fidelity::llc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::Record;

    fn prov(kernel: &str, version: &str, date: &str) -> Provenance {
        Provenance {
            artifacts: [
                ("kernel-pv".to_string(), kernel.to_string()),
                ("agent".to_string(), "a".repeat(64)),
            ]
            .into(),
            host: HostInfo {
                hostname: "h".into(),
                kernel: "6.1".into(),
                cpu_model: "c".into(),
                cpus: 2,
                mem_total_kib: 1 << 20,
                llc: None,
            },
            git_revision: "r1".into(),
            hostd_version: version.into(),
            date: date.into(),
            notes: vec![],
            part: None,
        }
    }

    #[test]
    fn id_and_differences_cover_artifacts_hostd_and_host_not_the_date() {
        let a = prov(&"1".repeat(64), "0.1.0", "2026-12-01T00:00:00Z");
        let later = prov(&"1".repeat(64), "0.1.0", "2026-12-02T00:00:00Z");
        assert_eq!(a.id(), later.id());
        assert!(later.differences(&a).is_empty());
        let mut b = prov(&"2".repeat(64), "0.2.0", "2026-12-02T00:00:00Z");
        b.artifacts.insert("rootfs".into(), "3".repeat(64));
        b.host.llc = Some(crate::fidelity::Llc { level: 3, size_kib: 1024 });
        assert_ne!(a.id(), b.id());
        assert_eq!(
            b.differences(&a),
            [
                "artifact kernel-pv: sha256 111111111111… recorded, 222222222222… now",
                "artifact rootfs: not recorded, now sha256 333333333333…",
                "hostd version: \"0.1.0\" recorded, \"0.2.0\" now",
            ],
            "an LLC the recording lacked is not a difference"
        );
        b.artifacts.remove("agent");
        assert!(b
            .differences(&a)
            .contains(&format!("artifact agent: recorded sha256 {}…, now absent", "a".repeat(12))));
    }

    #[test]
    fn mixed_runs_list_each_provenance_with_its_samples() {
        let a = prov(&"1".repeat(64), "0.1.0", "2026-12-01T00:00:00Z");
        let b = prov(&"2".repeat(64), "0.1.0", "2026-12-02T00:00:00Z");
        let bench = |id: &str| {
            let mut r: Record = serde_json::from_str(r#"{"record":"bench","backend":"native","test":"overhead","resource":"cpu","n":1,"rep":0,"guest":0,"instance":0,"value":1.0,"unit":"s","elapsed_s":1.0,"params":"rounds=8"}"#).unwrap();
            r.tag_provenance(id);
            r
        };
        // Untagged samples (an older hostd) are provenance.json's.
        let one = vec![
            bench(""),
            Record::Provenance { id: a.id(), provenance: a.clone() },
            bench(&a.id()),
        ];
        assert!(mixed_lines(&one, Some(&a)).is_empty());
        let two =
            [one, vec![Record::Provenance { id: b.id(), provenance: b.clone() }, bench(&b.id())]]
                .concat();
        let l = mixed_lines(&two, Some(&a));
        assert_eq!(l.len(), 3, "{l:#?}");
        assert!(l[0].starts_with("this run mixes 2 provenances"));
        assert_eq!(l[1], format!("provenance {}: hostd 0.1.0 at r1, recorded 2026-12-01T00:00:00Z (provenance.json); 2 samples", a.id()));
        assert_eq!(
            l[2],
            format!(
                "provenance {}: hostd 0.1.0 at r1, recorded 2026-12-02T00:00:00Z; 1 sample",
                b.id()
            )
        );
    }

    #[test]
    fn a_mix_whose_every_provenance_names_its_part_is_by_design_not_a_forced_resume() {
        let mut across = prov(&"1".repeat(64), "0.1.0", "2026-12-01T00:00:00Z");
        across.part = Some("the fleets across 3 hosts".into());
        let mut node = prov(&"1".repeat(64), "0.1.0", "2026-12-01T00:00:01Z");
        node.host.hostname = "n1".into();
        node.part = Some("the single-host steps".into());
        let bench = |id: &str| {
            let mut r: Record = serde_json::from_str(r#"{"record":"bench","backend":"ns","test":"ring","resource":"network","n":3,"rep":0,"guest":0,"instance":0,"value":1.0,"unit":"Gbit/s","elapsed_s":1.0,"params":"d=1"}"#).unwrap();
            r.tag_provenance(id);
            r
        };
        let records = vec![
            bench(&across.id()),
            Record::Provenance { id: node.id(), provenance: node.clone() },
            bench(&node.id()),
            bench(&node.id()),
        ];
        let l = mixed_lines(&records, Some(&across));
        assert!(l[0].starts_with("this run's samples come from 2 provenances by design"), "{l:#?}");
        assert!(!l.iter().any(|l| l.contains("force-mixed")), "{l:#?}");
        assert_eq!(l[1], format!("provenance {}: the fleets across 3 hosts: host h, hostd 0.1.0 at r1, recorded 2026-12-01T00:00:00Z (provenance.json); 1 sample", across.id()));
        assert_eq!(l[2], format!("provenance {}: the single-host steps: host n1, hostd 0.1.0 at r1, recorded 2026-12-01T00:00:01Z; 2 samples", node.id()));
        // One provenance without its part: a resume's mix, said as such.
        node.part = None;
        let records = [
            records[..1].to_vec(),
            vec![Record::Provenance { id: node.id(), provenance: node.clone() }, bench(&node.id())],
        ]
        .concat();
        assert!(mixed_lines(&records, Some(&across))[0]
            .starts_with("this run mixes 2 provenances (resumed with --force-mixed)"));
    }
}
