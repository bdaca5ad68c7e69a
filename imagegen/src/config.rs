//! Where things are and the fixed inputs every build shares, from the environment (the
//! command line overrides single fields).

use std::path::{Path, PathBuf};

/// Cache outside the clone, shared by every checkout on the machine.
pub const DEFAULT_CACHE: &str = "/var/cache/virtbench";
/// Timestamp baked into archives and kernels when `SOURCE_DATE_EPOCH` is unset
/// (2023-11-14T22:13:20Z; any fixed value would do).
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 1_700_000_000;

#[derive(Debug, Clone)]
pub struct Config {
    /// The Cargo workspace (builds the agent; holds `recipes/` and `images/` by default).
    pub workspace: PathBuf,
    /// Recipe directory: `NAME.toml` files plus the files they name.
    pub recipes: PathBuf,
    /// The content-addressed store (`$VIRTBENCH_IMAGES`, default `<workspace>/images`).
    pub store: PathBuf,
    /// Build cache outside the clone (`$VIRTBENCH_CACHE`, default [`DEFAULT_CACHE`]).
    pub cache: PathBuf,
    /// `$SOURCE_DATE_EPOCH`, default [`DEFAULT_SOURCE_DATE_EPOCH`]: every timestamp in every
    /// artifact. Part of every input hash.
    pub source_date_epoch: u64,
    /// Parallel jobs for kernel builds (`make -jN`); does not change any output.
    pub jobs: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("SOURCE_DATE_EPOCH={0:?}: expected seconds since 1970 that fit in 32 bits (cpio newc)")]
    SourceDateEpoch(String),
    #[error("workspace {path}: {source}")]
    Workspace { path: PathBuf, source: std::io::Error },
}

impl Config {
    /// Reads `$VIRTBENCH_ROOT` (workspace, default: the one imagegen was built from),
    /// `$VIRTBENCH_IMAGES`, `$VIRTBENCH_CACHE` and `$SOURCE_DATE_EPOCH`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let workspace = match std::env::var_os("VIRTBENCH_ROOT") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        };
        Self::for_workspace(&workspace)
    }

    /// Like [`Config::from_env`] with an explicit workspace.
    pub fn for_workspace(workspace: &Path) -> Result<Self, ConfigError> {
        // Canonical so the agent's --remap-path-prefix matches what scripts/build-agent passes
        // (cargo would otherwise see different RUSTFLAGS and rebuild back and forth).
        let workspace = std::fs::canonicalize(workspace)
            .map_err(|source| ConfigError::Workspace { path: workspace.to_path_buf(), source })?;
        let store = std::env::var_os("VIRTBENCH_IMAGES").map(PathBuf::from).unwrap_or_else(|| workspace.join("images"));
        let cache = std::env::var_os("VIRTBENCH_CACHE").map(PathBuf::from).unwrap_or_else(|| DEFAULT_CACHE.into());
        let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => parse_epoch(&v)?,
            Err(_) => DEFAULT_SOURCE_DATE_EPOCH,
        };
        Ok(Self {
            recipes: workspace.join("recipes"),
            workspace,
            store,
            cache,
            source_date_epoch,
            jobs: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        })
    }
}

fn parse_epoch(v: &str) -> Result<u64, ConfigError> {
    match v.trim().parse::<u64>() {
        Ok(n) if n <= u64::from(u32::MAX) => Ok(n),
        _ => Err(ConfigError::SourceDateEpoch(v.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_must_fit_newc() {
        assert_eq!(parse_epoch("1700000000").unwrap(), 1_700_000_000);
        assert!(parse_epoch("4294967296").is_err());
        assert!(parse_epoch("yesterday").is_err());
    }
}
