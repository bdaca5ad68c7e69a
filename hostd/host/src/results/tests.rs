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
    fs::OpenOptions::new()
        .append(true)
        .open(d.path.join(SAMPLES))
        .unwrap()
        .write_all(b"{\"k\":3")
        .unwrap();
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
    assert!(
        ResultsDir::create(base.path(), "run1").is_err(),
        "an existing run is never overwritten"
    );
    d.write_json("summary.json", &R { k: 9 }).unwrap();
    assert_eq!(
        fs::read_to_string(d.path.join("summary.json")).unwrap().replace([' ', '\n'], ""),
        "{\"schema_version\":1,\"k\":9}"
    );
}

/// Runs `f` on another thread and fails the test if it has not returned within 10 s
/// (a reader that blocks on a FIFO would otherwise hang the test run).
fn within_10_s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the reader blocked")
}

#[test]
fn only_regular_files_are_read() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().to_path_buf();
    nix::unistd::mkfifo(&dir.join(SAMPLES), nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap();
    let d = dir.clone();
    let e = within_10_s(move || read_records::<R>(&d).unwrap_err());
    assert!(e.to_string().contains("is a FIFO, not a regular file"), "{e}");
    let d = dir.clone();
    let e = within_10_s(move || ResultsDir::open(&d).err().unwrap());
    assert!(e.to_string().contains("is a FIFO"), "{e}");
    let d = dir.clone();
    assert!(matches!(
        within_10_s(move || check_dir(&d)),
        Err(DirError::File(ReadError::NotRegular { .. }))
    ));
    fs::remove_file(dir.join(SAMPLES)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join(SAMPLES)).unwrap();
    let e = read_records::<R>(&dir).unwrap_err();
    assert!(e.to_string().contains("is a character device"), "{e}");
    let e = read_file(&dir.join(SAMPLES), MAX_FILE_BYTES).unwrap_err();
    assert!(e.to_string().contains(&dir.join(SAMPLES).display().to_string()), "{e}");
}

#[test]
fn a_huge_line_is_skipped_in_bounded_memory() {
    // 64 MiB without a newline, then a record: the line is counted, never held whole.
    let huge = io::repeat(b'x').take(64 << 20).chain(&b"\n{\"k\":1}\n"[..]);
    let mut longest = 0;
    let mut seen = Vec::new();
    for_each_line(io::BufReader::new(huge), 1 << 20, |l| {
        if let Line::Text(t) = l {
            longest = longest.max(t.len());
        }
        seen.push(matches!(l, Line::TooLong));
    })
    .unwrap();
    assert_eq!(seen, [true, false]);
    assert!(longest <= 1 << 20);
    let (rs, bad): (Vec<R>, _) =
        parse_records(io::BufReader::new(io::repeat(b'{').take(MAX_LINE as u64 + 1))).unwrap();
    assert_eq!((rs.len(), bad), (0, 1));
    // A file past the bound is refused, not read (sparse: no disk used).
    let base = tempfile::tempdir().unwrap();
    File::create(base.path().join(SAMPLES)).unwrap().set_len(MAX_SAMPLES_BYTES + 1).unwrap();
    let e = read_records::<R>(base.path()).unwrap_err();
    assert!(matches!(e, ReadError::TooLarge { .. }), "{e}");
}

#[test]
fn directories_are_unique_by_construction() {
    let base = tempfile::tempdir().unwrap();
    let a = ResultsDir::create_unique(base.path(), "same-second").unwrap();
    let b = ResultsDir::create_unique(base.path(), "same-second").unwrap();
    assert_ne!(a.path, b.path);
    assert_eq!(b.path.file_name().unwrap(), "same-second.2");
    // Racing creators each get their own.
    let b = base.path().to_path_buf();
    let paths: Vec<PathBuf> = (0..8)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || ResultsDir::create_unique(&b, "race").unwrap().path)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<_> = paths.iter().collect();
    assert_eq!(distinct.len(), 8, "{paths:?}");
    for p in &paths {
        check_dir(p).unwrap();
    }
    // The strict form names the directory it could not make.
    let e = ResultsDir::create(base.path(), "race").err().unwrap().to_string();
    assert!(
        e.contains(&base.path().join("race").display().to_string()) && e.contains("exists"),
        "{e}"
    );
}

#[test]
fn only_results_directories_are_taken() {
    let base = tempfile::tempdir().unwrap();
    let missing = base.path().join("nope");
    assert!(check_dir(&missing).unwrap_err().to_string().contains("nope does not exist"));
    assert!(matches!(check_dir(base.path()), Err(DirError::NotResults { .. })));
    fs::write(base.path().join("f"), b"").unwrap();
    assert!(matches!(check_dir(&base.path().join("f")), Err(DirError::NotADirectory { .. })));
    assert!(
        ResultsDir::open(base.path()).is_err(),
        "opening does not make a directory a results directory"
    );
    assert!(!base.path().join(SAMPLES).exists());
}
