//! `kind = "agent"`: `cargo build` of the workspace's guest agent, exactly as
//! `scripts/build-agent` does it (same RUSTFLAGS, so the two share cargo's fingerprints
//! instead of rebuilding each other's output).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::Ctx;
use crate::build::BuildError;
use crate::recipe::{AgentSpec, Recipe};

pub(crate) struct AgentBuild {
    pub binary: PathBuf,
    pub tools: BTreeMap<String, String>,
}

/// RUSTFLAGS for the agent: paths remapped so the binary does not depend on where the
/// checkout or the cargo home lives. Keep in step with `scripts/build-agent`.
pub(crate) fn rustflags(workspace: &str, cargo_home: &str) -> String {
    format!(
        "--remap-path-prefix={workspace}=/virtbench --remap-path-prefix={cargo_home}=/cargo \
         -C target-feature=+crt-static"
    )
}

fn cargo_home() -> String {
    if let Ok(h) = std::env::var("CARGO_HOME") {
        return h;
    }
    format!("{}/.cargo", std::env::var("HOME").unwrap_or_default())
}

pub(crate) fn cargo_build(ctx: &Ctx<'_>, r: &Recipe, a: &AgentSpec) -> Result<AgentBuild, BuildError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ws = ctx.cfg.workspace.to_string_lossy().into_owned();
    let bin = a.bin.clone().unwrap_or_else(|| a.package.clone());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&ctx.cfg.workspace)
        .args(["build", "--locked", "-p", &a.package, "--bin", &bin, "--target", &a.target, "--profile", &a.profile])
        .args(if a.features.is_empty() { vec![] } else { vec!["--features".to_string(), a.features.join(",")] })
        .arg("--message-format=json-render-diagnostics")
        .env("RUSTFLAGS", rustflags(&ws, &cargo_home()))
        // Would win over RUSTFLAGS (cargo sets it for build scripts; a caller might too).
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("SOURCE_DATE_EPOCH", ctx.cfg.source_date_epoch.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| ctx.fail(&r.name, "cargo build", format!("running {cargo}: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");

    let (binary, tail, tools) = std::thread::scope(|s| {
        // The toolchain versions are asked while cargo runs: each costs a rustup round trip.
        let tools = s.spawn(|| -> Result<BTreeMap<String, String>, String> {
            let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
            let mut m = BTreeMap::new();
            m.insert("rustc".into(), ctx.tools.version(&rustc, &["-vV"], |l| l.starts_with("LLVM version"))?);
            m.insert("cargo".into(), ctx.tools.version(&cargo, &["-V"], |_| false)?);
            Ok(m)
        });
        let errs = s.spawn(|| {
            let mut tail = VecDeque::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                ctx.progress.step(&r.name, line.trim());
                if tail.len() == 40 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail.into_iter().collect::<Vec<_>>().join("\n")
        });
        let mut binary = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let is_our_bin = v["reason"] == "compiler-artifact"
                && v["target"]["name"] == bin.as_str()
                && v["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"));
            if let (true, Some(exe)) = (is_our_bin, v["executable"].as_str()) {
                binary = Some(PathBuf::from(exe));
            }
        }
        (binary, errs.join().unwrap_or_default(), tools.join().unwrap_or_else(|_| Err("panicked".into())))
    });
    let status = child.wait().map_err(|e| ctx.fail(&r.name, "cargo build", e))?;
    if !status.success() {
        return Err(ctx.fail(&r.name, "cargo build", format!("{status}:\n{tail}")));
    }
    let binary = binary.ok_or_else(|| ctx.fail(&r.name, "cargo build", format!("cargo reported no binary {bin:?}")))?;
    let tools = tools.map_err(|e| ctx.fail(&r.name, "toolchain versions", e))?;
    Ok(AgentBuild { binary, tools })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rustflags_match_the_build_script() {
        // scripts/build-agent and imagegen must pass the same flags, or each rebuilds the
        // agent the other built.
        let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/build-agent")).unwrap();
        let expected = super::rustflags("$root", "$cargo_home");
        assert!(script.contains(&format!("RUSTFLAGS=\"{expected}\"")), "scripts/build-agent: {expected}");
    }
}
