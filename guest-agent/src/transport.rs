//! Control channel transports: an inherited fd, a Unix or TCP socket, or a console tty in
//! raw mode. All end up as a blocking reader and writer over one file descriptor.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::termios::{self, BaudRate, SetArg};

use crate::config::Ctl;

/// How long to wait for a console device or a listening host to appear.
const OPEN_DEADLINE: Duration = Duration::from_secs(20);

pub struct Channel {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
}

pub fn open(ctl: &Ctl) -> Result<Channel, String> {
    match ctl {
        Ctl::Fd(n) => {
            if *n < 3 && *n != 0 {
                return Err(format!("fd:{n}: refusing stdout/stderr as the control channel"));
            }
            // Reject a number that is not an open descriptor before taking ownership of it.
            // SAFETY: F_GETFD only reads descriptor flags.
            if unsafe { libc::fcntl(*n, libc::F_GETFD) } < 0 {
                return Err(format!("fd:{n} is not an open file descriptor"));
            }
            // SAFETY: the fd is open (checked above) and was handed to us to own.
            let fd = unsafe { OwnedFd::from_raw_fd(*n) };
            set_cloexec(&fd);
            if nix::unistd::isatty(std::os::fd::AsRawFd::as_raw_fd(&fd)).unwrap_or(false) {
                make_raw(&fd)?;
            }
            from_file(File::from(fd))
        }
        Ctl::Unix(path) => {
            let s = retry(|| UnixStream::connect(path)).map_err(|e| format!("unix:{path}: {e}"))?;
            let r = s.try_clone().map_err(|e| e.to_string())?;
            Ok(Channel { reader: Box::new(r), writer: Box::new(s) })
        }
        Ctl::Tcp(addr) => {
            let s = retry(|| TcpStream::connect(addr.as_str()))
                .map_err(|e| format!("tcp:{addr}: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            let r = s.try_clone().map_err(|e| e.to_string())?;
            Ok(Channel { reader: Box::new(r), writer: Box::new(s) })
        }
        Ctl::Tty(dev) => {
            // Console drivers may probe after init starts: wait for the node.
            let f = retry(|| {
                OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(dev)
            })
            .map_err(|e| format!("tty:{dev}: {e}"))?;
            let fd = OwnedFd::from(f);
            make_raw(&fd).map_err(|e| format!("tty:{dev}: {e}"))?;
            from_file(File::from(fd))
        }
        Ctl::Vport(name) => {
            // The port's device is named after its virtio device's index, which depends on
            // the other devices' probe order: find it by the port's name.
            let f = retry(|| {
                let dev = find_vport(name)?;
                OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(dev)
            })
            .map_err(|e| format!("vport:{name}: {e}"))?;
            from_file(f)
        }
    }
}

/// `/dev/vportNpM` of the virtio-serial port called `name`.
fn find_vport(name: &str) -> std::io::Result<String> {
    for e in std::fs::read_dir("/sys/class/virtio-ports")?.flatten() {
        let named = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if named.trim_end() == name {
            return Ok(format!("/dev/{}", e.file_name().to_string_lossy()));
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no virtio-serial port of that name"))
}

fn from_file(f: File) -> Result<Channel, String> {
    let r = f.try_clone().map_err(|e| e.to_string())?;
    Ok(Channel { reader: Box::new(r), writer: Box::new(f) })
}

fn set_cloexec(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETFD on a descriptor we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// Raw mode: no echo, no line editing, no CR/LF translation, 8-bit clean. Anything already
/// queued (e.g. echoed before this point) is discarded.
fn make_raw(fd: &OwnedFd) -> Result<(), String> {
    let mut t = termios::tcgetattr(fd.as_fd()).map_err(|e| format!("tcgetattr: {e}"))?;
    termios::cfmakeraw(&mut t);
    let _ = termios::cfsetspeed(&mut t, BaudRate::B115200);
    termios::tcsetattr(fd.as_fd(), SetArg::TCSANOW, &t).map_err(|e| format!("tcsetattr: {e}"))?;
    let _ = termios::tcflush(fd.as_fd(), termios::FlushArg::TCIFLUSH);
    Ok(())
}

fn retry<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= OPEN_DEADLINE => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
