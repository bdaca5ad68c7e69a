//! How a run stands against the paper's method: the memory benchmark's working set against
//! the host's last-level cache (LLC), workload sizes resolved at run time ("auto"), guest
//! memory for that working set, and the campaign's sizes against the paper's. The report
//! shows [`report_notes`]; docs/methodology.md explains each rule.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::suite::Workloads;

/// A CPU cache level as sysfs describes it (`/sys/devices/system/cpu/cpu0/cache/index*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Llc {
    /// Its level (2, 3, …).
    pub level: u8,
    /// Its size, KiB.
    pub size_kib: u64,
}

impl Llc {
    /// Its size, bytes.
    pub fn bytes(&self) -> u64 {
        self.size_kib.saturating_mul(1024)
    }
}

impl std::fmt::Display for Llc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "L{} {}", self.level, mib_text(self.bytes()))
    }
}

/// The working set must be at least this many times the LLC to measure memory, not cache.
pub const LLC_FACTOR: u64 = 4;

/// LLC assumed where sysfs describes none (a container without /sys, an odd platform):
/// larger than most server LLCs, so "auto" still leaves cache.
pub const LLC_FALLBACK: Llc = Llc { level: 3, size_kib: 64 << 10 };

/// The largest matrix side the agent accepts (three n×n f64 matrices within 4 GiB).
pub const MEM_N_MAX: u32 = 13_377;

/// `mem_n` value meaning "size from the host's LLC at run time" (written `"auto"`).
pub const AUTO: u32 = 0;

/// This host's last-level cache: the highest-level data or unified cache of CPU 0.
pub fn llc() -> Option<Llc> {
    llc_in(Path::new("/sys/devices/system/cpu/cpu0/cache"))
}

/// [`llc`] under another sysfs cache directory (tests).
pub fn llc_in(dir: &Path) -> Option<Llc> {
    let mut best: Option<Llc> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        if !e.file_name().to_string_lossy().starts_with("index") {
            continue;
        }
        let read =
            |f: &str| std::fs::read_to_string(e.path().join(f)).ok().map(|s| s.trim().to_string());
        let (Some(level), Some(size), Some(kind)) = (read("level"), read("size"), read("type"))
        else {
            continue;
        };
        if kind == "Instruction" {
            continue;
        }
        let (Ok(level), Some(size_kib)) = (level.parse::<u8>(), parse_size_kib(&size)) else {
            continue;
        };
        let c = Llc { level, size_kib };
        if best.is_none_or(|b| (c.level, c.size_kib) > (b.level, b.size_kib)) {
            best = Some(c);
        }
    }
    best
}

/// sysfs cache sizes: "307200K", "32M", or plain bytes.
fn parse_size_kib(s: &str) -> Option<u64> {
    let (num, mul) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1),
        b'M' => (&s[..s.len() - 1], 1024),
        b'G' => (&s[..s.len() - 1], 1024 * 1024),
        _ => return s.parse::<u64>().ok().map(|b| b / 1024),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

fn mib_text(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 10.0 {
        format!("{mib:.0} MiB")
    } else {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    }
}

/// Bytes the memory benchmark touches: three n×n f64 matrices.
pub fn mem_working_set(n: u32) -> u64 {
    3 * 8 * (n as u64) * (n as u64)
}

/// The smallest matrix side (a multiple of 8) whose working set is at least
/// [`LLC_FACTOR`] × the LLC, capped at what the agent accepts.
pub fn auto_mem_n(llc: Llc) -> u32 {
    let want = LLC_FACTOR.saturating_mul(llc.bytes());
    let mut n = ((want as f64 / 24.0).sqrt().ceil() as u64).div_ceil(8) * 8;
    while mem_working_set(n.min(u32::MAX as u64) as u32) < want {
        n += 8;
    }
    n.clamp(8, MEM_N_MAX as u64) as u32
}

/// Whether a memory run of side `n` fits in (a small multiple of) the LLC: it then times
/// the cache, not memory.
pub fn cache_resident(n: u32, llc: Llc) -> bool {
    mem_working_set(n) < LLC_FACTOR.saturating_mul(llc.bytes())
}

/// The workloads with every "auto" value resolved for a host with this LLC.
pub fn resolve(w: &Workloads, llc: Option<Llc>) -> Workloads {
    let mut r = w.clone();
    if r.mem_n == AUTO {
        r.mem_n = auto_mem_n(llc.unwrap_or(LLC_FALLBACK));
    }
    r
}

/// The memory benchmark's size relative to the LLC, for a sample's `params`
/// ("n=7240 passes=12"), e.g. "working set 1200 MiB = 4.0 × LLC (L3 300 MiB)", with
/// "cache-resident: " in front when smaller than [`LLC_FACTOR`] × LLC. None when the params
/// name no matrix side.
pub fn memory_label(params: &str, llc: Llc) -> Option<String> {
    let n: u32 = params.split_whitespace().find_map(|w| w.strip_prefix("n="))?.parse().ok()?;
    let ws = mem_working_set(n);
    let ratio = ws as f64 / llc.bytes().max(1) as f64;
    let text = format!("working set {} = {ratio:.2} × LLC ({llc})", mib_text(ws));
    Some(if cache_resident(n, llc) {
        format!("cache-resident: {text}, under the {LLC_FACTOR} × LLC that measures memory")
    } else {
        text
    })
}

/// Guest memory, MiB, for a guest that runs `copies` memory benchmarks of side `n` at once:
/// what the guest needs idle (`base_mib`) plus the working sets, rounded up.
pub fn mem_guest_mib(base_mib: u32, n: u32, copies: u32) -> u64 {
    base_mib as u64 + (copies as u64 * mem_working_set(n)).div_ceil(1 << 20)
}

/// Host memory, MiB, that campaign checks keep for the host and hostd itself.
pub const HOST_RESERVE_MIB: u64 = 2048;

/// The paper's sizes (section III): overhead and linearity from 1 to 100 guests, startup
/// up to 100, a ring of 10, every resource, the isolation test.
pub const PAPER_MAX_N: usize = 100;
/// The paper's ring: 10 guests.
pub const PAPER_RING: usize = 10;

/// Lines for the report: where the run departs from the paper's method (from its stored
/// campaign), how the memory runs stood against the LLC, and which provenances the
/// samples came from if more than one. Each line is one fact.
pub fn report_notes(
    dir: &Path,
    records: &[crate::samples::Record],
    provenance: Option<&crate::provenance::Provenance>,
) -> Vec<String> {
    let mut out = Vec::new();
    let llc = provenance.and_then(|p| p.host.llc);
    if let Some(c) =
        crate::results::read_optional(&dir.join("campaign.toml"), crate::results::MAX_FILE_BYTES)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| toml::from_str::<crate::campaign::Campaign>(&t).ok())
    {
        out.extend(c.departures_from_paper(llc));
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in records {
        if let crate::samples::Record::Bench(s) = r {
            if s.resource == vb_protocol::bench::Resource::Memory && seen.insert(s.params.clone()) {
                match llc.and_then(|l| memory_label(&s.params, l)) {
                    Some(l) => out.push(format!("memory benchmark ({}): {l}", s.params)),
                    None => out.push(format!("memory benchmark ({}): the host's LLC is not recorded, so whether it ran from cache is unknown", s.params)),
                }
            }
        }
    }
    out.extend(crate::provenance::mixed_lines(records, provenance));
    let mut seen = std::collections::HashSet::new();
    out.retain(|l| seen.insert(l.clone()));
    out
}

/// The report's notes as an HTML section (nothing when there are none).
pub fn notes_html(notes: &[String]) -> maud::Markup {
    maud::html! {
        @if !notes.is_empty() {
            h2 { "Where this run departs from the paper's method" }
            ul { @for n in notes { li { (n) } } }
        }
    }
}

/// serde for `mem_n`: a number, or `"auto"` ([`AUTO`]).
pub mod auto_u32 {
    use serde::{de, Deserializer, Serializer};

    /// Writes the number.
    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        if *v == super::AUTO {
            s.serialize_str("auto")
        } else {
            s.serialize_u32(*v)
        }
    }

    /// Reads a number, or `"auto"` as [`AUTO`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = u32;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                // Only `workloads.mem_n` (and an override's) is read this way: name it.
                f.write_str("workloads.mem_n: a positive matrix side or \"auto\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<u32, E> {
                if s == "auto" {
                    Ok(super::AUTO)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
                match u32::try_from(v) {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
                match u32::try_from(v) {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysfs(entries: &[(&str, &str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (i, (level, size, kind)) in entries.iter().enumerate() {
            let p = d.path().join(format!("index{i}"));
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("level"), format!("{level}\n")).unwrap();
            std::fs::write(p.join("size"), format!("{size}\n")).unwrap();
            std::fs::write(p.join("type"), format!("{kind}\n")).unwrap();
        }
        d
    }

    #[test]
    fn llc_is_the_highest_data_or_unified_level() {
        let d = sysfs(&[
            ("1", "48K", "Data"),
            ("1", "32K", "Instruction"),
            ("2", "2048K", "Unified"),
            ("3", "307200K", "Unified"),
        ]);
        assert_eq!(llc_in(d.path()), Some(Llc { level: 3, size_kib: 307_200 }));
        let d = sysfs(&[("1", "32K", "Data"), ("2", "1M", "Unified"), ("4", "64M", "Instruction")]);
        assert_eq!(llc_in(d.path()), Some(Llc { level: 2, size_kib: 1024 }));
        assert_eq!(llc_in(Path::new("/nonexistent")), None);
        assert_eq!(parse_size_kib("12x"), None);
    }

    #[test]
    fn auto_size_is_at_least_four_llcs_and_labels_follow() {
        let l3 = Llc { level: 3, size_kib: 300 << 10 };
        let n = auto_mem_n(l3);
        assert_eq!(n % 8, 0);
        assert!(mem_working_set(n) >= 4 * l3.bytes());
        assert!(mem_working_set(n - 8) < 4 * l3.bytes(), "the smallest such n");
        assert_eq!(n, 7248);
        assert!(!cache_resident(n, l3));
        assert!(cache_resident(512, l3));
        // 1200 MiB: 3 × 7248² × 8 B = 1202.4 MiB.
        assert_eq!(
            memory_label(&format!("n={n} passes=12"), l3).unwrap(),
            "working set 1202 MiB = 4.01 × LLC (L3 300 MiB)"
        );
        let q = memory_label("n=128 passes=4", l3).unwrap();
        assert!(
            q.starts_with("cache-resident: working set 384 KiB = 0.00 × LLC (L3 300 MiB)"),
            "{q}"
        );
        assert_eq!(memory_label("mib=4", l3), None);
        // An LLC too large for the agent's 4 GiB limit is capped (and then cache-resident).
        let huge = Llc { level: 3, size_kib: 2 << 20 };
        assert_eq!(auto_mem_n(huge), MEM_N_MAX);
        assert!(cache_resident(auto_mem_n(huge), huge));
    }

    #[test]
    fn resolve_fills_auto_only() {
        let l3 = Llc { level: 3, size_kib: 300 << 10 };
        let w = Workloads { mem_n: AUTO, ..Default::default() };
        assert_eq!(resolve(&w, Some(l3)).mem_n, 7248);
        assert_eq!(resolve(&w, None).mem_n, auto_mem_n(LLC_FALLBACK));
        let w = Workloads { mem_n: 100, ..Default::default() };
        assert_eq!(resolve(&w, Some(l3)).mem_n, 100);
    }

    #[test]
    fn guest_memory_holds_the_working_sets() {
        // 7248: 1202.4 MiB per copy.
        assert_eq!(mem_guest_mib(128, 7248, 1), 128 + 1203);
        assert_eq!(mem_guest_mib(128, 7248, 2), 128 + 2405);
    }
}
