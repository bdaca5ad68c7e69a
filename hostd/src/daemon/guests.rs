//! Requests served on guests off the control loop: `exec` and `cp` in and out, each on
//! the targets' own channels, so one slow guest does not hold up the daemon.

use super::*;

/// A guest a request goes to: its name and its channel, apart from the fleet, so the
/// request is served off the control loop (a guest taken out meanwhile fails it).
#[derive(Clone)]
pub(super) struct Target {
    name: String,
    via: Via,
}

/// How a request reaches a guest.
#[derive(Clone)]
enum Via {
    /// Its agent's channel, on this machine.
    Local(Arc<AgentConn>),
    /// Through the worker holding it on another host (a fleet across hosts): its global
    /// index there.
    Host(crate::multihost::coordinator::HostCaller, usize),
}

impl Target {
    /// A guest of a fleet across hosts.
    pub(super) fn on_host(g: crate::multihost::coordinator::GuestRef) -> Self {
        Target { name: g.name, via: Via::Host(g.host, g.index) }
    }

    /// Sends one request and waits `wait` for the reply; an error in words (naming the
    /// host, for a guest on another one).
    async fn request(&self, cmd: Command, wait: Duration) -> Result<ReplyBody, String> {
        match &self.via {
            Via::Local(conn) => conn.request(cmd, wait).await.map_err(request_error),
            Via::Host(host, index) => {
                let call = crate::multihost::proto::GuestCall::from_command(cmd)?;
                host.call(*index, call, wait).await
            }
        }
    }
}

/// The named guest or every ready one, or an error naming the running guests.
pub(super) fn targets(fleet: &Running, guest: Option<&str>) -> Result<Vec<Target>, String> {
    let t: Vec<Target> = fleet
        .guests()
        .filter(|g| guest.is_none_or(|n| g.spec.name == n))
        .map(|g| Target { name: g.spec.name.clone(), via: Via::Local(g.conn.clone()) })
        .collect();
    if t.is_empty() {
        let names: Vec<_> = fleet.guests().map(|g| g.spec.name.as_str()).collect();
        return Err(format!(
            "no running guest named {:?} (running: {})",
            guest.unwrap_or(""),
            names.join(", ")
        ));
    }
    Ok(t)
}

/// A request's failure as `hostd exec`/`cp` print it: a guest that did not answer says so
/// (the daemon takes it out as failed within a second).
fn request_error(e: ChannelError) -> String {
    match e {
        ChannelError::ReplyTimeout { .. } => {
            format!("the guest did not answer: {e}; it is taken out as failed")
        }
        e => e.to_string(),
    }
}

/// Runs `exec` in every target concurrently; each reply is checked against the request
/// (guests are untrusted) and a guest that does not answer within the program's timeout
/// and 30 s more is reported, not waited for.
pub(super) async fn exec_on(targets: &[Target], exec: &ExecRequest) -> ControlAnswer {
    if let Err(error) = exec.check() {
        return ControlAnswer::Error { error };
    }
    let wait = Duration::from_millis(exec.timeout_ms) + Duration::from_secs(30);
    let results = futures::future::join_all(targets.iter().map(|g| async move {
        let result = match g.request(Command::Exec(exec.clone()), wait).await {
            Ok(ReplyBody::Exited(r)) => r.check(exec).map(|()| r).map_err(|e| e.to_string()),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e),
        };
        GuestExec { guest: g.name.clone(), result }
    }))
    .await;
    ControlAnswer::Exec { results }
}

/// How long one file chunk may take a guest (a TCG guest on a busy host is slow).
const CHUNK_WAIT: Duration = Duration::from_secs(60);

/// Reads a host file to copy in: a regular file (a symlink is followed: it is the user's
/// own tree) of at most `MAX_FILE_BYTES`, with its permission bits.
fn read_host_file(src: &Path) -> Result<(Vec<u8>, u32), String> {
    use std::os::unix::fs::PermissionsExt;
    use vb_protocol::msg::MAX_FILE_BYTES;
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", src.display());
    let md = std::fs::metadata(src).map_err(|e| at(&e))?;
    if md.is_dir() {
        return Err(at(&"is a directory (hostd cp copies one file)"));
    }
    if !md.is_file() {
        return Err(at(&"not a regular file"));
    }
    if md.len() > MAX_FILE_BYTES {
        return Err(at(&format!(
            "{} bytes, more than the {MAX_FILE_BYTES} (64 MiB) a copy moves",
            md.len()
        )));
    }
    let data = std::fs::read(src).map_err(|e| at(&e))?;
    if data.len() as u64 > MAX_FILE_BYTES {
        return Err(at(&"grew past the copy limit while it was read"));
    }
    Ok((data, md.permissions().mode() & 0o7777))
}

/// `hostd cp` in: reads the host file, then sends it to every target in chunks of at
/// most `MAX_FILE_CHUNK`, concurrently; each reply is checked.
pub(super) async fn copy_in(targets: &[Target], src: &Path, dst: &str) -> ControlAnswer {
    use vb_protocol::msg::{PutFile, MAX_FILE_CHUNK};
    if let Err(error) = PutFile::new(dst, 0, 0, &[], true).check() {
        return ControlAnswer::Error { error };
    }
    let path = src.to_path_buf();
    let read = tokio::task::spawn_blocking(move || read_host_file(&path)).await;
    let (data, mode) = match read {
        Ok(Ok(x)) => x,
        Ok(Err(error)) => return ControlAnswer::Error { error },
        Err(e) => return ControlAnswer::Error { error: format!("reading the file: {e}") },
    };
    let data = &data;
    let results = futures::future::join_all(targets.iter().map(|g| async move {
        let mut offset = 0usize;
        let result = loop {
            let end = (offset + MAX_FILE_CHUNK).min(data.len());
            let last = end == data.len();
            let put = PutFile::new(dst, mode, offset as u64, &data[offset..end], last);
            match g.request(Command::PutFile(put), CHUNK_WAIT).await {
                Ok(ReplyBody::Put { size }) if size == end as u64 => {}
                Ok(ReplyBody::Put { size }) => {
                    break Err(format!("the guest says {size} bytes written, not {end}"))
                }
                Ok(other) => break Err(format!("unexpected reply {other:?}")),
                Err(e) => break Err(e),
            }
            if last {
                break Ok((data.len() as u64, None));
            }
            offset = end;
        };
        GuestCopy { guest: g.name.clone(), result }
    }))
    .await;
    ControlAnswer::Copied { results }
}

/// Reads one guest file in chunks (each reply checked, the file's size fixed by the first
/// chunk); returns its bytes and permission bits.
async fn fetch_guest_file(g: &Target, src: &str) -> Result<(Vec<u8>, u32), String> {
    use vb_protocol::msg::{GetFile, MAX_FILE_CHUNK};
    let mut data = Vec::new();
    let mut size = None;
    loop {
        let req =
            GetFile { path: src.into(), offset: data.len() as u64, max: MAX_FILE_CHUNK as u32 };
        let d = match g.request(Command::GetFile(req.clone()), CHUNK_WAIT).await {
            Ok(ReplyBody::FileData(d)) => d,
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(e),
        };
        let bytes = d.check(&req).map_err(|e| e.to_string())?;
        if *size.get_or_insert(d.size) != d.size {
            return Err(format!("{src} changed size while it was copied"));
        }
        data.extend_from_slice(&bytes);
        if data.len() as u64 == d.size {
            return Ok((data, d.mode));
        }
    }
}

/// `hostd cp` out: reads the guest file from every target and writes it to `dst` (or
/// `dst/<name>` if `dst` is a directory), or with `several` guests to
/// `dst/<guest>/<name>` (`dst` an existing directory). Host files get the guest's
/// permission bits without set-id and sticky bits, written beside and renamed into place.
pub(super) async fn copy_out(
    targets: &[Target],
    src: &str,
    dst: &Path,
    several: bool,
) -> ControlAnswer {
    use vb_protocol::msg::{GetFile, MAX_FILE_CHUNK};
    let probe = GetFile { path: src.into(), offset: 0, max: MAX_FILE_CHUNK as u32 };
    if let Err(error) = probe.check() {
        return ControlAnswer::Error { error };
    }
    let name = Path::new(src).file_name().map(|n| n.to_owned()).unwrap_or_else(|| "file".into());
    if several && !dst.is_dir() {
        return ControlAnswer::Error {
            error: format!(
                "{}: copying out of every guest needs an existing directory (each guest's \
                 copy goes to DIR/<guest>/{})",
                dst.display(),
                name.to_string_lossy()
            ),
        };
    }
    let results = futures::future::join_all(targets.iter().map(|g| {
        let name = name.clone();
        async move {
            let result = async {
                let (data, mode) = fetch_guest_file(g, src).await?;
                let out = if several {
                    dst.join(&g.name).join(&name)
                } else if dst.is_dir() {
                    dst.join(&name)
                } else {
                    dst.to_path_buf()
                };
                let len = data.len() as u64;
                let at = out.clone();
                tokio::task::spawn_blocking(move || write_host_file(&at, &data, mode & 0o777))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{}: {e}", out.display()))?;
                Ok((len, Some(out)))
            }
            .await;
            GuestCopy { guest: g.name.clone(), result }
        }
    }))
    .await;
    ControlAnswer::Copied { results }
}

/// Writes `data` beside `path` and renames it into place (a failed copy leaves no part).
fn write_host_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = path.with_file_name(format!(".{}.vb-part", name.to_string_lossy()));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
