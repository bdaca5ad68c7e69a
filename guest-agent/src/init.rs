//! PID-1 duties: the filesystems a minimal guest lacks, reaping orphans, network and host
//! name set-up, and power-off.

use std::ffi::CString;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::statfs::{statfs, FsType, PROC_SUPER_MAGIC, SYSFS_MAGIC, TMPFS_MAGIC};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::config::NetCfg;

/// devtmpfs has no constant in nix; its statfs type is tmpfs's on current kernels, so a
/// mounted /dev is recognised by /dev/null existing.
fn mounted_as(path: &str, magic: FsType) -> bool {
    statfs(path).map(|s| s.filesystem_type() == magic).unwrap_or(false)
}

/// Mounts /proc, /sys, /dev and /tmp unless already there (a container runtime may have
/// mounted them). Failures are returned as notes: a missing /sys must not stop the agent.
pub fn mount_basics() -> Vec<String> {
    let mut notes = Vec::new();
    let mut m = |src: &str, dst: &str, fstype: &str, present: bool| {
        if present {
            return;
        }
        let _ = std::fs::create_dir_all(dst);
        if let Err(e) = mount(Some(src), dst, Some(fstype), MsFlags::MS_NOSUID, None::<&str>) {
            notes.push(format!("mount {fstype} on {dst}: {e}"));
        }
    };
    m("proc", "/proc", "proc", mounted_as("/proc", PROC_SUPER_MAGIC));
    m("sysfs", "/sys", "sysfs", mounted_as("/sys", SYSFS_MAGIC));
    m("devtmpfs", "/dev", "devtmpfs", Path::new("/dev/null").exists());
    m("tmpfs", "/tmp", "tmpfs", mounted_as("/tmp", TMPFS_MAGIC));
    notes
}

/// Blocks SIGCHLD in the calling thread; call before any other thread exists so every
/// thread inherits the mask and only the reaper receives it.
pub fn block_sigchld() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.thread_block()?;
    Ok(set)
}

/// Children whose exit someone waits for (exec's programs): pid → its status once reaped.
/// The reaper reaps every child, so a waiter registers its child here (holding the lock
/// across the spawn, so the reaper cannot record the exit before the pid is known).
pub static WATCHED: std::sync::Mutex<Option<std::collections::HashMap<i32, Option<WaitStatus>>>> =
    std::sync::Mutex::new(None);
static REAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the reaper runs (then children must be waited for through [`WATCHED`]).
pub fn reaper_runs() -> bool {
    REAPER.load(std::sync::atomic::Ordering::Relaxed)
}

/// Reaps every child that exits (orphans are re-parented to PID 1). Sleeps in sigwait, so
/// an idle guest's init causes no wake-ups.
pub fn spawn_reaper(set: SigSet) {
    REAPER.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = std::thread::Builder::new().name("reaper".into()).spawn(move || loop {
        if set.wait().is_err() {
            continue;
        }
        while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if st == WaitStatus::StillAlive {
                break;
            }
            if let Some(pid) = st.pid() {
                if let Ok(mut w) = WATCHED.lock() {
                    if let Some(slot) = w.as_mut().and_then(|m| m.get_mut(&pid.as_raw())) {
                        *slot = Some(st);
                    }
                }
            }
        }
    });
}

pub fn set_hostname(name: &str) -> Result<(), String> {
    // A container runtime may have set it already, and withheld the right to set it.
    if nix::unistd::gethostname().is_ok_and(|h| h == name) {
        return Ok(());
    }
    nix::unistd::sethostname(name).map_err(|e| format!("sethostname {name}: {e}"))
}

/// Gives `cfg.iface` its IPv4 address (and MTU `mtu`, if given) and brings it and `lo` up,
/// with the classic SIOCSIF* ioctls (no netlink library in a 1 MiB agent).
pub fn configure_net(cfg: &NetCfg, mtu: Option<u32>) -> Result<(), String> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("network: socket: {e}"))?;
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let err = |what: &str| {
        format!("network: {what} on {}: {}", cfg.iface, std::io::Error::last_os_error())
    };
    if_up(fd, "lo").map_err(|_| err("bringing lo up"))?;
    let mask = if cfg.prefix == 0 { 0 } else { u32::MAX << (32 - cfg.prefix as u32) };
    set_addr(fd, &cfg.iface, libc::SIOCSIFADDR, u32::from(cfg.addr))
        .map_err(|_| err("setting the address"))?;
    set_addr(fd, &cfg.iface, libc::SIOCSIFNETMASK, mask).map_err(|_| err("setting the netmask"))?;
    if let Some(m) = mtu {
        set_mtu(fd, &cfg.iface, m).map_err(|_| err(&format!("setting the MTU to {m}")))?;
    }
    if_up(fd, &cfg.iface).map_err(|_| err("bringing the interface up"))?;
    Ok(())
}

fn ifreq(name: &str) -> Result<libc::ifreq, ()> {
    let c = CString::new(name).map_err(|_| ())?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(());
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(r)
}

fn set_addr(fd: i32, name: &str, req: libc::c_ulong, host_order: u32) -> Result<(), ()> {
    let mut r = ifreq(name)?;
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: host_order.to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in fits in the ifr_ifru union (sockaddr-sized); we write it whole.
    unsafe { std::ptr::write(std::ptr::addr_of_mut!(r.ifr_ifru) as *mut libc::sockaddr_in, sin) };
    // SAFETY: fd is a valid socket, r a fully initialised ifreq that outlives the call.
    if unsafe { libc::ioctl(fd, req as _, &mut r) } < 0 {
        return Err(());
    }
    Ok(())
}

fn set_mtu(fd: i32, name: &str, mtu: u32) -> Result<(), ()> {
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_mtu = i32::try_from(mtu).map_err(|_| ())?;
    // SAFETY: fd is a valid socket, r a fully initialised ifreq that outlives the call.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFMTU as _, &mut r) } < 0 {
        return Err(());
    }
    Ok(())
}

fn if_up(fd: i32, name: &str) -> Result<(), ()> {
    let mut r = ifreq(name)?;
    // SAFETY: as above; SIOCGIFFLAGS fills ifru_flags.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut r) } < 0 {
        return Err(());
    }
    // SAFETY: ifru_flags was just written by the kernel.
    unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut r) } < 0 {
        return Err(());
    }
    Ok(())
}

static REBOOT_TO_POWEROFF: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Makes [`poweroff`] reboot instead (see `Config::reboot_to_poweroff`).
pub fn reboot_instead(yes: bool) {
    REBOOT_TO_POWEROFF.store(yes, std::sync::atomic::Ordering::Relaxed);
}

/// Flushes filesystems and powers the machine off; in a container (where reboot(2) is
/// refused or only ends the pid namespace) the caller exits instead.
pub fn poweroff() -> String {
    nix::unistd::sync();
    let mode = if REBOOT_TO_POWEROFF.load(std::sync::atomic::Ordering::Relaxed) {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    } else {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    };
    match nix::sys::reboot::reboot(mode) {
        Ok(never) => match never {},
        Err(e) => format!("reboot(POWER_OFF): {e}"),
    }
}
