use super::*;

#[test]
fn own_path_per_hierarchy() {
    let s = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/x\n0::/user.slice\n";
    assert_eq!(own_path(s, "memory"), PathBuf::from("process_api/abc"));
    assert_eq!(own_path(s, "cpu"), PathBuf::from("x"));
    assert_eq!(own_path(s, ""), PathBuf::from("user.slice"));
    assert_eq!(own_path(s, "pids"), PathBuf::new());
}

#[test]
fn detects_v2_and_v1_layouts() {
    let d = tempfile::tempdir().unwrap();
    assert!(detect_in(d.path(), "").is_err());
    fs::create_dir_all(d.path().join("memory")).unwrap();
    fs::write(d.path().join("memory/cgroup.procs"), "").unwrap();
    assert_eq!(detect_in(d.path(), "4:memory:/\n").unwrap(), Mode::V1);
    fs::write(d.path().join("cgroup.controllers"), "cpu io memory pids").unwrap();
    assert_eq!(detect_in(d.path(), "0::/\n").unwrap(), Mode::V2);
}

#[test]
fn names_are_checked() {
    assert!(check_name("run-1_a").is_ok());
    assert!(check_name("../x").is_err());
    assert!(check_name("").is_err());
}

/// A bad run or guest name is refused before anything is made, by name.
#[test]
fn create_refuses_a_bad_name_naming_it() {
    let e = Cgroup::create(Mode::V2, "run1", "../g", Limits::default()).unwrap_err();
    assert!(matches!(&e, CgroupError::BadName { name } if name == "../g"), "{e:?}");
    assert!(e.to_string().contains("\"../g\""), "{e}");
    let long = "x".repeat(65);
    let e = Cgroup::create(Mode::V1, &long, "g0", Limits::default()).unwrap_err();
    assert!(matches!(e, CgroupError::BadName { .. }), "{e:?}");
}

/// A tree that cannot be listed says which directory, as a List failure.
#[test]
fn remove_tree_names_a_directory_it_cannot_list() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("not-a-dir");
    fs::write(&file, "").unwrap();
    let e = remove_tree(&file, Duration::from_millis(10)).unwrap_err();
    assert!(matches!(&e, CgroupError::List { dir, .. } if *dir == file), "{e:?}");
    assert!(e.to_string().contains("not-a-dir"), "{e}");
}

/// Needs root and a memory controller: creates a group, charges a process to it, kills
/// and removes it, and checks nothing is left.
#[test]
fn lifecycle_on_this_host() {
    if !nix::unistd::geteuid().is_root() {
        hostd_test_support::skip(None, "cgroup lifecycle needs root");
        return;
    }
    let mode = detect().expect("a cgroup memory controller");
    let run = format!("test{}", std::process::id());
    let cg = Cgroup::create(
        mode,
        &run,
        "g0",
        Limits { memory_bytes: Some(64 << 20), cpus: Some(0.5), pids: Some(16), cpuset: Some("0") },
    )
    .unwrap();
    // Removes the group even when an assertion below fails.
    struct Guard(Cgroup);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.remove();
        }
    }
    let _guard = Guard(cg.clone());
    // Memory is charged where it is allocated: the child allocates after joining.
    let mut child = std::process::Command::new("python3")
        .args(["-c", "import time; time.sleep(0.3); x = b'a' * (8 << 20); time.sleep(30)"])
        .spawn()
        .unwrap();
    cg.add(child.id()).unwrap();
    assert_eq!(cg.pids()[0], child.id());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(cg.memory_bytes().unwrap() > 1 << 20, "{:?}", cg.memory_bytes());
    cg.remove().unwrap();
    assert!(child.wait().unwrap().code().is_none(), "killed by a signal");
    for d in &cg.dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    for r in run_roots(&run) {
        remove_tree(&r, Duration::from_secs(5)).unwrap();
        assert!(!r.exists(), "run directory {} left behind", r.display());
    }
}
