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

/// What a bounded run of the binary gave.
pub struct Bounded {
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// It was still running at the limit and was killed.
    pub timed_out: bool,
}

impl Bounded {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Both streams, for assertion messages.
    pub fn text(&self) -> String {
        format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `cmd` (stdin closed), killing it and what it started at `limit`: a regression that hangs (a FIFO opened,
/// /dev/zero read) then fails its test instead of hanging CI.
pub fn run_bounded(cmd: &mut std::process::Command, limit: std::time::Duration) -> Bounded {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    // Its own process group, so a timeout also ends what it started (cargo, for a build),
    // which would otherwise keep the pipes open.
    let mut child =
        cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + limit;
    let mut timed_out = false;
    // Polled here rather than killed from another thread by pid: the child is reaped only
    // by this loop, so a kill can never reach a recycled pid.
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() >= deadline {
            timed_out = true;
            // Not reaped yet, so the group id is still this child's.
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Bounded { status, stdout: out.join().unwrap(), stderr: err.join().unwrap(), timed_out }
}

/// `Store::verify` as `imagegen verify` runs it, under the shared lock (nothing else holds
/// the lock in these tests: waiting would be a bug).
pub fn verify(store: &imagegen::Store) -> imagegen::VerifyReport {
    let lock = store.lock_shared(|l| panic!("{} is held", l.display())).unwrap();
    store.verify(&lock).unwrap()
}
