use super::*;

fn res(resident: u64) -> StartResidency {
    StartResidency {
        files: 3,
        bytes: 1000,
        resident_bytes: resident,
        shared_files: 2,
        shared_bytes: 50,
        shared_resident_bytes: 50,
        resident: vec![],
    }
}

#[test]
fn labels_follow_the_measured_residency() {
    assert_eq!(start_label(StartMode::Cold, Some(&res(0))), "cold");
    // One resident page of what the start reads is enough to refuse "cold".
    assert_eq!(start_label(StartMode::Cold, Some(&res(1))), "warm");
    assert_eq!(start_label(StartMode::Cold, None), "cold?");
    assert_eq!(start_label(StartMode::Hot, Some(&res(1000))), "hot");
    assert_eq!(start_label(StartMode::Hot, Some(&res(990))), "hot");
    // A hot start whose files another process's cache drop pushed out is not hot.
    assert_eq!(start_label(StartMode::Hot, Some(&res(989))), "warm");
    assert_eq!(start_label(StartMode::Hot, Some(&res(0))), "warm");
    assert_eq!(start_label(StartMode::Hot, None), "hot");
    // Nothing checked is nothing verified.
    let empty = StartResidency { files: 0, bytes: 0, ..res(0) };
    assert_eq!(start_label(StartMode::Cold, Some(&empty)), "warm");
    assert_eq!(res(250).fraction(), 0.25);
    assert_eq!(empty.fraction(), 0.0);
}

/// Where `ldd` is missing (the lab's dom0) the loader's own `--list` stands in: it must
/// list what ldd lists.
#[test]
fn the_loader_lists_what_ldd_lists() {
    let loader = LOADERS.iter().find(|l| Path::new(l).is_file()).expect("a glibc loader");
    let list = |cmd: &str, pre: &[&str]| {
        let out = std::process::Command::new(cmd).args(pre).arg("/bin/sh").output().unwrap();
        assert!(out.status.success(), "{cmd}");
        parse_ldd(&String::from_utf8_lossy(&out.stdout))
    };
    let by_ldd = list("ldd", &[]);
    assert!(!by_ldd.is_empty());
    assert_eq!(list(loader, &["--list"]), by_ldd);
}

#[test]
fn ldd_output_parses() {
    let t = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\tlibmissing.so => not found\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f65)\n";
    assert_eq!(
        parse_ldd(t),
        vec![
            PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
            PathBuf::from("/lib64/ld-linux-x86-64.so.2")
        ]
    );
}

/// A dynamic program's libraries include libc, which hostd maps too: counted apart, so
/// that evicting everything else can reach 0 %; the program itself counts.
#[test]
fn shared_libraries_are_counted_apart_and_the_rest_evicts() {
    let dir = tempfile::Builder::new().prefix("vb-coldstart").tempdir_in("/var/tmp").unwrap();
    // A private copy of a dynamic program: no running process maps it (a running shell
    // would keep /bin/sh's pages resident).
    let sh = dir.path().join("prog");
    std::fs::copy(resolve_program("env").unwrap(), &sh).unwrap();
    let img_dir = dir.path().join("images");
    std::fs::create_dir(&img_dir).unwrap();
    let img = img_dir.join("kernel");
    std::fs::write(&img, vec![7u8; 1 << 20]).unwrap();
    let lf = LaunchFiles {
        images: vec![img_dir.clone()],
        programs: vec![sh.display().to_string()],
        data: vec![],
    };
    let files = files_read(&lf, &[]).unwrap();
    assert!(files.files.iter().any(|f| f.ends_with("kernel")), "{files:?}");
    assert!(files.libraries.iter().any(|f| f.to_string_lossy().contains("libc.so")), "{files:?}");
    assert!(files.programs.contains(&sh) && files.files.contains(&sh), "{files:?}");
    warm(&files).unwrap();
    let hot = check(&files, false).unwrap();
    assert_eq!(start_label(StartMode::Hot, Some(&hot)), "hot", "{hot:?}");
    assert!(hot.resident_bytes >= 1 << 20 && hot.shared_files >= 1, "{hot:?}");
    let cold = check(&files, true).unwrap();
    assert!(cold.is_cold(), "{}", describe(&cold, true));
    assert_eq!(start_label(StartMode::Cold, Some(&cold)), "cold");
}

/// What another instance of the launch's program maps does not excuse residency (a VMM
/// kept warm by another guest); what an unrelated process maps does.
#[test]
fn maps_of_other_instances_of_the_program_are_not_excused() {
    let dir = tempfile::Builder::new().prefix("vb-coldstart").tempdir_in("/var/tmp").unwrap();
    let prog = dir.path().join("sleeper");
    std::fs::copy(resolve_program("sleep").unwrap(), &prog).unwrap();
    let prog = std::fs::canonicalize(&prog).unwrap();
    let mut child = std::process::Command::new(&prog).arg("30").spawn().unwrap();
    // Mapped once the loader has run: wait for it to show in the child's maps.
    let maps = format!("/proc/{}/maps", child.id());
    for _ in 0..200 {
        if std::fs::read_to_string(&maps).unwrap_or_default().contains(prog.to_str().unwrap()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let unrelated = mapped_by_others(&BTreeSet::new());
    let same_program = mapped_by_others(&BTreeSet::from([prog.clone()]));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(unrelated.contains(&prog), "the running copy's own binary is mapped");
    assert!(!same_program.contains(&prog), "another instance of the program excused it");
}

/// With a system image, each VM guest gets its own ext4 to write in place (private) and
/// each container guest its own tree, owners kept; the shared image is left as it was.
#[test]
fn system_images_are_copied_per_guest() {
    use crate::backend::rootdisk::{InitMode, System};
    use crate::backend::{BackendKind, BackendOptions, Kernel};
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::Builder::new().prefix("vb-coldstart").tempdir_in("/var/tmp").unwrap();
    let d = dir.path();
    for f in ["kernel", "initramfs", "agent", "rootfs.ext4"] {
        std::fs::write(d.join(f), f.as_bytes()).unwrap();
    }
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), b"ID=t\n").unwrap();
    let owned = nix::unistd::geteuid().is_root();
    if owned {
        std::os::unix::fs::chown(tree.join("etc/os-release"), Some(1234), Some(1234)).unwrap();
    }
    let images = Images {
        agent: d.join("agent"),
        initramfs: Some(d.join("initramfs")),
        kernel_uml: Some(Kernel { path: d.join("kernel"), cmdline: String::new() }),
        system: Some(System {
            name: "t".into(),
            ext4: d.join("rootfs.ext4"),
            ext4_uuid: "u".into(),
            tree: tree.clone(),
            init: InitMode::Agent,
            image_init: None,
            private: false,
        }),
        ..Default::default()
    };
    let opts = BackendOptions::default();
    let uml = AnyBackend::new(BackendKind::Uml, &images, &opts);
    let copies = copy_images(&uml, &images, &d.join("vm"), 2).unwrap();
    for (i, c) in copies.iter().enumerate() {
        let sys = c.system.as_ref().unwrap();
        assert!(sys.private, "a VM's copy is written in place");
        assert!(sys.ext4.starts_with(d.join(format!("vm/g{i}"))), "{}", sys.ext4.display());
        assert_eq!(std::fs::read(&sys.ext4).unwrap(), b"rootfs.ext4");
        assert_eq!(sys.tree, tree, "a VM reads no tree");
    }
    let ns = AnyBackend::new(BackendKind::Ns, &images, &opts);
    let copies = copy_images(&ns, &images, &d.join("ct"), 2).unwrap();
    for (i, c) in copies.iter().enumerate() {
        let sys = c.system.as_ref().unwrap();
        assert!(!sys.private && sys.ext4 == d.join("rootfs.ext4"), "a container reads no ext4");
        assert_eq!(sys.tree, d.join(format!("ct/g{i}/system-tree")));
        let f = sys.tree.join("etc/os-release");
        assert_eq!(std::fs::read(&f).unwrap(), b"ID=t\n");
        if owned {
            assert_eq!(std::fs::metadata(&f).unwrap().uid(), 1234, "owners are kept");
        }
    }
    assert!(!images.system.as_ref().unwrap().private);
}

#[test]
fn copies_trees_and_refuses_special_files() {
    let dir = tempfile::Builder::new().prefix("vb-coldstart").tempdir_in("/var/tmp").unwrap();
    let src = dir.path().join("rootfs");
    std::fs::create_dir_all(src.join("sbin")).unwrap();
    std::fs::write(src.join("sbin/agent"), b"agent").unwrap();
    std::os::unix::fs::symlink("sbin/agent", src.join("init")).unwrap();
    copy_tree(&src, &dir.path().join("copy")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("copy/sbin/agent")).unwrap(), b"agent");
    assert_eq!(
        std::fs::read_link(dir.path().join("copy/init")).unwrap(),
        PathBuf::from("sbin/agent")
    );
    nix::unistd::mkfifo(&src.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = copy_tree(&src, &dir.path().join("copy2")).unwrap_err().to_string();
    assert!(e.contains("fifo"), "{e}");
}
