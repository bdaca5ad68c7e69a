//! Running the hostd binary under test: one copy of the helpers every end-to-end test file
//! needs (the command, its printed text, and the lock that runs hostd-starting tests one at a
//! time).

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
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

/// `hostd boot` of `backend` at sizes `n`, hot starts only, without settling or the floor:
/// a quick fleet; the caller adds the results directory and the rest.
pub fn hot_boot(backend: &str, n: &str) -> Command {
    let mut c = hostd();
    c.args(["boot", "--backend", backend, "-n", n, "--modes", "hot"]);
    c.args(["--settle", "0", "--floor-reps", "0"]);
    c
}

/// `hostd boot` of a quick native fleet with results under `results`: no settling, no
/// network; `extra` adds the rest (`-n 1,3`, `--modes hot`, `--floor-reps 0`, …).
pub fn native_boot(extra: &[&str], results: &Path) -> Output {
    hostd()
        .args(["boot", "--backend", "native", "--settle", "0", "--no-network"])
        .args(extra)
        .arg("--results")
        .arg(results)
        .output()
        .unwrap_or_else(|e| panic!("starting {HOSTD}: {e}"))
}

/// A fleet file for `hostd up`: `fleet.toml` in a temporary directory that lives as long as
/// this value, naming the fleet after the test's tag and this process.
pub struct FleetFile {
    /// The fleet's name: the tag, then this process's id (names are `[a-z0-9]`).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// The directory holding it, for the test's other files.
    pub dir: tempfile::TempDir,
}

/// Writes a [`FleetFile`] named `tag` + this process's id, `rest` (the file's other keys and
/// tables, TOML) after its `name`.
pub fn fleet_file(tag: &str, rest: &str) -> FleetFile {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{tag}{}", std::process::id());
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, format!("name = \"{name}\"\n{rest}")).unwrap();
    FleetFile { name, path, dir }
}

/// The host pids in the guest rows (`g<i> …`) of what `hostd status` printed.
pub fn guest_pids_in(status: &str) -> Vec<u32> {
    status
        .lines()
        .filter(|l| l.starts_with('g') && l.as_bytes().get(1).is_some_and(u8::is_ascii_digit))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect()
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

/// The cross-binary half of [`serial`]. scripts/test runs the campaign test beside other test
/// binaries, and every hostd start reaps every dead hostd's run: a test that kills a hostd and
/// then checks what its own next hostd reaps holds this from the kill to that reaping, and a
/// test in another binary holds it while its hostd starts (and reaps), so that neither reaps
/// the other's orphan in between. An flock on a file every test binary names alike.
pub fn reap_lock() -> nix::fcntl::Flock<std::fs::File> {
    let path = std::env::temp_dir().join("virtbench-tests-reap.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking {}: {e}", path.display()))
}

/// The records of a run's samples.jsonl that parse (a torn last line does not).
pub fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("samples.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A campaign named `name` of one native guest and the CPU benchmark: a few seconds.
pub fn tiny_campaign(name: &str) -> String {
    format!(
        r#"name = "{name}"
backends = ["native"]
resources = ["cpu"]
reps = 1
warmup = 0
[guest]
boot_timeout_s = 30
bench_timeout_s = 60
[startup]
sizes = [1]
modes = ["hot"]
settle_s = 0
[overhead]
sizes = [1]
[isolation]
enabled = false
[ring]
guests = 0
[xen]
lab = false
[workloads]
cpu_rounds = 100000
"#
    )
}

/// `hostd run` refuses the campaign file `body` (written to `dir`/c.toml) naming `field`
/// and the file, before it makes a results directory.
pub fn assert_campaign_refused(dir: &Path, body: &str, field: &str) {
    let p = dir.join("c.toml");
    let res = dir.join("results");
    std::fs::write(&p, body).unwrap();
    let out = hostd().arg("run").arg(&p).arg("--results").arg(&res).output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains(field) && t.contains("c.toml"), "{field}: {t}");
    assert!(!res.exists(), "a results directory was made for a bad campaign");
}

/// The DOM headless `chromium` built from the page `index` after `budget_ms` of virtual
/// time (its scripts run), as it printed it.
pub fn rendered_dom(chromium: &Path, index: &Path, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--dump-dom",
        ])
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", index.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("starting {}: {e} (scripts/install-deps installs it)", chromium.display())
        });
    String::from_utf8_lossy(&out.stdout).into_owned()
}
