//! `hostd up --engine slurm`: the daemon of a fleet spread over the nodes of a Slurm
//! allocation. It runs the multi-host coordinator (the workers are one job step that stays
//! running), keeps the fleet up until `hostd down` or a termination signal, and answers
//! `hostd status` with every host's guests, ready or lost, on the same control socket as a
//! one-machine fleet.

use super::*;
use crate::multihost::coordinator::{self, HostStatus};

/// A fleet across hosts in `hostd status`: its Slurm job and every host with its guests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostsFleet {
    /// The allocation's job id (`scancel JOB` ends it).
    pub job: Option<String>,
    pub hosts: Vec<HostStatus>,
}

/// What the daemon records beside its run state (`<scratch>/slurm.json`): the job and its
/// nodes, so that whoever finds the fleet (status, down, an operator after a crash) knows
/// where it ran.
#[derive(Debug, Serialize, Deserialize)]
pub struct SlurmState {
    pub job: Option<String>,
    pub nodelist: Option<String>,
    pub hosts: usize,
    pub guests: usize,
}

fn status(name: &str, run: &RunState, o: &coordinator::Options, hosts: Vec<HostStatus>) -> Status {
    Status {
        name: name.into(),
        run: run.run.clone(),
        backend: o.backends().iter().map(|b| b.name()).collect::<Vec<_>>().join("+"),
        daemon_pid: std::process::id(),
        netns: None,
        guests: Vec::new(),
        failures: Vec::new(),
        hosts: Some(HostsFleet { job: std::env::var("SLURM_JOB_ID").ok(), hosts }),
    }
}

/// Guests not ready, and why, in a few words each (empty when every guest is ready).
pub fn not_ready(s: &HostsFleet) -> Vec<String> {
    let mut out = Vec::new();
    for h in &s.hosts {
        if let Some(l) = &h.lost {
            out.push(format!("host {}: {} guests lost: {l}", h.hostname, h.count));
            continue;
        }
        for g in h.guests.iter().filter(|g| g.state != coordinator::GuestState::Ready) {
            out.push(format!(
                "{} on {}: {}",
                g.name,
                h.hostname,
                g.error.as_deref().unwrap_or("?")
            ));
        }
    }
    out
}

/// The daemon of a fleet across hosts, inside the allocation the caller holds (its
/// `SLURM_*` variables set): starts it, runs the file's `commands` in every ready guest,
/// reports through `ready` as [`serve`] does, serves status, exec, cp and down until down
/// or SIGTERM/SIGINT, then tears down on every host.
pub async fn serve_hosts(
    file: FleetFile,
    o: coordinator::Options,
    run: RunState,
    ready: impl FnOnce(Result<Up, String>),
) -> anyhow::Result<()> {
    let name = file.name.clone();
    let listener = UnixListener::bind(socket_path(&run))?;
    write_slurm_state(&run, &o)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let started = tokio::select! {
        r = coordinator::up(&o) => Some(r),
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
    };
    // Interrupted or failed: the coordinator's links are gone, so the workers tear down
    // by themselves; the caller releases the allocation.
    let mut fleet = match started {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            ready(Err(format!("{e:#}")));
            run.finish();
            return Err(e);
        }
        None => {
            ready(Err("interrupted while the fleet started".into()));
            run.finish();
            anyhow::bail!("interrupted while the fleet started");
        }
    };
    let first = status(&name, &run, &o, fleet.hosts());
    let short = first.hosts.as_ref().map(not_ready).unwrap_or_default();
    if first.hosts.as_ref().is_some_and(|h| h.hosts.iter().all(|h| h.lost.is_some())) {
        let why = format!("no host kept its slice: {}", short.join("; "));
        ready(Err(why.clone()));
        for r in fleet.down().await.1 {
            eprintln!("hostd: {r}");
        }
        run.finish();
        anyhow::bail!(why);
    }
    let name_link = fleet_link(&name);
    let _ = std::fs::create_dir_all(name_link.parent().expect("has parent"));
    let _ = std::fs::remove_file(&name_link);
    let _ = std::os::unix::fs::symlink(&run.scratch, &name_link);
    let commands = commands_on_hosts(&file, &run, &mut fleet).await;
    let mut text = format_status(&status(&name, &run, &o, fleet.hosts()));
    text.push_str(&commands.text);
    let mut failed = short;
    failed.extend(commands.failed);
    ready(Ok(Up { text, failed }));
    let (incoming_tx, mut incoming) = tokio::sync::mpsc::channel::<Incoming>(64);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            // A host whose worker dies: its guests are shown lost, the others stay up.
            why = fleet.watch() => eprintln!("hostd: {why}"),
            conn = listener.accept() => {
                let Ok((conn, _)) = conn else { continue };
                tokio::spawn(read_request(conn, incoming_tx.clone()));
            }
            Some(Incoming { req, reply }) = incoming.recv() => match req {
                Ok(ControlRequest::Status) => {
                    answer(reply, ControlAnswer::Status(status(&name, &run, &o, fleet.hosts()))).await
                }
                Ok(ControlRequest::Down) => {
                    answer(reply, ControlAnswer::GoingDown).await;
                    break;
                }
                // Served off this loop, through each guest's worker (whose answers this
                // loop's `watch` routes).
                Ok(work) => {
                    let guest = request_guest(&work).expect("status and down are answered above");
                    match fleet.guests(guest.as_deref()) {
                        Ok(g) => {
                            let targets = g.into_iter().map(Target::on_host).collect();
                            tokio::spawn(on_guests(work, targets, reply));
                        }
                        Err(error) => answer(reply, ControlAnswer::Error { error }).await,
                    }
                }
                Err(error) => answer(reply, ControlAnswer::Error { error }).await,
            }
        }
    }
    eprintln!("hostd: tearing the fleet down on every host");
    let (recs, reaped) = fleet.down().await;
    say_teardown(recs, reaped);
    let _ = std::fs::remove_file(&name_link);
    run.finish();
    Ok(())
}

/// Runs the file's `commands` in every ready guest, through their workers, whose answers
/// come in on the links `watch` reads: it runs beside them (and says so if a host is lost
/// meanwhile: its guests' calls then fail naming it).
async fn commands_on_hosts(
    file: &FleetFile,
    run: &RunState,
    fleet: &mut coordinator::Held,
) -> CommandsRun {
    let ready_now = fleet.guests(None).map(|g| g.into_iter().map(Target::on_host).collect());
    let commands = run_commands(file, run, || ready_now.clone());
    tokio::pin!(commands);
    loop {
        tokio::select! {
            c = &mut commands => break c,
            why = fleet.watch() => eprintln!("hostd: {why}"),
        }
    }
}

/// Records the allocation's job and nodes beside the run state (`slurm.json`).
fn write_slurm_state(run: &RunState, o: &coordinator::Options) -> anyhow::Result<()> {
    let state = SlurmState {
        job: std::env::var("SLURM_JOB_ID").ok(),
        nodelist: std::env::var("SLURM_JOB_NODELIST").ok(),
        hosts: o.hosts,
        guests: o.n(),
    };
    crate::runstate::write_atomic(
        &run.scratch.join("slurm.json"),
        &serde_json::to_vec_pretty(&state)?,
    )
    .map_err(|e| anyhow::anyhow!("writing the fleet's Slurm state: {e}"))
}

/// One line per host on how its teardown went, then what was reaped on lost hosts.
fn say_teardown(recs: Vec<coordinator::HostRecord>, reaped: Vec<String>) {
    for h in recs {
        match (&h.teardown, &h.teardown_error, &h.lost) {
            (Some(t), _, _) if t.leftovers.is_empty() => {
                eprintln!(
                    "hostd: host {}: torn down ({} clean, {} killed)",
                    h.hostname, t.clean, t.killed
                )
            }
            (Some(t), _, _) => {
                eprintln!(
                    "hostd: host {}: left after teardown: {}",
                    h.hostname,
                    t.leftovers.join("; ")
                )
            }
            (None, Some(e), _) => eprintln!("hostd: host {}: teardown: {e}", h.hostname),
            (None, None, Some(l)) => eprintln!("hostd: host {}: lost ({l})", h.hostname),
            (None, None, None) => {}
        }
    }
    for r in reaped {
        eprintln!("hostd: {r}");
    }
}

/// `hostd status`'s text for a fleet across hosts.
pub(super) fn format_hosts(s: &Status, h: &HostsFleet) -> String {
    let mut out = format!(
        "fleet {} (run {}, backend {}, daemon pid {}, Slurm job {}, {} hosts)\n",
        s.name,
        s.run,
        s.backend,
        s.daemon_pid,
        h.job.as_deref().unwrap_or("?"),
        h.hosts.len()
    );
    for host in &h.hosts {
        let ready =
            host.guests.iter().filter(|g| g.state == coordinator::GuestState::Ready).count();
        let clock = match (host.offset_s, host.bound_s) {
            (Some(o), Some(b)) => format!(", clock {o:+.6} s ± {b:.6} s"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "host {} ({}, guests {}{}{}): ",
            host.hostname,
            host.addr,
            crate::multihost::proto::SlicePart::describe(&host.parts),
            host.run.as_ref().map(|r| format!(", netns vb-{r}")).unwrap_or_default(),
            clock
        ));
        match &host.lost {
            Some(l) => out.push_str(&format!("LOST: {l}\n")),
            None => out.push_str(&format!("{ready} of {} ready\n", host.count)),
        }
        if let Some(r) = &host.reach {
            out.push_str(&format!(
                "  reach: {} of {} exchanges with guests on other hosts\n",
                r.reached, r.checked
            ));
        }
    }
    out.push_str(&format!(
        "{:<8} {:<12} {:<16} {:<12} {:<7} {:>10}\n",
        "guest", "group", "address", "host", "state", "ready s"
    ));
    for host in &h.hosts {
        for g in &host.guests {
            let state = match g.state {
                coordinator::GuestState::Ready => "ready",
                coordinator::GuestState::Failed => "FAILED",
                coordinator::GuestState::Lost => "LOST",
            };
            out.push_str(&format!(
                "{:<8} {:<12} {:<16} {:<12} {:<7} {:>10}\n",
                g.name,
                g.group,
                g.addr.as_deref().unwrap_or("-"),
                host.hostname,
                state,
                g.ready_after_s.map_or("-".into(), |t| format!("{t:.3}"))
            ));
        }
    }
    out
}
