#![warn(missing_docs)]
//! Skipped tests made visible. libtest has no "skipped" outcome, so a test that cannot run
//! here returns early and calls [`skip`]: the reason is printed and appended to the file
//! `$VIRTBENCH_SKIP_LOG` names. `scripts/test` sets it, lists every skip with its reason
//! after the run, and fails the run when a skipped test was for a backend this machine must
//! run (`$VIRTBENCH_REQUIRED_BACKENDS`).

use std::io::Write;

/// Says why the calling test did nothing here; `backend` is the backend it was for, if any.
pub fn skip(backend: Option<&str>, why: &str) {
    println!("skipped: {why}");
    eprintln!("skipped: {why}");
    let Some(log) = std::env::var_os("VIRTBENCH_SKIP_LOG") else { return };
    // libtest names each test's thread after the test.
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let exe = std::env::current_exe().ok();
    let bin = exe
        .as_deref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // cargo names test binaries `<file>-<hash>`.
    let bin = bin.rsplit_once('-').map_or(bin.as_str(), |(b, _)| b).to_string();
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!("{bin}::{test}\t{}\t{}\n", backend.unwrap_or("-"), clean(why));
    // One short O_APPEND write per line: lines from concurrent tests do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("recording the skip in {}: {e}", std::path::Path::new(&log).display());
    }
}

/// The root gate every privileged test opens with: true as root, otherwise the skip is
/// recorded ([`skip`]) with `why` and the test returns.
pub fn unless_root(backend: Option<&str>, why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(backend, why);
    false
}
