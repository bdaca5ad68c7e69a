//! Messages. Payloads are JSON (one object per frame) so a console capture stays readable;
//! the frame layer bounds their size, so parsing untrusted input is bounded too.

use serde::{Deserialize, Serialize};

use crate::bench::{BenchReport, BenchRequest};

/// Bumped on any incompatible change to the messages below.
pub const PROTOCOL_VERSION: u32 = 2;

/// Host to guest: one command with the id its reply must carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Chosen by the host and never reused, so a late reply is never credited to another
    /// request.
    pub id: u64,
    /// What to do.
    pub cmd: Command,
}

/// What the host asks of the agent, tagged `cmd` on the wire (`ping`, `bench`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Liveness check; the reply carries the guest's monotonic clock.
    Ping,
    /// Run one microbenchmark, in `instances` concurrent copies.
    Bench(BenchRequest),
    /// Start a netperf-style server (stream and request/response) on `port`
    /// of every address; runs in the background until `net_stop` or exit.
    NetServe {
        /// TCP port to listen on (0: any free port; the reply names the one taken).
        port: u16,
    },
    /// Stop the server started on `port`.
    NetStop {
        /// The port a `listening` reply named.
        port: u16,
    },
    /// Reply, then power the guest off (PID 1) or exit (plain process).
    Poweroff,
    /// Deliberate failures, for the fault tests. `panic`: PID 1 exits, which
    /// panics the guest kernel (a plain process just exits). `hang`: the agent stops
    /// reading and answering.
    Fault {
        /// Which failure.
        kind: FaultKind,
    },
    /// Run a user's program in the guest; the reply is `exited`.
    Exec(ExecRequest),
    /// Write one chunk of a file into the guest; the reply is `put`.
    PutFile(PutFile),
    /// Read one chunk of a file in the guest; the reply is `file_data`.
    GetFile(GetFile),
}

/// Largest file `put_file`/`get_file` move, all chunks together (64 MiB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Most file bytes in one message (256 KiB): base64 in JSON, a chunk's message stays far
/// under the frame limit.
pub const MAX_FILE_CHUNK: usize = 256 << 10;
/// Longest guest path, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

fn check_path(what: &str, path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.len() > MAX_PATH_BYTES || path.contains('\0') {
        return Err(format!(
            "{what}: the guest path {:?} must be absolute, without NUL, at most {MAX_PATH_BYTES} bytes",
            path.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

fn decode_chunk(what: &str, data: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    // Checked before decoding, so a hostile length costs nothing.
    if data.len() > MAX_FILE_CHUNK.div_ceil(3) * 4 {
        return Err(format!("{what}: a chunk holds more than {MAX_FILE_CHUNK} bytes"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("{what}: data is not base64: {e}"))?;
    if bytes.len() > MAX_FILE_CHUNK {
        return Err(format!("{what}: a chunk holds more than {MAX_FILE_CHUNK} bytes"));
    }
    Ok(bytes)
}

fn encode_chunk(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One chunk of a file for the guest. Chunks come in order (`offset` is the bytes already
/// sent); the agent writes them to a temporary file beside `path` (created, truncated, at
/// offset 0) and, on the `last` chunk, sets `mode` and renames it over `path`: a copy
/// that stops half-way never leaves a half-written `path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutFile {
    /// The target: an absolute guest path of at most [`MAX_PATH_BYTES`], without NUL, not
    /// ending in `/`.
    pub path: String,
    /// Permission bits (at most 0o7777).
    pub mode: u32,
    /// Where this chunk goes: the bytes of the file already sent.
    pub offset: u64,
    /// The chunk, base64 (at most [`MAX_FILE_CHUNK`] bytes decoded).
    pub data: String,
    /// This chunk ends the file: set `mode` and rename it over `path`.
    pub last: bool,
}

impl PutFile {
    /// The chunk `bytes` of `path` at `offset`, encoded for the wire.
    pub fn new(path: &str, mode: u32, offset: u64, bytes: &[u8], last: bool) -> Self {
        Self { path: path.into(), mode, offset, data: encode_chunk(bytes), last }
    }

    /// Checks the bounds (both sides do) and returns the chunk's bytes.
    pub fn check(&self) -> Result<Vec<u8>, String> {
        check_path("put_file", &self.path)?;
        if self.path.ends_with('/') {
            return Err(format!("put_file: {:?} names a directory, not a file", self.path));
        }
        if self.mode > 0o7777 {
            return Err(format!("put_file: mode {:o} has more than permission bits", self.mode));
        }
        let bytes = decode_chunk("put_file", &self.data)?;
        if self.offset.saturating_add(bytes.len() as u64) > MAX_FILE_BYTES {
            return Err(format!("put_file: files are copied up to {MAX_FILE_BYTES} bytes"));
        }
        Ok(bytes)
    }
}

/// Read up to `max` bytes of the file at `path` from `offset`. The agent refuses files
/// over [`MAX_FILE_BYTES`] and anything that is not a regular file, a symlink as the last
/// component included (named as one, so the user names its target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetFile {
    /// An absolute guest path of at most [`MAX_PATH_BYTES`], without NUL.
    pub path: String,
    /// Where to start reading, in bytes (at most [`MAX_FILE_BYTES`]).
    pub offset: u64,
    /// At most [`MAX_FILE_CHUNK`].
    pub max: u32,
}

impl GetFile {
    /// Checks the bounds (both sides do): the path, `max` of 1 to [`MAX_FILE_CHUNK`], the
    /// offset.
    pub fn check(&self) -> Result<(), String> {
        check_path("get_file", &self.path)?;
        if self.max == 0 || self.max as usize > MAX_FILE_CHUNK {
            return Err(format!("get_file: max must be 1 to {MAX_FILE_CHUNK} bytes"));
        }
        if self.offset > MAX_FILE_BYTES {
            return Err(format!("get_file: offset beyond {MAX_FILE_BYTES} bytes"));
        }
        Ok(())
    }
}

/// A chunk of a guest file: its bytes from the request's offset, and the file's size and
/// permission bits when read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileData {
    /// The file's size in bytes (at most [`MAX_FILE_BYTES`]).
    pub size: u64,
    /// Its permission bits (at most 0o7777).
    pub mode: u32,
    /// base64.
    pub data: String,
}

impl FileData {
    /// A reply for a file of `size` bytes and `mode` carrying the chunk `bytes`, encoded
    /// for the wire.
    pub fn new(size: u64, mode: u32, bytes: &[u8]) -> Self {
        Self { size, mode, data: encode_chunk(bytes) }
    }

    /// Rejects a reply the request could not have produced; returns the chunk's bytes.
    /// A chunk short of `max` must end the file, so a copy always progresses or ends.
    pub fn check(&self, req: &GetFile) -> Result<Vec<u8>, MessageError> {
        let bad = |why: String| MessageError::Malformed(format!("file_data reply: {why}"));
        let bytes = decode_chunk("file_data", &self.data).map_err(bad)?;
        if bytes.len() > req.max as usize {
            return Err(bad(format!("{} bytes, more than the {} asked for", bytes.len(), req.max)));
        }
        if self.size > MAX_FILE_BYTES || self.mode > 0o7777 {
            return Err(bad("size or mode out of bounds".into()));
        }
        let end = req.offset.saturating_add(bytes.len() as u64);
        if end > self.size || (bytes.len() < req.max as usize && end != self.size) {
            return Err(bad(format!(
                "{} bytes at {} do not fit a {}-byte file",
                bytes.len(),
                req.offset,
                self.size
            )));
        }
        Ok(bytes)
    }
}

/// Most arguments plus environment entries of an exec.
pub const MAX_EXEC_ARGS: usize = 256;
/// Most bytes of an exec's arguments and environment entries together, each counted with
/// its terminating NUL.
pub const MAX_EXEC_ARG_BYTES: usize = 64 << 10;
/// Longest time an exec may run, in ms (24 h).
pub const MAX_EXEC_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Most output kept of each stream, in bytes, so that a reply, JSON-escaped at worst six
/// bytes a byte, stays under the frame limit.
pub const MAX_EXEC_OUTPUT: u32 = 64 << 10;

/// A program to run: `argv[0]` is looked up on the guest's PATH (`/usr/sbin:/usr/bin:/sbin:/bin`
/// unless `env` sets one); stdin is empty; killed after `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments; `argv[0]` is not empty.
    pub argv: Vec<String>,
    /// `NAME=VALUE` entries: the program's whole environment (none inherited from the agent).
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (absent: the agent's own).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Killed (SIGKILL) after this many ms, 1 to [`MAX_EXEC_TIMEOUT_MS`].
    pub timeout_ms: u64,
    /// Bytes of stdout and of stderr kept (at most [`MAX_EXEC_OUTPUT`]); the rest is read
    /// and dropped, so the program never blocks on a full pipe.
    pub output_max: u32,
}

impl ExecRequest {
    /// Refuses a request outside the bounds (both sides check it).
    pub fn check(&self) -> Result<(), String> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err("exec: no program given".into());
        }
        let bytes: usize = self.argv.iter().chain(&self.env).map(|a| a.len() + 1).sum();
        if self.argv.len() + self.env.len() > MAX_EXEC_ARGS || bytes > MAX_EXEC_ARG_BYTES {
            return Err(format!(
                "exec: arguments and environment exceed {MAX_EXEC_ARGS} entries or {MAX_EXEC_ARG_BYTES} bytes"
            ));
        }
        if let Some(e) = self.env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
            return Err(format!("exec: environment entry {e:?} is not NAME=VALUE"));
        }
        if self.argv.iter().chain(&self.env).chain(&self.cwd).any(|a| a.contains('\0')) {
            return Err("exec: an argument, environment entry or cwd contains a NUL byte".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_EXEC_TIMEOUT_MS {
            return Err(format!("exec: timeout must be 1 ms to {MAX_EXEC_TIMEOUT_MS} ms"));
        }
        if self.output_max > MAX_EXEC_OUTPUT {
            return Err(format!("exec: output_max exceeds {MAX_EXEC_OUTPUT} bytes"));
        }
        Ok(())
    }
}

/// How an exec ended, with the start of its output (lossy UTF-8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecResult {
    /// Exit status, when it exited.
    pub status: Option<i32>,
    /// The signal that ended it, when one did (SIGKILL after a timeout).
    pub signal: Option<i32>,
    /// It reached its timeout and was killed.
    pub timed_out: bool,
    /// The first `output_max` bytes of its standard output (lossy UTF-8).
    pub stdout: String,
    /// The first `output_max` bytes of its standard error (lossy UTF-8).
    pub stderr: String,
    /// Output beyond `output_max` was dropped (from either stream).
    pub truncated: bool,
    /// From the start to the end, guest CLOCK_MONOTONIC.
    pub duration_ns: u64,
}

impl ExecResult {
    /// Rejects a reply the request could not have produced.
    pub fn check(&self, req: &ExecRequest) -> Result<(), MessageError> {
        let bad = |why: String| Err(MessageError::Malformed(format!("exec reply: {why}")));
        // Lossy decoding turns one bad byte into a 3-byte replacement character.
        let max = req.output_max as usize * 3;
        if self.stdout.len() > max || self.stderr.len() > max {
            return bad(format!("more output than the {} bytes asked for", req.output_max));
        }
        match (self.status, self.signal) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return bad("exactly one of status and signal must be set".into()),
        }
        if self.timed_out && self.signal.is_none() {
            return bad("a timed-out program must have been killed by a signal".into());
        }
        if self.duration_ns
            > req.timeout_ms.saturating_mul(1_000_000).saturating_add(60_000_000_000)
        {
            return bad("it ran far longer than its timeout".into());
        }
        Ok(())
    }
}

/// The deliberate failure a [`Command::Fault`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The agent exits: as PID 1 this panics the guest kernel.
    Panic,
    /// The agent stops reading and answering, but stays alive.
    Hang,
}

/// Guest to host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestMsg {
    /// Always the first message: the agent is ready.
    Hello(Hello),
    /// The answer to one request.
    Reply(Reply),
}

/// The answer to the request with the same `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// The request's id.
    pub id: u64,
    /// What came of it.
    pub result: Outcome,
}

/// Whether a request succeeded, tagged `status` on the wire (`ok` or `err`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// It did.
    Ok {
        /// The command's result.
        body: ReplyBody,
    },
    /// It failed.
    Err {
        /// Why, in words.
        error: String,
    },
}

/// A command's result, tagged `kind` on the wire; one kind answers each command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReplyBody {
    /// Answers `ping`.
    Pong {
        /// The guest's CLOCK_MONOTONIC when it answered, in ns: one sample for the host's
        /// clock offset estimate.
        monotonic_ns: u64,
    },
    /// Answers `bench`.
    Bench(BenchReport),
    /// Answers `net_serve`: the server is up.
    Listening {
        /// The port it listens on (the one taken when the request asked for 0).
        port: u16,
    },
    /// Answers `net_stop`: the server no longer accepts connections.
    Stopped {
        /// The port it listened on.
        port: u16,
    },
    /// Answers `poweroff`, sent before the guest goes down.
    PoweringOff,
    /// Answers `exec`.
    Exited(ExecResult),
    /// `put_file` wrote its chunk: the file now holds `size` bytes (offset + chunk).
    Put {
        /// Bytes the file holds so far.
        size: u64,
    },
    /// Answers `get_file`.
    FileData(FileData),
}

/// How the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// PID 1 of a guest kernel (VMs) or of a pid namespace (containers).
    Init,
    /// An ordinary process (the native baseline).
    Process,
}

/// The ready message: who the guest is and its own view of time when it became ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The agent's [`PROTOCOL_VERSION`]; the host refuses any other.
    pub protocol: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// Whether it runs as init or as a plain process.
    pub role: Role,
    /// Its process id as the guest sees it (1 as init).
    pub pid: u32,
    /// The guest's hostname (uname's nodename).
    pub hostname: String,
    /// The running kernel's release (uname's; the host's own for containers and native).
    pub kernel_release: String,
    /// CPUs the agent may use (at least 1; the host refuses 0).
    pub cpus: u32,
    /// `MemTotal` of /proc/meminfo, in KiB (0 when unreadable).
    pub mem_total_kib: u64,
    /// Which control channel the agent used (`fd:3`, `tty:/dev/hvc0`, `tcp:…`, `unix:…`).
    pub transport: String,
    /// Its clocks when it wrote the hello.
    pub clock: GuestClock,
    /// The system the guest booted from a root block device or tree, when it did (absent:
    /// the agent's own initramfs or rootfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootInfo>,
}

/// Longest text field of [`RootInfo`] the host accepts, in bytes.
pub const MAX_ROOT_TEXT: usize = 256;
/// Most boot phases a [`RootInfo`] may list.
pub const MAX_BOOT_PHASES: usize = 16;

/// What a guest booted from a system image says about it (checked by [`Hello::check`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootInfo {
    /// Where the root came from: the block device (`/dev/vdb`) or `tree` for containers.
    pub device: String,
    /// `PRETTY_NAME` of the root's `/etc/os-release`, when it has one.
    pub os: Option<String>,
    /// PID 1: `agent`, or the image's own init (`/usr/lib/systemd/systemd`).
    pub init: String,
    /// Boot phases the image's init reports, as (name, CLOCK_MONOTONIC ns), in order.
    #[serde(default)]
    pub phases: Vec<BootPhase>,
}

/// One step of a system image's boot, as the image's init reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootPhase {
    /// The step (`initrd`, `init`, `system_up`), at most [`MAX_ROOT_TEXT`] bytes.
    pub name: String,
    /// When it was reached, guest CLOCK_MONOTONIC in ns; never before the previous phase.
    pub at_ns: u64,
}

impl RootInfo {
    fn check(&self) -> Result<(), MessageError> {
        let long = |s: &str| s.len() > MAX_ROOT_TEXT;
        if long(&self.device)
            || long(&self.init)
            || self.os.as_deref().is_some_and(long)
            || self.phases.len() > MAX_BOOT_PHASES
            || self.phases.iter().any(|p| long(&p.name))
        {
            return Err(MessageError::Malformed(format!(
                "hello's root description exceeds its bounds ({MAX_ROOT_TEXT} bytes a field, {MAX_BOOT_PHASES} phases)"
            )));
        }
        if self.phases.windows(2).any(|w| w[1].at_ns < w[0].at_ns) {
            return Err(MessageError::Malformed("hello's boot phases are out of order".into()));
        }
        Ok(())
    }
}

/// Guest clocks at the moment the hello was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestClock {
    /// CLOCK_MONOTONIC.
    pub monotonic_ns: u64,
    /// CLOCK_BOOTTIME: time since the guest kernel started (for a VM: its boot time).
    pub boottime_ns: u64,
    /// CLOCK_REALTIME, nanoseconds since the Unix epoch (guest wall clock).
    pub realtime_ns: u64,
    /// First field of /proc/uptime, in seconds.
    pub uptime_s: f64,
    /// When the agent process started, from /proc/self/stat (clock ticks since boot),
    /// in nanoseconds since boot: the end of the kernel's part of the boot.
    pub agent_start_ns: Option<u64>,
    /// The kernel log's timestamp of "Run /init as init process" when PID 1 can read it:
    /// a finer kernel/userspace split than `agent_start_ns`.
    pub kernel_init_ns: Option<u64>,
}

/// Any message that failed to decode or made no sense, described for the guest's record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    /// Not the JSON of a message, or a message outside its bounds.
    #[error("not a valid message: {0}")]
    Malformed(String),
    /// A hello from another protocol version.
    #[error("guest speaks protocol version {got}, host expects {want}")]
    Version {
        /// The guest's version.
        got: u32,
        /// The host's, [`PROTOCOL_VERSION`].
        want: u32,
    },
    /// A valid message where none of its kind may come.
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

impl GuestMsg {
    /// Parses one frame's payload; unknown fields, tags and wrong types are refused.
    pub fn decode(payload: &[u8]) -> Result<Self, MessageError> {
        serde_json::from_slice(payload).map_err(|e| MessageError::Malformed(e.to_string()))
    }
    /// The JSON payload of one frame.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("guest messages always serialise")
    }
}

impl Request {
    /// Parses one frame's payload; unknown fields, tags and wrong types are refused.
    pub fn decode(payload: &[u8]) -> Result<Self, MessageError> {
        serde_json::from_slice(payload).map_err(|e| MessageError::Malformed(e.to_string()))
    }
    /// The JSON payload of one frame.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("requests always serialise")
    }
}

impl Hello {
    /// Rejects a hello the host cannot work with.
    pub fn check(&self) -> Result<(), MessageError> {
        if self.protocol != PROTOCOL_VERSION {
            return Err(MessageError::Version { got: self.protocol, want: PROTOCOL_VERSION });
        }
        if self.cpus == 0 {
            return Err(MessageError::Malformed("hello reports 0 CPUs".into()));
        }
        if let Some(r) = &self.root {
            r.check()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{BenchReport, BenchRequest, BenchSpec, InstanceResult, Work};
    use proptest::prelude::*;

    fn hello() -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            role: Role::Init,
            pid: 1,
            hostname: "g0".into(),
            kernel_release: "6.12".into(),
            cpus: 1,
            mem_total_kib: 65536,
            transport: "tty:/dev/hvc0".into(),
            clock: GuestClock {
                monotonic_ns: 5,
                boottime_ns: 6,
                realtime_ns: 7,
                uptime_s: 0.1,
                agent_start_ns: Some(3),
                kernel_init_ns: None,
            },
            root: None,
        }
    }

    #[test]
    fn messages_roundtrip() {
        let msgs = vec![
            GuestMsg::Hello(hello()),
            GuestMsg::Reply(Reply { id: 7, result: Outcome::Err { error: "no disk".into() } }),
            GuestMsg::Reply(Reply {
                id: 8,
                result: Outcome::Ok {
                    body: ReplyBody::Bench(BenchReport {
                        instances: vec![InstanceResult {
                            start_ns: 1,
                            end_ns: 2,
                            work: Work::Cpu { rounds: 10, estimate: std::f64::consts::SQRT_2 },
                        }],
                        received_ns: 0,
                        prepared_ns: 1,
                    }),
                },
            }),
        ];
        for m in msgs {
            assert_eq!(GuestMsg::decode(&m.encode()).unwrap(), m);
        }
        let r = Request {
            id: 9,
            cmd: Command::Bench(BenchRequest {
                spec: BenchSpec::Memory { n: 4, passes: 2 },
                instances: 2,
                start_at_ns: Some(7),
            }),
        };
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        // Without a start instant the field is left out, and its absence decodes as None.
        let r = Request {
            id: 10,
            cmd: Command::Bench(BenchRequest {
                spec: BenchSpec::Cpu { rounds: 8 },
                instances: 1,
                start_at_ns: None,
            }),
        };
        assert!(!String::from_utf8(r.encode()).unwrap().contains("start_at_ns"));
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_rejected() {
        let mut v = serde_json::to_value(GuestMsg::Hello(hello())).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(GuestMsg::decode(&serde_json::to_vec(&v).unwrap()).is_err());
        assert!(GuestMsg::decode(
            br#"{"msg":"reply","id":-1,"result":{"status":"ok","body":{"kind":"powering_off"}}}"#
        )
        .is_err());
        assert!(GuestMsg::decode(br#"{"msg":"reboot"}"#).is_err());
        assert!(Request::decode(br#"{"id":1,"cmd":{"cmd":"bench","spec":{"bench":"cpu","rounds":"many"},"instances":1}}"#).is_err());
    }

    #[test]
    fn hello_check() {
        assert!(hello().check().is_ok());
        let mut h = hello();
        h.protocol = 1;
        assert_eq!(h.check(), Err(MessageError::Version { got: 1, want: PROTOCOL_VERSION }));
        let mut h = hello();
        h.cpus = 0;
        assert!(h.check().is_err());
        let root = RootInfo {
            device: "/dev/vdb".into(),
            os: Some("Debian GNU/Linux 12 (bookworm)".into()),
            init: "/usr/lib/systemd/systemd".into(),
            phases: vec![
                BootPhase { name: "init".into(), at_ns: 5 },
                BootPhase { name: "system_up".into(), at_ns: 9 },
            ],
        };
        let mut h = hello();
        h.root = Some(root.clone());
        assert!(h.check().is_ok());
        assert_eq!(
            GuestMsg::decode(&GuestMsg::Hello(h.clone()).encode()).unwrap(),
            GuestMsg::Hello(h.clone())
        );
        // Without a root the field is left out: older hosts read the hello unchanged.
        assert!(!String::from_utf8(GuestMsg::Hello(hello()).encode()).unwrap().contains("root"));
        let mut bad = root.clone();
        bad.phases.reverse();
        h.root = Some(bad);
        assert!(h.check().is_err());
        let mut bad = root.clone();
        bad.os = Some("x".repeat(MAX_ROOT_TEXT + 1));
        h.root = Some(bad);
        assert!(h.check().is_err());
        let mut bad = root;
        bad.phases = (0..=MAX_BOOT_PHASES as u64)
            .map(|i| BootPhase { name: "p".into(), at_ns: i })
            .collect();
        h.root = Some(bad);
        assert!(h.check().is_err());
    }

    fn exec_req() -> ExecRequest {
        ExecRequest {
            argv: vec!["cat".into(), "/etc/os-release".into()],
            env: vec!["PATH=/bin".into()],
            cwd: None,
            timeout_ms: 1000,
            output_max: 100,
        }
    }

    #[test]
    fn exec_bounds() {
        let r = exec_req();
        assert!(r.check().is_ok());
        let req = Request { id: 3, cmd: Command::Exec(r.clone()) };
        assert_eq!(Request::decode(&req.encode()).unwrap(), req);
        let bad = [
            ExecRequest { argv: vec![], ..r.clone() },
            ExecRequest { env: vec!["NOEQUALS".into()], ..r.clone() },
            ExecRequest { argv: vec!["a\0b".into()], ..r.clone() },
            ExecRequest { timeout_ms: 0, ..r.clone() },
            ExecRequest { output_max: MAX_EXEC_OUTPUT + 1, ..r.clone() },
            ExecRequest { argv: vec!["x".repeat(MAX_EXEC_ARG_BYTES)], ..r.clone() },
            ExecRequest { argv: vec!["x".into(); MAX_EXEC_ARGS + 1], ..r.clone() },
        ];
        for b in bad {
            assert!(b.check().is_err(), "{b:?}");
        }
        let ok = ExecResult {
            status: Some(0),
            signal: None,
            timed_out: false,
            stdout: "x".repeat(100),
            stderr: String::new(),
            truncated: true,
            duration_ns: 5,
        };
        assert!(ok.check(&r).is_ok());
        let m = GuestMsg::Reply(Reply {
            id: 3,
            result: Outcome::Ok { body: ReplyBody::Exited(ok.clone()) },
        });
        assert_eq!(GuestMsg::decode(&m.encode()).unwrap(), m);
        for b in [
            ExecResult { stdout: "x".repeat(301), ..ok.clone() },
            ExecResult { status: None, ..ok.clone() },
            ExecResult { signal: Some(9), ..ok.clone() },
            ExecResult { timed_out: true, ..ok.clone() },
            ExecResult { duration_ns: u64::MAX, ..ok.clone() },
        ] {
            assert!(b.check(&r).is_err(), "{b:?}");
        }
        // The worst case fits in a frame: all output bytes escaped as \u00XX.
        let worst = ExecResult {
            stdout: "\u{1}".repeat(MAX_EXEC_OUTPUT as usize),
            stderr: "\u{1}".repeat(MAX_EXEC_OUTPUT as usize),
            ..ok
        };
        let m = GuestMsg::Reply(Reply {
            id: u64::MAX,
            result: Outcome::Ok { body: ReplyBody::Exited(worst) },
        });
        assert!(crate::frame_guest(&m).is_ok());
    }

    #[test]
    fn file_bounds() {
        let p = PutFile::new("/etc/x", 0o644, 0, b"hello", true);
        assert_eq!(p.check().unwrap(), b"hello");
        let req = Request { id: 4, cmd: Command::PutFile(p.clone()) };
        assert_eq!(Request::decode(&req.encode()).unwrap(), req);
        for b in [
            PutFile { path: "etc/x".into(), ..p.clone() },
            PutFile { path: "/etc/".into(), ..p.clone() },
            PutFile { path: "/a\0b".into(), ..p.clone() },
            PutFile { path: format!("/{}", "x".repeat(MAX_PATH_BYTES)), ..p.clone() },
            PutFile { mode: 0o10000, ..p.clone() },
            PutFile { data: "not base64!".into(), ..p.clone() },
            PutFile { offset: MAX_FILE_BYTES, ..p.clone() },
            PutFile::new("/x", 0o644, 0, &vec![0; MAX_FILE_CHUNK + 1], true),
        ] {
            assert!(b.check().is_err(), "{:?}", &b.path);
        }
        // The largest chunk fits in a frame.
        let big = Request {
            id: u64::MAX,
            cmd: Command::PutFile(PutFile::new(
                &format!("/{}", "\u{1}".repeat(MAX_PATH_BYTES - 1)),
                0o7777,
                MAX_FILE_BYTES - MAX_FILE_CHUNK as u64,
                &vec![0xff; MAX_FILE_CHUNK],
                true,
            )),
        };
        assert!(crate::frame_request(&big).is_ok());
        let g = GetFile { path: "/etc/x".into(), offset: 0, max: 4 };
        assert!(g.check().is_ok());
        for b in [
            GetFile { max: 0, ..g.clone() },
            GetFile { max: MAX_FILE_CHUNK as u32 + 1, ..g.clone() },
            GetFile { path: "x".into(), ..g.clone() },
            GetFile { offset: MAX_FILE_BYTES + 1, ..g.clone() },
        ] {
            assert!(b.check().is_err(), "{b:?}");
        }
        assert_eq!(FileData::new(6, 0o644, b"hell").check(&g).unwrap(), b"hell");
        assert_eq!(FileData::new(2, 0o644, b"hi").check(&g).unwrap(), b"hi");
        for b in [
            FileData::new(10, 0o644, b"hello"), // more than max
            FileData::new(3, 0o644, b"hell"),   // beyond the file's size
            FileData::new(10, 0o644, b"hi"),    // short, yet not the end
            FileData::new(MAX_FILE_BYTES + 1, 0o644, b"hell"),
            FileData::new(4, 0o20000, b"hell"),
            FileData { data: "@@".into(), ..FileData::new(4, 0o644, b"hell") },
        ] {
            assert!(b.check(&g).is_err(), "{b:?}");
        }
        let worst = GuestMsg::Reply(Reply {
            id: u64::MAX,
            result: Outcome::Ok {
                body: ReplyBody::FileData(FileData::new(
                    MAX_FILE_BYTES,
                    0o7777,
                    &vec![0xff; MAX_FILE_CHUNK],
                )),
            },
        });
        assert!(crate::frame_guest(&worst).is_ok());
    }

    proptest! {
        /// File chunks decoded from arbitrary bytes are checked without panicking, and any
        /// reply that passes its check stays within the request's bounds.
        #[test]
        fn file_messages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), offset in 0..MAX_FILE_BYTES + 2, max in 0u32..600) {
            let req = GetFile { path: "/x".into(), offset, max };
            if let Ok(GuestMsg::Reply(Reply { result: Outcome::Ok { body: ReplyBody::FileData(d) }, .. })) = GuestMsg::decode(&bytes) {
                if let Ok(b) = d.check(&req) {
                    prop_assert!(b.len() <= max as usize && offset + b.len() as u64 <= d.size);
                }
            }
            if let Ok(Request { cmd: Command::PutFile(p), .. }) = Request::decode(&bytes) {
                if let Ok(b) = p.check() {
                    prop_assert!(b.len() <= MAX_FILE_CHUNK && p.offset + b.len() as u64 <= MAX_FILE_BYTES);
                }
            }
            if let Ok(Request { cmd: Command::GetFile(g), .. }) = Request::decode(&bytes) {
                let _ = g.check();
            }
        }

        /// Any chunk of any file the host asks for and a well-behaved guest sends passes.
        #[test]
        fn honest_chunks_pass(data in prop::collection::vec(any::<u8>(), 0..300), offset in 0u64..1000, max in 1u32..400) {
            let size = offset + data.len() as u64;
            let n = data.len().min(max as usize);
            let d = FileData::new(size, 0o600, &data[..n]);
            let req = GetFile { path: "/x".into(), offset, max };
            prop_assert_eq!(d.check(&req).unwrap(), data[..n].to_vec());
            let p = PutFile::new("/x", 0o600, offset, &data, true);
            prop_assert_eq!(p.check().unwrap(), data);
        }
    }

    proptest! {
        /// Exec replies decoded from arbitrary bytes are checked without panicking.
        #[test]
        fn exec_replies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(GuestMsg::Reply(Reply { result: Outcome::Ok { body: ReplyBody::Exited(e) }, .. })) = GuestMsg::decode(&bytes) {
                let _ = e.check(&exec_req());
            }
            if let Ok(Request { cmd: Command::Exec(r), .. }) = Request::decode(&bytes) {
                let _ = r.check();
            }
        }

        /// Arbitrary bytes never panic the decoder of either direction.
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = GuestMsg::decode(&bytes);
            let _ = Request::decode(&bytes);
        }

        /// Arbitrary JSON-ish text (mutated valid messages) never panics either.
        #[test]
        fn mutated_messages_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut b = GuestMsg::Hello(hello()).encode();
            let i = pos.index(b.len());
            b[i] = byte;
            if let Ok(GuestMsg::Hello(h)) = GuestMsg::decode(&b) { let _ = h.check(); }
        }
    }
}
