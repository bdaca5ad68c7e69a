//! Records the git revision hostd was built from, for result provenance.
use std::process::Command;

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Where git keeps HEAD and the index (in a worktree, .git is a file): a path that does
    // not exist would make cargo rerun this, and rebuild hostd, on every build.
    println!("cargo:rerun-if-changed=build.rs");
    for p in ["HEAD", "index"] {
        let out =
            Command::new("git").args(["rev-parse", "--git-path", p]).current_dir(&root).output();
        if let Some(path) = out
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        {
            let path = root.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let rev = Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=VB_GIT_REVISION={rev}");
}
