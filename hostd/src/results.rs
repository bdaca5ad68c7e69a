//! Durable results: one directory per run holding raw samples as JSON lines (each record
//! written and synced before the next measurement starts), summaries written atomically
//! (old or new version, never a mix), and figures. A run killed at any point loses at most
//! the record being written; readers skip a torn last line, and the next writer cuts it off
//! before appending (it would otherwise fuse with the next record). A record that cannot be
//! written whole (a full disk) is cut off too, so the file always ends with a whole record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::runstate::write_atomic;

pub const SAMPLES: &str = "samples.jsonl";

pub struct ResultsDir {
    pub path: PathBuf,
    samples: File,
    /// Whether a torn last line (left by a killed writer) has been looked for.
    tail_checked: bool,
}

impl ResultsDir {
    /// Creates `base/<name>` (which must not exist yet).
    pub fn create(base: &Path, name: &str) -> io::Result<Self> {
        let path = base.join(name);
        fs::create_dir_all(base)?;
        fs::create_dir(&path)?;
        fs::create_dir(path.join("figures"))?;
        Self::open(&path)
    }

    /// Opens an existing results directory for appending (resuming a run), removing temp
    /// files a killed writer left.
    pub fn open(path: &Path) -> io::Result<Self> {
        let samples = OpenOptions::new().create(true).append(true).open(path.join(SAMPLES))?;
        for d in [path.to_path_buf(), path.join("figures")] {
            remove_stale_temps(&d);
        }
        Ok(Self { path: path.to_path_buf(), samples, tail_checked: false })
    }

    /// Appends one record and makes it durable before returning. On failure nothing of the
    /// record stays in the file.
    pub fn append<T: Serialize>(&mut self, rec: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        line.push(b'\n');
        if !self.tail_checked {
            cut_torn_tail(&self.samples, &self.path.join(SAMPLES))?;
            self.tail_checked = true;
        }
        let before = self.samples.metadata()?.len();
        if let Err(e) = self.samples.write_all(&line).and_then(|()| self.samples.sync_data()) {
            let _ = self.samples.set_len(before);
            return Err(naming(&self.path.join(SAMPLES))(e));
        }
        Ok(())
    }

    /// Writes `name` (relative to the directory) atomically.
    pub fn write(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let p = self.path.join(name);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).map_err(naming(d))?;
        }
        write_atomic(&p, data).map_err(naming(&p))
    }

    pub fn write_json<T: Serialize>(&self, name: &str, v: &T) -> io::Result<()> {
        self.write(name, &serde_json::to_vec_pretty(v).map_err(io::Error::other)?)
    }
}

/// The error, saying which file it is about (a full disk fails whichever comes next).
fn naming(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display()))
}

/// Truncates `file` (open for appending at `path`) after its last newline: a line without
/// one is a record a killed writer did not finish.
fn cut_torn_tail(file: &File, path: &Path) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    let mut r = File::open(path)?;
    let mut end = len;
    let mut chunk = vec![0u8; 64 << 10];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        r.seek(SeekFrom::Start(start))?;
        r.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if keep < len {
        file.set_len(keep)?;
        file.sync_data()?;
    }
    Ok(())
}

/// Removes `.NAME.tmp-PID` files (see [`write_atomic`]) whose writer is gone.
fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")).and_then(|(_, p)| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Reads every record of `dir`'s samples. Lines that do not parse (a record torn by a kill,
/// or one from a newer hostd) are counted, not fatal.
pub fn read_records<T: DeserializeOwned>(dir: &Path) -> io::Result<(Vec<T>, usize)> {
    let f = match File::open(dir.join(SAMPLES)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut bad = 0;
    for line in io::BufReader::new(f).split(b'\n') {
        let line = line?;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match serde_json::from_slice(&line) {
            Ok(r) => out.push(r),
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct R {
        k: u32,
    }

    #[test]
    fn append_read_and_torn_tail() {
        let base = tempfile::tempdir().unwrap();
        let mut d = ResultsDir::create(base.path(), "run1").unwrap();
        d.append(&R { k: 1 }).unwrap();
        d.append(&R { k: 2 }).unwrap();
        // A kill in the middle of a write leaves a partial last line.
        fs::OpenOptions::new().append(true).open(d.path.join(SAMPLES)).unwrap().write_all(b"{\"k\":3").unwrap();
        let (rs, bad): (Vec<R>, _) = read_records(&d.path).unwrap();
        assert_eq!(rs, vec![R { k: 1 }, R { k: 2 }]);
        assert_eq!(bad, 1);
        // The next writer (a resumed run) cuts the torn line off instead of fusing it with
        // its first record.
        let mut d2 = ResultsDir::open(&d.path).unwrap();
        d2.append(&R { k: 4 }).unwrap();
        let (rs, bad): (Vec<R>, _) = read_records(&d.path).unwrap();
        assert_eq!((rs, bad), (vec![R { k: 1 }, R { k: 2 }, R { k: 4 }], 0));
        // A writer's leftover temp file goes when the directory is opened again.
        fs::write(d.path.join(".summary.json.tmp-999999999"), b"{").unwrap();
        ResultsDir::open(&d.path).unwrap();
        assert!(!d.path.join(".summary.json.tmp-999999999").exists());
        assert!(ResultsDir::create(base.path(), "run1").is_err(), "an existing run is never overwritten");
        d.write_json("summary.json", &R { k: 9 }).unwrap();
        assert_eq!(fs::read_to_string(d.path.join("summary.json")).unwrap().replace([' ', '\n'], ""), "{\"k\":9}");
    }
}
