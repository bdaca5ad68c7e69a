//! Durable results: one directory per run holding raw samples as JSON lines (each record
//! written and synced before the next measurement starts), summaries written atomically
//! (old or new version, never a mix), and figures. A run killed at any point loses at most
//! the record being written; readers skip a torn last line, and the next writer cuts it off
//! before appending (it would otherwise fuse with the next record). A record that cannot be
//! written whole (a full disk) is cut off too, so the file always ends with a whole record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::runstate::write_atomic;

/// A run's sample records, one JSON object a line, appended durably.
pub const SAMPLES: &str = "samples.jsonl";

/// The version of the result files' format: every line of `samples.jsonl` and every JSON
/// file hostd writes carries it as `schema_version` (docs/schema/). Raised when a field
/// changes meaning or goes; new optional fields keep it. Results from before it was written
/// read as version 0 and stay readable.
pub const SCHEMA_VERSION: u32 = 1;

/// A value serialised with `schema_version` first (a struct or map; see [`SCHEMA_VERSION`]).
#[derive(Serialize)]
pub struct Versioned<'a, T: Serialize> {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    #[serde(flatten)]
    /// The value, its fields beside `schema_version`.
    pub value: &'a T,
}

impl<'a, T: Serialize> Versioned<'a, T> {
    /// `value` at the current [`SCHEMA_VERSION`].
    pub fn new(value: &'a T) -> Self {
        Self { schema_version: SCHEMA_VERSION, value }
    }
}

/// The longest record a reader takes: a memory sample of 1000 guests is about 200 KiB, a
/// failure with its console tail a few KiB. A longer line is counted as unreadable and
/// skipped without being held in memory.
pub const MAX_LINE: usize = 4 << 20;
/// The largest samples file a reader takes (a default campaign writes a few MiB).
pub const MAX_SAMPLES_BYTES: u64 = 256 << 20;
/// The largest other file of a results directory a reader takes (provenance, campaign,
/// the previous report).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Why a file of a results directory could not be read.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ReadError {
    #[error("{path}: no such file")]
    Missing { path: PathBuf },
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is {kind}, not a regular file: refused (reading it could block or never end)")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path} has {size} bytes, more than the {max} a results file may have")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// Why a directory is not one a reader takes results from.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum DirError {
    #[error("results directory {path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is not a results directory: it has no {SAMPLES}")]
    NotResults { path: PathBuf },
    #[error("{path}: {source}")]
    Stat { path: PathBuf, source: io::Error },
    #[error(transparent)]
    File(#[from] ReadError),
}

/// Why a new results directory could not be made.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum CreateError {
    #[error("creating the results parent directory {path}: {source}")]
    Parent { path: PathBuf, source: io::Error },
    #[error("creating results directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("no free results directory name next to {path} after {tries} tries")]
    Exhausted { path: PathBuf, tries: u32 },
    #[error("creating {path}: {source}")]
    Contents { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Open(#[from] ReadError),
}

/// Why a record or a file could not be written into a results directory; each names the
/// file (a full disk fails whichever write comes next).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum SaveError {
    #[error("encoding {what} as JSON: {source}")]
    Encode { what: String, source: serde_json::Error },
    /// The unfinished last line a killed writer left could not be cut off.
    #[error("cutting the torn last line of {}: {source}", path.display())]
    CutTornTail { path: PathBuf, source: io::Error },
    #[error("creating {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Opens `path` only if it is a regular file. O_NONBLOCK makes opening a FIFO return at
/// once instead of waiting for a writer (or reader); the type is then checked on the
/// opened descriptor, so nothing can be swapped in between the check and the use.
fn open_regular(path: &Path, opts: &mut OpenOptions) -> Result<File, ReadError> {
    let f = opts.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map_err(|source| {
        match source.kind() {
            io::ErrorKind::NotFound => ReadError::Missing { path: path.to_path_buf() },
            _ => ReadError::Open { path: path.to_path_buf(), source },
        }
    })?;
    let t = f
        .metadata()
        .map_err(|source| ReadError::Open { path: path.to_path_buf(), source })?
        .file_type();
    if !t.is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: imagegen::store::file_type_name(t),
        });
    }
    Ok(f)
}

/// Opens a regular file for reading, refusing one larger than `max` bytes.
fn open_bounded(path: &Path, max: u64) -> Result<File, ReadError> {
    let f = open_regular(path, OpenOptions::new().read(true))?;
    let size =
        f.metadata().map_err(|source| ReadError::Read { path: path.to_path_buf(), source })?.len();
    if size > max {
        return Err(ReadError::TooLarge { path: path.to_path_buf(), size, max });
    }
    Ok(f)
}

/// The whole of a regular file of at most `max` bytes (one that grows past it while being
/// read is refused too).
pub fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let f = open_bounded(path, max)?;
    let mut data = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|source| ReadError::Read { path: path.to_path_buf(), source })?;
    if data.len() as u64 > max {
        return Err(ReadError::TooLarge { path: path.to_path_buf(), size: data.len() as u64, max });
    }
    Ok(data)
}

/// [`read_file`], or None where the file does not exist.
pub fn read_optional(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    match read_file(path, max) {
        Ok(d) => Ok(Some(d)),
        Err(ReadError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Checks that `dir` is a results directory (a directory holding a regular samples file):
/// readers refuse anything else, and writers never create files elsewhere.
pub fn check_dir(dir: &Path) -> Result<(), DirError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DirError::Missing { path: dir.to_path_buf() })
        }
        Err(source) => return Err(DirError::Stat { path: dir.to_path_buf(), source }),
        Ok(m) if !m.is_dir() => return Err(DirError::NotADirectory { path: dir.to_path_buf() }),
        Ok(_) => {}
    }
    match open_regular(&dir.join(SAMPLES), OpenOptions::new().read(true)) {
        Ok(_) => Ok(()),
        Err(ReadError::Missing { .. }) => Err(DirError::NotResults { path: dir.to_path_buf() }),
        Err(e) => Err(e.into()),
    }
}

/// One line of a samples file, as [`for_each_line`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line (without its newline) of at most [`MAX_LINE`] bytes.
    Text(&'a [u8]),
    /// A line longer than the bound, skipped.
    TooLong,
}

/// Calls `f` with every line of `r`, holding at most `max_line` bytes of one line in memory:
/// a longer one (a file of a gigabyte without a newline) is reported as [`Line::TooLong`]
/// and skipped. A last line without a newline (a record a killed writer tore) counts too.
pub fn for_each_line<R: BufRead>(
    mut r: R,
    max_line: usize,
    mut f: impl FnMut(Line<'_>),
) -> io::Result<()> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let (used, ended) = {
            let chunk = match r.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                break;
            }
            let (part, ended) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], true),
                None => (chunk, false),
            };
            if !too_long {
                if line.len() + part.len() > max_line {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(part);
                }
            }
            (part.len() + usize::from(ended), ended)
        };
        r.consume(used);
        if ended {
            f(if too_long { Line::TooLong } else { Line::Text(&line) });
            line.clear();
            too_long = false;
        }
    }
    if too_long {
        f(Line::TooLong);
    } else if !line.is_empty() {
        f(Line::Text(&line));
    }
    Ok(())
}

/// Parses JSON lines from `r`: every record that parses, and how many lines did not (torn,
/// too long, from a newer hostd). Blank lines are neither.
pub fn parse_records<T: DeserializeOwned, R: BufRead>(r: R) -> io::Result<(Vec<T>, usize)> {
    let mut out = Vec::new();
    let mut bad = 0;
    for_each_line(r, MAX_LINE, |l| match l {
        Line::Text(t) if t.iter().all(|b| b.is_ascii_whitespace()) => {}
        Line::Text(t) => match serde_json::from_slice(t) {
            Ok(r) => out.push(r),
            Err(_) => bad += 1,
        },
        Line::TooLong => bad += 1,
    })?;
    Ok((out, bad))
}

/// Sees each line appended to a samples file.
type Observer = Box<dyn FnMut(&[u8]) + Send>;

/// One run's results directory: samples appended durably, summaries written atomically.
pub struct ResultsDir {
    /// The directory itself (`base/<name>` as it was created).
    pub path: PathBuf,
    /// Called with every line appended (a progress display counting steps).
    observer: Option<Observer>,
    /// Open for reading too: the torn-tail check reads the file it is about to append to.
    samples: File,
    /// Whether a torn last line (left by a killed writer) has been looked for.
    tail_checked: bool,
}

impl ResultsDir {
    /// Creates `base/<name>` (which must not exist yet).
    pub fn create(base: &Path, name: &str) -> Result<Self, CreateError> {
        fs::create_dir_all(base)
            .map_err(|source| CreateError::Parent { path: base.to_path_buf(), source })?;
        let path = base.join(name);
        fs::create_dir(&path).map_err(|source| CreateError::Dir { path: path.clone(), source })?;
        Self::fill(path)
    }

    /// Creates `base/<name>`, or `base/<name>.2`, `.3`, … where that exists: two runs
    /// started in the same second get a directory each, never each other's.
    pub fn create_unique(base: &Path, name: &str) -> Result<Self, CreateError> {
        const TRIES: u32 = 1000;
        fs::create_dir_all(base)
            .map_err(|source| CreateError::Parent { path: base.to_path_buf(), source })?;
        for k in 1..=TRIES {
            let path = if k == 1 { base.join(name) } else { base.join(format!("{name}.{k}")) };
            // create_dir is the arbiter: whoever makes the directory owns it.
            match fs::create_dir(&path) {
                Ok(()) => return Self::fill(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(CreateError::Dir { path, source }),
            }
        }
        Err(CreateError::Exhausted { path: base.join(name), tries: TRIES })
    }

    /// A new directory's samples file (first: it is what makes it a results directory)
    /// and figures directory.
    fn fill(path: PathBuf) -> Result<Self, CreateError> {
        let samples = path.join(SAMPLES);
        File::options()
            .write(true)
            .create_new(true)
            .open(&samples)
            .map_err(|source| CreateError::Contents { path: samples, source })?;
        let figures = path.join("figures");
        fs::create_dir(&figures)
            .map_err(|source| CreateError::Contents { path: figures, source })?;
        Ok(Self::open(&path)?)
    }

    /// Opens an existing results directory for appending (resuming a run), removing temp
    /// files a killed writer left. Its samples file must exist and be a regular file.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let samples =
            open_regular(&path.join(SAMPLES), OpenOptions::new().read(true).append(true))?;
        remove_stale_temps(path);
        Ok(Self { path: path.to_path_buf(), samples, tail_checked: false, observer: None })
    }

    /// Appends one record (with `schema_version` first: [`Versioned`]) and
    /// makes it durable before returning. On failure nothing of the record stays in the file.
    pub fn append<T: Serialize>(&mut self, rec: &T) -> Result<(), SaveError> {
        let mut line = serde_json::to_vec(&Versioned::new(rec))
            .map_err(|source| SaveError::Encode { what: "a sample record".into(), source })?;
        line.push(b'\n');
        let path = || self.path.join(SAMPLES);
        if !self.tail_checked {
            cut_torn_tail(&self.samples)
                .map_err(|source| SaveError::CutTornTail { path: path(), source })?;
            self.tail_checked = true;
        }
        let before = (self.samples.metadata())
            .map_err(|source| SaveError::Write { path: path(), source })?
            .len();
        if let Err(source) = self.samples.write_all(&line).and_then(|()| self.samples.sync_data()) {
            let _ = self.samples.set_len(before);
            return Err(SaveError::Write { path: path(), source });
        }
        if let Some(f) = &mut self.observer {
            f(&line);
        }
        Ok(())
    }

    /// Calls `f` with every line appended from now on, once it is durable.
    pub fn observe(&mut self, f: impl FnMut(&[u8]) + Send + 'static) {
        self.observer = Some(Box::new(f));
    }

    /// Writes `name` (relative to the directory) atomically.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), SaveError> {
        write_in(&self.path, name, data)
    }

    /// Writes `name` as pretty JSON with `schema_version` first ([`Versioned`]).
    pub fn write_json<T: Serialize>(&self, name: &str, v: &T) -> Result<(), SaveError> {
        let json = serde_json::to_vec_pretty(&Versioned::new(v))
            .map_err(|source| SaveError::Encode { what: name.into(), source })?;
        self.write(name, &json)
    }
}

/// Writes `dir/name` atomically, errors naming the file.
pub fn write_in(dir: &Path, name: &str, data: &[u8]) -> Result<(), SaveError> {
    let p = dir.join(name);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d)
            .map_err(|source| SaveError::CreateDir { path: d.to_path_buf(), source })?;
    }
    write_atomic(&p, data).map_err(|source| SaveError::Write { path: p, source })
}

/// Truncates `file` (open for reading and appending) after its last newline: a line without
/// one is a record a killed writer did not finish.
fn cut_torn_tail(file: &File) -> io::Result<()> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 << 10];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.read_exact_at(&mut chunk[..n], start)?;
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

/// Removes the `.NAME.tmp-PID` files (see [`write_atomic`]) whose writer is gone from a
/// results directory and its figures.
pub fn remove_stale_temps(dir: &Path) {
    for d in [dir.to_path_buf(), dir.join("figures")] {
        remove_stale_temps_in(&d);
    }
}

fn remove_stale_temps_in(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".tmp-"))
            .and_then(|(_, p)| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive =
            pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Reads every record of `dir`'s samples (none if it has no samples file). Lines that do not
/// parse (a record torn by a kill, one from a newer hostd, one longer than [`MAX_LINE`]) are
/// counted, not fatal. Only a regular file of at most [`MAX_SAMPLES_BYTES`] is read.
pub fn read_records<T: DeserializeOwned>(dir: &Path) -> Result<(Vec<T>, usize), ReadError> {
    read_with(dir, |r| parse_records(r))
}

/// Runs `parse` over `dir`'s samples file, or over nothing if it has none: only a regular
/// file, of at most [`MAX_SAMPLES_BYTES`] (also while it is read).
pub fn read_with<T: Default>(
    dir: &Path,
    parse: impl FnOnce(&mut dyn BufRead) -> io::Result<T>,
) -> Result<T, ReadError> {
    let path = dir.join(SAMPLES);
    let f = match open_bounded(&path, MAX_SAMPLES_BYTES) {
        Ok(f) => f,
        Err(ReadError::Missing { .. }) => return Ok(T::default()),
        Err(e) => return Err(e),
    };
    let mut r = io::BufReader::new(f.take(MAX_SAMPLES_BYTES + 1));
    let parsed = parse(&mut r).map_err(|source| ReadError::Read { path: path.clone(), source })?;
    if r.into_inner().limit() == 0 {
        return Err(ReadError::TooLarge {
            path,
            size: MAX_SAMPLES_BYTES + 1,
            max: MAX_SAMPLES_BYTES,
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
