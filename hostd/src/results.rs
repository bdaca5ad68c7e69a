//! Durable results: one directory per run holding raw samples as JSON lines (each record
//! written and synced before the next measurement starts), summaries written atomically
//! (old or new version, never a mix), and figures. A run killed at any point loses at most
//! the record being written; readers skip a torn last line.

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

    /// Opens an existing results directory for appending (resuming a run).
    pub fn open(path: &Path) -> io::Result<Self> {
        let samples = OpenOptions::new().create(true).append(true).open(path.join(SAMPLES))?;
        Ok(Self { path: path.to_path_buf(), samples })
    }

    /// Appends one record and makes it durable before returning.
    pub fn append<T: Serialize>(&mut self, rec: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        line.push(b'\n');
        self.samples.write_all(&line)?;
        self.samples.sync_data()
    }

    /// Writes `name` (relative to the directory) atomically.
    pub fn write(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let p = self.path.join(name);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d)?;
        }
        write_atomic(&p, data)
    }

    pub fn write_json<T: Serialize>(&self, name: &str, v: &T) -> io::Result<()> {
        self.write(name, &serde_json::to_vec_pretty(v).map_err(io::Error::other)?)
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
        assert!(ResultsDir::create(base.path(), "run1").is_err(), "an existing run is never overwritten");
        d.write_json("summary.json", &R { k: 9 }).unwrap();
        assert_eq!(fs::read_to_string(d.path.join("summary.json")).unwrap().replace([' ', '\n'], ""), "{\"k\":9}");
    }
}
