//! `imagegen build`: plan, then for each recipe in dependency order compute its input
//! hash and take the build from the store (no-op), else from the cache (copy/link), else
//! build it and put it in both.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Config;
use crate::hash;
use crate::kinds::{self, Tools};
use crate::manifest::{HashedInputs, ImagegenVersion, Input, Manifest, RecipeFile, MANIFEST_FORMAT};
use crate::plan::{self, FileSource, KernelSource, PlanError, Resolved, Step};
use crate::recipe::{Kind, Spec};
use crate::store::{Store, StoreError};

/// Hooks for a progress display. All default to doing nothing.
pub trait Progress: Sync {
    /// Work on `recipe` starts.
    fn begin(&self, _recipe: &str) {}
    /// What a running build is doing (a kernel build's latest make output, say).
    fn step(&self, _recipe: &str, _message: &str) {}
    /// `recipe` is done.
    fn end(&self, _outcome: &Outcome) {}
    /// Something not tied to one running recipe (waiting for another build's lock, checking
    /// a source tarball).
    fn notice(&self, _message: &str) {}
}

/// No progress display.
impl Progress for () {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The store already had this exact build.
    Fresh,
    /// Copied (hard-linked) from the cache.
    Cached,
    Built,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Fresh => "up to date",
            Status::Cached => "from cache",
            Status::Built => "built",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub recipe: String,
    pub status: Status,
    pub manifest: Manifest,
    /// Wall time spent on this recipe in this run.
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{context}: {source}")]
    Store { context: String, source: StoreError },
    #[error("building {recipe}: {step}: {message}")]
    Build { recipe: String, step: String, message: String },
    #[error(
        "{file}: {package} {version} is not served by the Debian archives apt knows (served now: {}); \
         re-pin with `imagegen pin {recipe}`",
        if .served.is_empty() { "no version".to_string() } else { .served.join(", ") }
    )]
    NotServed { file: PathBuf, recipe: String, package: String, version: String, served: Vec<String> },
    #[error("{file}: fragment {fragment}: {}", describe_mismatches(.mismatches))]
    KernelConfig { file: PathBuf, fragment: String, mismatches: Vec<kinds::kernel::Mismatch> },
}

fn describe_mismatches(m: &[kinds::kernel::Mismatch]) -> String {
    let v: Vec<String> = m.iter().map(ToString::to_string).collect();
    v.join("; ")
}

/// A pinned input in the cache (or, for a kernel source, the installed file that matches).
#[derive(Debug, Clone)]
pub struct Fetched {
    pub recipe: String,
    /// `package=version`, and the tarball's path for a kernel source.
    pub what: String,
    pub path: PathBuf,
}

/// Fetches and checks every pinned Debian input of `names` (every recipe when empty) and what
/// they depend on: kernel sources and packages, whether or not their builds are stored. For
/// preparing a machine before it goes offline, and to check pins without building.
pub fn fetch(cfg: &Config, names: &[String], progress: &dyn Progress) -> Result<Vec<Fetched>, BuildError> {
    let plan = plan::plan(&cfg.recipes, names)?;
    let cache = Store::create_cache(&cfg.cache)
        .map_err(|source| BuildError::Store { context: format!("cache {}", cfg.cache.display()), source })?;
    let waiting =
        |lock: &Path| progress.notice(&format!("waiting for another imagegen run to finish ({})", lock.display()));
    let _lock = cache
        .lock(waiting)
        .map_err(|source| BuildError::Store { context: format!("cache {}", cfg.cache.display()), source })?;
    let fetcher = kinds::debs::Fetcher { cache: &cfg.cache, progress };
    let mut checked = kinds::source::Checked::new();
    let mut out = Vec::new();
    for step in &plan.steps {
        let r = &step.recipe;
        let mut pins: Vec<(&str, &str, &str)> = Vec::new();
        match (&step.resolved, &r.spec) {
            (Resolved::Kernel { source, .. }, Spec::Kernel(k)) => {
                progress.begin(&r.name);
                let path = kinds::source::prepare(fetcher, r, source, &k.sha256, &mut checked)?;
                let what = match &k.source {
                    crate::recipe::SourceSpec::Deb(d) => format!("{}={} {}", d.package, d.version, d.path),
                    crate::recipe::SourceSpec::File(f) => f.clone(),
                };
                out.push(Fetched { recipe: r.name.clone(), what, path });
            }
            (_, Spec::DebFile(d)) => pins.push((&d.package, &d.version, &d.sha256)),
            (_, Spec::KernelPackage(k)) => {
                pins.extend(k.package.iter().map(|p| (p.name.as_str(), p.version.as_str(), p.sha256.as_str())))
            }
            (_, Spec::Tree(t)) => {
                pins.extend(t.busybox_package.iter().map(|p| (p.name.as_str(), p.version.as_str(), p.sha256.as_str())));
                pins.extend(t.packages.iter().map(|p| (p.name.as_str(), p.version.as_str(), p.sha256.as_str())));
            }
            _ => {}
        }
        if !pins.is_empty() {
            progress.begin(&r.name);
        }
        for (name, version, sha256) in pins {
            let path = fetcher.fetch(&r.name, &r.file, &kinds::debs::Pin { name, version, sha256 })?;
            out.push(Fetched { recipe: r.name.clone(), what: format!("{name}={version}"), path });
        }
    }
    Ok(out)
}

/// Builds `names` (every recipe when empty) and what they depend on.
pub fn build(cfg: &Config, names: &[String], progress: &dyn Progress) -> Result<Vec<Outcome>, BuildError> {
    let plan = plan::plan(&cfg.recipes, names)?;
    let tools = Tools::default();
    // Everything that can fail because of a recipe fails here, before the store is touched.
    // Kernels have no recipe dependencies, so their input hash is known now: only a kernel
    // that is neither in the store nor in the cache gets its (150 MB) tarball hashed.
    let (store_ro, cache_ro) = (Store::at(&cfg.store), Store::at(&cfg.cache));
    let store_err = |context: &Path| {
        let context = format!("store {}", context.display());
        move |source| BuildError::Store { context, source }
    };
    let mut needed = Vec::new();
    for step in &plan.steps {
        let Resolved::Kernel { .. } = &step.resolved else { continue };
        let ih = input_hash(cfg, step, &step.inputs, &tools.kernel(&step.recipe.file)?);
        if store_ro.build_manifest(&ih).is_none() && cache_ro.build_manifest(&ih).is_none() {
            needed.push(step);
        }
    }
    // Their sources are fetched (into the cache, under its lock) and checked now, so a pin
    // the archive no longer serves stops the build before the store is touched.
    let mut sources: HashMap<String, PathBuf> = HashMap::new();
    let mut checked = kinds::source::Checked::new();
    let fetcher = kinds::debs::Fetcher { cache: &cfg.cache, progress };
    // A file source needs no cache: a bad pin then leaves nothing behind at all.
    let (files, debs): (Vec<&Step>, Vec<&Step>) =
        needed.into_iter().partition(|s| matches!(s.resolved, Resolved::Kernel { source: KernelSource::File(_), .. }));
    let mut prepare = |steps: Vec<&Step>| -> Result<(), BuildError> {
        for step in steps {
            let (Resolved::Kernel { source, .. }, Spec::Kernel(k)) = (&step.resolved, &step.recipe.spec) else {
                continue;
            };
            let path = kinds::source::prepare(fetcher, &step.recipe, source, &k.sha256, &mut checked)?;
            sources.insert(step.recipe.name.clone(), path);
        }
        Ok(())
    };
    prepare(files)?;
    if !debs.is_empty() {
        let cache = Store::create_cache(&cfg.cache).map_err(store_err(&cfg.cache))?;
        let waiting =
            |lock: &Path| progress.notice(&format!("waiting for another imagegen run to finish ({})", lock.display()));
        let _lock = cache.lock(waiting).map_err(store_err(&cfg.cache))?;
        prepare(debs)?;
    }

    let store = Store::create(&cfg.store).map_err(store_err(&cfg.store))?;
    let cache = Store::create_cache(&cfg.cache).map_err(store_err(&cfg.cache))?;
    // Store first, cache second, always: two builds never wait on each other in a cycle.
    let waiting =
        |lock: &Path| progress.notice(&format!("waiting for another imagegen run to finish ({})", lock.display()));
    let store_lock = store.lock(waiting).map_err(store_err(&cfg.store))?;
    let cache_lock = cache.lock(waiting).map_err(store_err(&cfg.cache))?;
    store.clean_temps(&store_lock).map_err(store_err(&cfg.store))?;
    cache.clean_temps(&cache_lock).map_err(store_err(&cfg.cache))?;

    let mut built: BTreeMap<String, Manifest> = BTreeMap::new();
    let mut outcomes = Vec::new();
    for step in &plan.steps {
        let ctx = kinds::Ctx { cfg, store: &store, cache: &cache, progress, deps: &built, tools: &tools };
        let outcome = build_one(&ctx, step, &mut sources)?;
        progress.end(&outcome);
        built.insert(outcome.recipe.clone(), outcome.manifest.clone());
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// What `imagegen build --dry-run` says of one recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub recipe: String,
    pub kind: Kind,
    /// "fresh" (the store has this build), "import" (from the cache), "build", or "cargo"
    /// (the agent: cargo decides).
    pub action: &'static str,
    pub why: String,
}

/// What `build` would do for `names`, without writing anything (no store, cache or lock
/// is created or taken; no source is fetched): each recipe in build order, whether the
/// store already has a build of its inputs, the cache has one to import, or it would be
/// built, and why. The agent's inputs are cargo's output, known only once cargo runs: the
/// recipes after it are judged against the store's current agent.
pub fn dry_run(cfg: &Config, names: &[String]) -> Result<Vec<Planned>, BuildError> {
    let plan = plan::plan(&cfg.recipes, names)?;
    let tools = Tools::default();
    let (store, cache) = (Store::at(&cfg.store), Store::at(&cfg.cache));
    let mut known: BTreeMap<String, Manifest> = BTreeMap::new();
    let mut rebuilt: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for step in &plan.steps {
        let r = &step.recipe;
        let mut say =
            |action: &'static str, why: String| out.push(Planned { recipe: r.name.clone(), kind: r.kind, action, why });
        if let Resolved::Agent = step.resolved {
            match store.current(&r.name) {
                Ok(m) => {
                    known.insert(r.name.clone(), m);
                    say("cargo", "cargo builds the agent (a no-op when nothing changed); rebuilt only if the binary differs from the store's, which the recipes below are judged against".into());
                }
                Err(_) => {
                    rebuilt.push(r.name.clone());
                    say("build", "no current build in the store".into());
                }
            }
            continue;
        }
        let ctx = kinds::Ctx { cfg, store: &store, cache: &cache, progress: &(), deps: &known, tools: &tools };
        let deps = dependency_names(step);
        if let Some(d) = deps.iter().find(|d| rebuilt.contains(d)) {
            rebuilt.push(r.name.clone());
            say("build", format!("it depends on {d}, which is built"));
            continue;
        }
        let tools = recipe_tools(&ctx, step)?;
        let mut inputs = step.inputs.clone();
        inputs.extend(dependency_inputs(&ctx, step)?);
        let ih = input_hash(cfg, step, &inputs, &tools);
        if let Some(m) = store.build_manifest(&ih) {
            known.insert(r.name.clone(), m);
            say("fresh", format!("the store has a build of these inputs (input hash {})", &ih[..12]));
        } else if let Some(m) = cache.build_manifest(&ih) {
            known.insert(r.name.clone(), m);
            say(
                "import",
                format!("the cache {} has a build of these inputs (input hash {})", cfg.cache.display(), &ih[..12]),
            );
        } else {
            rebuilt.push(r.name.clone());
            let why = match store.current(&r.name) {
                Ok(m) => match changed_inputs(&m.inputs, &inputs, &tools, &m.tools) {
                    c if c.is_empty() => "its inputs differ from the current build's".to_string(),
                    c => format!("changed since the current build: {}", c.join(", ")),
                },
                Err(_) => "never built into this store".into(),
            };
            let fetch = match &step.resolved {
                Resolved::Kernel { source: KernelSource::Deb(_), .. } => {
                    "; its pinned source package is fetched if the cache lacks it"
                }
                _ => "",
            };
            say("build", format!("{why}{fetch}"));
        }
    }
    Ok(out)
}

/// The recipes a step takes outputs from.
fn dependency_names(step: &Step) -> Vec<String> {
    match (&step.resolved, &step.recipe.spec) {
        (Resolved::Tree { files, .. }, _) => files
            .iter()
            .filter_map(|(_, src, _)| match src {
                FileSource::Recipe { recipe, .. } => Some(recipe.clone()),
                _ => None,
            })
            .collect(),
        (Resolved::OciBundle, Spec::OciBundle(b)) => vec![b.rootfs.clone()],
        (Resolved::System { .. }, Spec::System(s)) => s.common.kernel.iter().cloned().collect(),
        _ => vec![],
    }
}

/// Names of the inputs and tools that differ between a current build and now.
fn changed_inputs(
    was: &[Input],
    now: &[Input],
    now_tools: &BTreeMap<String, String>,
    was_tools: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut v: Vec<String> = now
        .iter()
        .filter(|i| !was.iter().any(|w| w.name == i.name && w.sha256 == i.sha256))
        .map(|i| i.name.clone())
        .collect();
    v.extend(was.iter().filter(|w| !now.iter().any(|i| i.name == w.name)).map(|w| format!("{} (gone)", w.name)));
    v.extend(now_tools.iter().filter(|(k, val)| was_tools.get(*k) != Some(val)).map(|(k, _)| format!("tool {k}")));
    v
}

fn input_hash(cfg: &Config, step: &Step, inputs: &[Input], tools: &BTreeMap<String, String>) -> String {
    let r = &step.recipe;
    HashedInputs::new(&r.name, r.kind, cfg.source_date_epoch, inputs, tools).hash()
}

/// The host tools a recipe's build runs, with their versions: part of its input hash. The
/// agent's come from its cargo build, so an agent step has none here.
fn recipe_tools(ctx: &kinds::Ctx<'_>, step: &Step) -> Result<BTreeMap<String, String>, PlanError> {
    let r = &step.recipe;
    let tool_err = |problem| PlanError::Tool { file: r.file.clone(), tool: r.kind.to_string(), problem };
    Ok(match (&step.resolved, &r.spec) {
        (Resolved::Kernel { .. }, _) => ctx.tools.kernel(&r.file)?,
        (Resolved::System { .. }, Spec::System(s)) => kinds::system::tools(ctx.tools, &s.source).map_err(tool_err)?,
        (Resolved::KernelPackage { file }, _) => {
            kinds::kernel_package::tools(ctx.tools, file.is_none()).map_err(tool_err)?
        }
        _ => BTreeMap::new(),
    })
}

/// `sources`: the kernel source tarballs prepared before the store was locked, by recipe.
fn build_one(ctx: &kinds::Ctx<'_>, step: &Step, sources: &mut HashMap<String, PathBuf>) -> Result<Outcome, BuildError> {
    let t0 = Instant::now();
    let r = &step.recipe;
    ctx.progress.begin(&r.name);
    let mut inputs = step.inputs.clone();
    let mut agent_binary = None;
    // Time already spent building (cargo, for the agent) before the input hash is known.
    let mut prebuild_seconds = 0.0;
    let tools = match (&step.resolved, &r.spec) {
        (Resolved::Agent, Spec::Agent(a)) => {
            let t_cargo = Instant::now();
            // cargo is its own cache: it runs every time (a no-op when nothing changed) and
            // the binary it produces is this recipe's input.
            let b = kinds::agent::cargo_build(ctx, r, a)?;
            let (sha256, _) = hash::sha256_file(&b.binary).map_err(|e| BuildError::Build {
                recipe: r.name.clone(),
                step: "hashing the agent".into(),
                message: format!("{}: {e}", b.binary.display()),
            })?;
            let name = format!("{} ({}, profile {})", a.package, a.target, a.profile);
            inputs.push(Input { role: "cargo-output".into(), name, sha256 });
            agent_binary = Some(b.binary);
            prebuild_seconds = secs(t_cargo);
            b.tools
        }
        _ => recipe_tools(ctx, step)?,
    };
    inputs.extend(dependency_inputs(ctx, step)?);
    let ih = input_hash(ctx.cfg, step, &inputs, &tools);
    let store_err = |source| BuildError::Store { context: format!("recipe {}", r.name), source };

    if let Some(m) = ctx.store.build_manifest(&ih) {
        ctx.store.set_current(&m).map_err(store_err)?;
        return Ok(Outcome { recipe: r.name.clone(), status: Status::Fresh, manifest: m, seconds: secs(t0) });
    }
    if let Some(m) = ctx.cache.build_manifest(&ih) {
        let mut all = true;
        for o in m.outputs.values() {
            all &= ctx.store.import_blob(ctx.cache, &o.sha256).map_err(store_err)?;
        }
        if all {
            ctx.store.put_build_manifest(&m).map_err(store_err)?;
            ctx.store.set_current(&m).map_err(store_err)?;
            return Ok(Outcome { recipe: r.name.clone(), status: Status::Cached, manifest: m, seconds: secs(t0) });
        }
        // A corrupt cache entry is a miss: rebuild and overwrite it.
    }

    let t_build = Instant::now();
    let mut done_work = None;
    let mut system = None;
    let mut kernel_release = None;
    let outputs = match (&step.resolved, &r.spec) {
        (Resolved::Agent, _) => {
            let bin = agent_binary.expect("set above");
            let (sha, size) = ctx.store.put_blob_file(&bin).map_err(store_err)?;
            BTreeMap::from([("agent".to_string(), crate::store::output_record(sha, size))])
        }
        (Resolved::Tree { files, busybox }, Spec::Tree(_)) => kinds::tree::build(ctx, r, files, busybox.as_ref())?,
        (Resolved::OciBundle, Spec::OciBundle(b)) => kinds::oci::build(ctx, r, b)?,
        (Resolved::Disk, Spec::Disk(d)) => {
            ctx.progress.step(&r.name, &format!("writing {} MiB", d.size_mib));
            let (sha, size) =
                ctx.store.put_blob_with(|w| kinds::disk::write_disk(w, d.size_mib, d.seed)).map_err(store_err)?;
            BTreeMap::from([("disk".to_string(), crate::store::output_record(sha, size))])
        }
        (Resolved::DebFile, Spec::DebFile(d)) => kinds::deb_file::build(ctx, r, d)?,
        (Resolved::Kernel { source, fragments, patches }, Spec::Kernel(k)) => {
            let tarball = match sources.remove(&r.name) {
                Some(p) => p,
                // Gone from the store and cache since the first look (another build's doing).
                None => kinds::source::prepare(ctx.fetcher(), r, source, &k.sha256, &mut Default::default())?,
            };
            let (outputs, work) = kinds::kernel::build(ctx, r, k, &ih, &tarball, fragments, patches)?;
            done_work = Some(work);
            outputs
        }
        (Resolved::System { path, oci, mirrors }, Spec::System(s)) => {
            let (outputs, info) = kinds::system::build(ctx, r, s, &ih, path.as_deref(), *oci, mirrors)?;
            system = Some(Box::new(info));
            outputs
        }
        (Resolved::KernelPackage { file }, Spec::KernelPackage(k)) => {
            let (outputs, release) = kinds::kernel_package::build(ctx, r, k, &ih, file.as_deref())?;
            kernel_release = release;
            outputs
        }
        _ => unreachable!("plan resolves each kind to its own variant"),
    };
    let build_seconds = prebuild_seconds + secs(t_build);
    for o in outputs.values() {
        ctx.cache.import_blob(ctx.store, &o.sha256).map_err(store_err)?;
    }
    let cmdline = Some(r.cmdline().to_string()).filter(|c| !c.is_empty());
    let m = Manifest {
        format: MANIFEST_FORMAT,
        recipe: r.name.clone(),
        kind: r.kind,
        recipe_file: RecipeFile { path: inputs[0].name.clone(), sha256: r.sha256.clone(), text: r.text.clone() },
        input_hash: ih,
        inputs,
        tools,
        imagegen: ImagegenVersion { version: env!("CARGO_PKG_VERSION").into(), generator: r.kind.generator() },
        source_date_epoch: ctx.cfg.source_date_epoch,
        build_seconds,
        outputs,
        cmdline,
        system,
        kernel_release,
    };
    // Manifests last: cache, then the store's build record, then the current pointer.
    ctx.cache.put_build_manifest(&m).map_err(store_err)?;
    ctx.store.put_build_manifest(&m).map_err(store_err)?;
    ctx.store.set_current(&m).map_err(store_err)?;
    if let Some(w) = done_work {
        kinds::kernel::discard(&w);
    }
    Ok(Outcome { recipe: r.name.clone(), status: Status::Built, manifest: m, seconds: secs(t0) })
}

/// The outputs of other recipes this one takes, as inputs (in the recipe's field order).
fn dependency_inputs(ctx: &kinds::Ctx<'_>, step: &Step) -> Result<Vec<Input>, BuildError> {
    let wanted: Vec<(String, String)> = match (&step.resolved, &step.recipe.spec) {
        (Resolved::Tree { files, .. }, _) => files
            .iter()
            .filter_map(|(_, src, _)| match src {
                FileSource::Recipe { recipe, output } => Some((recipe.clone(), output.clone())),
                _ => None,
            })
            .collect(),
        (Resolved::OciBundle, Spec::OciBundle(b)) => vec![(b.rootfs.clone(), Kind::Rootfs.primary_output().into())],
        (Resolved::System { .. }, Spec::System(s)) => {
            s.common.kernel.iter().map(|k| (k.clone(), "modules".to_string())).collect()
        }
        _ => vec![],
    };
    let mut out: Vec<Input> = Vec::new();
    for (recipe, output) in wanted {
        let o = ctx.dep_output(&step.recipe.name, &recipe, &output)?;
        let name = format!("{recipe}/{output}");
        if !out.iter().any(|i| i.name == name) {
            out.push(Input { role: "dependency".into(), name, sha256: o.sha256.clone() });
        }
    }
    Ok(out)
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
