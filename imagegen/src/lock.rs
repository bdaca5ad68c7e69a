//! `recipes/imagegen.lock`: the sha256 of every artifact the pins produce, checked in, so
//! anyone can confirm they built the same bits (`imagegen verify`).
//!
//! Locked are the recipes built from pinned inputs only: recipe files, fragments, patches,
//! Debian pins, host tools (kernels, deb-files, the data disk). Artifacts that contain the
//! workspace's own code (the agent, hostd-static and every image holding one) change with
//! each commit; the commit identifies them, and the lock would only go stale with them.
//! Each entry keeps the inputs and tool versions it was built from, so a difference comes
//! with its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::store::{Store, StoreError};

/// The lock's file name, beside the recipes.
pub const LOCK_FILE: &str = "imagegen.lock";
const FORMAT: u32 = 1;
const HEADER: &str = "# The sha256 of every artifact built from pinned inputs only (kernels, Debian files, the data\n\
# disk), with what each was built from. Written by `imagegen build --update-lock`; `imagegen\n\
# verify` compares the store with it (recipes/README.md, \"The lock\"). Do not edit by hand.\n\n";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    #[serde(default)]
    pub recipes: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub input_hash: String,
    /// `role name sha256`, as the manifest lists them.
    pub inputs: Vec<String>,
    pub tools: BTreeMap<String, String>,
    /// Output name → sha256.
    pub outputs: BTreeMap<String, String>,
}

impl Entry {
    pub fn of(m: &Manifest) -> Self {
        Entry {
            input_hash: m.input_hash.clone(),
            inputs: m.inputs.iter().map(|i| format!("{} {} {}", i.role, i.name, i.sha256)).collect(),
            tools: m.tools.clone(),
            outputs: m.outputs.iter().map(|(n, o)| (n.clone(), o.sha256.clone())).collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message} (rewrite it with `imagegen build --update-lock`)")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: writing: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How one locked recipe compares with what was built here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Same {
        recipe: String,
    },
    /// Not in the store (not built here): nothing to compare.
    NotBuilt {
        recipe: String,
    },
    /// Built here, not in the lock.
    Unlocked {
        recipe: String,
    },
    Differs {
        recipe: String,
        outputs: Vec<String>,
        why: String,
    },
}

impl Finding {
    pub fn is_problem(&self) -> bool {
        matches!(self, Finding::Differs { .. })
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Same { recipe } => write!(f, "{recipe}: same as the lock"),
            Finding::NotBuilt { recipe } => write!(f, "{recipe}: in the lock, not built here"),
            Finding::Unlocked { recipe } => {
                write!(f, "{recipe}: not in the lock (record it with `imagegen build --update-lock`)")
            }
            Finding::Differs { recipe, outputs, why } => {
                write!(f, "{recipe}: {} differ from the lock: {why}", outputs.join(", "))
            }
        }
    }
}

pub fn path(recipes: &Path) -> PathBuf {
    recipes.join(LOCK_FILE)
}

/// The lock beside `recipes`, if there is one.
pub fn read(recipes: &Path) -> Result<Option<Lock>, LockError> {
    let p = path(recipes);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LockError::Read { path: p, source }),
    };
    let lock: Lock = toml::from_str(&text).map_err(|e| LockError::Parse { path: p.clone(), message: e.to_string() })?;
    if lock.format != FORMAT {
        return Err(LockError::Parse {
            path: p,
            message: format!("format {} (this imagegen writes {FORMAT})", lock.format),
        });
    }
    Ok(Some(lock))
}

/// Writes the lock atomically.
pub fn write(recipes: &Path, lock: &Lock) -> Result<(), LockError> {
    let p = path(recipes);
    let werr = |source| LockError::Write { path: p.clone(), source };
    let body = toml::to_string(lock).map_err(|e| werr(std::io::Error::other(e)))?;
    let mut tmp = tempfile::Builder::new().prefix(crate::store::TMP_PREFIX).tempfile_in(recipes).map_err(werr)?;
    std::io::Write::write_all(&mut tmp, format!("{HEADER}{body}").as_bytes()).map_err(werr)?;
    tmp.persist(&p).map_err(|e| werr(e.error))?;
    Ok(())
}

/// The recipes among `manifests` built from pinned inputs only: no cargo output among their
/// inputs, nor among their dependencies' (transitively).
pub fn lockable(manifests: &BTreeMap<String, Manifest>) -> BTreeSet<String> {
    fn from_workspace(name: &str, ms: &BTreeMap<String, Manifest>, seen: &mut BTreeMap<String, bool>) -> bool {
        if let Some(v) = seen.get(name) {
            return *v;
        }
        seen.insert(name.to_string(), true); // a cycle (impossible in a plan) counts as unlockable
        let v = match ms.get(name) {
            None => true,
            Some(m) => m.inputs.iter().any(|i| {
                // A Debian rootfs takes whatever versions the mirror serves at build time.
                i.role == "cargo-output"
                    || i.role == "mirror"
                    || (i.role == "dependency"
                        && from_workspace(i.name.split('/').next().unwrap_or_default(), ms, seen))
            }),
        };
        seen.insert(name.to_string(), v);
        v
    }
    let mut seen = BTreeMap::new();
    manifests.keys().filter(|n| !from_workspace(n, manifests, &mut seen)).cloned().collect()
}

/// `lock` with the entries of `manifests` that are lockable put in (replacing theirs). With
/// `all`, `manifests` are every recipe: entries for recipes no longer there go.
pub fn updated(lock: Option<Lock>, manifests: &BTreeMap<String, Manifest>, all: bool) -> Lock {
    let mut lock = lock.unwrap_or(Lock { format: FORMAT, recipes: BTreeMap::new() });
    lock.format = FORMAT;
    let keep = lockable(manifests);
    if all {
        lock.recipes.retain(|n, _| keep.contains(n));
    }
    for n in &keep {
        lock.recipes.insert(n.clone(), Entry::of(&manifests[n]));
    }
    lock
}

/// `new` (from [`updated`] with `all`) with the entries of `old` put back for recipes that
/// were not built but still exist in `recipes`: explicit recipes (built only on request,
/// e.g. a Debian root file system) keep their pins when everything else is rebuilt; only a
/// recipe that is gone loses its entry.
pub fn keep_unbuilt(mut new: Lock, old: Option<&Lock>, recipes: &Path) -> Lock {
    for (n, e) in old.map(|l| &l.recipes).into_iter().flatten() {
        if !new.recipes.contains_key(n) && recipes.join(format!("{n}.toml")).is_file() {
            new.recipes.insert(n.clone(), e.clone());
        }
    }
    new
}

/// Compares one built manifest with its lock entry.
pub fn compare(recipe: &str, entry: &Entry, m: &Manifest) -> Finding {
    let here = Entry::of(m);
    if here.outputs == entry.outputs {
        return Finding::Same { recipe: recipe.into() };
    }
    let mut outputs: Vec<String> = entry.outputs.keys().chain(here.outputs.keys()).cloned().collect();
    outputs.sort();
    outputs.dedup();
    outputs.retain(|o| entry.outputs.get(o) != here.outputs.get(o));
    let why = if here.input_hash == entry.input_hash {
        "built from the same inputs with the same tools, so this build is not reproducible".to_string()
    } else {
        let mut v = Vec::new();
        for (k, lv) in &entry.tools {
            match here.tools.get(k) {
                Some(hv) if hv != lv => v.push(format!("{k} here is {hv:?}, the lock's {lv:?}")),
                None => v.push(format!("{k} not used here (the lock's {lv:?})")),
                _ => {}
            }
        }
        let (li, hi): (BTreeSet<&String>, BTreeSet<&String>) =
            (entry.inputs.iter().collect(), here.inputs.iter().collect());
        for i in hi.difference(&li) {
            v.push(format!("input here not in the lock: {i}"));
        }
        for i in li.difference(&hi) {
            v.push(format!("input in the lock not here: {i}"));
        }
        if v.is_empty() {
            v.push("other inputs (input hash differs)".into());
        }
        v.join("; ")
    };
    Finding::Differs { recipe: recipe.into(), outputs, why }
}

/// The store's current builds against the lock beside `recipes` (None: there is no lock).
/// A current manifest that cannot be read counts as not built here: `Store::verify`
/// reports it.
pub fn check(recipes: &Path, store: &Store) -> Result<Option<Vec<Finding>>, LockError> {
    let Some(lock) = read(recipes)? else { return Ok(None) };
    let (good, _bad) = store.current_checked()?;
    let current: BTreeMap<String, Manifest> = good.into_iter().map(|m| (m.recipe.clone(), m)).collect();
    let mut out = Vec::new();
    for (name, entry) in &lock.recipes {
        out.push(match current.get(name) {
            Some(m) => compare(name, entry, m),
            None => Finding::NotBuilt { recipe: name.clone() },
        });
    }
    for n in lockable(&current) {
        if !lock.recipes.contains_key(&n) {
            out.push(Finding::Unlocked { recipe: n });
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ImagegenVersion, Input, Output, RecipeFile};
    use crate::recipe::Kind;

    fn m(recipe: &str, inputs: &[(&str, &str, &str)], gcc: &str, out: &str) -> Manifest {
        Manifest {
            format: 1,
            recipe: recipe.into(),
            kind: Kind::Disk,
            recipe_file: RecipeFile { path: format!("{recipe}.toml"), sha256: "0".repeat(64), text: String::new() },
            input_hash: crate::hash::sha256_hex(format!("{inputs:?}{gcc}").as_bytes()),
            inputs: inputs
                .iter()
                .map(|(r, n, s)| Input { role: (*r).into(), name: (*n).into(), sha256: (*s).into() })
                .collect(),
            tools: BTreeMap::from([("gcc".to_string(), gcc.to_string())]),
            imagegen: ImagegenVersion { version: "0".into(), generator: 1 },
            source_date_epoch: 1,
            build_seconds: 0.0,
            outputs: BTreeMap::from([("x".to_string(), Output { sha256: out.into(), size: 1, path: String::new() })]),
            cmdline: None,
            system: None,
            kernel_release: None,
        }
    }

    #[test]
    fn only_recipes_without_workspace_code_are_locked() {
        let ms: BTreeMap<String, Manifest> = [
            m("agent", &[("recipe", "agent.toml", "a"), ("cargo-output", "guest-agent", "b")], "12", "o1"),
            m("initramfs", &[("recipe", "i.toml", "a"), ("dependency", "agent/agent", "o1")], "12", "o2"),
            m("kernel", &[("recipe", "k.toml", "a"), ("source", "linux", "s")], "12", "o3"),
            m("disk", &[("recipe", "d.toml", "a")], "12", "o4"),
            m(
                "lab",
                &[
                    ("recipe", "l.toml", "a"),
                    ("dependency", "kernel/kernel", "o3"),
                    ("dependency", "initramfs/initramfs", "o2"),
                ],
                "12",
                "o5",
            ),
        ]
        .into_iter()
        .map(|m| (m.recipe.clone(), m))
        .collect();
        assert_eq!(lockable(&ms).into_iter().collect::<Vec<_>>(), ["disk", "kernel"]);
        let lock = updated(None, &ms, true);
        assert_eq!(lock.recipes.keys().collect::<Vec<_>>(), ["disk", "kernel"]);
        // A full update drops what is gone; a partial one keeps it.
        let only_disk: BTreeMap<String, Manifest> = [("disk".to_string(), ms["disk"].clone())].into();
        assert_eq!(updated(Some(lock.clone()), &only_disk, false).recipes.len(), 2);
        assert_eq!(updated(Some(lock.clone()), &only_disk, true).recipes.len(), 1);
        // A recipe not built this time but still present keeps its entry; a removed one not.
        let dir = tempfile::tempdir().unwrap();
        let rebuilt = updated(Some(lock.clone()), &only_disk, true);
        assert_eq!(keep_unbuilt(rebuilt.clone(), Some(&lock), dir.path()).recipes.len(), 1);
        for n in lock.recipes.keys() {
            std::fs::write(dir.path().join(format!("{n}.toml")), "").unwrap();
        }
        assert_eq!(keep_unbuilt(rebuilt, Some(&lock), dir.path()).recipes, lock.recipes);
    }

    #[test]
    fn differences_say_why() {
        let locked = m("kernel", &[("recipe", "k.toml", "a"), ("source", "linux=1", "s1")], "12", "o1");
        let entry = Entry::of(&locked);
        assert_eq!(compare("kernel", &entry, &locked), Finding::Same { recipe: "kernel".into() });
        let same_inputs = m("kernel", &[("recipe", "k.toml", "a"), ("source", "linux=1", "s1")], "12", "o2");
        let f = compare("kernel", &entry, &same_inputs);
        assert!(f.is_problem());
        assert!(f.to_string().contains("not reproducible"), "{f}");
        let other = m("kernel", &[("recipe", "k.toml", "a"), ("source", "linux=2", "s2")], "13", "o2");
        let f = compare("kernel", &entry, &other).to_string();
        for part in [
            "x differ",
            "gcc here is \"13\", the lock's \"12\"",
            "input here not in the lock: source linux=2 s2",
            "input in the lock not here: source linux=1 s1",
        ] {
            assert!(f.contains(part), "{part:?} not in {f}");
        }
    }

    #[test]
    fn round_trips_through_its_file() {
        let d = tempfile::tempdir().unwrap();
        assert!(read(d.path()).unwrap().is_none());
        let ms: BTreeMap<String, Manifest> =
            [("disk".to_string(), m("disk", &[("recipe", "d.toml", "a")], "12", "o"))].into();
        let lock = updated(None, &ms, true);
        write(d.path(), &lock).unwrap();
        let text = std::fs::read_to_string(path(d.path())).unwrap();
        assert!(text.starts_with("# The sha256"), "{text}");
        assert_eq!(read(d.path()).unwrap().unwrap(), lock);
        std::fs::write(path(d.path()), "format = 1\n[recipes.x]\nbogus = 1\n").unwrap();
        let e = read(d.path()).unwrap_err().to_string();
        assert!(e.contains("imagegen.lock") && e.contains("--update-lock"), "{e}");
    }
}
