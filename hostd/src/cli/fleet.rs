//! The fleet commands: `hostd up`, `status`, `exec`, `cp`, `down`.

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

/// `GUEST:/path` or `:/path`: (guest, absolute path); anything else is a host path.
fn guest_path(s: &str) -> Option<(Option<&str>, &str)> {
    let (g, p) = s.split_once(':')?;
    let named = g.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (named && p.starts_with('/')).then_some(((!g.is_empty()).then_some(g), p))
}

/// What `hostd cp`'s arguments ask: (guest or all, guest path, host path, out of guests).
fn cp_plan(a: &CpArgs) -> anyhow::Result<(Option<String>, String, String, bool)> {
    let (to_host, (named, gpath), host) = match (guest_path(&a.src), guest_path(&a.dst)) {
        (None, Some(g)) => (false, g, &a.src),
        (Some(g), None) => (true, g, &a.dst),
        (Some(_), Some(_)) => {
            anyhow::bail!("both SRC and DST are guest paths: one must be a host path")
        }
        (None, None) => anyhow::bail!(
            "neither SRC nor DST is a guest path (write it GUEST:/path, or :/path with \
             --guest or --all)"
        ),
    };
    let guest = match (named, a.guest.as_deref(), a.all) {
        (Some(_), _, true) => {
            anyhow::bail!("--all copies to or from every guest: write the guest path as :/path")
        }
        (Some(n), Some(g), _) if n != g => {
            anyhow::bail!("the guest path names {n} but --guest names {g}")
        }
        (Some(n), _, _) | (None, Some(n), _) => Some(n.to_string()),
        (None, None, true) => None,
        (None, None, false) => {
            anyhow::bail!("which guest? write GUEST:/path, or give --guest G or --all")
        }
    };
    let mut gpath = gpath.to_string();
    if to_host && gpath.ends_with('/') {
        anyhow::bail!("{gpath}: names a directory; hostd cp copies one file out of a guest");
    }
    // Into a guest directory (`g1:/tmp/`): the file keeps its name, as with docker cp.
    if !to_host && gpath.ends_with('/') {
        let name = std::path::Path::new(host)
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("{host}: names no file to copy"))?;
        gpath.push_str(&name.to_string_lossy());
    }
    Ok((guest, gpath, host.clone(), to_host))
}

pub(crate) async fn cp(a: CpArgs) -> anyhow::Result<Done> {
    let (guest, gpath, host, to_host) = cp_plan(&a)?;
    let host = std::path::absolute(&host)?;
    if !to_host {
        // Said here, naming the path as the user wrote it; the daemon checks again.
        let md = std::fs::metadata(&host).map_err(|e| anyhow::anyhow!("{}: {e}", a.src))?;
        if !md.is_file() {
            anyhow::bail!("{}: not a regular file (hostd cp copies one file)", a.src);
        }
    }
    let st = find_fleet(&a.name)?;
    let results = daemon::request_copy(&st, guest, host, gpath.clone(), to_host).await?;
    let mut failed = Vec::new();
    for r in &results {
        match &r.result {
            Ok((bytes, Some(out))) => {
                println!("== {}: {bytes} bytes to {}", r.guest, out.display())
            }
            Ok((bytes, None)) => println!("== {}: {bytes} bytes to {gpath}", r.guest),
            Err(e) => {
                println!("== {}: failed: {e}", r.guest);
                failed.push(format!("{}: {e}", r.guest));
            }
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

/// What the daemon of `hostd up` runs: a fleet on this machine, or one across the nodes of
/// a Slurm allocation.
enum Serving {
    Local {
        images: Vec<hostd::backend::Images>,
        opts: BackendOptions,
    },
    /// The coordinator's options, and whether the daemon must take the allocation itself
    /// (not inside one already).
    Hosts {
        o: Box<hostd::multihost::coordinator::Options>,
        salloc: bool,
    },
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
    let serving = match a.engine {
        Engine::Local => match group_images(a, &file) {
            Ok(images) => Serving::Local { images, opts: backend_options(&a.images) },
            Err(e) => return fail(e),
        },
        Engine::Slurm => match hosts_options(a, &file) {
            Ok(s) => s,
            Err(e) => return fail(format!("{e:#}")),
        },
    };
    let fleet_name = file.name.clone();
    if a.foreground {
        return match daemon_main(serving, file, false, |r| match r {
            Ok(up) => {
                print!("{}", up.text);
                if !up.failed.is_empty() {
                    eprintln!("hostd: finished with failures: {}", up.failed.join("; "));
                }
            }
            Err(e) => eprintln!("hostd: error: {e}"),
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
            let r = daemon_main(serving, file, true, |r| {
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
            });
            if let (Err(e), Some(mut w)) = (&r, report.take()) {
                let _ = std::io::Write::write_all(&mut w, format!("error\n{e:#}").as_bytes());
            }
            std::process::exit(if r.is_ok() { 0 } else { 1 });
        }
    }
}

/// The fleet's daemon, in the process that stays (the forked child, or `hostd up
/// --foreground` itself): its run state, its log (`detach`), the allocation of a fleet
/// across hosts, then the runtime (made here: the fork must come first, and salloc's
/// variables must be set while this process has one thread), serving until down.
fn daemon_main(
    serving: Serving,
    file: daemon::FleetFile,
    detach: bool,
    ready: impl FnOnce(Result<daemon::Up, String>),
) -> anyhow::Result<()> {
    reap_orphans();
    let run = RunState::create("up", None)?;
    if detach {
        detach_stdio(&run.scratch.join("daemon.log"));
    }
    match serving {
        Serving::Local { images, opts } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(daemon::serve(file, images, opts, run, ready))
        }
        Serving::Hosts { o, salloc } => {
            let alloc = if salloc {
                match Allocation::take(o.hosts, &file.name) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        ready(Err(format!("{e:#}")));
                        run.finish();
                        return Err(e);
                    }
                }
            } else {
                None
            };
            let r = tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(daemon::serve_hosts(file, *o, run, ready)));
            if let Some(a) = alloc {
                a.release();
            }
            r
        }
    }
}

/// The coordinator's options of `hostd up --engine slurm`, from the fleet file and the
/// command line; what a fleet across hosts cannot do yet is refused, naming it.
fn hosts_options(a: &UpArgs, file: &daemon::FleetFile) -> anyhow::Result<Serving> {
    let (hosts, in_job) = cli::boot::slurm_hosts(a.slurm.hosts)?;
    if in_job && !a.foreground {
        tracing::warn!(
            "inside an allocation, the fleet lives only as long as the allocation: if it ends when \
             this command returns (salloc -N K hostd up …), use --foreground"
        );
    }
    // Resolved here, once for every host (its sites and matrix span the hosts); the file's
    // `matrix_csv` path was made absolute when the file was loaded.
    let topology = file
        .net
        .as_ref()
        .map(|n| n.resolve(file.total_guests(), std::path::Path::new("/")))
        .transpose()
        .map_err(|e| anyhow::anyhow!("[net]: {e}"))?;
    let exe =
        std::env::current_exe().map_err(|e| anyhow::anyhow!("finding hostd's own path: {e}"))?;
    let o = hostd::multihost::coordinator::Options {
        groups: file
            .resolved
            .iter()
            .map(|g| hostd::multihost::plan::FleetGroup {
                name: g.name.clone(),
                backend: g.kind,
                first: g.first,
                guests: g.guests,
                mem_mib: g.mem_mib,
                vcpus: g.vcpus,
                // The command line's system wins over the file's, as on one machine.
                system: match g.kind {
                    hostd::backend::BackendKind::Native => None,
                    _ => a.images.system.clone().map(|s| (s, a.images.init)).or(g.system.clone()),
                },
            })
            .collect(),
        mode: StartMode::Hot,
        parallelism: file.parallelism,
        boot_timeout: Duration::from_secs(file.boot_timeout_s),
        network: file.network,
        limits: hostd::multihost::proto::SliceLimits {
            memory_mib: file.limits.memory_mib,
            cpus: file.limits.cpus,
            pids: file.limits.pids,
        },
        topology,
        hosts: usize::from(hosts),
        weights: Vec::new(),
        listen: a.slurm.listen,
        lost_after: Duration::from_secs_f64(a.slurm.lost_after),
        // No results directory: a held fleet measures nothing.
        results: PathBuf::new(),
        exe,
        images: None,
        hold: Duration::ZERO,
        reach: a.reach,
        ring: None,
        label: format!("up-slurm-{}", file.name),
        notes: Vec::new(),
    };
    let mut o = o;
    o.images = reference_images(a, &o.systems())?;
    Ok(Serving::Hosts { o: Box::new(o), salloc: !in_job })
}

/// The coordinator's own image hashes, with those of the fleet's system images, which every
/// worker must match; None if this machine has no image store (the first host's are then
/// the reference). A store without one of the systems is an error, naming it.
fn reference_images(
    a: &UpArgs,
    systems: &[String],
) -> anyhow::Result<Option<std::collections::BTreeMap<String, String>>> {
    let Ok(mut images) = hostd::images::resolve(a.images.agent.as_deref()) else {
        return Ok(None);
    };
    for s in systems {
        hostd::images::add_system(&mut images, s, Default::default())
            .map_err(|e| anyhow::anyhow!("the coordinator's image store: {e:#}"))?;
    }
    Ok(Some(images.hashes))
}

/// The allocation a fleet's daemon holds: `salloc -N K` running a command that lives as
/// long as the daemon holds its input open, so that however the daemon ends (down, a
/// signal, SIGKILL: the kernel closes the pipe) Slurm takes the nodes back and cancels the
/// workers' step.
struct Allocation {
    job: String,
    salloc: std::process::Child,
}

impl Allocation {
    /// Asks Slurm for `hosts` nodes (waiting as long as Slurm queues the request), and sets
    /// this process's SLURM_JOB_ID, SLURM_JOB_NUM_NODES and SLURM_JOB_NODELIST as inside
    /// an allocation, so that srun runs the workers in it. Call with one thread only.
    fn take(hosts: usize, name: &str) -> anyhow::Result<Allocation> {
        use std::io::BufRead;
        // The command prints the allocation, then reads its input to the end: the pipe from
        // this daemon (close-on-exec here, so no guest or worker holds it open). At its end
        // salloc gives the nodes back. (`tail --pid` instead lingered up to a second after
        // the daemon, and exited at once when its output was a closed pipe.)
        let script =
            r#"echo "$SLURM_JOB_ID $SLURM_JOB_NUM_NODES $SLURM_JOB_NODELIST"; exec cat >/dev/null"#;
        let mut salloc = std::process::Command::new("salloc")
            .args(["-N", &hosts.to_string(), "--job-name", &format!("vb-up-{name}"), "--"])
            .args(["sh", "-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("running salloc: {e}"))?;
        let mut line = String::new();
        let read =
            std::io::BufReader::new(salloc.stdout.take().expect("piped")).read_line(&mut line);
        let mut words = line.split_whitespace();
        let (Some(job), Some(nodes), Some(list)) = (words.next(), words.next(), words.next())
        else {
            drop(salloc.stdin.take());
            let st = salloc.wait().map_or("?".into(), |s| s.to_string());
            anyhow::bail!(
                "salloc -N {hosts}: no allocation (salloc {st}, read {read:?}, said {line:?}; its messages are in the daemon's log)"
            );
        };
        if nodes.parse::<usize>().ok() != Some(hosts) {
            let a = Allocation { job: job.into(), salloc };
            a.release();
            anyhow::bail!("salloc -N {hosts}: the allocation has {nodes} nodes");
        }
        std::env::set_var("SLURM_JOB_ID", job);
        std::env::set_var("SLURM_JOB_NUM_NODES", nodes);
        std::env::set_var("SLURM_JOB_NODELIST", list);
        eprintln!("hostd: holding Slurm job {job} on {list} until the fleet goes down");
        Ok(Allocation { job: job.into(), salloc })
    }

    /// Gives the nodes back: ends the command's input, so that it and then salloc end;
    /// after 30 s, `scancel JOB` and kills salloc.
    fn release(mut self) {
        drop(self.salloc.stdin.take());
        for _ in 0..300 {
            if !matches!(self.salloc.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("hostd: salloc of job {} still running 30 s on: scancel", self.job);
        match std::process::Command::new("scancel").arg(&self.job).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "hostd: scancel {}: {}: {}",
                self.job,
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("hostd: running scancel {}: {e}", self.job),
        }
        let _ = self.salloc.kill();
        let _ = self.salloc.wait();
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
            // Said here, before the daemon detaches: a container keeps the agent as PID 1.
            if matches!(g.kind, hostd::backend::BackendKind::Ns | hostd::backend::BackendKind::Oci)
            {
                im.system = im.system.take().map(|s| s.for_container(g.kind.name()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_told_from_host_paths() {
        assert_eq!(guest_path("g1:/etc/x"), Some((Some("g1"), "/etc/x")));
        assert_eq!(guest_path(":/tmp/f"), Some((None, "/tmp/f")));
        for host in ["./f", "/tmp/f", "a:b", "G1:/x", "dir/g1:/x", "g1:rel"] {
            assert_eq!(guest_path(host), None, "{host}");
        }
    }

    fn args(src: &str, dst: &str, guest: Option<&str>, all: bool) -> CpArgs {
        CpArgs {
            name: "f".into(),
            src: src.into(),
            dst: dst.into(),
            guest: guest.map(Into::into),
            all,
        }
    }

    #[test]
    fn cp_arguments_are_resolved_docker_style() {
        let p = cp_plan(&args("./a.conf", "g1:/etc/", None, false)).unwrap();
        assert_eq!(p, (Some("g1".into()), "/etc/a.conf".into(), "./a.conf".into(), false));
        let p = cp_plan(&args(":/var/log/x", "out", None, true)).unwrap();
        assert_eq!(p, (None, "/var/log/x".into(), "out".into(), true));
        let p = cp_plan(&args(":/x", "y", Some("g2"), false)).unwrap();
        assert_eq!(p.0.as_deref(), Some("g2"));
        for (a, why) in [
            (args("g1:/a", "g2:/b", None, false), "both"),
            (args("a", "b", None, false), "neither"),
            (args("g1:/a", "b", None, true), "--all"),
            (args("g1:/a", "b", Some("g2"), false), "--guest names"),
            (args(":/a", "b", None, false), "which guest"),
            (args("g1:/etc/", "b", None, false), "directory"),
        ] {
            let e = cp_plan(&a).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
