//! The system calls a plan is made of, behind one trait: the real ones in the child,
//! a recorder in the tests (the plan is checked call by call without running it).

use std::ffi::{CStr, OsStr};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::mount::MntFlags;
use nix::sys::stat::{Mode, SFlag};

use super::plan::{Mount, Step};

/// The system calls the plan is made of: real ones in the child, recorded ones in tests.
pub(super) trait Syscall {
    fn mount(&self, m: &Mount) -> nix::Result<()>;
    fn umount2(&self, target: &CStr, flags: MntFlags) -> nix::Result<()>;
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> nix::Result<()>;
    fn chdir(&self, path: &CStr) -> nix::Result<()>;
    fn open_path(&self, path: &CStr, fd: RawFd) -> nix::Result<()>;
    fn create_file(&self, path: &CStr) -> nix::Result<()>;
    fn sethostname(&self, name: &CStr) -> nix::Result<()>;
    fn become_root(&self) -> nix::Result<()>;
}

/// The real calls. Every one is a bare system call on borrowed C strings: nix's path
/// arguments are passed through without copying when they are `CStr`s.
pub(super) struct RealSyscall;

impl Syscall for RealSyscall {
    fn mount(&self, m: &Mount) -> nix::Result<()> {
        let (src, fstype, data) = (m.src.as_deref(), m.fstype.as_deref(), m.data.as_deref());
        nix::mount::mount(src, m.target.as_c_str(), fstype, m.flags, data)
    }
    fn umount2(&self, target: &CStr, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }
    fn chdir(&self, path: &CStr) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }
    fn open_path(&self, path: &CStr, fd: RawFd) -> nix::Result<()> {
        // SAFETY: open on a C string; dup3 and close on the descriptor it returned.
        unsafe {
            let tmp = Errno::result(libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC))?;
            if tmp != fd {
                let r = Errno::result(libc::dup3(tmp, fd, libc::O_CLOEXEC));
                libc::close(tmp);
                r?;
            }
        }
        Ok(())
    }
    fn create_file(&self, path: &CStr) -> nix::Result<()> {
        nix::sys::stat::mknod(path, SFlag::S_IFREG, Mode::from_bits_truncate(0o644), 0)
    }
    fn sethostname(&self, name: &CStr) -> nix::Result<()> {
        nix::unistd::sethostname(OsStr::from_bytes(name.to_bytes()))
    }
    fn become_root(&self) -> nix::Result<()> {
        // Raw system calls: glibc's wrappers would try to signal threads that only exist
        // in the parent.
        // SAFETY: setgroups with an empty list reads no memory; setresgid/setresuid take ids.
        unsafe {
            Errno::result(libc::syscall(
                libc::SYS_setgroups,
                0usize,
                std::ptr::null::<libc::gid_t>(),
            ))?;
            Errno::result(libc::syscall(libc::SYS_setresgid, 0u32, 0u32, 0u32))?;
            Errno::result(libc::syscall(libc::SYS_setresuid, 0u32, 0u32, 0u32))?;
        }
        Ok(())
    }
}

/// Walks the plan; the failing step's index and errno otherwise. Allocation-free.
pub(super) fn run_plan(sys: &dyn Syscall, plan: &[Step]) -> Result<(), (usize, Errno)> {
    for (i, step) in plan.iter().enumerate() {
        let r = match step {
            Step::Mount(m) => sys.mount(m),
            Step::Umount { target, flags } => sys.umount2(target, *flags),
            Step::PivotRoot { new_root, put_old } => sys.pivot_root(new_root, put_old),
            Step::Chdir(p) => sys.chdir(p),
            Step::OpenPath { path, fd } => sys.open_path(path, *fd),
            Step::CreateFile(p) => sys.create_file(p),
            Step::SetHostname(h) => sys.sethostname(h),
            Step::BecomeRoot => sys.become_root(),
        };
        r.map_err(|e| (i, e))?;
    }
    Ok(())
}
