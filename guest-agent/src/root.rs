//! Booting a system image: a VM's agent (PID 1 of its initramfs) finds the root block device
//! by its ext4 UUID (`vb.root=`), mounts it and switches into it; then either stays PID 1
//! (`vb.init=agent`) or installs itself as a service of the image's own init and execs that
//! (`vb.init=image`). The service reports when the system is up and the init's boot phases.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use vb_protocol::msg::{BootPhase, RootInfo};

/// Where the agent puts its own copy inside a system image (a directory of its own, so no
/// file of the image is replaced and a merged-/usr `/sbin` link is left alone).
pub const AGENT_IN_IMAGE: &str = "/.virtbench/guest-agent";
const NEWROOT: &str = "/newroot";
/// How long the root device may take to appear (a disk controller probed asynchronously).
const DEVICE_WAIT: Duration = Duration::from_secs(20);
const EXT4_MAGIC_OFF: u64 = 0x438;
const EXT4_UUID_OFF: u64 = 0x468;

/// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` into its 16 bytes.
pub fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let bad =
        || format!("vb.root={s}: expected an ext4 UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    if hex.len() != 32 || s.len() != 36 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The ext4 UUID of the file system on `dev`, if it holds one.
fn ext4_uuid(dev: &Path) -> Option<[u8; 16]> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(dev).ok()?;
    let mut magic = [0u8; 2];
    f.read_exact_at(&mut magic, EXT4_MAGIC_OFF).ok()?;
    if magic != [0x53, 0xef] {
        return None;
    }
    let mut uuid = [0u8; 16];
    f.read_exact_at(&mut uuid, EXT4_UUID_OFF).ok()?;
    Some(uuid)
}

/// The block device holding the file system `uuid`, waiting for it to appear.
pub fn find_device(uuid: &[u8; 16]) -> Result<String, String> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        let mut seen = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/class/block") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let dev = format!("/dev/{name}");
                if ext4_uuid(Path::new(&dev)).as_ref() == Some(uuid) {
                    return Ok(dev);
                }
                seen.push(name);
            }
        }
        if Instant::now() >= deadline {
            seen.sort();
            return Err(format!(
                "no block device holds the root file system (ext4 UUID {}) after {} s; devices: {}",
                format_uuid(uuid),
                DEVICE_WAIT.as_secs(),
                if seen.is_empty() { "none".into() } else { seen.join(", ") }
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex(u);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Mounts the root file system `uuid` and makes it `/` (the classic switch_root: the
/// initramfs stays underneath, holding only the agent). /dev, /proc and /sys move along.
/// Returns the device.
pub fn switch_root(uuid: &str) -> Result<String, String> {
    let uuid = parse_uuid(uuid)?;
    let dev = find_device(&uuid)?;
    std::fs::create_dir_all(NEWROOT).map_err(|e| format!("{NEWROOT}: {e}"))?;
    // Read-write: a VM's root device is its own overlay (or private copy), never the shared image.
    mount(Some(dev.as_str()), NEWROOT, Some("ext4"), MsFlags::empty(), None::<&str>)
        .map_err(|e| format!("mounting {dev} (ext4) on {NEWROOT}: {e}"))?;
    for m in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEWROOT}{m}");
        std::fs::create_dir_all(&target).map_err(|e| format!("{target}: {e}"))?;
        mount(Some(m), target.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| format!("moving {m} into the root: {e}"))?;
    }
    std::env::set_current_dir(NEWROOT).map_err(|e| format!("chdir {NEWROOT}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving the root onto /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(dev)
}

/// `PRETTY_NAME` of /etc/os-release (or /usr/lib/os-release), bounded.
pub fn os_name() -> Option<String> {
    for p in ["/etc/os-release", "/usr/lib/os-release"] {
        let mut s = String::new();
        let f = std::fs::File::open(p).ok()?;
        f.take(64 << 10).read_to_string(&mut s).ok()?;
        if let Some(v) = s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")) {
            let v: String = v.trim().trim_matches('"').chars().take(200).collect();
            return Some(v);
        }
    }
    None
}

/// What `/sbin/init` resolves to inside the current root, if it is an executable file.
pub fn image_init() -> Result<String, String> {
    let p = std::fs::canonicalize("/sbin/init")
        .map_err(|e| format!("the image has no usable /sbin/init: {e}"))?;
    let md = std::fs::metadata(&p).map_err(|e| format!("/sbin/init ({}): {e}", p.display()))?;
    if !md.is_file() || md.permissions().mode() & 0o111 == 0 {
        return Err(format!("/sbin/init ({}) is not an executable file", p.display()));
    }
    Ok(p.display().to_string())
}

/// The image's init kinds the agent can install itself as a service of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    Systemd,
    /// busybox (or sysvinit-compatible) init reading /etc/inittab.
    Inittab,
}

pub fn init_kind(init: &str) -> InitKind {
    if Path::new(init).file_name().is_some_and(|n| n == "systemd") {
        InitKind::Systemd
    } else {
        InitKind::Inittab
    }
}

fn write(path: &str, data: &[u8], mode: u32) -> Result<(), String> {
    if let Some(d) = Path::new(path).parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(path, data).map_err(|e| format!("writing {path}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{path}: {e}"))
}

fn symlink(target: &str, link: &str) -> Result<(), String> {
    if let Some(d) = Path::new(link).parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).map_err(|e| format!("linking {link}: {e}"))
}

/// Installs `agent` (this binary's bytes) in the image as a service of its init, started
/// once the system is up, and keeps the image's gettys off the control channel's tty.
pub fn install_service(agent: &[u8], kind: InitKind, ctl_tty: Option<&str>) -> Result<(), String> {
    write(AGENT_IN_IMAGE, agent, 0o755)?;
    match kind {
        InitKind::Systemd => {
            // After multi-user.target: started when the boot's target is reached, which is
            // what "the system is up" means; Wanted by it so the boot pulls it in.
            let unit = format!(
                "[Unit]\nDescription=virtbench guest agent\nAfter=multi-user.target\n\n\
                 [Service]\nType=simple\nExecStart={AGENT_IN_IMAGE} --service\n\
                 StandardInput=null\nStandardOutput=journal+console\nStandardError=journal+console\n"
            );
            write("/etc/systemd/system/virtbench-agent.service", unit.as_bytes(), 0o644)?;
            symlink(
                "../virtbench-agent.service",
                "/etc/systemd/system/multi-user.target.wants/virtbench-agent.service",
            )?;
            if let Some(tty) = ctl_tty.and_then(|t| t.strip_prefix("/dev/")) {
                for unit in [format!("serial-getty@{tty}.service"), format!("getty@{tty}.service")]
                {
                    symlink("/dev/null", &format!("/etc/systemd/system/{unit}"))?;
                }
            }
        }
        InitKind::Inittab => {
            let mut tab = std::fs::read_to_string("/etc/inittab").unwrap_or_else(|_| {
                // busybox init without an inittab would start shells on tty1–4 (one of them
                // the control channel under UML): a minimal one instead.
                if Path::new("/etc/init.d/rcS").exists() {
                    "::sysinit:/etc/init.d/rcS\n".into()
                } else {
                    String::new()
                }
            });
            if let Some(tty) = ctl_tty.and_then(|t| t.strip_prefix("/dev/")) {
                // A getty on the control tty would read the host's frames.
                tab = tab
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{tty}:")))
                    .map(|l| format!("{l}\n"))
                    .collect();
            }
            // `once` entries start after every sysinit and wait entry has finished.
            tab.push_str(&format!("::once:{AGENT_IN_IMAGE} --service\n"));
            write("/etc/inittab", tab.as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

/// Execs the image's init as PID 1 (only returns on failure).
pub fn exec_init(init: &str) -> String {
    use std::os::unix::process::CommandExt;
    // argv[0] stays /sbin/init: busybox picks its applet by it.
    let e = std::process::Command::new("/sbin/init").exec();
    format!("exec /sbin/init ({init}): {e}")
}

/// systemd's own boot timestamps (`systemctl show`), as phases on CLOCK_MONOTONIC: the
/// init's start and the boot target's activation. Empty when systemctl cannot say.
pub fn systemd_phases() -> Vec<BootPhase> {
    let mut phases = Vec::new();
    let show = |unit: Option<&str>, prop: &str| -> Option<u64> {
        let mut c = std::process::Command::new("systemctl");
        c.args(["show", "--value", "-p", prop]);
        if let Some(u) = unit {
            c.arg(u);
        }
        let out = c.stderr(std::process::Stdio::null()).output().ok()?;
        let us: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        (us > 0).then_some(us * 1000)
    };
    for (name, unit, prop) in [
        ("initrd", None, "InitRDTimestampMonotonic"),
        ("init", None, "UserspaceTimestampMonotonic"),
        ("system_up", Some("multi-user.target"), "ActiveEnterTimestampMonotonic"),
    ] {
        if let Some(at_ns) = show(unit, prop) {
            phases.push(BootPhase { name: name.into(), at_ns });
        }
    }
    phases.sort_by_key(|p| p.at_ns);
    phases
}

/// The hello's root description.
pub fn info(device: &str, init: &str, phases: Vec<BootPhase>) -> RootInfo {
    RootInfo { device: device.into(), os: os_name(), init: init.into(), phases }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let u = parse_uuid("0123abcd-4567-89ab-cdef-0123456789ab").unwrap();
        assert_eq!(format_uuid(&u), "0123abcd-4567-89ab-cdef-0123456789ab");
        assert!(parse_uuid("0123abcd").unwrap_err().contains("vb.root=0123abcd"));
        assert!(parse_uuid("0123abcd-4567-89ab-cdef-0123456789zz").is_err());
    }

    #[test]
    fn init_kinds() {
        assert_eq!(init_kind("/usr/lib/systemd/systemd"), InitKind::Systemd);
        assert_eq!(init_kind("/bin/busybox"), InitKind::Inittab);
    }
}
