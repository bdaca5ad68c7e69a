//! imagegen command line: parse, call the library, print.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::{Parser, Subcommand};
use imagegen::{Config, Outcome, Progress, Store};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "imagegen",
    version,
    about = "Build virtbench guest images reproducibly into a content-addressed store"
)]
struct Cli {
    /// Workspace root [default: $VIRTBENCH_ROOT, else the workspace imagegen was built from].
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Recipe directory [default: <root>/recipes].
    #[arg(long, global = true)]
    recipes: Option<PathBuf>,
    /// Store [default: $VIRTBENCH_IMAGES, else <root>/images].
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    /// Build cache outside the clone [default: $VIRTBENCH_CACHE, else /var/cache/virtbench].
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build recipes (default: every recipes/*.toml) and what they depend on.
    Build {
        #[arg(value_name = "RECIPE")]
        names: Vec<String>,
        /// make -jN for kernels [default: number of CPUs].
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Re-hash the store; report every tampered, truncated or missing artifact (exit 1).
    Verify,
    /// Print the current artifacts: recipe, output, sha256, size, path.
    List,
    /// Measure: initramfs build, no-op build, kernel build times, artifact sizes.
    Bench {
        /// No-op runs to time.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // Our errors carry their causes in their own message: print just that.
            eprintln!("imagegen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(cli: &Cli) -> Result<Config> {
    let mut cfg = match &cli.root {
        Some(r) => Config::for_workspace(r)?,
        None => Config::from_env()?,
    };
    if let Some(r) = &cli.recipes {
        cfg.recipes = r.clone();
    }
    if let Some(s) = &cli.store {
        cfg.store = s.clone();
    }
    if let Some(c) = &cli.cache {
        cfg.cache = c.clone();
    }
    Ok(cfg)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let mut cfg = config(&cli)?;
    match cli.cmd {
        Cmd::Build { names, jobs } => {
            if let Some(j) = jobs {
                cfg.jobs = j.max(1);
            }
            let ui = Ui::new();
            imagegen::build(&cfg, &names, &ui)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify => {
            let store = Store::open(&cfg.store)?;
            let report = store.verify()?;
            for p in &report.problems {
                println!("BAD {p}");
            }
            println!(
                "{} blobs, {} manifests checked: {}",
                report.blobs_checked,
                report.manifests_checked,
                if report.ok() { "ok".to_string() } else { format!("{} problems", report.problems.len()) }
            );
            if !report.ok() {
                // A no-op build trusts sizes; a removed blob is rebuilt (or re-imported from an
                // intact cache copy) by the next build.
                println!("to repair: delete the blob files listed above, then run `imagegen build`");
            }
            Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::List => {
            let store = Store::open(&cfg.store)?;
            println!("{:<18} {:<10} {:<64} {:>11}  path", "recipe", "output", "sha256", "bytes");
            for m in store.current_all()? {
                for (name, o) in &m.outputs {
                    let path = store.root().join(&o.path);
                    println!("{:<18} {:<10} {:<64} {:>11}  {}", m.recipe, name, o.sha256, o.size, path.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { runs } => {
            let exe = std::env::current_exe().map_err(|e| anyhow!("finding the imagegen binary: {e}"))?;
            let r = imagegen::bench::run(&cfg, &exe, runs)?;
            println!(
                "initramfs from scratch: {:.3} s build step, {:.3} s with its agent step",
                r.initramfs_build_seconds, r.initramfs_total_seconds
            );
            let all: Vec<String> = r.noop_seconds.iter().map(|s| format!("{s:.3}")).collect();
            println!(
                "no-op build of {} recipes ({}): median {:.3} s over {} runs [{}]",
                r.noop_recipes.len(),
                r.noop_recipes.join(" "),
                r.noop_median().unwrap_or(0.0),
                r.noop_seconds.len(),
                all.join(", ")
            );
            for (k, s) in &r.kernels {
                match s {
                    Some(s) => println!("{k}: built in {s:.1} s (recorded in its manifest)"),
                    None => println!("{k}: not built yet (run `imagegen build {k}`)"),
                }
            }
            for (recipe, output, size) in &r.sizes {
                println!("{recipe}/{output}: {size} bytes ({:.2} MiB)", *size as f64 / (1 << 20) as f64);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A spinner per recipe while it runs on a terminal; one result line per recipe on stdout.
struct Ui {
    mp: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Ui {
    fn new() -> Self {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        Self { mp, bars: Mutex::new(HashMap::new()) }
    }
}

impl Progress for Ui {
    fn begin(&self, recipe: &str) {
        if self.mp.is_hidden() {
            return;
        }
        let pb = self.mp.add(ProgressBar::new_spinner());
        let style = ProgressStyle::with_template("{spinner} {prefix:<18} {elapsed:>4} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        pb.set_style(style);
        pb.set_prefix(recipe.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        self.bars.lock().expect("ui lock").insert(recipe.to_string(), pb);
    }

    fn step(&self, recipe: &str, message: &str) {
        if let Some(pb) = self.bars.lock().expect("ui lock").get(recipe) {
            pb.set_message(message.to_string());
        }
    }

    fn notice(&self, message: &str) {
        self.mp.suspend(|| eprintln!("imagegen: {message}"));
    }

    fn end(&self, o: &Outcome) {
        if let Some(pb) = self.bars.lock().expect("ui lock").remove(o.recipe.as_str()) {
            pb.finish_and_clear();
            self.mp.remove(&pb);
        }
        let outputs: Vec<String> = o
            .manifest
            .outputs
            .iter()
            .map(|(n, out)| format!("{n} {} ({} bytes)", &out.sha256[..12], out.size))
            .collect();
        let line = format!("{:<18} {:<10} {:>7.2}s  {}", o.recipe, o.status.as_str(), o.seconds, outputs.join(", "));
        self.mp.suspend(|| println!("{line}"));
    }
}
