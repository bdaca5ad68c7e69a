//! Finding the artifacts a backend boots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::backend::Images;

/// The workspace this hostd was built from (where `target/` and `images/` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Resolves the agent binary: explicit path, then $VIRTBENCH_AGENT, then the musl build
/// in this workspace's target directory.
pub fn find_agent(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("agent binary {} does not exist", p.display());
        }
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("VIRTBENCH_AGENT") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("VIRTBENCH_AGENT={} does not exist", p.display());
        }
        return Ok(p);
    }
    let built = workspace_root().join("target/x86_64-unknown-linux-musl/agent/guest-agent");
    if built.is_file() {
        return Ok(built);
    }
    bail!("no guest-agent binary found: run scripts/build-agent, or pass --agent PATH")
}

pub fn resolve(agent: Option<&Path>) -> Result<Images> {
    Ok(Images { agent: find_agent(agent)?, ..Default::default() })
}
