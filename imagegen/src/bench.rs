//! `imagegen bench`: what building costs, measured rather than assumed. An initramfs built
//! from scratch in a throw-away store, the wall time of a no-op `imagegen build` (the
//! binary run as a child process, start-up included), each kernel's build time as its
//! manifest recorded it, and each current artifact's size.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::build::{build, BuildError};
use crate::config::Config;
use crate::plan::{all_recipes, PlanError};
use crate::recipe::Kind;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("temporary store: {0}")]
    TempDir(std::io::Error),
    #[error("running {exe}: {message}")]
    Run { exe: String, message: String },
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The initramfs step alone (cpio + gzip + store), from scratch.
    pub initramfs_build_seconds: f64,
    /// `build initramfs` into an empty store and cache (agent's cargo no-op included).
    pub initramfs_total_seconds: f64,
    /// Recipes the no-op runs covered (those with a current build).
    pub noop_recipes: Vec<String>,
    /// Wall time of each no-op `imagegen build` run, sorted.
    pub noop_seconds: Vec<f64>,
    /// (recipe, recorded build seconds); None: not built yet.
    pub kernels: Vec<(String, Option<f64>)>,
    /// (recipe, output, bytes) of every current artifact.
    pub sizes: Vec<(String, String, u64)>,
}

impl BenchReport {
    pub fn noop_median(&self) -> Option<f64> {
        let n = self.noop_seconds.len();
        (n > 0).then(|| self.noop_seconds[n / 2])
    }
}

/// Runs the measurements. `exe` is the imagegen binary used for the no-op runs.
pub fn run(cfg: &Config, exe: &Path, runs: usize) -> Result<BenchReport, BenchError> {
    // 1. From scratch, in a throw-away store and cache.
    let tmp = tempfile::Builder::new().prefix("imagegen-bench").tempdir().map_err(BenchError::TempDir)?;
    let scratch = Config { store: tmp.path().join("store"), cache: tmp.path().join("cache"), ..cfg.clone() };
    let t0 = Instant::now();
    let outcomes = build(&scratch, &["initramfs".to_string()], &())?;
    let initramfs_total_seconds = t0.elapsed().as_secs_f64();
    let initramfs_build_seconds =
        outcomes.iter().find(|o| o.recipe == "initramfs").map_or(0.0, |o| o.manifest.build_seconds);
    drop(tmp);

    // 2. No-op: every non-kernel recipe is made current first (cheap); kernels count when
    // they have been built, since building one here would take minutes.
    let all = all_recipes(&cfg.recipes)?;
    let store = Store::at(&cfg.store);
    let mut noop_recipes = Vec::new();
    let mut kernels = Vec::new();
    let plan = crate::plan::plan(&cfg.recipes, &all);
    for name in &all {
        let is_kernel = match &plan {
            Ok(p) => p.steps.iter().any(|s| s.recipe.name == *name && s.recipe.kind == Kind::Kernel),
            Err(_) => name.starts_with("kernel"),
        };
        if !is_kernel || store.current(name).is_ok() {
            noop_recipes.push(name.clone());
        }
    }
    build(cfg, &noop_recipes, &())?;
    let mut noop_seconds = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let out = Command::new(exe)
            .arg("--root")
            .arg(&cfg.workspace)
            .arg("--recipes")
            .arg(&cfg.recipes)
            .arg("--store")
            .arg(&cfg.store)
            .arg("--cache")
            .arg(&cfg.cache)
            .arg("build")
            .args(&noop_recipes)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BenchError::Run { exe: exe.display().to_string(), message: e.to_string() })?;
        noop_seconds.push(t.elapsed().as_secs_f64());
        if !out.status.success() {
            let message = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
            return Err(BenchError::Run { exe: exe.display().to_string(), message });
        }
    }
    noop_seconds.sort_by(f64::total_cmp);

    // 3. Recorded numbers.
    let store = Store::open(&cfg.store)?;
    for name in &all {
        let is_kernel = plan
            .as_ref()
            .map(|p| p.steps.iter().any(|s| s.recipe.name == *name && s.recipe.kind == Kind::Kernel))
            .unwrap_or(false);
        let current = store.current(name).ok();
        if is_kernel || current.as_ref().is_some_and(|m| m.kind == Kind::Kernel) {
            kernels.push((name.clone(), current.map(|m| m.build_seconds)));
        }
    }
    let mut sizes = Vec::new();
    for m in store.current_all()? {
        for (name, o) in &m.outputs {
            sizes.push((m.recipe.clone(), name.clone(), o.size));
        }
    }
    Ok(BenchReport { initramfs_build_seconds, initramfs_total_seconds, noop_recipes, noop_seconds, kernels, sizes })
}
