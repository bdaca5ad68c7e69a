//! imagegen command line: parse, call the library, print.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::{Parser, Subcommand};
use imagegen::{Config, Outcome, Progress, Store};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Version of `imagegen list --json`'s rows (`schema_version` in each; docs/schema/README.md).
const LIST_SCHEMA_VERSION: u32 = 1;

#[derive(Parser)]
#[command(
    name = "imagegen",
    version,
    about = "Build virtbench guest images reproducibly into a content-addressed store"
)]
struct Cli {
    /// Workspace root [default: the workspace imagegen was built from].
    #[arg(long, global = true, env = "VIRTBENCH_ROOT")]
    root: Option<PathBuf>,
    /// Recipe directory [default: <root>/recipes].
    #[arg(long, global = true)]
    recipes: Option<PathBuf>,
    /// Store [default: <root>/images].
    #[arg(long, global = true, env = "VIRTBENCH_IMAGES")]
    store: Option<PathBuf>,
    /// Build cache outside the clone [default: /var/cache/virtbench].
    #[arg(long, global = true, env = "VIRTBENCH_CACHE")]
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
        /// Record what was built in recipes/imagegen.lock (the artifacts built from pinned
        /// inputs only); without it, differences from the lock are reported.
        #[arg(long, conflicts_with = "dry_run")]
        update_lock: bool,
        /// Say what would be built, imported from the cache or kept, and why, without
        /// building, fetching or writing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Fetch and check every pinned Debian input (kernel sources, packages) of recipes
    /// (default: all) into the cache without building: what a machine needs before it goes
    /// offline, and a check that every pin is still served.
    Fetch {
        #[arg(value_name = "RECIPE")]
        names: Vec<String>,
    },
    /// Move the Debian pins of recipes (default: all) to the newest version the archives
    /// serve: download it, rewrite version and sha256 in place (comments kept). Then run
    /// `imagegen build --update-lock`.
    Pin {
        #[arg(value_name = "RECIPE")]
        names: Vec<String>,
    },
    /// Re-hash the store and check its manifests; report every tampered, truncated, missing
    /// or odd artifact or manifest (exit 1), note orphan blobs; compare with the lock.
    Verify,
    /// Print the current artifacts: recipe, output, sha256, size, path.
    List {
        /// Print a JSON array ({recipe, output, sha256, size, path} per output) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Print the names of the recipes in the recipe directory, one per line (each is parsed:
    /// a broken one is an error).
    Recipes {
        /// Only recipes of this kind (as a recipe's `kind` names it: kernel, initramfs, …).
        #[arg(long)]
        kind: Option<imagegen::Kind>,
    },
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
        Cmd::Build { names, dry_run: true, .. } => {
            for p in imagegen::build::dry_run(&cfg, &names)? {
                println!("{:<18} {:<15} {:<6} {}", p.recipe, p.kind.to_string(), p.action, p.why);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Build { names, jobs, update_lock, dry_run: false } => {
            if let Some(j) = jobs {
                cfg.jobs = j.max(1);
            }
            let ui = Ui::new();
            let outcomes = imagegen::build(&cfg, &names, &ui)?;
            let built: BTreeMap<String, imagegen::Manifest> =
                outcomes.into_iter().map(|o| (o.recipe.clone(), o.manifest)).collect();
            let lock = imagegen::lock::read(&cfg.recipes)?;
            let lock_path = imagegen::lock::path(&cfg.recipes);
            if update_lock {
                let new = imagegen::lock::updated(lock.clone(), &built, names.is_empty());
                let new = imagegen::lock::keep_unbuilt(new, lock.as_ref(), &cfg.recipes);
                if Some(&new) != lock.as_ref() {
                    imagegen::lock::write(&cfg.recipes, &new)?;
                    eprintln!("imagegen: wrote {} ({} recipes)", lock_path.display(), new.recipes.len());
                }
            } else if let Some(lock) = lock {
                for name in imagegen::lock::lockable(&built) {
                    let finding = match lock.recipes.get(&name) {
                        Some(entry) => imagegen::lock::compare(&name, entry, &built[&name]),
                        None => imagegen::lock::Finding::Unlocked { recipe: name.clone() },
                    };
                    if !matches!(finding, imagegen::lock::Finding::Same { .. }) {
                        eprintln!("imagegen: warning: {finding} ({})", lock_path.display());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fetch { names } => {
            let ui = Ui::new();
            let fetched = imagegen::fetch(&cfg, &names, &ui)?;
            ui.clear();
            for f in &fetched {
                println!("{:<18} {}  {}", f.recipe, f.what, f.path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pin { names } => {
            let ui = Ui::new();
            let changes = imagegen::pin(&cfg, &names, &ui)?;
            ui.clear();
            let mut changed = 0;
            for c in &changes {
                let place = if c.field.is_empty() { c.recipe.clone() } else { format!("{} {}", c.recipe, c.field) };
                if c.changed() {
                    changed += 1;
                    println!("{place:<34} {} {} -> {}", c.package, c.from, c.to);
                } else {
                    println!("{place:<34} {} {} (newest served)", c.package, c.from);
                }
            }
            if changed > 0 {
                println!(
                    "{changed} pins moved; run `imagegen build --update-lock` to build them and record their artifacts in {}",
                    cfg.recipes.join(imagegen::lock::LOCK_FILE).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Recipes { kind } => {
            let names = match kind {
                Some(k) => imagegen::plan::recipes_of_kind(&cfg.recipes, k)?,
                None => imagegen::plan::all_recipes(&cfg.recipes)?,
            };
            for n in names {
                println!("{n}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify => {
            let store = Store::open(&cfg.store)?;
            // Shared: waits for a running build (its blobs without their manifests yet would
            // read as orphans, its manifests before the pointer as damage), runs beside
            // other readers.
            let lock = store.lock_shared(|l| eprintln!("imagegen: waiting for a build to finish ({})", l.display()))?;
            let report = store.verify(&lock)?;
            for p in &report.problems {
                println!("BAD {p}");
            }
            for n in &report.notes {
                println!("note: {n}");
            }
            // The store's builds against the checked-in lock: the same bits as everyone's?
            let lock_path = imagegen::lock::path(&cfg.recipes);
            let mut lock_problems = 0;
            match imagegen::lock::check(&cfg.recipes, &store)? {
                None => println!("no lock at {}: nothing to compare", lock_path.display()),
                Some(findings) => {
                    let same = findings.iter().filter(|f| matches!(f, imagegen::lock::Finding::Same { .. })).count();
                    for f in findings.iter().filter(|f| !matches!(f, imagegen::lock::Finding::Same { .. })) {
                        if f.is_problem() {
                            lock_problems += 1;
                            println!("DIFFERS {f}");
                        } else {
                            println!("note: {f}");
                        }
                    }
                    println!(
                        "{same} of {} locked recipes built here as {} records them",
                        findings.len(),
                        lock_path.display()
                    );
                }
            }
            drop(lock);
            let orphans = match report.notes.len() {
                0 => String::new(),
                n => format!("; {n} orphan blobs ({} bytes) no manifest names", report.orphan_bytes),
            };
            println!(
                "{} blobs, {} manifests checked: {}{orphans}",
                report.blobs_checked,
                report.manifests_checked,
                if report.ok() { "ok".to_string() } else { format!("{} problems", report.problems.len()) }
            );
            if !report.ok() {
                // Every path in a problem is inside the store (Store::verify): the advice can
                // never send anyone to delete a file elsewhere. A removed blob or manifest is
                // rebuilt (or re-imported from an intact cache copy) by the next build.
                println!(
                    "to repair: delete the file named at the start of each BAD line (all are inside {}; \
                     one reported missing needs nothing), then run `imagegen build`",
                    store.root().display()
                );
            }
            Ok(if report.ok() && lock_problems == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::List { json } => {
            let store = Store::open(&cfg.store)?;
            let lock = store.lock_shared(|l| eprintln!("imagegen: waiting for a build to finish ({})", l.display()))?;
            let (manifests, bad) = store.current_checked()?;
            drop(lock);
            // Checked manifests only: each path is the blob's, inside the store.
            let rows: Vec<_> = manifests
                .iter()
                .flat_map(|m| m.outputs.iter().map(move |(name, o)| (m, name, o)))
                .map(|(m, name, o)| {
                    serde_json::json!({
                        "schema_version": LIST_SCHEMA_VERSION,
                        "recipe": m.recipe, "output": name, "sha256": o.sha256, "size": o.size,
                        "path": store.blob_path(&o.sha256),
                    })
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<18} {:<10} {:<64} {:>11}  path", "recipe", "output", "sha256", "bytes");
                for r in &rows {
                    let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                    println!(
                        "{:<18} {:<10} {:<64} {:>11}  {}",
                        f("recipe"),
                        f("output"),
                        f("sha256"),
                        r["size"],
                        f("path")
                    );
                }
            }
            // One bad manifest does not hide the others; it is named and fails the command.
            for p in &bad {
                eprintln!("imagegen: BAD {p} (run `imagegen verify`)");
            }
            Ok(if bad.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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

impl Ui {
    /// Removes every spinner (for commands whose recipes have no `end`).
    fn clear(&self) {
        for (_, pb) in self.bars.lock().expect("ui lock").drain() {
            pb.finish_and_clear();
            self.mp.remove(&pb);
        }
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
