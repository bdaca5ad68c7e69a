//! What a worker's guests are given and asked, in the coordinator–worker protocol
//! (`proto.rs`), I/O-free and bounded: their cgroup limits (a fleet file's `[limits]`), and
//! the calls the coordinator has a worker make to one of them (`hostd exec`, `hostd cp`, a
//! fleet file's `commands` on a fleet held across hosts) with the checks of the worker's
//! answers ([`super::proto::FromWorker::GuestReply`] and `GuestError`): the worker is
//! untrusted.

use serde::{Deserialize, Serialize};
use vb_protocol::msg::{Command, ExecRequest, GetFile, PutFile, ReplyBody};

/// Per-guest cgroup limits of a slice, as a fleet file's `[limits]` gives them; none by
/// default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceLimits {
    pub memory_mib: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

impl SliceLimits {
    /// The ranges of a fleet file's `[limits]`, checked again by the worker.
    pub fn check(&self) -> Result<(), String> {
        use crate::limits;
        if let Some(m) = self.memory_mib {
            limits::LIMIT_MEMORY_MIB.field("limits.memory_mib", m)?;
        }
        if let Some(p) = self.pids {
            limits::LIMIT_PIDS.field("limits.pids", p)?;
        }
        if let Some(c) = self.cpus {
            limits::check_cpus("limits.cpus", c)?;
        }
        Ok(())
    }

    /// The cgroup limits the worker's guests get.
    pub fn limits(&self) -> crate::cgroup::Limits {
        crate::cgroup::Limits {
            // Checked: a value too large for bytes cannot pass `check`.
            memory_bytes: self.memory_mib.and_then(crate::limits::mib_to_bytes),
            cpus: self.cpus,
            pids: self.pids,
            cpuset: None,
        }
    }
}

/// Longest a worker waits for a guest's reply to a call, ms: the longest exec the agent
/// runs and two minutes more (a coordinator's `wait_ms` above it is cut to it).
pub const MAX_CALL_WAIT_MS: u64 = vb_protocol::msg::MAX_EXEC_TIMEOUT_MS + 120_000;

/// What the coordinator may have a worker ask one of its guests (`hostd exec`, `hostd cp`,
/// a fleet file's `commands`): these three agent requests, nothing else (no poweroff,
/// fault or benchmark through this door).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestCall {
    Exec(ExecRequest),
    PutFile(PutFile),
    GetFile(GetFile),
}

impl GuestCall {
    /// The call for an agent command, or why it cannot be one.
    pub fn from_command(c: Command) -> Result<Self, String> {
        match c {
            Command::Exec(x) => Ok(GuestCall::Exec(x)),
            Command::PutFile(x) => Ok(GuestCall::PutFile(x)),
            Command::GetFile(x) => Ok(GuestCall::GetFile(x)),
            other => Err(format!("{other:.80?} cannot be sent to a guest on another host")),
        }
    }

    pub fn into_command(self) -> Command {
        match self {
            GuestCall::Exec(x) => Command::Exec(x),
            GuestCall::PutFile(x) => Command::PutFile(x),
            GuestCall::GetFile(x) => Command::GetFile(x),
        }
    }

    /// The request's own bounds (both sides check them).
    pub fn check(&self) -> Result<(), String> {
        match self {
            GuestCall::Exec(x) => x.check(),
            GuestCall::PutFile(x) => x.check().map(drop),
            GuestCall::GetFile(x) => x.check(),
        }
    }

    /// Checks a worker's reply to this call: the kind the call is answered with, and what
    /// the call allows (output within its cap, a chunk that fits its file, the size a
    /// written chunk makes).
    pub fn check_reply(&self, r: &ReplyBody) -> Result<(), String> {
        match (self, r) {
            (GuestCall::Exec(q), ReplyBody::Exited(x)) => x.check(q).map_err(|e| e.to_string()),
            (GuestCall::GetFile(q), ReplyBody::FileData(d)) => {
                d.check(q).map(drop).map_err(|e| e.to_string())
            }
            (GuestCall::PutFile(q), ReplyBody::Put { size }) => {
                let end = q.offset.saturating_add(q.check()?.len() as u64);
                if *size != end {
                    return Err(format!("put reply: {size} bytes written, not {end}"));
                }
                Ok(())
            }
            (call, r) => {
                Err(format!("a {} reply where {} was due", body_kind(r), reply_kind(call)))
            }
        }
    }
}

fn reply_kind(c: &GuestCall) -> &'static str {
    match c {
        GuestCall::Exec(_) => "exited",
        GuestCall::PutFile(_) => "put",
        GuestCall::GetFile(_) => "file_data",
    }
}

fn body_kind(r: &ReplyBody) -> &'static str {
    match r {
        ReplyBody::Pong { .. } => "pong",
        ReplyBody::Bench(_) => "bench",
        ReplyBody::Listening { .. } => "listening",
        ReplyBody::Stopped { .. } => "stopped",
        ReplyBody::PoweringOff => "powering_off",
        ReplyBody::Exited(_) => "exited",
        ReplyBody::Put { .. } => "put",
        ReplyBody::FileData(_) => "file_data",
    }
}

/// Checks a worker's [`super::proto::FromWorker::GuestError`] text: non-empty, bounded, one line.
pub fn check_guest_error(e: &str) -> Result<(), String> {
    super::proto::text("guest error", e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multihost::proto::tests::slice;
    use crate::multihost::proto::{read, write, FromWorker, ReadError, ToWorker, MAX_TEXT};

    fn exec() -> ExecRequest {
        ExecRequest {
            argv: vec!["true".into()],
            env: vec![],
            cwd: None,
            timeout_ms: 1000,
            output_max: 16,
        }
    }

    fn exited(out: &str) -> ReplyBody {
        ReplyBody::Exited(vb_protocol::msg::ExecResult {
            status: Some(0),
            signal: None,
            timed_out: false,
            stdout: out.into(),
            stderr: String::new(),
            truncated: false,
            duration_ns: 1,
        })
    }

    #[test]
    fn slice_limits_are_checked_and_unknown_fields_refused() {
        let ok = SliceLimits { memory_mib: Some(256), cpus: Some(0.5), pids: Some(64) };
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.limits().memory_bytes, Some(256 << 20));
        assert_eq!(SliceLimits::default().check(), Ok(()));
        for (bad, says) in [
            (SliceLimits { memory_mib: Some(0), ..ok.clone() }, "limits.memory_mib"),
            (SliceLimits { memory_mib: Some(u64::MAX), ..ok.clone() }, "limits.memory_mib"),
            (SliceLimits { pids: Some(0), ..ok.clone() }, "limits.pids"),
            (SliceLimits { cpus: Some(f64::NAN), ..ok.clone() }, "limits.cpus"),
            (SliceLimits { cpus: Some(-1.0), ..ok.clone() }, "limits.cpus"),
        ] {
            let e = bad.check().unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        // A slice without limits (an older coordinator's) has none; unknown fields refused.
        let mut v = serde_json::to_value(ToWorker::Slice(slice())).unwrap();
        v["fleet"].as_object_mut().unwrap().remove("limits");
        let s: ToWorker = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s, ToWorker::Slice(slice()));
        v["fleet"]["limits"] = serde_json::json!({"pids": 5, "swap": 1});
        assert!(serde_json::from_value::<ToWorker>(v).is_err());
    }

    #[tokio::test]
    async fn guest_calls_and_answers_round_trip_and_malformed_ones_are_refused() {
        let call =
            ToWorker::Guest { id: 3, guest: 7, wait_ms: 31_000, call: GuestCall::Exec(exec()) };
        let reply = FromWorker::GuestReply { id: 3, reply: exited("hi") };
        let error = FromWorker::GuestError { id: 4, error: "g7 is not ready".into() };
        let mut out = Vec::new();
        write(&mut out, &call).await.unwrap();
        write(&mut out, &reply).await.unwrap();
        write(&mut out, &error).await.unwrap();
        let mut r = tokio::io::BufReader::new(&out[..]);
        assert_eq!(read::<ToWorker, _>(&mut r).await.unwrap(), call);
        assert_eq!(read::<FromWorker, _>(&mut r).await.unwrap(), reply);
        assert_eq!(read::<FromWorker, _>(&mut r).await.unwrap(), error);
        // A worker's malformed answers: an unknown field, no id, a negative id, a reply of
        // no known kind, an unknown field inside the reply, no error text, a number for it.
        for bad in [
            r#"{"msg":"guest_reply","id":1,"reply":{"kind":"put","size":1},"x":0}"#,
            r#"{"msg":"guest_reply","reply":{"kind":"put","size":1}}"#,
            r#"{"msg":"guest_reply","id":-1,"reply":{"kind":"put","size":1}}"#,
            r#"{"msg":"guest_reply","id":1,"reply":{"kind":"nonsense"}}"#,
            r#"{"msg":"guest_reply","id":1,"reply":{"kind":"put","size":1,"more":2}}"#,
            r#"{"msg":"guest_error","id":1}"#,
            r#"{"msg":"guest_error","id":1,"error":7}"#,
        ] {
            let line = format!("{bad}\n");
            let mut r = tokio::io::BufReader::new(line.as_bytes());
            let e = read::<FromWorker, _>(&mut r).await;
            assert!(matches!(e, Err(ReadError::Json(_))), "{bad}: {e:?}");
        }
        // Only exec, put_file and get_file go to a guest through a worker.
        for bad in [
            r#"{"msg":"guest","id":1,"guest":0,"wait_ms":1,"call":{"cmd":"poweroff"}}"#,
            r#"{"msg":"guest","id":1,"guest":0,"wait_ms":1,"call":{"cmd":"fault","kind":"panic"}}"#,
            r#"{"msg":"guest","id":1,"guest":0,"call":{"cmd":"get_file","path":"/a","offset":0,"max":1}}"#,
        ] {
            let line = format!("{bad}\n");
            let mut r = tokio::io::BufReader::new(line.as_bytes());
            let e = read::<ToWorker, _>(&mut r).await;
            assert!(matches!(e, Err(ReadError::Json(_))), "{bad}: {e:?}");
        }
        assert!(GuestCall::from_command(Command::Poweroff).is_err());
        let c = GuestCall::from_command(Command::Exec(exec())).unwrap();
        assert_eq!(c.clone().into_command(), Command::Exec(exec()));
        assert_eq!(c.check(), Ok(()));
        assert!(GuestCall::Exec(ExecRequest { argv: vec![], ..exec() }).check().is_err());
    }

    #[test]
    fn a_guest_reply_must_fit_its_call_and_an_error_must_be_one_bounded_line() {
        use vb_protocol::msg::FileData;
        let call = GuestCall::Exec(exec());
        assert_eq!(call.check_reply(&exited("hi")), Ok(()));
        // 16 bytes asked: at most 48 after lossy decoding.
        assert!(call.check_reply(&exited(&"x".repeat(49))).unwrap_err().contains("more output"));
        let e = call.check_reply(&ReplyBody::Put { size: 1 }).unwrap_err();
        assert!(e.contains("a put reply where exited was due"), "{e}");
        let mut both = exited("");
        if let ReplyBody::Exited(x) = &mut both {
            x.signal = Some(9);
        }
        assert!(call.check_reply(&both).is_err());
        let put = GuestCall::PutFile(PutFile::new("/tmp/f", 0o644, 10, b"abcd", true));
        assert_eq!(put.check_reply(&ReplyBody::Put { size: 14 }), Ok(()));
        assert!(put.check_reply(&ReplyBody::Put { size: 15 }).unwrap_err().contains("not 14"));
        let get = GuestCall::GetFile(GetFile { path: "/etc/x".into(), offset: 0, max: 4 });
        let data = |size, bytes: &[u8]| ReplyBody::FileData(FileData::new(size, 0o644, bytes));
        assert_eq!(get.check_reply(&data(4, b"abcd")), Ok(()));
        assert!(get.check_reply(&data(8, b"abcdefgh")).is_err(), "more than asked");
        assert!(get.check_reply(&data(10, b"ab")).is_err(), "short of max before the end");
        let mut d = FileData::new(4, 0o644, b"abcd");
        d.data = "!!!".into();
        assert!(get.check_reply(&ReplyBody::FileData(d)).is_err(), "not base64");
        assert!(get.check_reply(&exited("")).is_err());
        assert_eq!(check_guest_error("g3 is not a ready guest of this host"), Ok(()));
        for bad in [String::new(), "a\nb".into(), "x".repeat(MAX_TEXT + 1)] {
            assert!(check_guest_error(&bad).is_err(), "{bad:.20?}");
        }
    }
}
