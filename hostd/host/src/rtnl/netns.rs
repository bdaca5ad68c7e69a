//! Named network namespaces made and removed as `ip netns add` and `ip netns del` do:
//! a namespace held by a bind mount on /run/netns/NAME, the directory a shared mount point.

use std::io;
use std::path::{Path, PathBuf};

use super::{err, RtnlCause, RtnlError, NETNS_DIR};

/// Creates the named network namespace `name` as `ip netns add` does: a new namespace held
/// by a bind mount of it on /run/netns/NAME (the directory made a shared mount point first,
/// so the name is seen in mount namespaces made later). IPv6 is off in it from the start
/// (`ipv4_only`; done by the thread that made it, which is already inside, so
/// a veth into it needs no thread of its own for that). Nothing is left if a step fails.
pub fn add_netns(name: &str) -> Result<(), RtnlError> {
    let what = format!("netns add {name}");
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(err(what)(RtnlCause::BadNamespaceName { name: name.into() }));
    }
    let dir = PathBuf::from(NETNS_DIR);
    let file = dir.join(name);
    let r = (|| -> Result<(), RtnlCause> {
        share_netns_dir(&dir)?;
        std::fs::OpenOptions::new().write(true).create_new(true).open(&file)?;
        std::thread::scope(|s| {
            s.spawn(|| {
                let os = |e: nix::Error| RtnlCause::Os(e.into());
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(os)?;
                super::ipv4_only()?;
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    &file,
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(os)
            })
            .join()
            .map_err(|_| RtnlCause::ThreadPanicked)?
        })
    })();
    if let Err(e) = r {
        // The file only if this call made it (EEXIST: someone else's namespace).
        if e.errno() != Some(libc::EEXIST) {
            let _ = nix::mount::umount2(&file, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&file);
        }
        return Err(err(what)(e));
    }
    Ok(())
}

/// Deletes the named network namespace `name` as `ip netns del` does: its bind mount
/// detached and its file removed (the namespace itself goes when nothing else holds it).
/// Ok if it does not exist.
pub fn del_netns(name: &str) -> Result<(), RtnlError> {
    let what = format!("netns del {name}");
    let file = Path::new(NETNS_DIR).join(name);
    if !file.exists() {
        return Ok(());
    }
    match nix::mount::umount2(&file, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(e) => return Err(err::<io::Error>(what)(e.into())),
    }
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err::<io::Error>(what)(e)),
        _ => Ok(()),
    }
}

/// Makes /run/netns a shared mount point (bind-mounted on itself if it is not a mount yet),
/// as iproute2 does before its first namespace. Once per process: the check reads the whole
/// mount table, which every namespace made adds a line to, so a fleet paid for it over
/// and over in time growing with its size; once shared, the directory stays so (nothing
/// unmounts it).
fn share_netns_dir(dir: &Path) -> io::Result<()> {
    static SHARED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if *done && dir.is_dir() {
        return Ok(());
    }
    make_shared(dir)?;
    *done = true;
    Ok(())
}

fn make_shared(dir: &Path) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(dir)?;
    let shared = |d: &Path| {
        mount(None::<&str>, d, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
    };
    if shared(dir).is_ok() && is_mount_point(dir)? {
        return Ok(());
    }
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)?;
    shared(dir).map_err(io::Error::from)
}

/// Whether `dir` is a mount point of this mount namespace (listed in /proc/self/mountinfo).
fn is_mount_point(dir: &Path) -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = dir.to_string_lossy();
    Ok(info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_ref())))
}
