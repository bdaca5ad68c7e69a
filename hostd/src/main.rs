//! hostd command line: parse, call the library, print.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hostd::backend::{AnyBackend, Backend, BackendKind, BackendOptions};
use hostd::bootrun::{self, BootOptions};
use hostd::campaign::Campaign;
use hostd::daemon;
use hostd::defaults;
use hostd::fleet::{FleetConfig, FleetEvent};
use hostd::limits;
use hostd::microbench::{self, BenchName, BenchOptions};
use hostd::provenance::Provenance;
use hostd::results::ResultsDir;
use hostd::runner;
use hostd::runstate::{self, RunState};
use hostd::startup::StartMode;

mod cli;

use cli::args::*;
use cli::boot::{bench, boot};
use cli::fleet::*;
use cli::run::*;

/// Every step done.
const EXIT_OK: u8 = 0;
/// Stopped by an error (bad input, unavailable backend, I/O); what was recorded is kept.
const EXIT_ERROR: u8 = 1;
/// Finished, but some guests or steps failed; the failures are recorded in the results.
/// (2 is clap's, for a bad command line.)
const EXIT_FAILURES: u8 = 3;

/// Warnings reach the user: a tracing subscriber on stderr (the daemon's log for `hostd up`,
/// whose stderr is that log). -v/-q win over RUST_LOG; without either, RUST_LOG, else warn.
fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (quiet, verbose) {
        (true, _) => Some("error"),
        (false, 0) => None,
        (false, 1) => Some("info"),
        (false, 2) => Some("debug"),
        _ => Some("trace"),
    };
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => match std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()) {
            None => EnvFilter::new("warn"),
            Some(v) => EnvFilter::try_new(&v).unwrap_or_else(|e| {
                eprintln!("hostd: RUST_LOG={v:?} is not a log filter ({e}); using warn");
                EnvFilter::new("warn")
            }),
        },
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    hostd::progress::set_quiet(cli.quiet);
    use_image_store(&cli.cmd);
    // Fleets hold descriptors per guest: the soft limit up to the hard one, once, at start.
    hostd::limits::raise_nofile();
    if let Cmd::Up(a) = &cli.cmd {
        // Forks before any thread exists (the async runtime is made in the child).
        return up(a);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hostd: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(Done::All) => ExitCode::from(EXIT_OK),
        Ok(Done::WithFailures(what)) => {
            eprintln!("hostd: finished with failures: {what}");
            ExitCode::from(EXIT_FAILURES)
        }
        Err(e) => {
            eprintln!("hostd: error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// `--images DIR` is `$VIRTBENCH_IMAGES` on the command line: the store lookup
/// (imagegen's configuration, shared with every library caller) reads the variable, so the
/// flag sets it. Called while the process has one thread (before any runtime or fork).
fn use_image_store(cmd: &Cmd) {
    let args = match cmd {
        Cmd::Bench(a) => &a.images,
        Cmd::Boot(a) => &a.images,
        Cmd::Up(a) => &a.images,
        Cmd::Worker(a) => &a.images,
        Cmd::Run(a) => &a.images,
        Cmd::Probe(a) => &a.images,
        _ => return,
    };
    if let Some(dir) = &args.images {
        std::env::set_var("VIRTBENCH_IMAGES", dir);
    }
}

/// How a command that ran to its end went.
enum Done {
    All,
    /// Some guests or steps failed (recorded in the results): what, in a few words.
    WithFailures(String),
}

async fn run(cli: Cli) -> anyhow::Result<Done> {
    let all = |r: anyhow::Result<()>| r.map(|()| Done::All);
    match cli.cmd {
        Cmd::Bench(a) => all(bench(a).await),
        Cmd::Boot(a) if a.engine == Engine::Slurm => cli::boot::boot_slurm(a).await,
        Cmd::Boot(a) => boot(a).await,
        Cmd::Worker(a) => all(cli::boot::worker(a).await),
        Cmd::Up(_) => unreachable!("handled before the runtime starts"),
        Cmd::Reap => {
            let cleaned = runstate::reap_orphans();
            for c in &cleaned {
                println!("cleaned up after a previous hostd that did not finish: {c}");
            }
            if cleaned.is_empty() {
                println!("nothing to clean up");
            }
            let errors: Vec<String> = cleaned.iter().flat_map(|c| c.errors.clone()).collect();
            if errors.is_empty() {
                Ok(Done::All)
            } else {
                Ok(Done::WithFailures(errors.join("; ")))
            }
        }
        Cmd::Status { name, json } => all(status(name, json).await),
        Cmd::Down { name } => all(down(name).await),
        Cmd::Exec(a) => exec(a).await,
        Cmd::Cp(a) => cp(a).await,
        Cmd::Net { name, cmd } => {
            let st = find_fleet(&name)?;
            // Its daemon records its Slurm job there (daemon/hosts.rs); its guests' links
            // are on the nodes, shaped by their workers.
            if st.scratch.join("slurm.json").exists() {
                anyhow::bail!(
                    "fleet {name} runs across hosts: `hostd net` does not change its shaping \
                     yet (give it in the fleet file's [net])"
                );
            }
            let netns = hostd::netlab::FleetNet::name_of(&st.run);
            let out = hostd::net::run(&cmd, &st.scratch, &netns)
                .map_err(|e| anyhow::anyhow!("fleet {name}: {e}"))?;
            print!("{out}");
            Ok(Done::All)
        }
        Cmd::Run(a) => run_campaign(a).await,
        Cmd::Report { dir, force, export } => {
            let rep = hostd::report::write(&dir, force)?;
            export.write(&hostd::export::of_report(&rep))?;
            println!("report: {}", report_line(&dir, &rep));
            Ok(Done::All)
        }
        Cmd::XenLab(a) => all(hostd::xenlab::main(a).await),
        Cmd::Probe(a) => probe(a).await,
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write as _;
            // Into a buffer first: generate() panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "hostd", &mut script);
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    anyhow::bail!("writing the completion script: {e}")
                }
                _ => Ok(Done::All),
            }
        }
        Cmd::Manpages { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .map_err(|e| anyhow::anyhow!("writing man pages into {}: {e}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(Done::All)
        }
        Cmd::Compare { a, b } => {
            print!("{}", hostd::compare::compare(&a, &b)?);
            Ok(Done::All)
        }
    }
}

async fn probe(a: ProbeArgs) -> anyhow::Result<Done> {
    // Missing images are a backend's reason, not an error: probe with what there is.
    let mut images = hostd::images::resolve(a.images.agent.as_deref()).unwrap_or_else(|e| {
        tracing::warn!("no images ({e:#}): backends that need them will say so");
        hostd::backend::Images::default()
    });
    if let Some(name) = &a.images.system {
        hostd::images::add_system(&mut images, name, a.images.init)?;
    }
    let kinds = if a.backend.is_empty() { BackendKind::ALL.to_vec() } else { a.backend.clone() };
    let r = hostd::probe::probe(&kinds, &images, &backend_options(&a.images)).await;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", hostd::probe::table(&r));
    }
    // Asked about particular backends: the status says whether they can run.
    let missing: Vec<_> =
        r.backends.iter().filter(|b| !b.available).map(|b| b.backend.name()).collect();
    if !a.backend.is_empty() && !missing.is_empty() {
        anyhow::bail!("not available here: {}", missing.join(", "));
    }
    Ok(Done::All)
}

/// The summary line of a written report.
fn report_line(dir: &std::path::Path, rep: &hostd::report::Report) -> String {
    let mut l = format!(
        "{} ({} backends measured, {} unavailable, {} failed steps)",
        dir.join("index.html").display(),
        rep.probes.len(),
        rep.unavailable.len(),
        rep.failed_steps.len()
    );
    if rep.unreadable_records + rep.implausible_records > 0 {
        l.push_str(&format!(
            "; samples.jsonl: {} unreadable line(s), {} record(s) left out as outside physical sense",
            rep.unreadable_records, rep.implausible_records
        ));
    }
    l
}

/// `--mem-n`: a positive number or "auto" ([`hostd::fidelity::AUTO`]).
fn parse_mem_n(s: &str) -> Result<u32, String> {
    if s == "auto" {
        return Ok(hostd::fidelity::AUTO);
    }
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive matrix side or \"auto\"")),
    }
}

fn stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "-")
}

/// Resolves the images and says what is stale or missing.
fn images_or_note(a: &ImageArgs) -> anyhow::Result<hostd::backend::Images> {
    let mut images = hostd::images::resolve(a.agent.as_deref())?;
    if let Some(name) = &a.system {
        hostd::images::add_system(&mut images, name, a.init)?;
    }
    for n in &images.notes {
        eprintln!("hostd: note: {n}");
    }
    Ok(images)
}

fn backend_options(a: &ImageArgs) -> BackendOptions {
    BackendOptions {
        oci_runtime: a.oci_runtime.clone(),
        accel: a.accel.clone(),
        qemu: a.qemu.clone(),
        firecracker: a.firecracker.clone(),
    }
}

/// Releases what earlier, killed hostd runs left behind, and says so.
fn reap_orphans() {
    for c in runstate::reap_orphans() {
        eprintln!("hostd: cleaned up after a previous hostd that did not finish: {c}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand and every argument (flags, options, positionals) says what it is:
    /// `--help` is the first documentation a user reads.
    #[test]
    fn every_argument_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sc in c.get_subcommands() {
                if sc.get_name() == "help" {
                    continue;
                }
                let p = format!("{path} {}", sc.get_name());
                if sc.get_about().is_none() {
                    missing.push(format!("{p} (no about)"));
                }
                walk(sc, &p, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "hostd", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }

    /// Enum-valued options list their values in the help.
    #[test]
    fn enums_list_their_values() {
        let mut cmd = Cli::command();
        let boot = cmd.find_subcommand_mut("boot").unwrap();
        let help = boot.render_long_help().to_string();
        for v in ["native", "qemu-microvm", "xen"] {
            assert!(help.contains(v), "boot --help lacks backend {v}: {help}");
        }
        assert!(help.contains("cold") && help.contains("hot"), "{help}");
    }

    /// Per-machine settings come from the environment too, and --help says which variable.
    #[test]
    fn machine_settings_have_environment_variables() {
        let mut cmd = Cli::command();
        let boot = cmd.find_subcommand_mut("boot").unwrap().render_long_help().to_string();
        for v in [
            "VIRTBENCH_IMAGES",
            "VIRTBENCH_RESULTS",
            "VIRTBENCH_QEMU",
            "VIRTBENCH_FIRECRACKER",
            "VIRTBENCH_OCI_RUNTIME",
            "VIRTBENCH_ACCEL",
        ] {
            assert!(boot.contains(&format!("[env: {v}")), "boot --help lacks {v}: {boot}");
        }
    }

    /// `hostd bench` and `hostd boot` without options measure what a default campaign
    /// measures: one set of defaults (hostd::defaults), not one per command.
    #[test]
    fn bench_boot_and_campaign_share_their_defaults() {
        let c: Campaign = toml::from_str("").unwrap();
        let Cmd::Bench(b) = Cli::try_parse_from(["hostd", "bench"]).unwrap().cmd else {
            unreachable!()
        };
        let w = &c.workloads;
        assert_eq!(
            (b.cpu_rounds, b.mem_n, b.mem_passes, b.disk_mib, b.disk_block_kib),
            (w.cpu_rounds, w.mem_n, w.mem_passes, w.disk_mib, w.disk_block_kib)
        );
        assert_eq!((b.net_duration_ms, b.net_msg_size), (w.net_duration_ms, w.net_msg_size));
        assert_eq!((b.reps, b.warmup), (c.reps, c.warmup));
        assert_eq!(
            (b.hello_timeout, b.bench_timeout),
            (c.guest.boot_timeout_s, c.guest.bench_timeout_s)
        );
        let Cmd::Boot(o) = Cli::try_parse_from(["hostd", "boot", "--backend", "ns"]).unwrap().cmd
        else {
            unreachable!()
        };
        assert_eq!((o.sizes, o.modes), (c.startup.sizes, c.startup.modes));
        assert_eq!(
            (o.settle, o.mem_mib, o.vcpus),
            (c.startup.settle_s, c.guest.mem_mib, c.guest.vcpus)
        );
        assert_eq!(o.boot_timeout, c.guest.boot_timeout_s);
    }

    #[test]
    fn completions_and_man_pages() {
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "hostd", &mut out);
        let bash = String::from_utf8(out).unwrap();
        assert!(
            bash.contains("complete -F") && bash.contains("probe") && bash.contains("--backend"),
            "{bash}"
        );
        let d = tempfile::tempdir().unwrap();
        clap_mangen::generate_to(Cli::command(), d.path()).unwrap();
        let boot = std::fs::read_to_string(d.path().join("hostd-boot.1")).unwrap();
        assert!(boot.contains("qemu\\-microvm") || boot.contains("qemu-microvm"), "{boot}");
    }
}
