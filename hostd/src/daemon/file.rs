//! The fleet file (`hostd up FILE`): groups, limits, commands, network, checked before anything starts.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vb_protocol::msg::ExecRequest;

use crate::backend::BackendKind;
use crate::cgroup::Limits;
use crate::fleet::FleetConfig;
use crate::limits;

/// A fleet file (`hostd up FILE`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// Name used by `hostd status NAME` / `hostd down NAME` ([a-z0-9-], ≤ 32). Required.
    pub name: String,
    /// Backend name (native, ns, oci, uml, qemu-microvm, qemu-full, firecracker). Required
    /// unless the file has `[[group]]`s, then not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Number of guests, in [`limits::GUESTS`]. Required unless the file has `[[group]]`s,
    /// then not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guests: Option<usize>,
    /// A mixed fleet: groups of guests, each with its own backend, count, memory and system,
    /// all on the one fleet network and numbered in file order (`g0`… across groups).
    #[serde(default, rename = "group", skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupFile>,
    /// Programs run in every guest once the fleet is up (each an argv, in order); one that
    /// does not exit 0 in some guest makes `hostd up` report that guest (exit status 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<Vec<String>>,
    /// Seconds each of `commands` may run in a guest. Default 300.
    #[serde(default = "default_boot_timeout")]
    pub command_timeout_s: u64,
    /// Guest memory in MiB (a group's default). Default 128.
    #[serde(default = "default_mem")]
    pub mem_mib: u32,
    /// vCPUs per guest. Default 1.
    #[serde(default = "default_one")]
    pub vcpus: u32,
    /// Attach guests to the fleet network (namespace `vb-<run>`). Default true.
    #[serde(default = "default_true")]
    pub network: bool,
    /// Most guests launching at once; 0 = all. Default 0.
    #[serde(default)]
    pub parallelism: usize,
    /// Seconds a guest may take to become ready. Default 300.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_s: u64,
    /// Per-guest cgroup limits. Default none.
    #[serde(default)]
    pub limits: LimitsFile,
    /// A system image (root file system recipe in the image store) the guests boot.
    #[serde(default)]
    pub system: Option<String>,
    /// With `system`: PID 1 is the agent (default) or the image's own init.
    #[serde(default)]
    pub init: Option<crate::backend::rootdisk::InitMode>,
    /// The emulated network: link properties, sites and the matrix between them, applied
    /// once every guest is up (`hostd net NAME set` changes it later). Default unshaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<crate::netem::TopologyFile>,
    /// The groups as checked by [`FleetFile::load`] (one, named after the backend, for a
    /// file without `[[group]]`).
    #[serde(skip)]
    pub resolved: Vec<Group>,
}

/// One `[[group]]` of a mixed fleet file. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// Unique in the file; a-z, 0-9, -; up to 32 characters. Required.
    pub name: String,
    /// Required.
    pub backend: String,
    /// Required, at least 1; all groups together at most [`limits::GUESTS`]' maximum.
    pub guests: usize,
    /// Default: the file's `mem_mib`.
    #[serde(default)]
    pub mem_mib: Option<u32>,
    /// Default: the file's `vcpus`.
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Default: the file's `system` (a native group boots no image and takes none).
    #[serde(default)]
    pub system: Option<String>,
    /// Default: the file's `init`.
    #[serde(default)]
    pub init: Option<crate::backend::rootdisk::InitMode>,
}

/// A checked group: its guests are `g<first>`..`g<first + guests - 1>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub kind: BackendKind,
    pub first: usize,
    pub guests: usize,
    pub mem_mib: u32,
    pub vcpus: u32,
    pub system: Option<(String, crate::backend::rootdisk::InitMode)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Memory limit in MiB. Default unlimited.
    pub memory_mib: Option<u64>,
    /// CPU bandwidth in CPUs (0.5 = half a CPU). Default unlimited.
    pub cpus: Option<f64>,
    /// Maximum processes. Default unlimited.
    pub pids: Option<u64>,
}

fn default_mem() -> u32 {
    128
}
fn default_one() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_boot_timeout() -> u64 {
    300
}

/// Bytes of each stream a fleet file's command keeps per guest (printed by `hostd up`).
pub const COMMAND_OUTPUT_MAX: u32 = 16 * 1024;

fn good_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl FleetFile {
    /// Parses and checks a fleet file; errors name the file, the group and the field.
    /// Everything is checked here, before any guest starts.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: FleetFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let bad =
            |field: &str, why: String| Err(format!("{}: field `{field}`: {why}", path.display()));
        if !good_name(&f.name) {
            return bad("name", format!("{:?} must be 1-32 characters of a-z, 0-9 and -", f.name));
        }
        let checks = [
            limits::MEM_MIB.field("mem_mib", f.mem_mib).map(|_| ()),
            limits::VCPUS.field("vcpus", f.vcpus).map(|_| ()),
            limits::PARALLELISM.field("parallelism", f.parallelism).map(|_| ()),
            limits::BOOT_TIMEOUT_S.field("boot_timeout_s", f.boot_timeout_s).map(|_| ()),
            limits::BOOT_TIMEOUT_S.field("command_timeout_s", f.command_timeout_s).map(|_| ()),
            f.limits.memory_mib.map_or(Ok(()), |m| {
                limits::LIMIT_MEMORY_MIB.field("limits.memory_mib", m).map(|_| ())
            }),
            f.limits
                .pids
                .map_or(Ok(()), |p| limits::LIMIT_PIDS.field("limits.pids", p).map(|_| ())),
            f.limits.cpus.map_or(Ok(()), |c| limits::check_cpus("limits.cpus", c).map(|_| ())),
        ];
        if let Some(e) = checks.into_iter().find_map(Result::err) {
            return Err(format!("{}: {e}", path.display()));
        }
        for (i, argv) in f.commands.iter().enumerate() {
            if let Err(e) = f.command_request(argv).check() {
                return bad(&format!("commands[{i}]"), e);
            }
        }
        let mut f = f;
        f.resolved = match (&f.backend, f.guests, f.groups.is_empty()) {
            (Some(backend), Some(guests), true) => {
                let kind: BackendKind = match backend.parse() {
                    Ok(k) => k,
                    Err(e) => return bad("backend", e.to_string()),
                };
                if let Err(e) = limits::GUESTS.field("guests", guests) {
                    return Err(format!("{}: {e}", path.display()));
                }
                if f.init.is_some() && f.system.is_none() {
                    return bad(
                        "init",
                        "needs `system` (the agent's own image has no other init)".into(),
                    );
                }
                if kind == BackendKind::Native && f.system.is_some() {
                    return bad(
                        "system",
                        "native guests are host processes: they boot no image".into(),
                    );
                }
                vec![Group {
                    name: kind.name().to_string(),
                    kind,
                    first: 0,
                    guests,
                    mem_mib: f.mem_mib,
                    vcpus: f.vcpus,
                    system: f.system(),
                }]
            }
            (None, None, false) => {
                f.check_groups().map_err(|e| format!("{}: {e}", path.display()))?
            }
            (_, _, false) => {
                return Err(format!(
                    "{}: a fleet file with [[group]] gives `backend` and `guests` in each group, \
                     not at the top",
                    path.display()
                ))
            }
            (None, _, true) => return bad("backend", "missing (or give [[group]]s)".into()),
            (_, None, true) => return bad("guests", "missing (or give [[group]]s)".into()),
        };
        let total = f.total_guests();
        if let Some(net) = &mut f.net {
            if !f.network {
                return bad("net", "needs network = true".into());
            }
            // Checked now, before any guest starts; a CSV is found next to the fleet file
            // (made absolute for the daemon, which resolves it again once guests are up).
            let base = path.parent().unwrap_or(Path::new("."));
            if let Some(csv) = &mut net.matrix_csv {
                *csv = base.join(&*csv);
            }
            if let Err(e) = net.resolve(total, base) {
                return bad("net", e.to_string());
            }
        }
        Ok(f)
    }

    /// Checks the `[[group]]`s (names unique, backends known, counts and memory in range,
    /// all of them together within the fleet limit) and numbers their guests.
    fn check_groups(&self) -> Result<Vec<Group>, String> {
        let mut out: Vec<Group> = Vec::new();
        let mut first = 0usize;
        for g in &self.groups {
            let at = |e: String| format!("group {:?}: {e}", g.name);
            if !good_name(&g.name) {
                return Err(at("field `name`: must be 1-32 characters of a-z, 0-9 and -".into()));
            }
            if out.iter().any(|o| o.name == g.name) {
                return Err(
                    at("a second group with this name (group names must be unique)".into()),
                );
            }
            let kind: BackendKind = g
                .backend
                .parse()
                .map_err(|e: crate::backend::UnknownBackend| at(format!("field `backend`: {e}")))?;
            limits::GUESTS.field("guests", g.guests).map_err(at)?;
            let mem_mib = g.mem_mib.unwrap_or(self.mem_mib);
            limits::MEM_MIB.field("mem_mib", mem_mib).map_err(at)?;
            let vcpus = g.vcpus.unwrap_or(self.vcpus);
            limits::VCPUS.field("vcpus", vcpus).map_err(at)?;
            let system = g.system.clone().or_else(|| self.system.clone());
            let init = g.init.or(self.init);
            if init.is_some() && system.is_none() {
                return Err(at(
                    "field `init`: needs `system` (the agent's own image has no other init)".into(),
                ));
            }
            // A native group ignores the file-wide system but refuses its own.
            let system = match kind {
                BackendKind::Native if g.system.is_some() => {
                    return Err(at(
                        "field `system`: native guests are host processes: they boot no image"
                            .into(),
                    ))
                }
                BackendKind::Native => None,
                _ => system.map(|s| (s, init.unwrap_or_default())),
            };
            out.push(Group {
                name: g.name.clone(),
                kind,
                first,
                guests: g.guests,
                mem_mib,
                vcpus,
                system,
            });
            first += g.guests;
        }
        if first > limits::GUESTS.max as usize {
            return Err(format!(
                "the groups hold {first} guests together, more than a fleet's {} (groups: {})",
                limits::GUESTS.max,
                out.iter()
                    .map(|g| format!("{} {}", g.name, g.guests))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(out)
    }

    /// Guests in all groups.
    pub fn total_guests(&self) -> usize {
        self.resolved.iter().map(|g| g.guests).sum()
    }

    /// The `exec` request of one of `commands`.
    pub fn command_request(&self, argv: &[String]) -> ExecRequest {
        ExecRequest {
            argv: argv.to_vec(),
            env: Vec::new(),
            cwd: None,
            timeout_ms: self.command_timeout_s.saturating_mul(1000),
            output_max: COMMAND_OUTPUT_MAX,
        }
    }

    /// The system image and init the guests boot, if the file names one.
    pub fn system(&self) -> Option<(String, crate::backend::rootdisk::InitMode)> {
        self.system.clone().map(|s| (s, self.init.unwrap_or_default()))
    }

    /// How `group`'s guests start.
    pub fn fleet_config(&self, group: &Group) -> FleetConfig {
        FleetConfig {
            n: group.guests,
            parallelism: self.parallelism,
            vcpus: group.vcpus,
            mem_mib: group.mem_mib,
            network: self.network,
            net_mode: Default::default(),
            data_disk: None,
            data_copies: None,
            boot_timeout: Duration::from_secs(self.boot_timeout_s),
            limits: Limits {
                // Checked by `load`; a value that would not fit in bytes is no limit at all
                // rather than a wrapped one.
                memory_bytes: self.limits.memory_mib.and_then(limits::mib_to_bytes),
                cpus: self.limits.cpus,
                pids: self.limits.pids,
                cpuset: None,
            },
            image_copies: Vec::new(),
            stop: None,
        }
    }
}
