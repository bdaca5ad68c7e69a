//! The fleet commands: `hostd up`, `status`, `exec`, `down`.

use crate::*;

pub(crate) fn find_fleet(name: &str) -> anyhow::Result<RunState> {
    let fleets = daemon::live_fleets();
    match fleets.into_iter().find(|(n, _)| n == name) {
        Some((_, st)) => Ok(st),
        None => anyhow::bail!("no running fleet named {name:?} (see `hostd status`)"),
    }
}

pub(crate) async fn status(name: Option<String>, json: bool) -> anyhow::Result<()> {
    let fleets = match &name {
        Some(n) => vec![(n.clone(), find_fleet(n)?)],
        None => daemon::live_fleets(),
    };
    let mut all = Vec::with_capacity(fleets.len());
    for (_, st) in fleets {
        all.push(daemon::query_status(&st).await?);
    }
    if json {
        let all: Vec<_> = all.iter().map(hostd::samples::Versioned::new).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        println!("no fleets running");
    }
    for s in all.iter().filter(|_| !json) {
        print!("{}", daemon::format_status(s));
    }
    Ok(())
}

pub(crate) async fn exec(a: ExecArgs) -> anyhow::Result<Done> {
    let st = find_fleet(&a.name)?;
    let req = vb_protocol::msg::ExecRequest {
        argv: a.argv,
        env: a.env,
        cwd: a.cwd,
        timeout_ms: a.timeout * 1000,
        output_max: a.output_max,
    };
    let results = daemon::request_exec(&st, a.guest, req).await?;
    let mut failed = Vec::new();
    for r in &results {
        let line = daemon::format_exec(r);
        println!("{line}");
        if let Ok(x) = &r.result {
            print!("{}", x.stdout);
            eprint!("{}", x.stderr);
        }
        if !daemon::exec_ok(r) {
            failed.push(line.trim_start_matches("== ").to_string());
        }
    }
    Ok(if failed.is_empty() { Done::All } else { Done::WithFailures(failed.join("; ")) })
}

pub(crate) async fn down(name: String) -> anyhow::Result<()> {
    let st = find_fleet(&name)?;
    daemon::request_down(&st, Duration::from_secs(120)).await?;
    println!("fleet {name} is down");
    Ok(())
}

/// `hostd up`: validates, then detaches a daemon that boots the fleet; returns once the
/// fleet is up (printing its status) or failed.
pub(crate) fn up(a: &UpArgs) -> ExitCode {
    let fail = |e: String| {
        eprintln!("hostd: error: {e}");
        ExitCode::FAILURE
    };
    let file = match daemon::FleetFile::load(&a.file) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    if daemon::live_fleets().iter().any(|(n, _)| *n == file.name) {
        return fail(format!("a fleet named {:?} is already running", file.name));
    }
    let images = match group_images(a, &file) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    let opts = backend_options(&a.images);
    let fleet_name = file.name.clone();
    if a.foreground {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        return match rt.block_on(async {
            reap_orphans();
            let run = RunState::create("up", None)?;
            daemon::serve(file, images, opts, run, |r| match r {
                Ok(up) => {
                    print!("{}", up.text);
                    if !up.failed.is_empty() {
                        eprintln!("hostd: finished with failures: {}", up.failed.join("; "));
                    }
                }
                Err(e) => eprintln!("hostd: error: {e}"),
            })
            .await
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("{e:#}")),
        };
    }
    // CLOEXEC: guests must not inherit the report pipe, or the parent would wait for them.
    let (rd, wr) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    // SAFETY: no other thread exists yet (the runtime is created after the fork), so the
    // child may do anything.
    match unsafe { nix::unistd::fork() } {
        Err(e) => fail(format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(wr);
            daemon_report(rd, &fleet_name)
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(rd);
            let _ = nix::unistd::setsid();
            let mut report = Some(std::fs::File::from(wr));
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let r = rt.block_on(async {
                reap_orphans();
                let run = RunState::create("up", None)?;
                detach_stdio(&run.scratch.join("daemon.log"));
                daemon::serve(file, images, opts, run, |r| {
                    if let Some(mut w) = report.take() {
                        // First line: ok, failed (a command failed in some guests: what,
                        // on the second line) or error.
                        let text = match r {
                            Ok(up) if up.failed.is_empty() => format!("ok\n{}", up.text),
                            Ok(up) => format!("failed\n{}\n{}", up.failed.join("; "), up.text),
                            Err(e) => format!("error\n{e}"),
                        };
                        let _ = std::io::Write::write_all(&mut w, text.as_bytes());
                    }
                })
                .await
            });
            if let (Err(e), Some(mut w)) = (&r, report.take()) {
                let _ = std::io::Write::write_all(&mut w, format!("error\n{e:#}").as_bytes());
            }
            std::process::exit(if r.is_ok() { 0 } else { 1 });
        }
    }
}

/// Each group's images: the agent's, with its system added. The command line's system wins
/// over the fleet file's (for every group that boots an image).
fn group_images(
    a: &UpArgs,
    file: &daemon::FleetFile,
) -> Result<Vec<hostd::backend::Images>, String> {
    let mut images = Vec::with_capacity(file.resolved.len());
    for g in &file.resolved {
        let mut im =
            hostd::images::resolve(a.images.agent.as_deref()).map_err(|e| format!("{e:#}"))?;
        let system = match g.kind {
            hostd::backend::BackendKind::Native => None,
            _ => a.images.system.clone().map(|s| (s, a.images.init)).or(g.system.clone()),
        };
        if let Some((name, init)) = system {
            if let Err(e) = hostd::images::add_system(&mut im, &name, init) {
                return Err(if file.groups.is_empty() {
                    format!("{e:#}")
                } else {
                    format!("group {:?}: {e:#}", g.name)
                });
            }
        }
        images.push(im);
    }
    Ok(images)
}

/// The parent's side of `hostd up`: what the detached daemon reported on the pipe `rd`
/// (its first line ok, failed or error), printed, as the exit code.
fn daemon_report(rd: std::os::fd::OwnedFd, fleet_name: &str) -> ExitCode {
    let mut msg = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(rd), &mut msg);
    let fail = |e: &str| {
        eprintln!("hostd: error: {e}");
        ExitCode::FAILURE
    };
    match msg.split_once('\n') {
        Some(("ok", rest)) => {
            print!("{rest}");
            ExitCode::SUCCESS
        }
        Some(("failed", rest)) => {
            let (what, text) = rest.split_once('\n').unwrap_or((rest, ""));
            print!("{text}");
            eprintln!("hostd: finished with failures: {what}");
            eprintln!("hostd: the fleet stays up (`hostd down {fleet_name}`)");
            ExitCode::from(EXIT_FAILURES)
        }
        Some((_, err)) => fail(err.trim()),
        None => fail("the fleet daemon exited before reporting"),
    }
}

/// Points stdin at /dev/null and stdout/stderr at the daemon's log.
pub(crate) fn detach_stdio(log: &std::path::Path) {
    use std::os::fd::AsRawFd;
    if let (Ok(null), Ok(log)) = (std::fs::File::open("/dev/null"), std::fs::File::create(log)) {
        // SAFETY: dup2 onto the standard descriptors of this (single-purpose) daemon process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(log.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}
