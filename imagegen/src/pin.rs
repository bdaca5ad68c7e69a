//! `imagegen pin`: moves every Debian pin of the named recipes (kernel `[source]`,
//! `deb-file`, `[[packages]]`, `busybox_package`) to the newest version the archives serve,
//! downloads it, and rewrites the recipe's version and sha256 in place (toml_edit keeps the
//! file's comments and layout). A kernel's tarball sha256 is taken from the new package.
//! The downloads land in the cache, so the build that follows does not fetch them again.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, TableLike, Value};

use crate::build::{BuildError, Progress};
use crate::config::Config;
use crate::kinds::debs::{self, Download, Fetcher};
use crate::kinds::source;
use crate::plan;
use crate::recipe::{self, Kind};
use crate::store::Store;

/// One pin looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinChange {
    pub recipe: String,
    /// The pin's place in the recipe: `source`, `packages[3]`, `busybox_package`, or `` for a
    /// deb-file's top level.
    pub field: String,
    pub package: String,
    pub from: String,
    /// Equal to `from` when the pin was already the newest.
    pub to: String,
}

impl PinChange {
    pub fn changed(&self) -> bool {
        self.from != self.to
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("{file}: {what}")]
    Recipe { file: PathBuf, what: String },
    #[error("{file}: field `{field}`: package {package} is not served by the Debian archives apt knows{}", .detail)]
    NotServed { file: PathBuf, field: String, package: String, detail: String },
    #[error("{file}: writing: {source}")]
    Write { file: PathBuf, source: std::io::Error },
}

/// A pin found in a recipe: where it is and what it says.
struct Found {
    /// Path of keys to the table holding `version` and `sha256` (`[]`: the top level).
    at: Vec<Step>,
    field: String,
    package: String,
    version: String,
    /// For a kernel source: the tarball's path in the package (its sha256 is the top-level
    /// `sha256`).
    tarball: Option<String>,
}

#[derive(Clone)]
enum Step {
    Key(&'static str),
    Index(usize),
}

/// Re-pins `names` (every recipe when empty) in `cfg.recipes`. Runs `apt-get update` first
/// when root, so "newest" means what the archives serve now.
pub fn pin(cfg: &Config, names: &[String], progress: &dyn Progress) -> Result<Vec<PinChange>, PinError> {
    let names = if names.is_empty() { plan::all_recipes(&cfg.recipes)? } else { names.to_vec() };
    // Every named recipe must parse before anything is fetched or written.
    let mut recipes = Vec::new();
    for n in &names {
        let file = cfg.recipes.join(format!("{n}.toml"));
        if !recipe::valid_name(n) {
            return Err(PinError::Recipe { file, what: format!("{n:?} is not a recipe name") });
        }
        let text =
            std::fs::read_to_string(&file).map_err(|e| PinError::Recipe { file: file.clone(), what: e.to_string() })?;
        let r = recipe::parse(n, file.clone(), text.clone())
            .map_err(|failure| plan::PlanError::ParseRecipe { file: file.clone(), failure })?;
        let doc: DocumentMut =
            text.parse().map_err(|e| PinError::Recipe { file: file.clone(), what: format!("{e}") })?;
        recipes.push((r, doc));
    }
    if debs::is_root() {
        progress.notice("apt-get update (to see what the archives serve now)");
        if let Err(e) = debs::apt_update() {
            progress.notice(&format!("{e}; resolving against the package lists as they are"));
        }
    }
    let cache = Store::create_cache(&cfg.cache)
        .map_err(|source| BuildError::Store { context: format!("cache {}", cfg.cache.display()), source })?;
    let _lock = cache
        .lock(|l| progress.notice(&format!("waiting for another imagegen run to finish ({})", l.display())))
        .map_err(|source| BuildError::Store { context: format!("cache {}", cfg.cache.display()), source })?;
    let fetcher = Fetcher { cache: &cfg.cache, progress };

    let mut changes = Vec::new();
    for (r, mut doc) in recipes {
        let found = pins_of(r.kind, &doc);
        if found.is_empty() {
            continue;
        }
        progress.begin(&r.name);
        let mut dirty = false;
        for f in found {
            let served =
                debs::served_versions(&f.package).map_err(|what| PinError::Recipe { file: r.file.clone(), what })?;
            let Some(newest) = served.first().cloned() else {
                return Err(PinError::NotServed {
                    file: r.file.clone(),
                    field: f.field.clone(),
                    package: f.package.clone(),
                    detail: " at any version (a kernel ABI bump renames linux-image packages: \
                             `apt-cache search` for its successor and edit the recipe)"
                        .into(),
                });
            };
            let change = PinChange {
                recipe: r.name.clone(),
                field: f.field.clone(),
                package: f.package.clone(),
                from: f.version.clone(),
                to: newest.clone(),
            };
            if change.changed() {
                let (deb, sha) = match fetcher.download(&r.name, &f.package, &newest) {
                    Ok(x) => x,
                    Err(Download::NotServed { served }) => {
                        return Err(PinError::NotServed {
                            file: r.file.clone(),
                            field: f.field.clone(),
                            package: f.package.clone(),
                            detail: format!(" at {newest} after all (served: {})", served.join(", ")),
                        })
                    }
                    Err(Download::Failed(m)) => return Err(PinError::Recipe { file: r.file.clone(), what: m }),
                };
                let table = table_at(&mut doc, &f.at).expect("found above");
                set_str(table, "version", &newest);
                set_str(table, "sha256", &sha);
                if let Some(path) = &f.tarball {
                    let label = format!("{}={newest}", f.package);
                    let (_, tarball_sha) = source::take_out(fetcher, &r.name, &deb, &label, path)?;
                    set_str(doc.as_table_mut(), "sha256", &tarball_sha);
                }
                dirty = true;
            }
            changes.push(change);
        }
        if dirty {
            write_recipe(&r.file, &r.name, &doc.to_string())?;
        }
        progress.step(&r.name, "pinned");
    }
    Ok(changes)
}

/// Every Debian pin of a recipe of kind `kind`, as its document has them.
fn pins_of(kind: Kind, doc: &DocumentMut) -> Vec<Found> {
    let s = |t: &dyn TableLike, k: &str| t.get(k).and_then(Item::as_str).map(String::from);
    let mut out = Vec::new();
    let root = doc.as_table();
    match kind {
        Kind::Kernel => {
            if let Some(t) = root.get("source").and_then(Item::as_table_like) {
                if let (Some(package), Some(version), Some(path)) = (s(t, "package"), s(t, "version"), s(t, "path")) {
                    out.push(Found {
                        at: vec![Step::Key("source")],
                        field: "source".into(),
                        package,
                        version,
                        tarball: Some(path),
                    });
                }
            }
        }
        Kind::DebFile => {
            if let (Some(package), Some(version)) = (s(root, "package"), s(root, "version")) {
                out.push(Found { at: vec![], field: String::new(), package, version, tarball: None });
            }
        }
        Kind::Initramfs | Kind::Rootfs => {
            if let Some(t) = root.get("busybox_package").and_then(Item::as_table_like) {
                if let (Some(package), Some(version)) = (s(t, "name"), s(t, "version")) {
                    let at = vec![Step::Key("busybox_package")];
                    out.push(Found { at, field: "busybox_package".into(), package, version, tarball: None });
                }
            }
            let tables: Vec<&dyn TableLike> = match root.get("packages") {
                Some(Item::ArrayOfTables(a)) => a.iter().map(|t| t as &dyn TableLike).collect(),
                Some(Item::Value(Value::Array(a))) => {
                    a.iter().filter_map(|v| v.as_inline_table().map(|t| t as &dyn TableLike)).collect()
                }
                _ => vec![],
            };
            for (i, t) in tables.into_iter().enumerate() {
                if let (Some(package), Some(version)) = (s(t, "name"), s(t, "version")) {
                    let at = vec![Step::Key("packages"), Step::Index(i)];
                    out.push(Found { at, field: format!("packages[{i}]"), package, version, tarball: None });
                }
            }
        }
        Kind::KernelPackage => {
            if let Some(t) = root.get("package").and_then(Item::as_table_like) {
                if let (Some(package), Some(version)) = (s(t, "name"), s(t, "version")) {
                    let at = vec![Step::Key("package")];
                    out.push(Found { at, field: "package".into(), package, version, tarball: None });
                }
            }
        }
        // A Debian rootfs takes the mirror's versions at build time: nothing to pin.
        Kind::Agent | Kind::OciBundle | Kind::Disk | Kind::DebianRootfs | Kind::RootfsImport | Kind::OciImage => {}
    }
    out
}

fn table_at<'a>(doc: &'a mut DocumentMut, at: &[Step]) -> Option<&'a mut dyn TableLike> {
    let mut cur: &mut dyn TableLike = doc.as_table_mut();
    let mut i = 0;
    while i < at.len() {
        match (&at[i], at.get(i + 1)) {
            (Step::Key(k), Some(Step::Index(n))) => {
                cur = match cur.get_mut(k)? {
                    Item::ArrayOfTables(a) => a.get_mut(*n)? as &mut dyn TableLike,
                    Item::Value(Value::Array(a)) => a.get_mut(*n)?.as_inline_table_mut()? as &mut dyn TableLike,
                    _ => return None,
                };
                i += 2;
            }
            (Step::Key(k), _) => {
                cur = cur.get_mut(k)?.as_table_like_mut()?;
                i += 1;
            }
            (Step::Index(_), _) => return None,
        }
    }
    Some(cur)
}

/// Sets `key` to the string `v`, keeping the comments and spacing around the old value.
fn set_str(t: &mut dyn TableLike, key: &str, v: &str) {
    let mut nv = Value::from(v);
    if let Some(old) = t.get(key).and_then(Item::as_value) {
        *nv.decor_mut() = old.decor().clone();
    }
    match t.get_mut(key) {
        Some(item) => *item = Item::Value(nv),
        None => {
            t.insert(key, Item::Value(nv));
        }
    }
}

/// Replaces the recipe file atomically, after checking that the new text still parses.
fn write_recipe(file: &Path, name: &str, text: &str) -> Result<(), PinError> {
    recipe::parse(name, file.to_path_buf(), text.to_string())
        .map_err(|failure| plan::PlanError::ParseRecipe { file: file.to_path_buf(), failure })?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let werr = |source| PinError::Write { file: file.to_path_buf(), source };
    let mut tmp = tempfile::Builder::new().prefix(crate::store::TMP_PREFIX).tempfile_in(dir).map_err(werr)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(werr)?;
    if let Ok(md) = std::fs::metadata(file) {
        let _ = std::fs::set_permissions(tmp.path(), md.permissions());
    }
    tmp.persist(file).map_err(|e| werr(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: &str = "# a comment\nkind = \"kernel\"\nsha256 = \"aa\" # tarball\narch = \"um\"\n\n\
        [source]\n# the package\npackage = \"linux-source-6.12\"\nversion = \"6.12.1-1\"  # old\nsha256 = \"bb\"\npath = \"/usr/src/l.tar.xz\"\n";

    #[test]
    fn finds_kernel_source_and_rewrites_keeping_comments() {
        let mut doc: DocumentMut = KERNEL.parse().unwrap();
        let found = pins_of(Kind::Kernel, &doc);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].package.as_str(), found[0].version.as_str()), ("linux-source-6.12", "6.12.1-1"));
        assert_eq!(found[0].tarball.as_deref(), Some("/usr/src/l.tar.xz"));
        let t = table_at(&mut doc, &found[0].at).unwrap();
        set_str(t, "version", "6.12.2-1");
        set_str(t, "sha256", "cc");
        set_str(doc.as_table_mut(), "sha256", "dd");
        let text = doc.to_string();
        assert_eq!(
            text,
            "# a comment\nkind = \"kernel\"\nsha256 = \"dd\" # tarball\narch = \"um\"\n\n\
             [source]\n# the package\npackage = \"linux-source-6.12\"\nversion = \"6.12.2-1\"  # old\nsha256 = \"cc\"\npath = \"/usr/src/l.tar.xz\"\n"
        );
    }

    #[test]
    fn finds_packages_busybox_and_deb_files() {
        let tree = "kind = \"initramfs\"\nbusybox = true\nbusybox_package = { name = \"busybox-static\", version = \"1\", sha256 = \"a\" }\n\
                    [[packages]]\nname = \"x\"\nversion = \"2\"\nsha256 = \"b\"\n[[packages]]\nname = \"y\"\nversion = \"3\"\nsha256 = \"c\"\n";
        let mut doc: DocumentMut = tree.parse().unwrap();
        let found = pins_of(Kind::Initramfs, &doc);
        let fields: Vec<&str> = found.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["busybox_package", "packages[0]", "packages[1]"]);
        set_str(table_at(&mut doc, &found[2].at).unwrap(), "version", "4");
        set_str(table_at(&mut doc, &found[0].at).unwrap(), "version", "5");
        let text = doc.to_string();
        assert!(text.contains("name = \"y\"\nversion = \"4\"\n"), "{text}");
        assert!(text.contains("{ name = \"busybox-static\", version = \"5\", sha256 = \"a\" }"), "{text}");
        let deb = "kind = \"deb-file\"\npackage = \"p\"\nversion = \"1\"\nsha256 = \"a\"\npath = \"/x\"\n";
        let doc: DocumentMut = deb.parse().unwrap();
        let found = pins_of(Kind::DebFile, &doc);
        assert_eq!((found[0].package.as_str(), found[0].field.as_str()), ("p", ""));
        assert!(pins_of(Kind::Disk, &"kind = \"disk\"\n".parse().unwrap()).is_empty());
    }
}
