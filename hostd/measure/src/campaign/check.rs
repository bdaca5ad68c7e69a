//! A campaign's values checked before anything boots: each on its own, then against the host.

use super::*;

/// A campaign value that cannot run, naming the field (`Campaign::check`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum CheckError {
    /// A field's value is not allowed: which field, and why.
    #[error("field `{field}`: {why}")]
    Field {
        /// The field, as the file names it (`overhead.sizes`).
        field: String,
        /// What is wrong with its value.
        why: String,
    },
    /// A number outside its range (`limits`): the message names the field.
    #[error("{0}")]
    Bound(String),
    /// A bad `[netem]` section.
    #[error(transparent)]
    Netem(#[from] crate::netem_accuracy::NetemCheckError),
}

impl From<String> for CheckError {
    fn from(message: String) -> Self {
        CheckError::Bound(message)
    }
}

/// Why this host cannot run a campaign (`Campaign::check_host`), naming the field to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum HostCheckError {
    /// A fleet's guests need more memory than the host has.
    #[error(
        "field `{field}`: {what}: {n} guests × {each} MiB = {need} MiB do not fit in this host's {have} MiB (MemTotal {total_mib} MiB less {reserve_mib} MiB kept for the host); lower the size"
    )]
    FleetTooBig {
        /// The field to change.
        field: String,
        /// Which fleet.
        what: String,
        /// Its guests.
        n: usize,
        /// MiB per guest.
        each: u64,
        /// MiB in all.
        need: u64,
        /// MiB the host can give.
        have: u64,
        /// The host's MemTotal, MiB.
        total_mib: u64,
        /// MiB kept for the host.
        reserve_mib: u64,
    },
    /// `guest.mem_bench_mib` is too small for the memory benchmark's working sets.
    #[error(
        "field `guest.mem_bench_mib`: {mib} MiB cannot hold the memory benchmark on {backend}: {copies} cop{} of {working_set} plus {guest_mib} MiB for the guest itself (guest.mem_mib) need {need} MiB; raise it, or lower workloads.mem_n",
        if *copies == 1 { "y" } else { "ies" }
    )]
    MemBenchTooSmall {
        /// The campaign's `guest.mem_bench_mib`.
        mib: u32,
        /// The backend whose plan it is.
        backend: BackendKind,
        /// Copies of the benchmark one guest runs at once.
        copies: u32,
        /// The working set, as words.
        working_set: String,
        /// `guest.mem_mib`: what the guest needs idle.
        guest_mib: u32,
        /// MiB the guest needs in all.
        need: u64,
    },
}

impl Campaign {
    /// Every value checked, errors naming the field.
    pub fn check(&self) -> Result<(), CheckError> {
        let bad = |field: &str, why: String| Err(CheckError::Field { field: field.into(), why });
        if self.name.is_empty()
            || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("name", format!("{:?} must be letters, digits, - and _", self.name));
        }
        if self.backends.is_empty() {
            return bad("backends", "needs at least one backend".into());
        }
        for b in &self.backends {
            if let Err(e) = b.parse::<BackendKind>() {
                return bad("backends", e.to_string());
            }
        }
        if self.resources.is_empty() {
            return bad("resources", "needs at least one resource".into());
        }
        self.netem.check()?;
        limits::REPS.field("reps", self.reps)?;
        limits::WARMUP.field("warmup", self.warmup)?;
        limits::MEM_MIB.field("guest.mem_mib", self.guest.mem_mib)?;
        limits::VCPUS.field("guest.vcpus", self.guest.vcpus)?;
        limits::BOOT_TIMEOUT_S.field("guest.boot_timeout_s", self.guest.boot_timeout_s)?;
        limits::BENCH_TIMEOUT_S.field("guest.bench_timeout_s", self.guest.bench_timeout_s)?;
        limits::SETTLE_S.field("startup.settle_s", self.startup.settle_s)?;
        check_sizes("startup.sizes", &self.startup.sizes)?;
        if self.startup.modes.is_empty() {
            return bad("startup.modes", "needs cold, hot or both".into());
        }
        check_sizes("overhead.sizes", &self.overhead.sizes)?;
        if let Some(s) = &self.overhead.memory_sizes {
            check_sizes("overhead.memory_sizes", s)?;
        }
        if let Some(m) = self.guest.mem_bench_mib {
            limits::MEM_MIB.field("guest.mem_bench_mib", m)?;
        }
        // The image itself is looked up in the store before anything boots (hostd run).
        match &self.guest.system {
            Some(s) if s.is_empty() || s.contains(['/', '\0']) => {
                return bad("guest.system", format!("{s:?} is not a recipe name"));
            }
            None if self.guest.init != crate::backend::rootdisk::InitMode::Agent => {
                return bad("guest.init", "\"image\" needs guest.system: an image to boot".into());
            }
            _ => {}
        }
        check_ring("ring.guests", self.ring.guests)?;
        check_workloads("workloads", &self.workloads)?;
        limits::LAB_GUESTS.field("xen.lab_max_guests", self.xen.lab_max_guests)?;
        let m = &self.network.ns_modes;
        if m.is_empty() || (1..m.len()).any(|i| m[..i].contains(&m[i])) {
            return bad(
                "network.ns_modes",
                format!("{m:?}: needs \"private\", \"shared\" or both, each once"),
            );
        }
        for (b, o) in &self.overrides {
            if let Err(e) = b.parse::<BackendKind>() {
                return bad(&format!("overrides.{b}"), e.to_string());
            }
            if let Some(s) = &o.startup_sizes {
                check_sizes(&format!("overrides.{b}.startup_sizes"), s)?;
            }
            if let Some(s) = &o.overhead_sizes {
                check_sizes(&format!("overrides.{b}.overhead_sizes"), s)?;
            }
            if let Some(s) = &o.memory_sizes {
                check_sizes(&format!("overrides.{b}.memory_sizes"), s)?;
            }
            if let Some(r) = o.ring_guests {
                check_ring(&format!("overrides.{b}.ring_guests"), r)?;
            }
            if let Some(m) = o.mem_mib {
                limits::MEM_MIB.field(&format!("overrides.{b}.mem_mib"), m)?;
            }
            if let Some(w) = &o.workloads {
                check_workloads(&format!("overrides.{b}.workloads"), w)?;
            }
        }
        Ok(())
    }

    /// Whether this host can run the campaign: every guest of a memory fleet holds the
    /// working sets it runs, and every fleet fits in the host's memory less
    /// [`fidelity::HOST_RESERVE_MIB`]. Fleets count at their guests' full memory: a VM keeps
    /// the pages its guest once touched. Errors name the field to change.
    pub fn check_host(&self, host: &HostFacts) -> Result<(), HostCheckError> {
        let have = (host.mem_total_kib / 1024).saturating_sub(fidelity::HOST_RESERVE_MIB);
        let memory = self.resources.contains(&Resource::Memory);
        let fit = |field: &str, what: String, n: usize, each: u64| -> Result<(), HostCheckError> {
            let need = each.saturating_mul(n as u64);
            if need > have {
                return Err(HostCheckError::FleetTooBig {
                    field: field.into(),
                    what,
                    n,
                    each,
                    need,
                    have,
                    total_mib: host.mem_total_kib / 1024,
                    reserve_mib: fidelity::HOST_RESERVE_MIB,
                });
            }
            Ok(())
        };
        for p in self.resolved_plans(host.llc) {
            let b = p.kind;
            let ws = fidelity::mem_working_set(p.workloads.mem_n).div_ceil(1 << 20);
            let ws_text = format!(
                "a {ws} MiB working set (workloads.mem_n = {}{})",
                p.workloads.mem_n,
                if self.workloads.mem_n == fidelity::AUTO {
                    format!(", \"auto\": 4 × LLC {}", host.llc.unwrap_or(fidelity::LLC_FALLBACK))
                } else {
                    String::new()
                }
            );
            if let Some(n) = p.startup_sizes.last() {
                fit("startup.sizes", format!("{b}'s startup fleet"), *n, p.mem_mib as u64)?;
            }
            if self.resources.iter().any(|&r| r != Resource::Memory) {
                if let Some(n) = p.overhead_sizes.last() {
                    fit(
                        "overhead.sizes",
                        format!("{b}'s overhead and linearity fleet"),
                        *n,
                        p.mem_mib as u64,
                    )?;
                }
            }
            if p.ring_guests >= 2 {
                fit("ring.guests", format!("{b}'s ring"), p.ring_guests, p.mem_mib as u64)?;
            }
            if !memory {
                continue;
            }
            let copies = if self.isolation.enabled { 2 } else { 1 };
            if let Some(m) = p.mem_bench_mib {
                let need = fidelity::mem_guest_mib(p.mem_mib, p.workloads.mem_n, copies);
                if (m as u64) < need {
                    return Err(HostCheckError::MemBenchTooSmall {
                        mib: m,
                        backend: b,
                        copies,
                        working_set: ws_text,
                        guest_mib: p.mem_mib,
                        need,
                    });
                }
            }
            if let Some(n) = p.memory_sizes.last() {
                fit(
                    "overhead.memory_sizes",
                    format!(
                        "{b}'s memory fleet (guests of {} MiB: {ws_text})",
                        p.mem_for_copies(1)
                    ),
                    *n,
                    p.mem_for_copies(1),
                )?;
            }
            if self.isolation.enabled {
                fit(
                    "isolation.enabled",
                    format!(
                        "{b}'s memory isolation pair (guests of {} MiB: two copies of {ws_text})",
                        p.mem_for_copies(2)
                    ),
                    2,
                    p.mem_for_copies(2),
                )?;
            }
        }
        Ok(())
    }
}

fn check_sizes(field: &str, s: &[usize]) -> Result<(), CheckError> {
    limits::check_sizes(s).map_err(|why| CheckError::Field { field: field.into(), why })
}

/// A ring: 0 (off), or at least two guests of a fleet's range.
fn check_ring(field: &str, n: usize) -> Result<(), CheckError> {
    if n == 0 {
        return Ok(());
    }
    if n == 1 {
        return Err(CheckError::Field {
            field: field.into(),
            why: "1 guest is not a ring (0 turns it off, 2 is the least)".into(),
        });
    }
    Ok(limits::GUESTS.field(field, n).map(|_| ())?)
}

fn check_workloads(field: &str, w: &Workloads) -> Result<(), CheckError> {
    use vb_protocol::bench::BenchSpec;
    let probes = [
        BenchSpec::Cpu { rounds: w.cpu_rounds },
        // "auto" is resolved on the host, within the agent's limit (fidelity::MEM_N_MAX).
        BenchSpec::Memory {
            n: if w.mem_n == fidelity::AUTO { 8 } else { w.mem_n },
            passes: w.mem_passes,
        },
        BenchSpec::Disk {
            path: "/x".into(),
            block_size: w.disk_block_kib.saturating_mul(1024),
            max_bytes: limits::mib_to_bytes(w.disk_mib),
            direct: true,
        },
        BenchSpec::NetStream {
            peer: "10.0.0.1:1".into(),
            duration_ms: w.net_duration_ms,
            msg_size: w.net_msg_size,
        },
    ];
    for p in probes {
        p.validate().map_err(|why| CheckError::Field { field: field.into(), why })?;
    }
    limits::DISK_MIB.field(&format!("{field}.disk_mib"), w.disk_mib)?;
    crate::suite::command::check_all(field, &w.commands)
        .map_err(|(field, why)| CheckError::Field { field, why })?;
    Ok(())
}
