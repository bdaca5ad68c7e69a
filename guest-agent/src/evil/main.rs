//! evil-agent: a hostile guest agent for hostd's fault tests. It speaks just enough of the
//! protocol to be believed, then misbehaves as told: `--evil MODE` (a process or container)
//! or `vb.evil=MODE` on the kernel command line (a VM's init). Built only with the `evil`
//! feature (`cargo build -p guest-agent --features evil --bin evil-agent`, or the
//! `agent-evil` recipe); the real agent shares its transport and set-up code but contains
//! none of this.
//!
//! Modes (see [`Mode`]): `silent`, `mute`, `huge-frame`, `bad-crc`, `bad-json`,
//! `truncated`, `wrong-id`, `late`, `flood-console`, `flood-channel`, `big-frames`, `panic`.

#[path = "../clock.rs"]
mod clock;
#[path = "../config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../init.rs"]
#[allow(dead_code)]
mod init;
#[path = "../transport.rs"]
mod transport;

use std::io::{Read, Write};
use std::time::Duration;

use vb_protocol::frame::{encode, header, Event, FrameDecoder, MAX_PAYLOAD};
use vb_protocol::msg::{Command, GuestMsg, Hello, Outcome, Reply, ReplyBody, Request, Role};

/// How long `late` holds its first reply.
const LATE: Duration = Duration::from_millis(1500);
/// Id offset `wrong-id` adds to every reply.
const WRONG_ID: u64 = 1_000_000;
/// The monotonic clock `late` reports in its late reply, so a test can spot it.
const LATE_MARK: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Never says hello; reads and discards everything.
    Silent,
    /// Says hello, then never answers.
    Mute,
    /// Answers the first request with a header declaring a ~4 GiB payload.
    HugeFrame,
    /// Answers with a frame whose payload fails its checksum.
    BadCrc,
    /// Answers with a well-framed payload that is not a message.
    BadJson,
    /// Sends half a reply frame, then ends (powers off as init).
    Truncated,
    /// Answers every request, with an id that was never asked.
    WrongId,
    /// Answers its first request late (after the host gave up), then the rest promptly.
    Late,
    /// Writes to its console as fast as it can, and otherwise behaves.
    FloodConsole,
    /// Writes noise on the control channel without end.
    FloodChannel,
    /// Sends maximal frames (valid replies to requests never made) without end.
    BigFrames,
    /// Says hello, then exits: as a VM's init, a kernel panic.
    Panic,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "silent" => Mode::Silent,
            "mute" => Mode::Mute,
            "huge-frame" => Mode::HugeFrame,
            "bad-crc" => Mode::BadCrc,
            "bad-json" => Mode::BadJson,
            "truncated" => Mode::Truncated,
            "wrong-id" => Mode::WrongId,
            "late" => Mode::Late,
            "flood-console" => Mode::FloodConsole,
            "flood-channel" => Mode::FloodChannel,
            "big-frames" => Mode::BigFrames,
            "panic" => Mode::Panic,
            other => return Err(format!("unknown evil mode {other:?}")),
        })
    }
}

fn main() {
    let pid1 = std::process::id() == 1;
    if let Err(e) = run(pid1) {
        eprintln!("evil-agent: {e}");
        hang();
    }
}

fn hang() -> ! {
    loop {
        std::thread::park();
    }
}

fn run(pid1: bool) -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut mode = None;
    if let Some(i) = args.iter().position(|a| a == "--evil") {
        mode = Some(Mode::parse(args.get(i + 1).ok_or("--evil needs a mode")?)?);
        args.drain(i..i + 2);
    }
    let config::Parsed::Run(mut cfg) = config::parse_args(&args)? else { return Ok(()) };
    if pid1 {
        for note in init::mount_basics() {
            eprintln!("evil-agent: {note}");
        }
        if cfg.ctl.is_none() {
            let cmdline = std::fs::read_to_string("/proc/cmdline")
                .map_err(|e| format!("/proc/cmdline: {e}"))?;
            config::merge_cmdline(&mut cfg, &cmdline)?;
            init::reboot_instead(cfg.reboot_to_poweroff);
            if mode.is_none() {
                if let Some(m) = cmdline.split_whitespace().find_map(|w| w.strip_prefix("vb.evil="))
                {
                    mode = Some(Mode::parse(m)?);
                }
            }
        }
    }
    let mode = mode.ok_or("no mode: pass --evil MODE or vb.evil=MODE")?;
    if let Some(h) = &cfg.hostname {
        let _ = init::set_hostname(h);
    }
    let ctl = cfg.ctl.clone().ok_or("no control channel given")?;
    let chan = transport::open(&ctl)?;
    let (mut r, mut w) = (chan.reader, chan.writer);
    eprintln!("evil-agent: mode {mode:?}");
    if mode == Mode::Silent {
        discard(&mut r);
        return end(pid1);
    }
    send(&mut w, &GuestMsg::Hello(hello(&ctl, pid1, cfg.from_cmdline)))?;
    match mode {
        Mode::Mute => discard(&mut r),
        Mode::Panic => std::process::exit(101),
        Mode::FloodChannel => loop {
            // No 0x7f: nothing here can start a frame.
            if w.write_all(&[b'~'; 64 << 10]).is_err() {
                break;
            }
        },
        Mode::BigFrames => {
            let filler = "x".repeat(MAX_PAYLOAD - 200);
            for i in 0.. {
                let m = GuestMsg::Reply(Reply {
                    id: u64::MAX - i,
                    result: Outcome::Err { error: filler.clone() },
                });
                if send(&mut w, &m).is_err() {
                    break;
                }
            }
        }
        Mode::FloodConsole => {
            std::thread::spawn(|| {
                let line = format!("{}\n", "evil console flood ".repeat(5));
                let mut err = std::io::stderr();
                while err.write_all(line.as_bytes()).is_ok() {}
            });
            serve(&mut r, &mut w, mode, pid1)?;
        }
        _ => serve(&mut r, &mut w, mode, pid1)?,
    }
    end(pid1)
}

/// What an agent does when its channel is done: a process exits, init stays up (its exit
/// would panic the kernel) until the host stops the VM.
fn end(pid1: bool) -> Result<(), String> {
    if pid1 {
        hang();
    }
    Ok(())
}

fn discard(r: &mut Box<dyn Read + Send>) {
    let mut buf = [0u8; 4096];
    while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
}

fn hello(ctl: &config::Ctl, pid1: bool, from_cmdline: bool) -> Hello {
    let uts = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uts.as_ref().map(|u| f(u).to_string_lossy().into_owned()).unwrap_or_default()
    };
    Hello {
        protocol: vb_protocol::PROTOCOL_VERSION,
        agent_version: "evil".into(),
        role: if pid1 { Role::Init } else { Role::Process },
        pid: std::process::id(),
        hostname: field(|u| u.nodename()),
        kernel_release: field(|u| u.release()),
        cpus: 1,
        mem_total_kib: 1,
        transport: ctl.describe(),
        clock: clock::snapshot(from_cmdline),
        root: None,
    }
}

fn send(w: &mut Box<dyn Write + Send>, m: &GuestMsg) -> Result<(), String> {
    let frame = vb_protocol::frame_guest(m).map_err(|e| e.to_string())?;
    w.write_all(&frame).and_then(|_| w.flush()).map_err(|e| format!("writing: {e}"))
}

fn pong(id: u64, monotonic_ns: u64) -> GuestMsg {
    GuestMsg::Reply(Reply { id, result: Outcome::Ok { body: ReplyBody::Pong { monotonic_ns } } })
}

/// Reads requests and misbehaves on them as `mode` says.
fn serve(
    r: &mut Box<dyn Read + Send>,
    w: &mut Box<dyn Write + Send>,
    mode: Mode,
    pid1: bool,
) -> Result<(), String> {
    let mut dec = FrameDecoder::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut first = true;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        for ev in dec.feed(&buf[..n]) {
            let Event::Frame(p) = ev else { continue };
            let Ok(req) = Request::decode(&p) else { continue };
            let was_first = std::mem::replace(&mut first, false);
            let answer = pong(req.id, clock::monotonic_ns());
            match (mode, was_first) {
                (Mode::HugeFrame, true) => {
                    w.write_all(&header(0xffff_ff00, 0)).map_err(|e| e.to_string())?
                }
                (Mode::BadCrc, true) => {
                    let mut f = encode(&answer.encode(), MAX_PAYLOAD).map_err(|e| e.to_string())?;
                    let last = f.len() - 1;
                    f[last] ^= 0x55;
                    w.write_all(&f).map_err(|e| e.to_string())?;
                }
                (Mode::BadJson, true) => w
                    .write_all(
                        &encode(b"{\"msg\":\"reply\",\"id\":", MAX_PAYLOAD)
                            .map_err(|e| e.to_string())?,
                    )
                    .map_err(|e| e.to_string())?,
                (Mode::Truncated, true) => {
                    let f = encode(&answer.encode(), MAX_PAYLOAD).map_err(|e| e.to_string())?;
                    w.write_all(&f[..f.len() / 2])
                        .and_then(|_| w.flush())
                        .map_err(|e| e.to_string())?;
                    if pid1 {
                        eprintln!("evil-agent: {}", init::poweroff());
                    }
                    std::process::exit(0);
                }
                (Mode::WrongId, _) => send(w, &pong(req.id + WRONG_ID, 0))?,
                (Mode::Late, true) => {
                    std::thread::sleep(LATE);
                    send(w, &pong(req.id, LATE_MARK))?;
                }
                (Mode::HugeFrame | Mode::BadCrc | Mode::BadJson, false) => {}
                _ => {
                    let poweroff = matches!(req.cmd, Command::Poweroff);
                    let reply = match req.cmd {
                        Command::Ping => answer,
                        Command::Poweroff => GuestMsg::Reply(Reply {
                            id: req.id,
                            result: Outcome::Ok { body: ReplyBody::PoweringOff },
                        }),
                        _ => GuestMsg::Reply(Reply {
                            id: req.id,
                            result: Outcome::Err {
                                error: "the evil agent does not do that".into(),
                            },
                        }),
                    };
                    send(w, &reply)?;
                    if poweroff {
                        if pid1 {
                            eprintln!("evil-agent: {}", init::poweroff());
                        }
                        std::process::exit(0);
                    }
                }
            }
        }
    }
}
