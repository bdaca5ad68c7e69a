//! Running the hostd binary under test: one copy of the helpers every end-to-end test file
//! needs (the command, its printed text, and the lock that runs hostd-starting tests one at a
//! time).

#![allow(dead_code)] // each test binary uses a different part

use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// The hostd binary cargo built for these tests.
pub const HOSTD: &str = env!("CARGO_BIN_EXE_hostd");

/// A command running the hostd under test, to add arguments to.
pub fn hostd() -> Command {
    Command::new(HOSTD)
}

/// [`hostd`] with QEMU on TCG (`VIRTBENCH_ACCEL=tcg`): this host's KVM cannot run guests,
/// and the probe's boot with KVM costs each call time.
pub fn hostd_tcg() -> Command {
    let mut c = hostd();
    c.env("VIRTBENCH_ACCEL", "tcg");
    c
}

/// Runs `c` to the end: whether it exited 0, and its stdout.
pub fn stdout_of(c: &mut Command) -> (bool, String) {
    let o = c.output().unwrap_or_else(|e| panic!("starting {c:?}: {e}"));
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs hostd with `args` to the end and returns what it printed and how it ended.
pub fn run_hostd(args: &[&str]) -> Output {
    hostd().args(args).output().unwrap_or_else(|e| panic!("starting {HOSTD}: {e}"))
}

/// Everything a run printed: its stdout, then its stderr.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Tests that start hostd processes reap each other's orphans (and share cgroups and
/// drop_caches): they hold this for their whole run.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the one-at-a-time lock; a test that panicked holding it does not poison the rest.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
