//! From recipe names to a checked build plan: load the recipes and those they depend on,
//! refuse cycles, resolve every path and hash every file input. Nothing here writes
//! anything, so a bad recipe fails before the store is touched.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::archive::{normalize_path, DeviceKind, Node, Tree};
use crate::hash;
use crate::manifest::Input;
use crate::recipe::{self, DebPin, DebSource, Kind, ParseFailure, Recipe, SourceSpec, Spec, TreeSpec};

/// Why a set of recipes cannot be built; each names the recipe file and the field.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("recipe directory {dir}: {source}")]
    ListRecipes { dir: PathBuf, source: io::Error },
    #[error("recipe directory {dir}: no recipes (*.toml) in it: nothing to build")]
    NoRecipes { dir: PathBuf },
    #[error("{file}: {name:?} is not a recipe name: {RECIPE_NAME_RULE} (rename or remove the file)")]
    RecipeName { file: PathBuf, name: String },
    #[error("{}: the file name is not UTF-8: {RECIPE_NAME_RULE} (rename or remove the file)", .file.display())]
    RecipeNameNotUtf8 { file: PathBuf },
    #[error("no recipe {name:?}: {file} does not exist")]
    UnknownRecipe { name: String, file: PathBuf },
    #[error("{file}: {source}")]
    ReadRecipe { file: PathBuf, source: io::Error },
    #[error("{file}: {failure}")]
    ParseRecipe { file: PathBuf, failure: ParseFailure },
    #[error("{file}: field `{field}`: {problem}")]
    ResolveInput { file: PathBuf, field: String, problem: String },
    #[error("{file}: field `{field}`: dependency cycle {cycle}")]
    DependencyCycle { file: PathBuf, field: String, cycle: String },
    #[error("{file}: field `{field}`: hashing {path}: {source}")]
    HashInput { file: PathBuf, field: String, path: PathBuf, source: io::Error },
    #[error("{file}: field `sha256`: pinned {pinned} but {path} has sha256 {actual}")]
    VerifySource { file: PathBuf, path: PathBuf, pinned: String, actual: String },
    #[error("{file}: {tool}: {problem}")]
    Tool { file: PathBuf, tool: String, problem: String },
}

/// Device numbers Linux can represent (MAJOR/MINORBITS of include/linux/kdev_t.h).
const MAX_MAJOR: u32 = 1 << 12;
const MAX_MINOR: u32 = 1 << 20;

/// Recipes in build order (every recipe after those it depends on).
#[derive(Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
}

#[derive(Debug)]
pub struct Step {
    pub recipe: Recipe,
    /// Inputs known before anything is built (dependencies' outputs come later).
    pub inputs: Vec<Input>,
    pub(crate) resolved: Resolved,
}

#[derive(Debug)]
pub(crate) enum Resolved {
    Agent,
    Tree {
        files: Vec<(String, FileSource, u32)>,
        busybox: Option<Busybox>,
    },
    OciBundle,
    Disk,
    Kernel {
        source: KernelSource,
        fragments: Vec<(String, PathBuf)>,
        patches: Vec<(String, PathBuf)>,
    },
    DebFile,
    /// A root file system: `path` is the imported directory, tarball or OCI image (none for
    /// Debian), `oci` the image format.
    System {
        path: Option<PathBuf>,
        oci: Option<crate::recipe::OciFormat>,
        mirrors: Vec<String>,
    },
    /// A prebuilt kernel: the file (none for a package).
    KernelPackage {
        file: Option<PathBuf>,
    },
}

#[derive(Debug)]
pub(crate) enum FileSource {
    Host(PathBuf),
    Inline(String),
    Recipe { recipe: String, output: String },
}

/// Where a kernel's source tarball is: a file, or a member of a pinned Debian package that
/// the build takes out into the cache (`kinds::source`).
#[derive(Debug)]
pub(crate) enum KernelSource {
    File(PathBuf),
    Deb(DebSource),
}

#[derive(Debug)]
pub(crate) enum Busybox {
    /// A host binary; its applets are known at plan time.
    Host { path: PathBuf, applets: Vec<String> },
    /// `/bin/busybox` of a pinned package; its applets are listed when it is built.
    Package(DebPin),
}

impl Plan {
    pub fn names(&self) -> Vec<&str> {
        self.steps.iter().map(|s| s.recipe.name.as_str()).collect()
    }
}

/// What a recipe file is called, for errors about one that is not.
const RECIPE_NAME_RULE: &str = "a recipe file is NAME.toml, NAME being 1 to 64 lower-case letters, digits, \
     `-` and `_`, starting with a letter or digit (initramfs.toml, kernel-pv.toml)";

/// All recipe names in `dir` (the stems of `*.toml`), sorted. A `*.toml` whose stem is not
/// a recipe name is an error naming it, not skipped: a plain `imagegen build` would
/// silently leave it out. So is a directory with no recipe at all: building nothing is not
/// what was meant.
pub fn all_recipes(dir: &Path) -> Result<Vec<String>, PlanError> {
    let err = |source| PlanError::ListRecipes { dir: dir.to_path_buf(), source };
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(err)? {
        let p = e.map_err(err)?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            files.push(p);
        }
    }
    files.sort();
    let mut names = Vec::new();
    for p in files {
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
            return Err(PlanError::RecipeNameNotUtf8 { file: p });
        };
        if !recipe::valid_name(stem) {
            return Err(PlanError::RecipeName { name: stem.to_string(), file: p });
        }
        names.push(stem.to_string());
    }
    if names.is_empty() {
        return Err(PlanError::NoRecipes { dir: dir.to_path_buf() });
    }
    names.sort();
    Ok(names)
}

/// Every recipe in `dir`, parsed (so a broken one is an error naming it), by name.
fn parse_all(dir: &Path) -> Result<Vec<Recipe>, PlanError> {
    let mut out = Vec::new();
    for name in all_recipes(dir)? {
        let file = dir.join(format!("{name}.toml"));
        let text =
            std::fs::read_to_string(&file).map_err(|source| PlanError::ReadRecipe { file: file.clone(), source })?;
        out.push(
            recipe::parse(&name, file.clone(), text)
                .map_err(|failure| PlanError::ParseRecipe { file: file.clone(), failure })?,
        );
    }
    Ok(out)
}

/// Every recipe but those marked `explicit = true` (built only when named): what a plain
/// `imagegen build` builds. Every recipe is parsed, so a broken one still stops it.
pub fn default_recipes(dir: &Path) -> Result<Vec<String>, PlanError> {
    Ok(parse_all(dir)?.into_iter().filter(|r| !r.explicit()).map(|r| r.name).collect())
}

/// The recipes in `dir` of kind `kind` (`imagegen recipes --kind`: scripts/test builds the
/// kernels first), explicit ones included; every recipe is parsed, so a broken one is an error.
pub fn recipes_of_kind(dir: &Path, kind: Kind) -> Result<Vec<String>, PlanError> {
    Ok(parse_all(dir)?.into_iter().filter(|r| r.kind == kind).map(|r| r.name).collect())
}

/// Loads and checks `names` (all recipes when empty) and what they depend on.
pub fn plan(recipes_dir: &Path, names: &[String]) -> Result<Plan, PlanError> {
    let names = if names.is_empty() { default_recipes(recipes_dir)? } else { names.to_vec() };
    let canon = std::fs::canonicalize(recipes_dir)
        .map_err(|source| PlanError::ListRecipes { dir: recipes_dir.to_path_buf(), source })?;
    let mut l = Loader { dir: recipes_dir, canon, recipes: BTreeMap::new(), stack: Vec::new(), order: Vec::new() };
    for n in &names {
        l.visit(n, None)?;
    }
    let mut steps = Vec::new();
    for name in &l.order {
        let recipe = l.recipes[name].clone().expect("visited recipes are loaded");
        let (inputs, resolved) = l.resolve(&recipe)?;
        steps.push(Step { recipe, inputs, resolved });
    }
    Ok(Plan { steps })
}

struct Loader<'a> {
    dir: &'a Path,
    canon: PathBuf,
    /// None while being visited (on the stack).
    recipes: BTreeMap<String, Option<Recipe>>,
    stack: Vec<String>,
    order: Vec<String>,
}

impl Loader<'_> {
    fn visit(&mut self, name: &str, referrer: Option<(&Path, &str)>) -> Result<(), PlanError> {
        match self.recipes.get(name) {
            Some(Some(_)) => return Ok(()),
            Some(None) => {
                let (file, field) = referrer.expect("only a dependency can close a cycle");
                let start = self.stack.iter().position(|n| n == name).unwrap_or(0);
                let mut cycle: Vec<&str> = self.stack[start..].iter().map(String::as_str).collect();
                cycle.push(name);
                return Err(PlanError::DependencyCycle {
                    file: file.to_path_buf(),
                    field: field.to_string(),
                    cycle: cycle.join(" → "),
                });
            }
            None => {}
        }
        let file = self.dir.join(format!("{name}.toml"));
        let missing = |problem: String| match referrer {
            Some((rf, field)) => PlanError::ResolveInput { file: rf.to_path_buf(), field: field.into(), problem },
            None => PlanError::UnknownRecipe { name: name.to_string(), file: file.clone() },
        };
        if !recipe::valid_name(name) {
            return Err(match referrer {
                Some(_) => missing(format!("{name:?} is not a recipe name (lower-case letters, digits, - and _)")),
                None => PlanError::RecipeName { name: name.to_string(), file },
            });
        }
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(missing(format!("no recipe {name:?} ({} does not exist)", file.display())))
            }
            Err(source) => return Err(PlanError::ReadRecipe { file, source }),
        };
        let r = recipe::parse(name, file.clone(), text)
            .map_err(|failure| PlanError::ParseRecipe { file: file.clone(), failure })?;
        self.recipes.insert(name.to_string(), None);
        self.stack.push(name.to_string());
        for (field, dep) in r.dependencies() {
            self.visit(&dep, Some((&file, &field)))?;
            let dk = self.recipes[&dep].as_ref().expect("visited").kind;
            let wanted = match field.as_str() {
                "agent" => Some(Kind::Agent),
                "rootfs" => Some(Kind::Rootfs),
                "kernel" => Some(Kind::KernelPackage),
                _ => None,
            };
            if let Some(w) = wanted.filter(|w| *w != dk) {
                return Err(PlanError::ResolveInput {
                    file,
                    field,
                    problem: format!("recipe {dep:?} is of kind {dk}, expected {w}"),
                });
            }
        }
        self.stack.pop();
        self.recipes.insert(name.to_string(), Some(r));
        self.order.push(name.to_string());
        Ok(())
    }

    fn kind_of(&self, name: &str) -> Kind {
        self.recipes[name].as_ref().expect("dependencies are loaded first").kind
    }

    fn resolve(&self, r: &Recipe) -> Result<(Vec<Input>, Resolved), PlanError> {
        let file_name = r.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let mut inputs = vec![Input { role: "recipe".into(), name: file_name, sha256: r.sha256.clone() }];
        let resolved = match &r.spec {
            Spec::Agent(a) => {
                for (field, v) in [("package", &a.package), ("target", &a.target), ("profile", &a.profile)] {
                    if !is_word(v) {
                        return Err(self.bad(r, field, format!("{v:?} is not a cargo name")));
                    }
                }
                if let Some(f) = a.features.iter().find(|f| !is_word(f) || f.contains(',')) {
                    return Err(self.bad(r, "features", format!("{f:?} is not a cargo feature name")));
                }
                Resolved::Agent
            }
            Spec::Tree(t) => self.resolve_tree(r, t, &mut inputs)?,
            Spec::OciBundle(b) => {
                if b.args.is_empty() {
                    return Err(self.bad(r, "args", "must name the program to run".into()));
                }
                if !b.cwd.starts_with('/') {
                    return Err(self.bad(r, "cwd", format!("{:?} is not an absolute path", b.cwd)));
                }
                if b.hostname.is_empty() || b.hostname.len() > 64 {
                    return Err(self.bad(r, "hostname", "must be 1 to 64 characters".into()));
                }
                Resolved::OciBundle
            }
            Spec::Disk(d) => {
                if !(1..=1 << 20).contains(&d.size_mib) {
                    return Err(self.bad(r, "size_mib", format!("{} is not in 1..=1048576", d.size_mib)));
                }
                Resolved::Disk
            }
            Spec::Kernel(k) => {
                if !hash::is_sha256_hex(&k.sha256) {
                    return Err(self.bad(r, "sha256", format!("{:?} is not 64 lower-case hex digits", k.sha256)));
                }
                let source = match &k.source {
                    SourceSpec::File(f) => {
                        let p = if Path::new(f).is_absolute() {
                            let p = PathBuf::from(f);
                            if !p.is_file() {
                                return Err(self.bad(
                                    r,
                                    "source",
                                    format!("{} does not exist or is not a file", p.display()),
                                ));
                            }
                            p
                        } else {
                            self.in_recipes(r, "source", f)?
                        };
                        // The pin stands for the tarball: it is checked when a kernel is actually
                        // built, never re-hashed for a no-op.
                        inputs.push(Input { role: "source".into(), name: f.clone(), sha256: k.sha256.clone() });
                        KernelSource::File(p)
                    }
                    SourceSpec::Deb(d) => {
                        self.check_pin(r, "source.", "package", &d.package, &d.version, &d.sha256)?;
                        guest_path(&d.path).map_err(|p| self.bad(r, "source.path", format!("{:?}: {p}", d.path)))?;
                        if d.path.ends_with('/') {
                            return Err(self.bad(
                                r,
                                "source.path",
                                format!("{:?} names a directory, not the tarball", d.path),
                            ));
                        }
                        // The tarball's pin stands for the source (a kernel built from the same
                        // tarball is the same kernel, whichever .deb carried it); it is fetched
                        // and checked only when the kernel is built.
                        let name = format!("{}={} {}", d.package, d.version, d.path);
                        inputs.push(Input { role: "source".into(), name, sha256: k.sha256.clone() });
                        KernelSource::Deb(d.clone())
                    }
                };
                let mut fragments = Vec::new();
                for (i, f) in k.fragments.iter().enumerate() {
                    let field = format!("fragments[{i}]");
                    let p = self.in_recipes(r, &field, f)?;
                    inputs.push(self.hash_input(r, &field, "fragment", f, &p)?);
                    fragments.push((f.clone(), p));
                }
                let mut patches = Vec::new();
                for (i, f) in k.patches.iter().enumerate() {
                    let field = format!("patches[{i}]");
                    let p = self.in_recipes(r, &field, f)?;
                    inputs.push(self.hash_input(r, &field, "patch", f, &p)?);
                    patches.push((f.clone(), p));
                }
                if !is_word(&k.target) {
                    return Err(self.bad(r, "target", format!("{:?} is not a make target", k.target)));
                }
                normalize_path(&k.output, false)
                    .map_err(|p| self.bad(r, "output", format!("{:?}: {p} (relative to the build tree)", k.output)))?;
                Resolved::Kernel { source, fragments, patches }
            }
            Spec::DebFile(d) => {
                inputs.push(self.package_input(r, "", &d.package, &d.version, &d.sha256)?);
                if d.path.ends_with('/') {
                    return Err(self.bad(
                        r,
                        "path",
                        format!("{:?} names a directory; a deb-file takes one file", d.path),
                    ));
                }
                guest_path(&d.path).map_err(|p| self.bad(r, "path", format!("{:?}: {p}", d.path)))?;
                Resolved::DebFile
            }
            Spec::System(s) => self.resolve_system(r, s, &mut inputs)?,
            Spec::KernelPackage(k) => match (&k.package, &k.file, &k.sha256) {
                (Some(p), None, None) => {
                    inputs.push(self.package_input(r, "package.", &p.name, &p.version, &p.sha256)?);
                    if !p.name.starts_with("linux-image-") {
                        return Err(self.bad(
                            r,
                            "package.name",
                            format!("{:?} is not a Debian kernel package (linux-image-…)", p.name),
                        ));
                    }
                    Resolved::KernelPackage { file: None }
                }
                (None, Some(f), Some(sha)) => {
                    if !hash::is_sha256_hex(sha) {
                        return Err(self.bad(r, "sha256", format!("{sha:?} is not 64 lower-case hex digits")));
                    }
                    let p = self.host_or_recipes_path(r, "file", f)?;
                    if !p.is_file() {
                        return Err(self.bad(r, "file", format!("{} is not a regular file", p.display())));
                    }
                    // The pin stands for the file; it is hashed and compared when built.
                    inputs.push(Input { role: "kernel-file".into(), name: f.clone(), sha256: sha.clone() });
                    Resolved::KernelPackage { file: Some(p) }
                }
                (None, Some(_), None) => return Err(self.bad(r, "sha256", "a kernel `file` needs its sha256".into())),
                (None, None, _) => {
                    return Err(self.bad(r, "package", "give `package` (a pinned linux-image .deb) or `file`".into()))
                }
                (Some(_), _, _) => {
                    return Err(self.bad(r, "file", "give `package` or `file` (with `sha256`), not both".into()))
                }
            },
        };
        Ok((inputs, resolved))
    }

    fn resolve_tree(&self, r: &Recipe, t: &TreeSpec, inputs: &mut Vec<Input>) -> Result<Resolved, PlanError> {
        // A dry run of the tree with empty files: every conflict shows up now, not mid-build.
        let mut tree = Tree::new();
        let add = |tree: &mut Tree, field: &str, path: &str, node: Node| -> Result<(), PlanError> {
            let key = guest_path(path).map_err(|p| self.bad(r, field, format!("{path:?}: {p}")))?;
            tree.add(&key, node).map_err(|e| self.bad(r, field, e.to_string()))
        };
        for (i, d) in t.dirs.iter().enumerate() {
            add(&mut tree, &format!("dirs[{i}]"), &d.path, Node::Dir { mode: d.mode })?;
        }
        let default_agent = if r.kind == Kind::Initramfs { "/init" } else { "/sbin/guest-agent" };
        let agent_path = t.agent_path.as_deref().unwrap_or(default_agent);
        add(&mut tree, "agent_path", agent_path, Node::File { mode: 0o755, data: vec![] })?;
        let mut files = vec![(
            agent_path.to_string(),
            FileSource::Recipe { recipe: t.agent.clone(), output: Kind::Agent.primary_output().into() },
            0o755,
        )];
        for (i, f) in t.files.iter().enumerate() {
            let field = format!("files[{i}]");
            let source = match (&f.src, &f.contents, &f.recipe) {
                (Some(src), None, None) => {
                    let field = format!("{field}.src");
                    let p = self.in_recipes(r, &field, src)?;
                    inputs.push(self.hash_input(r, &field, "file", src, &p)?);
                    FileSource::Host(p)
                }
                (None, Some(text), None) => FileSource::Inline(text.clone()),
                (None, None, Some(dep)) => {
                    let kind = self.kind_of(dep);
                    let output = f.output.clone().unwrap_or_else(|| kind.primary_output().to_string());
                    if !kind.outputs().contains(&output.as_str()) {
                        return Err(self.bad(
                            r,
                            &format!("{field}.output"),
                            format!(
                                "recipe {dep:?} (kind {kind}) has no output {output:?} (it has {:?})",
                                kind.outputs()
                            ),
                        ));
                    }
                    FileSource::Recipe { recipe: dep.clone(), output }
                }
                _ => return Err(self.bad(r, &field, "needs exactly one of `src`, `contents`, `recipe`".into())),
            };
            if f.output.is_some() && f.recipe.is_none() {
                return Err(self.bad(r, &format!("{field}.output"), "only goes with `recipe`".into()));
            }
            add(&mut tree, &format!("{field}.dst"), &f.dst, Node::File { mode: f.mode, data: vec![] })?;
            files.push((f.dst.clone(), source, f.mode));
        }
        for (i, n) in t.nodes.iter().enumerate() {
            let field = format!("nodes[{i}]");
            // hostd unpacks a rootfs tar for container runtimes, which refuse device nodes
            // (Store::materialize_tree does too): the runtime provides /dev.
            if r.kind == Kind::Rootfs {
                return Err(self.bad(
                    r,
                    &field,
                    format!(
                        "{:?}: a rootfs (tar for containers) cannot hold device nodes; the container \
                         runtime provides /dev (device nodes go in an initramfs)",
                        n.path
                    ),
                ));
            }
            // Linux's dev_t: 12 bits of major, 20 of minor; more would be cut or refused at boot.
            if n.major >= MAX_MAJOR {
                return Err(self.bad(
                    r,
                    &format!("{field}.major"),
                    format!("{} is beyond Linux's device numbers (major < {MAX_MAJOR})", n.major),
                ));
            }
            if n.minor >= MAX_MINOR {
                return Err(self.bad(
                    r,
                    &format!("{field}.minor"),
                    format!("{} is beyond Linux's device numbers (minor < {MAX_MINOR})", n.minor),
                ));
            }
            let kind = match n.node_type {
                recipe::NodeType::Char => DeviceKind::Char,
                recipe::NodeType::Block => DeviceKind::Block,
            };
            let node = Node::Device { kind, mode: n.mode, major: n.major, minor: n.minor };
            add(&mut tree, &field, &n.path, node)?;
        }
        for (i, pkg) in t.packages.iter().enumerate() {
            let field = format!("packages[{i}]");
            inputs.push(self.package_input(r, &format!("{field}."), &pkg.name, &pkg.version, &pkg.sha256)?);
            for (j, path) in pkg.paths.iter().enumerate() {
                guest_path(path).map_err(|p| self.bad(r, &format!("{field}.paths[{j}]"), format!("{path:?}: {p}")))?;
            }
        }
        let busybox = match (t.busybox, &t.busybox_path, &t.busybox_package) {
            (false, None, None) => None,
            (false, _, _) => {
                return Err(self.bad(r, "busybox", "busybox_path and busybox_package need busybox = true".into()))
            }
            (true, Some(_), Some(_)) => {
                return Err(self.bad(r, "busybox_package", "give busybox_path or busybox_package, not both".into()))
            }
            (true, _, Some(pin)) => {
                inputs.push(self.package_input(r, "busybox_package.", &pin.name, &pin.version, &pin.sha256)?);
                add(&mut tree, "busybox", "/bin/busybox", Node::File { mode: 0o755, data: vec![] })?;
                Some(Busybox::Package(pin.clone()))
            }
            (true, path, None) => {
                let path = path.as_deref().unwrap_or(recipe::DEFAULT_BUSYBOX);
                let p = PathBuf::from(path);
                if !p.is_absolute() || !p.is_file() {
                    return Err(self.bad(r, "busybox_path", format!("{} is not an existing file", p.display())));
                }
                inputs.push(self.hash_input(r, "busybox_path", "busybox", path, &p)?);
                let applets = busybox_applets(&p).map_err(|e| self.bad(r, "busybox_path", e))?;
                add(&mut tree, "busybox", "/bin/busybox", Node::File { mode: 0o755, data: vec![] })?;
                for a in &applets {
                    add(&mut tree, "busybox", &format!("/bin/{a}"), Node::Symlink { target: "busybox".into() })?;
                }
                Some(Busybox::Host { path: p, applets })
            }
        };
        Ok(Resolved::Tree { files, busybox })
    }

    fn resolve_system(
        &self,
        r: &Recipe,
        s: &crate::recipe::SystemSpec,
        inputs: &mut Vec<Input>,
    ) -> Result<Resolved, PlanError> {
        use crate::recipe::SystemSource;
        if !(1..=1 << 20).contains(&s.common.headroom_mib) {
            return Err(self.bad(r, "headroom_mib", format!("{} is not in 1..=1048576", s.common.headroom_mib)));
        }
        let imported = |field: &str, path: &str, inputs: &mut Vec<Input>| -> Result<PathBuf, PlanError> {
            let p = self.host_or_recipes_path(r, field, path)?;
            // The content is the identity: a changed tree or tarball is another build.
            let sha = crate::kinds::system::content_hash(&p).map_err(|source| PlanError::HashInput {
                file: r.file.clone(),
                field: field.into(),
                path: p.clone(),
                source,
            })?;
            inputs.push(Input { role: "import".into(), name: path.to_string(), sha256: sha });
            Ok(p)
        };
        if let Some(k) = &s.common.kernel {
            if let Some(Some(kr)) = self.recipes.get(k) {
                if let Spec::KernelPackage(kp) = &kr.spec {
                    if kp.package.is_none() {
                        return Err(self.bad(
                            r,
                            "kernel",
                            format!("recipe {k:?} is a kernel `file`, which has no modules to install"),
                        ));
                    }
                }
            }
        }
        Ok(match &s.source {
            SystemSource::Debian(d) => {
                let word =
                    |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !word(&d.suite) {
                    return Err(self.bad(r, "suite", format!("{:?} is not a Debian suite name", d.suite)));
                }
                const VARIANTS: &[&str] = &[
                    "extract",
                    "custom",
                    "essential",
                    "apt",
                    "required",
                    "minbase",
                    "buildd",
                    "important",
                    "debootstrap",
                    "standard",
                ];
                if !VARIANTS.contains(&d.variant.as_str()) {
                    return Err(self.bad(
                        r,
                        "variant",
                        format!("{:?} is not one of mmdebstrap's {VARIANTS:?}", d.variant),
                    ));
                }
                for (i, p) in d.packages.iter().enumerate() {
                    let ok = p.len() >= 2
                        && p.as_bytes()[0].is_ascii_alphanumeric()
                        && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
                    if !ok {
                        return Err(self.bad(
                            r,
                            &format!("packages[{i}]"),
                            format!("{p:?} is not a Debian package name"),
                        ));
                    }
                }
                let mirrors = if d.mirrors.is_empty() {
                    crate::kinds::system::host_mirrors(&d.suite).map_err(|e| self.bad(r, "mirrors", e))?
                } else {
                    d.mirrors.clone()
                };
                for (i, m) in mirrors.iter().enumerate() {
                    if !m.starts_with("deb ") || m.contains('\n') {
                        return Err(self.bad(
                            r,
                            &format!("mirrors[{i}]"),
                            format!("{m:?} is not a one-line `deb URI SUITE COMPONENT…` entry"),
                        ));
                    }
                    inputs.push(Input {
                        role: "mirror".into(),
                        name: m.clone(),
                        sha256: hash::sha256_hex(m.as_bytes()),
                    });
                }
                Resolved::System { path: None, oci: None, mirrors }
            }
            SystemSource::Import(i) => {
                let p = imported("path", &i.path, inputs)?;
                Resolved::System { path: Some(p), oci: None, mirrors: vec![] }
            }
            SystemSource::Oci(o) => {
                let p = imported("path", &o.path, inputs)?;
                let format = match o.format {
                    Some(f) => f,
                    None => crate::kinds::system::oci_format(&p).map_err(|e| self.bad(r, "format", e))?,
                };
                if let Some(img) = &o.image {
                    if img.is_empty() || img.starts_with('-') || img.contains(char::is_whitespace) {
                        return Err(self.bad(
                            r,
                            "image",
                            format!("{img:?} is not an image name in the {}", format.transport()),
                        ));
                    }
                }
                Resolved::System { path: Some(p), oci: Some(format), mirrors: vec![] }
            }
        })
    }

    /// An input path that may be absolute on the host, or relative to the recipe directory
    /// (and then must stay inside it, like every recipe file).
    fn host_or_recipes_path(&self, r: &Recipe, field: &str, path: &str) -> Result<PathBuf, PlanError> {
        if Path::new(path).is_absolute() {
            let p = PathBuf::from(path);
            if std::fs::symlink_metadata(&p).is_err() {
                return Err(self.bad(r, field, format!("{} does not exist", p.display())));
            }
            Ok(p)
        } else {
            self.in_recipes_any(r, field, path)
        }
    }

    /// Checks a package pin; the pin stands for the .deb in the input hash (like a kernel's
    /// source tarball, the file is fetched and compared only when the recipe is built).
    fn package_input(
        &self,
        r: &Recipe,
        prefix: &str,
        name: &str,
        version: &str,
        sha256: &str,
    ) -> Result<Input, PlanError> {
        let name_field = if prefix.is_empty() { "package" } else { "name" };
        self.check_pin(r, prefix, name_field, name, version, sha256)?;
        Ok(Input { role: "package".into(), name: format!("{name}={version}"), sha256: sha256.to_string() })
    }

    /// A package pin's name, version and .deb sha256 are well-formed (`prefix` + field names
    /// the field in errors).
    fn check_pin(
        &self,
        r: &Recipe,
        prefix: &str,
        name_field: &str,
        name: &str,
        version: &str,
        sha256: &str,
    ) -> Result<(), PlanError> {
        let name_ok = name.len() >= 2
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        if !name_ok {
            return Err(self.bad(
                r,
                &format!("{prefix}{name_field}"),
                format!("{name:?} is not a Debian package name"),
            ));
        }
        let version_ok = !version.is_empty()
            && version.as_bytes()[0].is_ascii_digit()
            && version.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.~:".contains(&b));
        if !version_ok {
            return Err(self.bad(r, &format!("{prefix}version"), format!("{version:?} is not a Debian version")));
        }
        if !hash::is_sha256_hex(sha256) {
            return Err(self.bad(r, &format!("{prefix}sha256"), format!("{sha256:?} is not 64 lower-case hex digits")));
        }
        Ok(())
    }

    fn bad(&self, r: &Recipe, field: &str, problem: String) -> PlanError {
        PlanError::ResolveInput { file: r.file.clone(), field: field.to_string(), problem }
    }

    /// A path relative to the recipe directory that must stay inside it, symlinks included.
    fn in_recipes(&self, r: &Recipe, field: &str, rel: &str) -> Result<PathBuf, PlanError> {
        let canon = self.in_recipes_any(r, field, rel)?;
        if !canon.is_file() {
            return Err(self.bad(r, field, format!("{} is not a regular file", self.dir.join(rel).display())));
        }
        Ok(canon)
    }

    /// Like [`Loader::in_recipes`], for a file or a directory.
    fn in_recipes_any(&self, r: &Recipe, field: &str, rel: &str) -> Result<PathBuf, PlanError> {
        let p = Path::new(rel);
        if rel.is_empty() {
            return Err(self.bad(r, field, "empty path".into()));
        }
        if p.is_absolute() {
            return Err(self.bad(
                r,
                field,
                format!("{rel:?} is absolute (paths are relative to {})", self.dir.display()),
            ));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(self.bad(
                r,
                field,
                format!("{rel:?} contains `..` (it must stay inside {})", self.dir.display()),
            ));
        }
        let joined = self.dir.join(p);
        let canon = std::fs::canonicalize(&joined).map_err(|e| {
            let problem = if e.kind() == io::ErrorKind::NotFound {
                format!("{} does not exist", joined.display())
            } else {
                format!("{}: {e}", joined.display())
            };
            self.bad(r, field, problem)
        })?;
        if !canon.starts_with(&self.canon) {
            return Err(self.bad(
                r,
                field,
                format!(
                    "{} resolves to {}, outside {} (symlink)",
                    joined.display(),
                    canon.display(),
                    self.dir.display()
                ),
            ));
        }
        Ok(canon)
    }

    fn hash_input(&self, r: &Recipe, field: &str, role: &str, name: &str, path: &Path) -> Result<Input, PlanError> {
        let (sha256, _) = hash::sha256_file(path).map_err(|source| PlanError::HashInput {
            file: r.file.clone(),
            field: field.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Input { role: role.into(), name: name.into(), sha256 })
    }
}

/// An absolute, normalised path inside an image, returned without its leading `/`.
fn guest_path(path: &str) -> Result<String, &'static str> {
    if !path.starts_with('/') {
        return Err("must be an absolute path inside the image");
    }
    normalize_path(path, true)
}

/// Names cargo and make accept without quoting surprises.
fn is_word(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('-') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// `busybox --list`: the applets this binary provides (deterministic for a given binary,
/// whose hash is an input).
pub(crate) fn busybox_applets(busybox: &Path) -> Result<Vec<String>, String> {
    let out = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| format!("running {} --list: {e}", busybox.display()))?;
    if !out.status.success() {
        return Err(format!("{} --list failed: {}", busybox.display(), out.status));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && is_word(a) && !a.contains('/'))
        .map(String::from)
        .collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}
