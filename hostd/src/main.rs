//! hostd command line: parse, call the library, print.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hostd::backend::BackendKind;
use hostd::microbench::{self, BenchName, BenchOptions};

#[derive(Parser)]
#[command(name = "hostd", version, about = "Boot guest fleets and measure them the way Quétier, Neri and Cappello did")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the paper's microbenchmarks (CPU, memory, disk, network) in one guest.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Backend to run the guest on.
    #[arg(long, default_value = "native")]
    backend: BackendKind,
    /// Benchmarks to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "cpu,memory,disk,net_stream,net_rr")]
    bench: Vec<BenchName>,
    /// Counted repetitions of each benchmark.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    reps: u32,
    /// Discarded warm-up runs before the counted ones.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Concurrent copies of each benchmark inside the guest.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    instances: u32,
    /// CPU: Newton steps towards √2.
    #[arg(long, default_value_t = 100_000_000)]
    cpu_rounds: u64,
    /// Memory: matrix side n (three n×n f64 matrices).
    #[arg(long, default_value_t = 2048)]
    mem_n: u32,
    /// Memory: passes of C = A + B + C.
    #[arg(long, default_value_t = 10)]
    mem_passes: u32,
    /// Disk: file or block device to read (default: a fresh file of --disk-mb in the work directory).
    #[arg(long)]
    disk_file: Option<PathBuf>,
    /// Disk: size of the file created when --disk-file is not given, MiB.
    #[arg(long, default_value_t = 256)]
    disk_mb: u64,
    /// Disk: read block size, KiB (dd's bs).
    #[arg(long, default_value_t = 1024)]
    disk_block_kib: u32,
    /// Network: duration of each stream and request/response run, ms.
    #[arg(long, default_value_t = 2000)]
    net_duration_ms: u32,
    /// Network: size of each stream write, bytes (iperf3's default is 131072).
    #[arg(long, default_value_t = 131072)]
    net_msg_size: u32,
    /// Network: request and response size for net_rr, bytes.
    #[arg(long, default_value_t = 1)]
    rr_size: u32,
    /// Guest-agent binary (default: $VIRTBENCH_AGENT, then this workspace's musl build).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Seconds to wait for the guest's ready message.
    #[arg(long, default_value_t = 30)]
    hello_timeout: u64,
    /// Seconds one benchmark request may take.
    #[arg(long, default_value_t = 600)]
    bench_timeout: u64,
    /// Print machine-readable JSON instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hostd: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Bench(a) => bench(a).await,
    }
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let images = hostd::images::resolve(a.agent.as_deref())?;
    let workdir = tempfile::Builder::new().prefix("virtbench-bench-").tempdir()?;
    let opts = BenchOptions {
        backend: a.backend,
        images,
        backend_opts: Default::default(),
        benches: a.bench,
        reps: a.reps,
        warmup: a.warmup,
        instances: a.instances,
        cpu_rounds: a.cpu_rounds,
        mem_n: a.mem_n,
        mem_passes: a.mem_passes,
        disk_file: a.disk_file,
        disk_mb: a.disk_mb,
        disk_block_kib: a.disk_block_kib,
        net_duration_ms: a.net_duration_ms,
        net_msg_size: a.net_msg_size,
        rr_size: a.rr_size,
        hello_timeout: Duration::from_secs(a.hello_timeout),
        bench_timeout: Duration::from_secs(a.bench_timeout),
        workdir: workdir.path().to_path_buf(),
    };
    let run = microbench::run(&opts, &mut std::io::stderr()).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print!("{}", microbench::table(&run));
    }
    Ok(())
}
