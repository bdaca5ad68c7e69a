//! guest-agent: runs as PID 1 of every guest (or as a plain process), says when it is
//! ready, then runs the paper's microbenchmarks on the host's command.

mod bench;
mod clock;
mod config;
mod exec;
mod files;
mod init;
mod root;
mod transport;

use std::io::Write;
use std::sync::{Arc, Mutex};

use vb_protocol::frame::{Event, FrameDecoder};
use vb_protocol::msg::{
    Command, FaultKind, GuestMsg, Hello, Outcome, Reply, ReplyBody, Request, Role,
};

use config::{Config, Parsed};

type Writer = Arc<Mutex<Box<dyn Write + Send>>>;

/// Longest error text sent to the host.
const MAX_ERROR_LEN: usize = 4096;

fn main() {
    let pid1 = std::process::id() == 1;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let err = match run(&args, pid1) {
        Ok(()) => return,
        Err(e) => e,
    };
    eprintln!("guest-agent: {err}");
    if pid1 {
        // Exiting would panic the kernel: power off so the host sees a clean stop.
        eprintln!("guest-agent: {}", init::poweroff());
    }
    std::process::exit(2);
}

fn run(args: &[String], pid1: bool) -> Result<(), String> {
    let mut cfg = match config::parse_args(args)? {
        Parsed::Run(c) => c,
        Parsed::Help => {
            println!("{}", config::USAGE);
            return Ok(());
        }
        Parsed::Version => {
            println!(
                "guest-agent {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                vb_protocol::PROTOCOL_VERSION
            );
            return Ok(());
        }
    };
    let mut sigchld = None;
    if pid1 {
        let set = init::block_sigchld().map_err(|e| format!("blocking SIGCHLD: {e}"))?;
        for note in init::mount_basics() {
            eprintln!("guest-agent: {note}");
        }
        sigchld = Some(set);
    }
    // Only a VM's init (or its service) has a kernel command line of its own; a container's
    // PID 1 is always given --ctl and would otherwise read the host's.
    if (pid1 || cfg.service) && cfg.ctl.is_none() {
        let cmdline =
            std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
        config::merge_cmdline(&mut cfg, &cmdline)?;
        init::reboot_instead(cfg.reboot_to_poweroff);
    }
    let root = system_root(&cfg, pid1)?;
    if let Some(set) = sigchld {
        init::spawn_reaper(set);
    }
    setup(&cfg)?;
    let ctl =
        cfg.ctl.clone().ok_or_else(|| format!("no control channel given\n{}", config::USAGE))?;
    let chan = transport::open(&ctl)?;
    let writer: Writer = Arc::new(Mutex::new(chan.writer));
    let mut hello = hello(&cfg, &ctl, pid1);
    hello.root = root;
    send(&writer, &GuestMsg::Hello(hello)).map_err(|e| format!("sending hello: {e}"))?;
    // The service of an image's init still owns the machine: it powers it off.
    serve(chan.reader, writer, pid1 || cfg.service)
}

/// A system image's root: a VM's PID 1 switches into its root device, and with
/// `vb.init=image` installs itself as the image init's service and execs that init (never
/// returning); the service and a container over a system tree describe it for the hello.
fn system_root(cfg: &Config, pid1: bool) -> Result<Option<vb_protocol::msg::RootInfo>, String> {
    let ctl_tty = match &cfg.ctl {
        Some(config::Ctl::Tty(t)) => Some(t.as_str()),
        _ => None,
    };
    match &cfg.root {
        Some(uuid) if pid1 => {
            // Read before the switch: the initramfs file is out of reach after it.
            let agent = if cfg.init_image {
                std::fs::read("/proc/self/exe").map_err(|e| format!("reading the agent: {e}"))?
            } else {
                Vec::new()
            };
            let dev = root::switch_root(uuid)?;
            if cfg.init_image {
                let init = root::image_init()?;
                root::install_service(&agent, root::init_kind(&init), ctl_tty)?;
                return Err(root::exec_init(&init));
            }
            // The image's own /tmp, on a fresh tmpfs.
            for note in init::mount_basics() {
                eprintln!("guest-agent: {note}");
            }
            Ok(Some(root::info(&dev, "agent", Vec::new())))
        }
        Some(uuid) if cfg.service => {
            let dev = root::find_device(&root::parse_uuid(uuid)?)?;
            let init = root::image_init()?;
            let phases = match root::init_kind(&init) {
                root::InitKind::Systemd => root::systemd_phases(),
                root::InitKind::Inittab => Vec::new(),
            };
            Ok(Some(root::info(&dev, &init, phases)))
        }
        _ if cfg.system_root => Ok(Some(root::info("tree", "agent", Vec::new()))),
        _ => Ok(None),
    }
}

fn setup(cfg: &Config) -> Result<(), String> {
    if let Some(h) = &cfg.hostname {
        init::set_hostname(h)?;
    }
    for n in &cfg.net {
        init::configure_net(n, cfg.mtu)?;
    }
    Ok(())
}

fn hello(cfg: &Config, ctl: &config::Ctl, pid1: bool) -> Hello {
    let uts = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uts.as_ref().map(|u| f(u).to_string_lossy().into_owned()).unwrap_or_default()
    };
    Hello {
        protocol: vb_protocol::PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        role: if pid1 { Role::Init } else { Role::Process },
        pid: std::process::id(),
        hostname: field(|u| u.nodename()),
        kernel_release: field(|u| u.release()),
        cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        mem_total_kib: mem_total_kib().unwrap_or(0),
        transport: ctl.describe(),
        clock: clock::snapshot(cfg.from_cmdline),
        root: None,
    }
}

fn mem_total_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn send(w: &Writer, msg: &GuestMsg) -> Result<(), String> {
    let frame = vb_protocol::frame_guest(msg).map_err(|e| e.to_string())?;
    let mut w = w.lock().map_err(|_| "writer poisoned".to_string())?;
    w.write_all(&frame).and_then(|_| w.flush()).map_err(|e| e.to_string())
}

fn reply(w: &Writer, id: u64, result: Result<ReplyBody, String>) {
    let result = match result {
        Ok(body) => Outcome::Ok { body },
        Err(mut error) => {
            if error.len() > MAX_ERROR_LEN {
                let mut cut = MAX_ERROR_LEN;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
            }
            Outcome::Err { error }
        }
    };
    if let Err(e) = send(w, &GuestMsg::Reply(Reply { id, result })) {
        eprintln!("guest-agent: cannot send reply {id}: {e}");
    }
}

fn serve(
    mut reader: Box<dyn std::io::Read + Send>,
    writer: Writer,
    pid1: bool,
) -> Result<(), String> {
    let mut dec = FrameDecoder::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return finish(pid1, Err(format!("control channel read: {e}"))),
        };
        for ev in dec.feed(&buf[..n]) {
            match ev {
                Event::Frame(payload) => match Request::decode(&payload) {
                    Ok(req) => handle(req, &writer, pid1),
                    Err(e) => eprintln!("guest-agent: ignoring bad request: {e}"),
                },
                Event::Skipped(k) => eprintln!("guest-agent: skipped {k} bytes of noise"),
                Event::Bad(e) => eprintln!("guest-agent: bad frame: {e}"),
            }
        }
    }
    finish(pid1, Ok(()))
}

/// The host went away (or the channel broke): a VM powers off, a process exits.
fn finish(pid1: bool, r: Result<(), String>) -> Result<(), String> {
    if pid1 {
        if let Err(e) = &r {
            eprintln!("guest-agent: {e}");
        }
        eprintln!("guest-agent: control channel closed; {}", init::poweroff());
        std::process::exit(0);
    }
    r
}

fn handle(req: Request, w: &Writer, pid1: bool) {
    let id = req.id;
    match req.cmd {
        Command::Ping => reply(w, id, Ok(ReplyBody::Pong { monotonic_ns: clock::monotonic_ns() })),
        Command::Bench(b) => {
            // Read as soon as decoded: the host's start instant is relative to nothing else.
            let received_ns = clock::monotonic_ns();
            let w2 = w.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("req-{id}"))
                .spawn(move || reply(&w2, id, bench::run(&b, received_ns).map(ReplyBody::Bench)));
            if let Err(e) = spawned {
                reply(w, id, Err(format!("cannot start request thread: {e}")));
            }
        }
        Command::Exec(x) => {
            // On a thread of its own: the agent keeps answering while the program runs.
            let w2 = w.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("exec-{id}"))
                .spawn(move || reply(&w2, id, exec::run(&x).map(ReplyBody::Exited)));
            if let Err(e) = spawned {
                reply(w, id, Err(format!("cannot start request thread: {e}")));
            }
        }
        // Bounded chunks (256 KiB): answered in place.
        Command::PutFile(p) => reply(w, id, files::put(&p).map(|size| ReplyBody::Put { size })),
        Command::GetFile(g) => reply(w, id, files::get(&g).map(ReplyBody::FileData)),
        Command::NetServe { port } => {
            reply(w, id, bench::net::serve(port).map(|port| ReplyBody::Listening { port }))
        }
        Command::NetStop { port } => {
            reply(w, id, bench::net::stop(port).map(|()| ReplyBody::Stopped { port }))
        }
        Command::Poweroff => {
            reply(w, id, Ok(ReplyBody::PoweringOff));
            if pid1 {
                eprintln!("guest-agent: {}", init::poweroff());
            }
            std::process::exit(0);
        }
        Command::Fault { kind: FaultKind::Panic } => {
            // As PID 1 this exit makes the kernel panic ("Attempted to kill init").
            std::process::exit(101);
        }
        Command::Fault { kind: FaultKind::Hang } => loop {
            std::thread::park();
        },
    }
}
