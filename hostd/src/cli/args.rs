//! The command line: one argument type per subcommand (clap derive).

use crate::*;

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
pub(crate) struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); overrides RUST_LOG.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors on stderr; overrides RUST_LOG.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Run the paper's microbenchmarks (CPU, memory, disk, network) in one guest.
    Bench(BenchArgs),
    /// Measure concurrent cold/hot startup and memory occupation of fleets, then tear down.
    Boot(BootArgs),
    /// Boot the fleet a fleet file describes and keep it running in the background.
    Up(UpArgs),
    /// One node's part of a multi-host run (`hostd boot --engine slurm` starts it with
    /// srun): connects to the coordinator, starts the slice it is given, reports, holds
    /// the fleet until told to tear down or until the coordinator's link drops.
    Worker(WorkerArgs),
    /// Clean up after hostd runs on this machine whose hostd died without tearing down (their
    /// guests, cgroups, network namespaces, run state), as every hostd command does when it
    /// starts; `hostd down` of a fleet across hosts runs it on a host whose worker was lost.
    Reap,
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
    /// Copy a file into or out of a running fleet's guests, `docker cp` style:
    /// `hostd cp web ./app.conf g1:/etc/app.conf`, `hostd cp web --all ./f :/tmp/`,
    /// `hostd cp web g2:/var/log/app.log ./` (one regular file, at most 64 MiB).
    Cp(CpArgs),
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
pub(crate) struct ProbeArgs {
    /// Probe only these backends (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    pub(crate) backend: Vec<BackendKind>,
    /// Print machine-readable JSON (`schema_version`, `host`, `backends[]` with `backend`,
    /// `available`, `detail`) instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) images: ImageArgs,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Campaign file (default: hostd/campaigns/default.toml as built in).
    pub(crate) campaign: Option<PathBuf>,
    /// Scale every size and workload down to a few minutes' worth.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Continue an interrupted run in this results directory (its stored campaign is used).
    #[arg(long, conflicts_with_all = ["campaign", "quick"])]
    pub(crate) resume: Option<PathBuf>,
    /// With --resume: go on even if the artifacts, hostd or the host differ from those the
    /// run's samples came from (the report then lists every provenance).
    #[arg(long, requires = "resume")]
    pub(crate) force_mixed: bool,
    /// Check the campaign against this host and print what it would run, where it departs
    /// from the paper, and exit without booting anything.
    #[arg(long, conflicts_with = "resume")]
    pub(crate) dry_run: bool,
    /// With --dry-run: price the estimated time with the boot and benchmark costs measured
    /// in this results directory [default: the newest results directory of the same
    /// campaign under --results, else conservative defaults, said so].
    #[arg(long, value_name = "DIR", requires = "dry_run")]
    pub(crate) estimate_from: Option<PathBuf>,
    /// Parent directory of the results directory.
    #[arg(long, default_value = "results", env = "VIRTBENCH_RESULTS")]
    pub(crate) results: PathBuf,
    /// Where the campaign runs: this machine, or across Slurm nodes (then each listed
    /// backend's ring, spanning the hosts, with its fleet's startup; docs/multihost.md).
    #[arg(long, value_enum, default_value = "local")]
    pub(crate) engine: Engine,
    /// With --engine slurm: the node that runs the campaign's single-host steps (native's
    /// baseline, the single-guest benchmarks, overhead, linearity, isolation, startup sizes)
    /// [default: the allocation's first].
    #[arg(long, value_name = "NODE")]
    pub(crate) suite_host: Option<String>,
    #[command(flatten)]
    pub(crate) slurm: SlurmArgs,
    #[command(flatten)]
    pub(crate) images: ImageArgs,
}

#[derive(Args)]
pub(crate) struct UpArgs {
    /// Fleet file (TOML; see docs/fleets.md).
    pub(crate) file: PathBuf,
    /// Stay in the foreground instead of detaching.
    #[arg(long)]
    pub(crate) foreground: bool,
    /// Where the fleet runs: this machine, or spread over the nodes of a Slurm allocation
    /// that the fleet's daemon holds until `hostd down` (one backend, no groups, commands,
    /// [net], system or limits; docs/multihost.md).
    #[arg(long, value_enum, default_value = "local")]
    pub(crate) engine: Engine,
    #[command(flatten)]
    pub(crate) slurm: SlurmArgs,
    /// With --engine slurm: once the fleet is up, every ready guest exchanges 64 KiB each
    /// way with a guest on each other host; `hostd status` shows each host's count.
    #[arg(long)]
    pub(crate) reach: bool,
    #[command(flatten)]
    pub(crate) images: ImageArgs,
}

/// Exports beside the human table, in the shapes hyperfine users script against.
#[derive(Args)]
pub(crate) struct ExportArgs {
    /// Also write the results as hyperfine-shaped JSON (results[] with command, mean,
    /// stddev, median, min, max, times; schema: docs/schema/export.schema.json).
    #[arg(long, value_name = "FILE")]
    pub(crate) export_json: Option<PathBuf>,
    /// Also write the results as CSV (one row per result).
    #[arg(long, value_name = "FILE")]
    pub(crate) export_csv: Option<PathBuf>,
    /// Also write the results as a Markdown table.
    #[arg(long, value_name = "FILE")]
    pub(crate) export_markdown: Option<PathBuf>,
}

impl ExportArgs {
    pub(crate) fn write(&self, e: &hostd::export::Export) -> anyhow::Result<()> {
        let t = hostd::export::Targets {
            json: self.export_json.clone(),
            csv: self.export_csv.clone(),
            markdown: self.export_markdown.clone(),
        };
        hostd::export::write(e, &t)?;
        Ok(())
    }
}

/// Where a run across Slurm nodes finds its nodes and how its workers reach it (boot, run and
/// up with `--engine slurm`).
#[derive(Args)]
pub(crate) struct SlurmArgs {
    /// With --engine slurm: nodes to use [default: SLURM_JOB_NUM_NODES inside an allocation;
    /// required outside one, for salloc -N].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub(crate) hosts: Option<u16>,
    /// With --engine slurm: the address workers connect to [default: this machine's
    /// address on the route to the first node].
    #[arg(long, value_name = "IP")]
    pub(crate) listen: Option<std::net::IpAddr>,
    /// With --engine slurm: seconds of silence (no message, no heartbeat: workers and
    /// coordinator beat every third of it) after which a host is declared lost, and after
    /// which a worker whose coordinator went silent tears its slice down.
    #[arg(long, value_name = "SECONDS", default_value_t = 15.0, value_parser = lost_after)]
    pub(crate) lost_after: f64,
}

/// A bound of silence: at least 0.3 s (beats every 0.1 s), at most a day.
fn lost_after(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.3..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s}: seconds between 0.3 and 86400")),
    }
}

/// Where images come from and how backends run.
#[derive(Args, Clone)]
pub(crate) struct ImageArgs {
    /// Guest-agent binary (default: the imagegen store, then $VIRTBENCH_AGENT, then this workspace's musl build).
    #[arg(long)]
    pub(crate) agent: Option<PathBuf>,
    /// Image store to boot from (default: <workspace>/images, as imagegen builds it).
    #[arg(long, value_name = "DIR", env = "VIRTBENCH_IMAGES")]
    pub(crate) images: Option<PathBuf>,
    /// OCI runtime for the oci backend.
    #[arg(long, default_value = "runc", env = "VIRTBENCH_OCI_RUNTIME")]
    pub(crate) oci_runtime: String,
    /// QEMU accelerator (kvm or tcg); default: probe KVM with a real boot, else TCG.
    #[arg(long, env = "VIRTBENCH_ACCEL")]
    pub(crate) accel: Option<String>,
    /// QEMU system emulator for the qemu-* backends (name on PATH or path).
    #[arg(long, default_value = "qemu-system-x86_64", env = "VIRTBENCH_QEMU")]
    pub(crate) qemu: String,
    /// Firecracker binary for the firecracker backend (name on PATH or path).
    #[arg(long, default_value = "firecracker", env = "VIRTBENCH_FIRECRACKER")]
    pub(crate) firecracker: String,
    /// Boot guests from this system image (a root file system recipe in the image store,
    /// e.g. debian-bookworm, built with `imagegen build NAME`) instead of the agent's own.
    #[arg(long, value_name = "RECIPE")]
    pub(crate) system: Option<String>,
    /// With --system: PID 1 is the agent, or the image's own /sbin/init with the agent as
    /// its service.
    #[arg(long, value_enum, default_value = "agent", requires = "system")]
    pub(crate) init: hostd::backend::rootdisk::InitMode,
}

#[derive(Args)]
pub(crate) struct ExecArgs {
    /// The fleet's name (as `hostd status` lists it).
    pub(crate) name: String,
    /// Only this guest (default: every guest of the fleet).
    #[arg(long, conflicts_with = "all")]
    pub(crate) guest: Option<String>,
    /// Every running guest of the fleet (the default; as `hostd cp --all`).
    #[arg(long)]
    pub(crate) all: bool,
    /// Seconds the program may run in each guest before it is killed.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub(crate) timeout: u64,
    /// Bytes of stdout and of stderr kept from each guest (at most 65536).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(0..=65536))]
    pub(crate) output_max: u32,
    /// NAME=VALUE for the program's environment (repeatable; nothing else is inherited but a
    /// default PATH).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub(crate) env: Vec<String>,
    /// Working directory in the guest.
    #[arg(long)]
    pub(crate) cwd: Option<String>,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    pub(crate) argv: Vec<String>,
}

#[derive(Args)]
pub(crate) struct CpArgs {
    /// The fleet's name (as `hostd status` lists it).
    pub(crate) name: String,
    /// Source: a host path, or a guest path `GUEST:/path` (or `:/path` with --guest/--all).
    pub(crate) src: String,
    /// Destination: likewise; exactly one of SRC and DST is a guest path. A directory (a
    /// guest path ending in `/`, an existing host directory) receives the file under its
    /// own name; copying out of several guests (--all) needs DST to be a host directory:
    /// each copy goes to DST/<guest>/NAME.
    pub(crate) dst: String,
    /// The guest (instead of a `GUEST:` prefix).
    #[arg(long, conflicts_with = "all")]
    pub(crate) guest: Option<String>,
    /// Every running guest of the fleet.
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Args)]
pub(crate) struct BootArgs {
    /// Backend to boot the fleets on (`hostd probe` says which work here).
    #[arg(long)]
    pub(crate) backend: BackendKind,
    /// Fleet sizes, comma-separated and increasing, each 1-25000 (the fleet network's bridges); each is booted in every mode asked.
    #[arg(short = 'n', long = "sizes", value_delimiter = ',', default_values_t = defaults::STARTUP_SIZES, value_parser = limits::GUESTS.cli::<usize>())]
    pub(crate) sizes: Vec<usize>,
    /// Start modes, in order.
    #[arg(long, value_delimiter = ',', default_value = "cold,hot")]
    pub(crate) modes: Vec<StartMode>,
    /// Guest memory, MiB (32-1048576).
    #[arg(long, default_value_t = defaults::MEM_MIB, value_parser = limits::MEM_MIB.cli::<u32>())]
    pub(crate) mem_mib: u32,
    /// vCPUs per guest (1-64).
    #[arg(long, default_value_t = defaults::VCPUS, value_parser = limits::VCPUS.cli::<u32>())]
    pub(crate) vcpus: u32,
    /// Most guests launching at once (0: all together, as the paper does; at most 1000).
    #[arg(long, default_value_t = 0, value_parser = limits::PARALLELISM.cli::<usize>())]
    pub(crate) parallelism: usize,
    /// Seconds from a guest's launch request to its ready message before it counts as
    /// failed (1-86400 s; a number of seconds or a duration such as 90s, 5m).
    #[arg(long, default_value_t = defaults::BOOT_TIMEOUT_S, value_parser = limits::BOOT_TIMEOUT_S.cli_secs())]
    pub(crate) boot_timeout: u64,
    /// Seconds the booted fleet idles before memory is read (0-3600 s; seconds or e.g. 30s, 1m).
    #[arg(long, default_value_t = defaults::SETTLE_S, value_parser = limits::SETTLE_S.cli_secs())]
    pub(crate) settle: u64,
    /// Do not attach guests to a fleet network.
    #[arg(long)]
    pub(crate) no_network: bool,
    /// Boot each guest from its own copies of the images (the paper's setting: each VM its
    /// own image), made under /var/tmp/virtbench/<run>/ and removed after each fleet.
    #[arg(long)]
    pub(crate) image_copies: bool,
    /// Pairs of hot starts compared with the backend's own floor in the same run (ns:
    /// `unshare` + chroot + exec of the agent; oci: a bare `runc run` of the same bundle;
    /// VMs: a bare VMM boot); 0 skips the comparison (at most 100).
    #[arg(long, default_value_t = 5, value_parser = limits::FLOOR_REPS.cli::<usize>())]
    pub(crate) floor_reps: usize,
    /// After each fleet's figures, check that every guest reaches a neighbour on another
    /// bridge (a TCP connection from inside its network namespace; containers and native
    /// guests on the fleet network only). With --engine slurm: every ready guest exchanges
    /// 64 KiB each way with a guest on each other host.
    #[arg(long)]
    pub(crate) reach: bool,
    /// After the sizes given (at least two), boot the largest fleet that fits in this host's
    /// memory: M_used(n) fitted over those sizes against MemAvailable less a reserve (5 %,
    /// at least 1 GiB). Without it a run still stops before a size that would not fit.
    #[arg(long)]
    pub(crate) to_memory_bound: bool,
    /// Parent directory of the results directory.
    #[arg(long, default_value = "results", env = "VIRTBENCH_RESULTS")]
    pub(crate) results: PathBuf,
    /// Where the fleet runs: this machine, or across Slurm nodes (one size, the first mode,
    /// no memory figures; docs/multihost.md).
    #[arg(long, value_enum, default_value = "local")]
    pub(crate) engine: Engine,
    #[command(flatten)]
    pub(crate) slurm: SlurmArgs,
    /// With --engine slurm: per-host weights of the split, comma-separated, one per host in
    /// node order [default: even].
    #[arg(long, value_delimiter = ',')]
    pub(crate) weights: Vec<f64>,
    /// With --engine slurm: seconds the fleet stays up on every host once all have
    /// reported, before teardown (0-3600 s; seconds or e.g. 30s, 1m); a host lost meanwhile
    /// has its guests reported lost.
    #[arg(long, default_value_t = 0, value_parser = limits::SETTLE_S.cli_secs())]
    pub(crate) hold: u64,
    #[command(flatten)]
    pub(crate) images: ImageArgs,
    #[command(flatten)]
    pub(crate) export: ExportArgs,
}

/// Where `hostd boot` runs its fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Engine {
    /// On this machine.
    Local,
    /// Across the nodes of a Slurm allocation (salloc'd if not inside one): one `hostd
    /// worker` per node (docs/multihost.md).
    Slurm,
}

#[derive(Args)]
pub(crate) struct WorkerArgs {
    /// The coordinator, ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) connect: String,
    /// The coordinator's token (the coordinator passes it in the environment, so that it is
    /// not on a command line other users can read).
    #[arg(long, env = "VIRTBENCH_WORKER_TOKEN", hide_env_values = true)]
    pub(crate) token: String,
    /// Backends to probe and report (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) backend: Vec<BackendKind>,
    /// Seconds of silence from the coordinator (no message, no heartbeat) after which the
    /// worker tears its slice down (the coordinator passes its own --lost-after).
    #[arg(long, value_name = "SECONDS", default_value_t = 15.0, value_parser = lost_after)]
    pub(crate) lost_after: f64,
    /// System images the fleet boots (comma-separated): their hashes are reported with the
    /// others', for the coordinator to check.
    #[arg(long, value_delimiter = ',')]
    pub(crate) systems: Vec<String>,
    #[command(flatten)]
    pub(crate) images: ImageArgs,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Backend to run the guest on.
    #[arg(long, default_value = "native")]
    pub(crate) backend: BackendKind,
    /// Benchmarks to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "cpu,memory,disk,net_stream,net_rr")]
    pub(crate) bench: Vec<BenchName>,
    /// Counted repetitions of each benchmark (1-1000).
    #[arg(long, default_value_t = defaults::REPS, value_parser = limits::REPS.cli::<u32>())]
    pub(crate) reps: u32,
    /// Discarded warm-up runs before the counted ones (0-10).
    #[arg(long, default_value_t = defaults::WARMUP, value_parser = limits::WARMUP.cli::<u32>())]
    pub(crate) warmup: u32,
    /// Concurrent copies of each benchmark inside the guest.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) instances: u32,
    /// CPU: Newton steps towards √2.
    #[arg(long, default_value_t = defaults::CPU_ROUNDS)]
    pub(crate) cpu_rounds: u64,
    /// Memory: matrix side n (three n×n f64 matrices), or "auto": the smallest whose
    /// working set is 4 × this host's last-level cache.
    #[arg(long, default_value = "auto", value_parser = parse_mem_n)]
    pub(crate) mem_n: u32,
    /// Memory: passes of C = A + B + C.
    #[arg(long, default_value_t = defaults::MEM_PASSES)]
    pub(crate) mem_passes: u32,
    /// Disk: file or block device to read (default: the image store's data disk, else a fresh
    /// file of --disk-mib in the work directory).
    #[arg(long)]
    pub(crate) disk_file: Option<PathBuf>,
    /// Disk: size of the file created when --disk-file is not given, MiB (1-1048576).
    #[arg(long = "disk-mib", alias = "disk-mb", default_value_t = defaults::DISK_MIB, value_parser = limits::DISK_MIB.cli::<u64>())]
    pub(crate) disk_mib: u64,
    /// Disk: read block size, KiB (dd's bs).
    #[arg(long, default_value_t = defaults::DISK_BLOCK_KIB)]
    pub(crate) disk_block_kib: u32,
    /// Network: duration of each stream and request/response run, ms.
    #[arg(long, default_value_t = defaults::NET_DURATION_MS)]
    pub(crate) net_duration_ms: u32,
    /// Network: size of each stream write, bytes (iperf3's default is 131072).
    #[arg(long, default_value_t = defaults::NET_MSG_SIZE)]
    pub(crate) net_msg_size: u32,
    /// Network: request and response size for net_rr, bytes.
    #[arg(long, default_value_t = 1)]
    pub(crate) rr_size: u32,
    #[command(flatten)]
    pub(crate) images: ImageArgs,
    /// Seconds to wait for the guest's ready message (1-86400 s; seconds or e.g. 30s, 2m).
    #[arg(long, default_value_t = defaults::BOOT_TIMEOUT_S, value_parser = limits::BOOT_TIMEOUT_S.cli_secs())]
    pub(crate) hello_timeout: u64,
    /// Seconds one benchmark request may take (1-86400 s; seconds or e.g. 10m, 1h).
    #[arg(long, default_value_t = defaults::BENCH_TIMEOUT_S, value_parser = limits::BENCH_TIMEOUT_S.cli_secs())]
    pub(crate) bench_timeout: u64,
    /// Print machine-readable JSON instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) export: ExportArgs,
}
