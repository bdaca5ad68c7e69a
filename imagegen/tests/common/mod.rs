//! Shared by the integration tests: throw-away recipe directories, stores and caches.

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};

use imagegen::Config;

/// The workspace (builds the agent) and its shipped recipes.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

pub fn shipped_recipes() -> PathBuf {
    workspace().join("recipes")
}

/// A config whose recipes, store and cache all live under `dir` (never the real ones).
pub fn config_in(dir: &Path) -> Config {
    Config {
        workspace: workspace(),
        recipes: dir.join("recipes"),
        store: dir.join("store"),
        cache: dir.join("cache"),
        source_date_epoch: imagegen::DEFAULT_SOURCE_DATE_EPOCH,
        jobs: 2,
    }
}

/// Writes `recipes/<name>` under `dir`.
pub fn write_recipe(dir: &Path, name: &str, text: &str) {
    let p = dir.join("recipes").join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// The imagegen binary, run against `dir`'s recipes, store and cache.
pub fn imagegen(dir: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imagegen"));
    c.arg("--recipes")
        .arg(dir.join("recipes"))
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--cache")
        .arg(dir.join("cache"))
        .env_remove("SOURCE_DATE_EPOCH");
    c
}

/// Every file below `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}
