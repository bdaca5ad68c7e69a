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

/// Every step done.
const EXIT_OK: u8 = 0;
/// Stopped by an error (bad input, unavailable backend, I/O); what was recorded is kept.
const EXIT_ERROR: u8 = 1;
/// Finished, but some guests or steps failed; the failures are recorded in the results.
/// (2 is clap's, for a bad command line.)
const EXIT_FAILURES: u8 = 3;

#[derive(Parser)]
#[command(
    name = "hostd",
    version,
    about = "Boot guest fleets and measure them the way Quétier, Neri and Cappello did",
    after_help = "Exit status: 0 every step done; 1 stopped by an error (bad input, unavailable backend, I/O; \
                  what was recorded is kept); 2 bad command line; 3 finished, but some guests or steps failed \
                  (recorded in the results); 130 interrupted (Ctrl-C; `hostd run --resume DIR` continues a \
                  campaign).\n\
                  Warnings and errors go to stderr (RUST_LOG=info|debug, or -v, for more; -q for errors only)."
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); overrides RUST_LOG.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr; overrides RUST_LOG.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

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

#[derive(Subcommand)]
enum Cmd {
    /// Run the paper's microbenchmarks (CPU, memory, disk, network) in one guest.
    Bench(BenchArgs),
    /// Measure concurrent cold/hot startup and memory occupation of fleets, then tear down.
    Boot(BootArgs),
    /// Boot the fleet a fleet file describes and keep it running in the background.
    Up(UpArgs),
    /// Show running fleets (all, or the one named).
    Status {
        /// The fleet's name (from its fleet file); all running fleets when left out.
        name: Option<String>,
        /// Print a JSON array of the fleets' status (name, run, backend, guests with
        /// address and host pid) instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// Change or show the emulated network of a running fleet (link delay, rate, loss, …:
    /// docs/campaigns.md, "Emulated network"), without restarting its guests.
    Net {
        /// The fleet's name (as `hostd status` lists it).
        name: String,
        #[command(subcommand)]
        cmd: hostd::net::NetCmd,
    },
    /// Tear a running fleet down.
    Down {
        /// The fleet's name (as `hostd status` lists it).
        name: String,
    },
    /// Run a program in a running fleet's guests (`hostd exec web -- cat /etc/os-release`):
    /// each guest's output and exit status; fails if any did not exit 0.
    Exec(ExecArgs),
    /// Run a campaign: startup, memory and the whole suite on every backend, then the report.
    Run(RunArgs),
    /// Rebuild a results directory's report from its stored samples. Refuses a directory
    /// that is not a results directory (one with a samples.jsonl), and refuses to replace a
    /// report built from more data than the samples now hold (missing, cut or swapped
    /// samples) unless --force.
    Report {
        /// The results directory (one with a samples.jsonl), e.g. results/<date>-run-default-<id>.
        dir: PathBuf,
        /// Replace the report even with one built from less data.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// Show two runs' main figures side by side (both must be results directories).
    Compare {
        /// The first results directory (the reference).
        a: PathBuf,
        /// The second results directory, shown against the first.
        b: PathBuf,
    },
    /// Measure the xen backend on a Xen host emulated by QEMU (for hosts that are not Xen).
    XenLab(hostd::xenlab::LabArgs),
    /// Say which backends work on this host and why not, with the VMM/runtime versions, the
    /// accelerator QEMU would use and why, and the host facts that shape results (SMT, THP,
    /// KSM, cpufreq governor, cgroup mode). Exit status 0 whether or not backends are
    /// available; 1 if a named --backend is not.
    Probe(ProbeArgs),
    /// Print a shell completion script to stdout (e.g. `hostd completions bash >
    /// /etc/bash_completion.d/hostd`).
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Write man pages (hostd.1 and one per subcommand, hostd-boot.1, …) into a directory.
    Manpages {
        /// Directory to write them into (created if missing).
        dir: PathBuf,
    },
}

#[derive(Args)]
struct ProbeArgs {
    /// Probe only these backends (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    backend: Vec<BackendKind>,
    /// Print machine-readable JSON (`schema_version`, `host`, `backends[]` with `backend`,
    /// `available`, `detail`) instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    images: ImageArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Campaign file (default: hostd/campaigns/default.toml as built in).
    campaign: Option<PathBuf>,
    /// Scale every size and workload down to a few minutes' worth.
    #[arg(long)]
    quick: bool,
    /// Continue an interrupted run in this results directory (its stored campaign is used).
    #[arg(long, conflicts_with_all = ["campaign", "quick"])]
    resume: Option<PathBuf>,
    /// With --resume: go on even if the artifacts, hostd or the host differ from those the
    /// run's samples came from (the report then lists every provenance).
    #[arg(long, requires = "resume")]
    force_mixed: bool,
    /// Check the campaign against this host and print what it would run, where it departs
    /// from the paper, and exit without booting anything.
    #[arg(long, conflicts_with = "resume")]
    dry_run: bool,
    /// With --dry-run: price the estimated time with the boot and benchmark costs measured
    /// in this results directory [default: the newest results directory of the same
    /// campaign under --results, else conservative defaults, said so].
    #[arg(long, value_name = "DIR", requires = "dry_run")]
    estimate_from: Option<PathBuf>,
    /// Parent directory of the results directory.
    #[arg(long, default_value = "results", env = "VIRTBENCH_RESULTS")]
    results: PathBuf,
    #[command(flatten)]
    images: ImageArgs,
}

#[derive(Args)]
struct UpArgs {
    /// Fleet file (TOML; see docs/fleets.md).
    file: PathBuf,
    /// Stay in the foreground instead of detaching.
    #[arg(long)]
    foreground: bool,
    #[command(flatten)]
    images: ImageArgs,
}

/// Exports beside the human table, in the shapes hyperfine users script against.
#[derive(Args)]
struct ExportArgs {
    /// Also write the results as hyperfine-shaped JSON (results[] with command, mean,
    /// stddev, median, min, max, times; schema: docs/schema/export.schema.json).
    #[arg(long, value_name = "FILE")]
    export_json: Option<PathBuf>,
    /// Also write the results as CSV (one row per result).
    #[arg(long, value_name = "FILE")]
    export_csv: Option<PathBuf>,
    /// Also write the results as a Markdown table.
    #[arg(long, value_name = "FILE")]
    export_markdown: Option<PathBuf>,
}

impl ExportArgs {
    fn write(&self, e: &hostd::export::Export) -> anyhow::Result<()> {
        let t = hostd::export::Targets {
            json: self.export_json.clone(),
            csv: self.export_csv.clone(),
            markdown: self.export_markdown.clone(),
        };
        hostd::export::write(e, &t)?;
        Ok(())
    }
}

/// Where images come from and how backends run.
#[derive(Args)]
struct ImageArgs {
    /// Guest-agent binary (default: the imagegen store, then $VIRTBENCH_AGENT, then this workspace's musl build).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Image store to boot from (default: <workspace>/images, as imagegen builds it).
    #[arg(long, value_name = "DIR", env = "VIRTBENCH_IMAGES")]
    images: Option<PathBuf>,
    /// OCI runtime for the oci backend.
    #[arg(long, default_value = "runc", env = "VIRTBENCH_OCI_RUNTIME")]
    oci_runtime: String,
    /// QEMU accelerator (kvm or tcg); default: probe KVM with a real boot, else TCG.
    #[arg(long, env = "VIRTBENCH_ACCEL")]
    accel: Option<String>,
    /// QEMU system emulator for the qemu-* backends (name on PATH or path).
    #[arg(long, default_value = "qemu-system-x86_64", env = "VIRTBENCH_QEMU")]
    qemu: String,
    /// Firecracker binary for the firecracker backend (name on PATH or path).
    #[arg(long, default_value = "firecracker", env = "VIRTBENCH_FIRECRACKER")]
    firecracker: String,
    /// Boot guests from this system image (a root file system recipe in the image store,
    /// e.g. debian-bookworm, built with `imagegen build NAME`) instead of the agent's own.
    #[arg(long, value_name = "RECIPE")]
    system: Option<String>,
    /// With --system: PID 1 is the agent, or the image's own /sbin/init with the agent as
    /// its service.
    #[arg(long, value_enum, default_value = "agent", requires = "system")]
    init: hostd::backend::rootdisk::InitMode,
}

#[derive(Args)]
struct ExecArgs {
    /// The fleet's name (as `hostd status` lists it).
    name: String,
    /// Only this guest (default: every guest of the fleet).
    #[arg(long)]
    guest: Option<String>,
    /// Seconds the program may run in each guest before it is killed.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    timeout: u64,
    /// Bytes of stdout and of stderr kept from each guest (at most 65536).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(0..=65536))]
    output_max: u32,
    /// NAME=VALUE for the program's environment (repeatable; nothing else is inherited but a
    /// default PATH).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Working directory in the guest.
    #[arg(long)]
    cwd: Option<String>,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

#[derive(Args)]
struct BootArgs {
    /// Backend to boot the fleets on (`hostd probe` says which work here).
    #[arg(long)]
    backend: BackendKind,
    /// Fleet sizes, comma-separated and increasing, each 1-1000; each is booted cold, then hot.
    #[arg(short = 'n', long = "sizes", value_delimiter = ',', default_values_t = defaults::STARTUP_SIZES, value_parser = limits::GUESTS.cli::<usize>())]
    sizes: Vec<usize>,
    /// Start modes, in order.
    #[arg(long, value_delimiter = ',', default_value = "cold,hot")]
    modes: Vec<StartMode>,
    /// Guest memory, MiB (32-1048576).
    #[arg(long, default_value_t = defaults::MEM_MIB, value_parser = limits::MEM_MIB.cli::<u32>())]
    mem_mib: u32,
    /// vCPUs per guest (1-64).
    #[arg(long, default_value_t = defaults::VCPUS, value_parser = limits::VCPUS.cli::<u32>())]
    vcpus: u32,
    /// Most guests launching at once (0: all together, as the paper does; at most 1000).
    #[arg(long, default_value_t = 0, value_parser = limits::PARALLELISM.cli::<usize>())]
    parallelism: usize,
    /// Seconds from a guest's launch request to its ready message before it counts as
    /// failed (1-86400 s; a number of seconds or a duration such as 90s, 5m).
    #[arg(long, default_value_t = defaults::BOOT_TIMEOUT_S, value_parser = limits::BOOT_TIMEOUT_S.cli_secs())]
    boot_timeout: u64,
    /// Seconds the booted fleet idles before memory is read (0-3600 s; seconds or e.g. 30s, 1m).
    #[arg(long, default_value_t = defaults::SETTLE_S, value_parser = limits::SETTLE_S.cli_secs())]
    settle: u64,
    /// Do not attach guests to a fleet network.
    #[arg(long)]
    no_network: bool,
    /// Boot each guest from its own copies of the images (the paper's setting: each VM its
    /// own image), made under /var/tmp/virtbench/<run>/ and removed after each fleet.
    #[arg(long)]
    image_copies: bool,
    /// Pairs of hot starts compared with the backend's floor (bare fork+exec for
    /// containers, a bare VMM boot for VMs); 0 skips the comparison (at most 100).
    #[arg(long, default_value_t = 5, value_parser = limits::FLOOR_REPS.cli::<usize>())]
    floor_reps: usize,
    /// Parent directory of the results directory.
    #[arg(long, default_value = "results", env = "VIRTBENCH_RESULTS")]
    results: PathBuf,
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    export: ExportArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Backend to run the guest on.
    #[arg(long, default_value = "native")]
    backend: BackendKind,
    /// Benchmarks to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "cpu,memory,disk,net_stream,net_rr")]
    bench: Vec<BenchName>,
    /// Counted repetitions of each benchmark (1-1000).
    #[arg(long, default_value_t = defaults::REPS, value_parser = limits::REPS.cli::<u32>())]
    reps: u32,
    /// Discarded warm-up runs before the counted ones (0-10).
    #[arg(long, default_value_t = defaults::WARMUP, value_parser = limits::WARMUP.cli::<u32>())]
    warmup: u32,
    /// Concurrent copies of each benchmark inside the guest.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    instances: u32,
    /// CPU: Newton steps towards √2.
    #[arg(long, default_value_t = defaults::CPU_ROUNDS)]
    cpu_rounds: u64,
    /// Memory: matrix side n (three n×n f64 matrices), or "auto": the smallest whose
    /// working set is 4 × this host's last-level cache.
    #[arg(long, default_value = "auto", value_parser = parse_mem_n)]
    mem_n: u32,
    /// Memory: passes of C = A + B + C.
    #[arg(long, default_value_t = defaults::MEM_PASSES)]
    mem_passes: u32,
    /// Disk: file or block device to read (default: the image store's data disk, else a fresh
    /// file of --disk-mib in the work directory).
    #[arg(long)]
    disk_file: Option<PathBuf>,
    /// Disk: size of the file created when --disk-file is not given, MiB (1-1048576).
    #[arg(long = "disk-mib", alias = "disk-mb", default_value_t = defaults::DISK_MIB, value_parser = limits::DISK_MIB.cli::<u64>())]
    disk_mib: u64,
    /// Disk: read block size, KiB (dd's bs).
    #[arg(long, default_value_t = defaults::DISK_BLOCK_KIB)]
    disk_block_kib: u32,
    /// Network: duration of each stream and request/response run, ms.
    #[arg(long, default_value_t = defaults::NET_DURATION_MS)]
    net_duration_ms: u32,
    /// Network: size of each stream write, bytes (iperf3's default is 131072).
    #[arg(long, default_value_t = defaults::NET_MSG_SIZE)]
    net_msg_size: u32,
    /// Network: request and response size for net_rr, bytes.
    #[arg(long, default_value_t = 1)]
    rr_size: u32,
    #[command(flatten)]
    images: ImageArgs,
    /// Seconds to wait for the guest's ready message (1-86400 s; seconds or e.g. 30s, 2m).
    #[arg(long, default_value_t = defaults::BOOT_TIMEOUT_S, value_parser = limits::BOOT_TIMEOUT_S.cli_secs())]
    hello_timeout: u64,
    /// Seconds one benchmark request may take (1-86400 s; seconds or e.g. 10m, 1h).
    #[arg(long, default_value_t = defaults::BENCH_TIMEOUT_S, value_parser = limits::BENCH_TIMEOUT_S.cli_secs())]
    bench_timeout: u64,
    /// Print machine-readable JSON instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    export: ExportArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    hostd::progress::set_quiet(cli.quiet);
    use_image_store(&cli.cmd);
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
        Cmd::Boot(a) => boot(a).await,
        Cmd::Up(_) => unreachable!("handled before the runtime starts"),
        Cmd::Status { name, json } => all(status(name, json).await),
        Cmd::Down { name } => all(down(name).await),
        Cmd::Exec(a) => exec(a).await,
        Cmd::Net { name, cmd } => {
            let st = find_fleet(&name)?;
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

/// The campaign a results directory was started with, checked; errors name the file.
fn stored_campaign(dir: &std::path::Path) -> anyhow::Result<Campaign> {
    hostd::results::check_dir(dir)?;
    let path = dir.join("campaign.toml");
    let bytes = match hostd::results::read_file(&path, hostd::results::MAX_FILE_BYTES) {
        Err(hostd::results::ReadError::Missing { .. }) => anyhow::bail!(
            "{} is not a campaign results directory: it has no campaign.toml",
            dir.display()
        ),
        r => r?,
    };
    let text = String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let c: Campaign =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    c.check().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(c)
}

/// A fresh run's results directory, named after the campaign and the run (unique even for
/// runs started in the same second), with the campaign and provenance written. Removed
/// again if they cannot be written: nothing half-made is left.
fn new_results(
    base: &std::path::Path,
    campaign: &Campaign,
    run: &RunState,
    images: &hostd::backend::Images,
) -> anyhow::Result<ResultsDir> {
    let results =
        ResultsDir::create_unique(base, &format!("{}-run-{}-{}", stamp(), campaign.name, run.run))?;
    let written = (|| {
        results.write("campaign.toml", toml::to_string(campaign)?.as_bytes())?;
        let mut provenance = Provenance::collect(images.hashes.clone());
        provenance.notes.push(format!("campaign {}", campaign.name));
        results.write_json("provenance.json", &provenance)?;
        anyhow::Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&results.path);
        return Err(e);
    }
    Ok(results)
}

/// Whether a results directory holds no sample at all.
fn nothing_recorded(dir: &std::path::Path) -> bool {
    std::fs::metadata(dir.join(hostd::results::SAMPLES)).is_ok_and(|m| m.len() == 0)
}

async fn run_campaign(a: RunArgs) -> anyhow::Result<Done> {
    // Everything that can be checked is, before anything is made.
    let campaign = match (&a.resume, &a.campaign) {
        (Some(dir), _) => stored_campaign(dir)?,
        (None, Some(p)) => Campaign::load(p).map_err(anyhow::Error::msg)?,
        (None, None) => Campaign::default_campaign(),
    };
    let campaign = if a.quick { campaign.quick() } else { campaign };
    if a.dry_run {
        let host = hostd::campaign::HostFacts::here();
        campaign
            .check_host(&host)
            .map_err(|e| anyhow::anyhow!("campaign {}: {e}", campaign.name))?;
        let from = a
            .estimate_from
            .clone()
            .or_else(|| hostd::estimate::latest_results(&a.results, &campaign.name));
        let measured = match &from {
            Some(d) => hostd::estimate::Measured::read(d)?,
            None => hostd::estimate::Measured::default(),
        };
        for l in dry_run_lines(&campaign, &host, &measured) {
            println!("{l}");
        }
        return Ok(Done::All);
    }
    let images = images_or_note(&a.images)?;
    reap_orphans();
    let run = RunState::create("run", Some(a.resume.clone().unwrap_or_else(|| a.results.clone())))?;
    let made = match &a.resume {
        Some(dir) => ResultsDir::open(dir).map_err(anyhow::Error::from),
        None => new_results(&a.results, &campaign, &run, &images),
    };
    let mut results = match made {
        Ok(r) => r,
        Err(e) => {
            run.finish();
            return Err(e);
        }
    };
    eprintln!("hostd: campaign {} → {}", campaign.name, results.path.display());
    let bar = run_progress(&campaign, &mut results);
    let mut say = |l: String| {
        hostd::progress::line(&bar, &l);
        bar.set_message(l.trim().chars().take(70).collect::<String>());
    };
    let bopts = backend_options(&a.images);
    let mixing = if a.force_mixed { runner::Mixing::Allow } else { runner::Mixing::Refuse };
    let outcome = tokio::select! {
        r = runner::run(&campaign, &images, &bopts, &run, &mut results, mixing, &mut say) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    bar.finish_and_clear();
    // What `--dry-run` predicts, counted: checkable against its plan.
    eprintln!("hostd: booted {}", runner::Boots::so_far());
    let cleaned = run.finish();
    // A fresh run that failed before recording anything leaves nothing behind: there is
    // nothing to resume or report.
    if let (Some(Err(_)), None) = (&outcome, &a.resume) {
        if nothing_recorded(&results.path) {
            match std::fs::remove_dir_all(&results.path) {
                Ok(()) => {
                    eprintln!("hostd: removed {}: the run recorded nothing", results.path.display())
                }
                Err(e) => eprintln!(
                    "hostd: could not remove {} (the run recorded nothing): {e}",
                    results.path.display()
                ),
            }
            return outcome.expect("matched").map(|()| Done::All);
        }
    }
    let report = hostd::report::write(&results.path, false);
    match outcome {
        None => {
            eprintln!(
                "hostd: interrupted; {cleaned}; resume with: hostd run --resume {}",
                results.path.display()
            );
            std::process::exit(130);
        }
        Some(r) => {
            r?;
            let rep = report?;
            println!("report: {}", report_line(&results.path, &rep));
            Ok(match rep.failed_steps.len() {
                0 => Done::All,
                k => Done::WithFailures(format!(
                    "{k} failed step{} (listed in {})",
                    if k == 1 { "" } else { "s" },
                    results.path.join("index.html").display()
                )),
            })
        }
    }
}

/// `hostd run`'s bar: step k of the campaign's N with ETA, counting the steps recorded
/// (those a resumed run already has included).
fn run_progress(campaign: &Campaign, results: &mut ResultsDir) -> indicatif::ProgressBar {
    let plans = campaign.resolved_plans(hostd::fidelity::llc());
    let total = runner::planned_steps(campaign, &plans, runner::xen_in_lab(campaign)) as u64;
    let done = hostd::results::read_records::<hostd::samples::Record>(&results.path)
        .map(|(r, _)| {
            r.iter().filter(|r| matches!(r, hostd::samples::Record::StepDone { .. })).count()
        })
        .unwrap_or(0) as u64;
    let bar = hostd::progress::steps(total.max(done), "step");
    bar.set_position(done);
    bar.reset_eta();
    let b = bar.clone();
    results.observe(move |line| {
        if let Ok(l) = serde_json::from_slice::<hostd::samples::Line>(line) {
            if let hostd::samples::Record::StepDone { .. }
            | hostd::samples::Record::StepFailed { .. } = l.record
            {
                // A step failed before is retried: it may count twice, so the bar grows.
                if b.position() + 1 > b.length().unwrap_or(0) {
                    b.inc_length(1);
                }
                b.inc(1);
            }
        }
    });
    bar
}

/// `hostd bench`'s progress: the library's lines go above a bar of every run (warm-up and
/// counted) of every benchmark; each "… done in" line is one run.
struct BenchProgress {
    bar: indicatif::ProgressBar,
    pending: Vec<u8>,
}

impl std::io::Write for BenchProgress {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..i]).into_owned();
            if text.contains(" done in ") {
                self.bar.inc(1);
            }
            hostd::progress::line(&self.bar, &text);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What `hostd run --dry-run` prints: the host, each backend's plan, the departures from
/// the paper.
fn dry_run_lines(
    c: &Campaign,
    host: &hostd::campaign::HostFacts,
    measured: &hostd::estimate::Measured,
) -> Vec<String> {
    let llc = host
        .llc
        .map(|l| l.to_string())
        .unwrap_or_else(|| format!("unknown (assumed {})", hostd::fidelity::LLC_FALLBACK));
    let mut v = vec![format!(
        "campaign {}: checks passed on this host ({} MiB, last-level cache {llc})",
        c.name,
        host.mem_total_kib / 1024
    )];
    for p in c.resolved_plans(host.llc) {
        v.push(format!(
            "{}: startup {:?}, overhead/linearity {:?}, memory {:?} (guests of {} MiB), ring {}, workloads {}; {}; {}",
            p.kind,
            p.startup_sizes,
            p.overhead_sizes,
            p.memory_sizes,
            p.mem_for_copies(1),
            p.ring_guests,
            p.workloads.params(vb_protocol::bench::Resource::Cpu),
            p.workloads.params(vb_protocol::bench::Resource::Memory),
            p.workloads.params(vb_protocol::bench::Resource::Disk),
        ));
    }
    let plans = c.resolved_plans(host.llc);
    let lab = runner::xen_in_lab(c) && plans.iter().any(|p| p.kind == BackendKind::Xen);
    let work = runner::planned_work(c, &plans, lab);
    v.push(format!(
        "{} steps in all (the progress bar's N){}",
        work.iter().filter(|w| w.is_step()).count(),
        if lab {
            format!(
                "; xen in the Xen lab (this host is not a Xen dom0): its cold startup sizes up to xen.lab_max_guests = {} only",
                c.xen.lab_max_guests
            )
        } else {
            String::new()
        }
    ));
    v.push(format!(
        "boots: {} (every listed backend assumed available: one that is not boots none)",
        runner::Boots::of(&work)
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    v.push(hostd::estimate::estimate(c, &plans, &work, measured, cores).line(measured));
    let d = c.departures_from_paper(host.llc);
    if d.is_empty() {
        v.push("at the paper's sizes".into());
    } else {
        v.push("departs from the paper:".into());
        v.extend(d.into_iter().map(|l| format!("  {l}")));
    }
    v
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

fn find_fleet(name: &str) -> anyhow::Result<RunState> {
    let fleets = daemon::live_fleets();
    match fleets.into_iter().find(|(n, _)| n == name) {
        Some((_, st)) => Ok(st),
        None => anyhow::bail!("no running fleet named {name:?} (see `hostd status`)"),
    }
}

async fn status(name: Option<String>, json: bool) -> anyhow::Result<()> {
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

async fn exec(a: ExecArgs) -> anyhow::Result<Done> {
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

async fn down(name: String) -> anyhow::Result<()> {
    let st = find_fleet(&name)?;
    daemon::request_down(&st, Duration::from_secs(120)).await?;
    println!("fleet {name} is down");
    Ok(())
}

/// `hostd up`: validates, then detaches a daemon that boots the fleet; returns once the
/// fleet is up (printing its status) or failed.
fn up(a: &UpArgs) -> ExitCode {
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
    // Each group's images: the agent's, with its system added. The command line's system
    // wins over the fleet file's (for every group that boots an image).
    let mut images = Vec::with_capacity(file.resolved.len());
    for g in &file.resolved {
        let mut im = match hostd::images::resolve(a.images.agent.as_deref()) {
            Ok(i) => i,
            Err(e) => return fail(format!("{e:#}")),
        };
        let system = match g.kind {
            hostd::backend::BackendKind::Native => None,
            _ => a.images.system.clone().map(|s| (s, a.images.init)).or(g.system.clone()),
        };
        if let Some((name, init)) = system {
            if let Err(e) = hostd::images::add_system(&mut im, &name, init) {
                return fail(if file.groups.is_empty() {
                    format!("{e:#}")
                } else {
                    format!("group {:?}: {e:#}", g.name)
                });
            }
        }
        images.push(im);
    }
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
            let mut msg = String::new();
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(rd), &mut msg);
            match msg.split_once('\n') {
                Some(("ok", rest)) => {
                    print!("{rest}");
                    ExitCode::SUCCESS
                }
                Some(("failed", rest)) => {
                    let (what, text) = rest.split_once('\n').unwrap_or((rest, ""));
                    print!("{text}");
                    eprintln!("hostd: finished with failures: {what}");
                    eprintln!("hostd: the fleet stays up (`hostd down {}`)", fleet_name);
                    ExitCode::from(EXIT_FAILURES)
                }
                Some((_, err)) => fail(err.trim().to_string()),
                None => fail("the fleet daemon exited before reporting".into()),
            }
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

/// Points stdin at /dev/null and stdout/stderr at the daemon's log.
fn detach_stdio(log: &std::path::Path) {
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

async fn boot(a: BootArgs) -> anyhow::Result<Done> {
    limits::check_sizes(&a.sizes).map_err(|e| anyhow::anyhow!("--sizes: {e}"))?;
    let images = images_or_note(&a.images)?;
    let bopts = backend_options(&a.images);
    let backend = AnyBackend::new(a.backend, &images, &bopts);
    reap_orphans();
    let probe = backend.probe().await?;
    eprintln!("hostd: {}: {probe}", a.backend);
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    let run = RunState::create("boot", Some(a.results.clone()))?;
    let mut results = match ResultsDir::create_unique(
        &a.results,
        &format!("{stamp}-boot-{}-{}", a.backend, run.run),
    ) {
        Ok(r) => r,
        Err(e) => {
            run.finish();
            return Err(e.into());
        }
    };
    let mut provenance = Provenance::collect(images.hashes.clone());
    provenance.notes.push(format!("backend {}: {probe}", a.backend));
    let opts = BootOptions {
        backend: a.backend,
        sizes: a.sizes,
        modes: a.modes,
        fleet: FleetConfig {
            mem_mib: a.mem_mib,
            vcpus: a.vcpus,
            parallelism: a.parallelism,
            network: !a.no_network,
            boot_timeout: Duration::from_secs(a.boot_timeout),
            ..Default::default()
        },
        settle: Duration::from_secs(a.settle),
        results: a.results.clone(),
        floor_reps: a.floor_reps,
        image_copies: a.image_copies,
    };
    let bars = hostd::progress::multi();
    let mut current: Option<(String, indicatif::ProgressBar, usize, usize)> = None;
    let progress = |label: &str, e: FleetEvent| {
        let n: usize = label
            .split("n=")
            .nth(1)
            .and_then(|x| x.split(' ').next())
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        if current.as_ref().map(|c| c.0.as_str()) != Some(label) {
            if let Some((_, b, _, _)) = current.take() {
                b.finish();
            }
            let b = bars.add(indicatif::ProgressBar::new(n as u64));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>24} [{bar:30}] {pos}/{len} ready {msg} {elapsed}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            current = Some((label.to_string(), b, 0, 0));
        }
        let (_, b, ready, failed) = current.as_mut().expect("set above");
        match e {
            FleetEvent::Ready { .. } => *ready += 1,
            FleetEvent::Failed(f) => {
                *failed += 1;
                let line = format!(
                    "  {} {}: {:?}: {}",
                    label,
                    f.name,
                    f.kind,
                    f.error.lines().next().unwrap_or("")
                );
                hostd::progress::line(b, &line);
            }
        }
        b.set_position(*ready as u64);
        if *failed > 0 {
            b.set_message(format!("{failed} failed"));
        }
    };
    let outcome = tokio::select! {
        r = bootrun::run(&backend, &images, &bopts, &opts, &run, &mut results, provenance, progress) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    let cleaned = run.finish();
    match outcome {
        None => {
            eprintln!(
                "hostd: interrupted; {cleaned}; samples recorded so far are in {}",
                results.path.display()
            );
            std::process::exit(130);
        }
        Some(r) => {
            let summary = r?;
            print!("{}", bootrun::table(&summary));
            a.export.write(&hostd::export::of_boot(&summary))?;
            eprintln!("hostd: results in {}", results.path.display());
            if !cleaned.errors.is_empty() {
                anyhow::bail!("teardown: {}", cleaned.errors.join("; "));
            }
            // A fleet in which a guest did not come up is a finished run with failures.
            let short: Vec<String> = summary
                .rows
                .iter()
                .filter(|r| r.failed > 0 || r.ready < r.n)
                .map(|r| format!("n={} {}: {} of {} ready", r.n, r.mode.name(), r.ready, r.n))
                .collect();
            Ok(if short.is_empty() { Done::All } else { Done::WithFailures(short.join("; ")) })
        }
    }
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let images = images_or_note(&a.images)?;
    let workdir = tempfile::Builder::new().prefix("virtbench-bench-").tempdir()?;
    let opts = BenchOptions {
        backend: a.backend,
        images,
        backend_opts: backend_options(&a.images),
        benches: a.bench,
        reps: a.reps,
        warmup: a.warmup,
        instances: a.instances,
        cpu_rounds: a.cpu_rounds,
        mem_n: if a.mem_n == hostd::fidelity::AUTO {
            hostd::fidelity::auto_mem_n(
                hostd::fidelity::llc().unwrap_or(hostd::fidelity::LLC_FALLBACK),
            )
        } else {
            a.mem_n
        },
        mem_passes: a.mem_passes,
        disk_file: a.disk_file,
        disk_mib: a.disk_mib,
        disk_block_kib: a.disk_block_kib,
        net_duration_ms: a.net_duration_ms,
        net_msg_size: a.net_msg_size,
        rr_size: a.rr_size,
        hello_timeout: Duration::from_secs(a.hello_timeout),
        bench_timeout: Duration::from_secs(a.bench_timeout),
        workdir: workdir.path().to_path_buf(),
    };
    let runs = opts.benches.len() as u64 * u64::from(opts.warmup + opts.reps);
    let mut progress =
        BenchProgress { bar: hostd::progress::steps(runs, "run"), pending: Vec::new() };
    let run = microbench::run(&opts, &mut progress).await;
    progress.bar.finish_and_clear();
    let run = run?;
    a.export.write(&hostd::export::of_bench(&run))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&hostd::samples::Versioned::new(&run))?);
    } else {
        print!("{}", microbench::table(&run));
    }
    Ok(())
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
