//! How hostd comes to own a container's init: the child-subreaper window while a runtime
//! starts a container (so the init, orphaned when `runc run --detach` exits, becomes hostd's
//! child), and the init's pid from the runtime's `--pid-file`.

use std::path::Path;

use super::SpawnError;

/// Holds hostd as a child subreaper (prctl PR_SET_CHILD_SUBREAPER) while at least one
/// runtime is starting a container: the container's init, orphaned when the runtime exits,
/// is then adopted by hostd rather than by the host's init. Only for that window — as a
/// subreaper for good, hostd would also adopt (and never reap) every process orphaned
/// below it by other backends, e.g. a UML kernel's helpers.
pub(super) struct Subreaper;

static STARTING: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

fn set_subreaper(on: bool) -> bool {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 0 or 1) takes plain integers and changes only a
    // flag of this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on as libc::c_ulong, 0, 0, 0) == 0 }
}

impl Subreaper {
    /// None if the kernel refused (the container's init then goes to the host's init).
    pub(super) fn hold() -> Option<Subreaper> {
        let mut n = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        if *n == 0 && !set_subreaper(true) {
            return None;
        }
        *n += 1;
        Some(Subreaper)
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        let mut n = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            // Children adopted so far stay hostd's children.
            set_subreaper(false);
        }
    }
}

pub(super) fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The container's init pid, from the file `run --pid-file` wrote before the runtime exited
/// (a second `<runtime> state` exec cost milliseconds inside the startup window).
pub(super) fn pid_from_file(path: &Path) -> Result<u32, SpawnError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| SpawnError::PidFileUnreadable { path: path.into(), source })?;
    text.trim().parse::<u32>().ok().filter(|&p| p > 0).ok_or_else(|| SpawnError::NoPid {
        path: path.into(),
        text: text.trim().chars().take(200).collect(),
    })
}
