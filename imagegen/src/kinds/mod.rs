//! One builder per recipe kind, and what they share.

pub(crate) mod agent;
pub(crate) mod deb_file;
pub(crate) mod debs;
pub(crate) mod disk;
pub(crate) mod kernel;
pub(crate) mod kernel_package;
pub mod oci;
pub(crate) mod source;
pub mod system;
pub(crate) mod tree;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use crate::build::{BuildError, Progress};
use crate::config::Config;
use crate::manifest::{Manifest, Output};
use crate::plan::PlanError;
use crate::store::Store;

/// What a builder may use.
pub(crate) struct Ctx<'a> {
    pub cfg: &'a Config,
    pub store: &'a Store,
    pub cache: &'a Store,
    pub progress: &'a dyn Progress,
    /// Manifests of the recipes built (or found) earlier in this run.
    pub deps: &'a BTreeMap<String, Manifest>,
    pub tools: &'a Tools,
}

impl Ctx<'_> {
    /// Output `output` of dependency `dep` (built earlier in this run, so in the store).
    pub fn dep_output(&self, recipe: &str, dep: &str, output: &str) -> Result<&Output, BuildError> {
        self.deps.get(dep).and_then(|m| m.output(output)).ok_or_else(|| BuildError::Build {
            recipe: recipe.to_string(),
            step: "finding inputs".into(),
            message: format!("{dep}/{output} was not built before it"),
        })
    }

    /// The bytes of a dependency's output.
    pub fn read_dep(&self, recipe: &str, dep: &str, output: &str) -> Result<Vec<u8>, BuildError> {
        let o = self.dep_output(recipe, dep, output)?;
        let path = self.store.blob_path(&o.sha256);
        self.store.read_blob(&o.sha256).map_err(|e| BuildError::Build {
            recipe: recipe.to_string(),
            step: "reading inputs".into(),
            message: format!("{dep}/{output} ({}): {e}", path.display()),
        })
    }

    /// Fetches pinned Debian packages into this build's cache.
    pub fn fetcher(&self) -> debs::Fetcher<'_> {
        debs::Fetcher { cache: &self.cfg.cache, progress: self.progress }
    }

    pub fn fail(&self, recipe: &str, step: &str, message: impl std::fmt::Display) -> BuildError {
        BuildError::Build { recipe: recipe.to_string(), step: step.to_string(), message: message.to_string() }
    }
}

/// Versions of host tools that end up in artifacts, asked once per run.
#[derive(Default)]
pub(crate) struct Tools {
    seen: Mutex<BTreeMap<String, String>>,
}

impl Tools {
    /// First line(s) of `program args` (cached per program).
    pub fn version(&self, program: &str, args: &[&str], keep: impl Fn(&str) -> bool) -> Result<String, String> {
        self.version_with(program, args, keep, true)
    }

    /// Like [`Tools::version`] for a tool that prints its version and then exits non-zero
    /// (mkfs.erofs 1.5 has no `--version`: `-V` prints it, then fails as an unknown option).
    pub fn version_any_status(&self, program: &str, args: &[&str]) -> Result<String, String> {
        self.version_with(program, args, |_| false, false)
    }

    fn version_with(
        &self,
        program: &str,
        args: &[&str],
        keep: impl Fn(&str) -> bool,
        need_success: bool,
    ) -> Result<String, String> {
        let key = format!("{program} {}", args.join(" "));
        if let Some(v) = self.seen.lock().expect("no panics while held").get(&key) {
            return Ok(v.clone());
        }
        let out = Command::new(program).args(args).output().map_err(|e| format!("running {key}: {e}"))?;
        if need_success && !out.status.success() {
            return Err(format!("{key} failed: {}", out.status));
        }
        // Some tools (mke2fs -V, debugfs -V) print their version on stderr.
        let text = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            String::from_utf8_lossy(&out.stderr)
        } else {
            String::from_utf8_lossy(&out.stdout)
        };
        let mut lines = text.lines();
        let mut v = lines.next().unwrap_or_default().trim().to_string();
        if v.is_empty() {
            return Err(format!("{key} printed no version"));
        }
        for l in lines.filter(|l| keep(l)) {
            v.push_str("; ");
            v.push_str(l.trim());
        }
        self.seen.lock().expect("no panics while held").insert(key, v.clone());
        Ok(v)
    }

    /// gcc, ld and make: their versions are part of a kernel's input hash.
    pub fn kernel(&self, recipe_file: &Path) -> Result<BTreeMap<String, String>, PlanError> {
        let mut m = BTreeMap::new();
        for (name, prog) in [("gcc", "gcc"), ("ld", "ld"), ("make", "make")] {
            let v = self.version(prog, &["--version"], |_| false).map_err(|problem| PlanError::Tool {
                file: recipe_file.to_path_buf(),
                tool: name.into(),
                problem,
            })?;
            m.insert(name.to_string(), v);
        }
        Ok(m)
    }
}
