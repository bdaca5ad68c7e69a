//! The child side, between clone(2) and exec: async-signal-safe calls only (see the
//! module above), and the parent's reading of its failure report.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

use super::plan::Step;
use super::syscalls::{run_plan, RealSyscall};
use super::{AGENT_PATH, CHILD_STACK};
use crate::backend::native::AGENT_FD;
use crate::backend::SpawnError;

// ---------------------------------------------------------------------------------------
// The child, between clone and exec.

/// Everything the child reads; borrowed from the parent's (copied) memory.
pub(super) struct Child<'a> {
    pub(super) plan: &'a [Step],
    /// The parent's ends of the pipes: closed first, so the child sees EOF if hostd dies.
    pub(super) parent_ends: [RawFd; 2],
    pub(super) sync_rd: RawFd,
    pub(super) err_wr: RawFd,
    pub(super) stdin: RawFd,
    pub(super) log: RawFd,
    pub(super) ctl: RawFd,
    /// A network namespace to join (a shared-stack guest), or -1.
    pub(super) netns: RawFd,
    pub(super) path: &'a CStr,
    pub(super) argv: &'a [*const libc::c_char],
    pub(super) envp: &'a [*const libc::c_char],
}

/// Failure codes for steps outside the plan (plan steps report their index).
pub(super) const AT_PROCESS: u32 = u32::MAX;
pub(super) const AT_FDS: u32 = u32::MAX - 1;
pub(super) const AT_EXEC: u32 = u32::MAX - 2;
pub(super) const AT_NETNS: u32 = u32::MAX - 3;

pub(super) fn clone_child(child: &Child, flags: CloneFlags) -> nix::Result<Pid> {
    let mut stack = vec![0u8; CHILD_STACK];
    let cb: nix::sched::CloneCb = Box::new(|| -> isize { child_main(child) });
    // SAFETY: without CLONE_VM the child gets a copy of this address space, in which
    // `child`, the plan and `stack` stay valid; it runs `child_main` on its copy of `stack`
    // (ample for it) and only makes async-signal-safe calls until it execs or _exits.
    // SIGCHLD makes it an ordinary child for waitpid.
    unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
}

/// Clones a child in `flags`' namespaces that exits at once; reports the clone's error.
pub(super) fn trial_clone(flags: CloneFlags) -> nix::Result<()> {
    let mut stack = vec![0u8; 64 << 10];
    // SAFETY: _exit is async-signal-safe and never returns.
    let cb: nix::sched::CloneCb = Box::new(|| -> isize { unsafe { libc::_exit(0) } });
    // SAFETY: as in clone_child; the child only calls _exit.
    let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }?;
    nix::sys::wait::waitpid(pid, None).map(drop)
}

/// The child: wait for the go-ahead, set up, exec. Never returns.
pub(super) fn child_main(c: &Child) -> ! {
    for fd in c.parent_ends {
        // SAFETY: closes this process's copy of a descriptor it does not use.
        unsafe { libc::close(fd) };
    }
    let mut go = 0u8;
    loop {
        // SAFETY: reads at most one byte into a local.
        let n = unsafe { libc::read(c.sync_rd, (&mut go as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        // The parent gave up: nothing to report to.
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { libc::_exit(1) };
    }
    if let Err(e) = reset_process() {
        fail(c, AT_PROCESS, e);
    }
    if c.netns >= 0 {
        // SAFETY: setns(2) on a descriptor prepared before the clone; a raw system call,
        // async-signal-safe.
        if unsafe { libc::setns(c.netns, libc::CLONE_NEWNET) } != 0 {
            fail(c, AT_NETNS, Errno::last());
        }
    }
    if let Err((i, e)) = run_plan(&RealSyscall, c.plan) {
        fail(c, i as u32, e);
    }
    if let Err(e) = wire_fds(c) {
        fail(c, AT_FDS, e);
    }
    // SAFETY: path, argv and envp are NUL-terminated C strings and NULL-terminated pointer
    // arrays built before the clone; execve only returns on failure.
    unsafe { libc::execve(c.path.as_ptr(), c.argv.as_ptr(), c.envp.as_ptr()) };
    fail(c, AT_EXEC, Errno::last())
}

/// Own session (a Ctrl-C on hostd's terminal must not reach guests), no blocked signals,
/// SIGPIPE back to default (Rust ignores it; ignored dispositions survive exec).
pub(super) fn reset_process() -> Result<(), Errno> {
    // SAFETY: setsid, sigemptyset on a local set, sigprocmask and signal are
    // async-signal-safe system call wrappers.
    unsafe {
        if libc::setsid() < 0 {
            return Err(Errno::last());
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) < 0 {
            return Err(Errno::last());
        }
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// stdin from /dev/null, stdout and stderr to the console log, the channel as fd 3; every
/// other descriptor close-on-exec so nothing of hostd's leaks into the guest.
pub(super) fn wire_fds(c: &Child) -> Result<(), Errno> {
    // All sources are ≥ FD_FLOOR, so no dup2 here overwrites another source; dup2 clears
    // close-on-exec on the copy.
    for (from, to) in [(c.stdin, 0), (c.log, 1), (c.log, 2), (c.ctl, AGENT_FD)] {
        // SAFETY: dup2 on descriptors open in this process.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(Errno::last());
        }
    }
    // Best effort (Linux ≥ 5.11): hostd opens everything close-on-exec anyway.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (AGENT_FD + 1) as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Ok(())
}

/// Reports `(step, errno)` on the error pipe and exits.
pub(super) fn fail(c: &Child, step: u32, e: Errno) -> ! {
    let mut msg = [0u8; 8];
    let (a, b) = msg.split_at_mut(4);
    a.copy_from_slice(&step.to_le_bytes());
    b.copy_from_slice(&(e as i32).to_le_bytes());
    // SAFETY: write of a local buffer (atomic on a pipe), then _exit; both async-signal-safe.
    unsafe {
        libc::write(c.err_wr, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Turns the child's `(step, errno)` report into an error naming the step.
pub(super) fn decode_failure(report: &[u8], steps: &[Step], workdir: &Path) -> SpawnError {
    let (Some(s), Some(e)) = (report.get(..4), report.get(4..8)) else {
        return SpawnError::GarbledReport(report.len());
    };
    let step = u32::from_le_bytes(s.try_into().unwrap_or_default());
    let errno = i32::from_le_bytes(e.try_into().unwrap_or_default());
    let what = match step {
        AT_PROCESS => "setting up the process (setsid, signals)".to_string(),
        AT_FDS => "wiring stdio and the control descriptor".to_string(),
        AT_EXEC => format!("executing {AGENT_PATH}"),
        AT_NETNS => "joining the fleet's network namespace (shared network mode)".to_string(),
        i => {
            let opened: Vec<(RawFd, &CString)> = steps
                .iter()
                .filter_map(|s| {
                    if let Step::OpenPath { path, fd } = s {
                        Some((*fd, path))
                    } else {
                        None
                    }
                })
                .collect();
            steps
                .get(i as usize)
                .map(|s| s.describe(workdir, &opened))
                .unwrap_or_else(|| format!("step {i}"))
        }
    };
    SpawnError::Step { step: what, source: io::Error::from_raw_os_error(errno) }
}
