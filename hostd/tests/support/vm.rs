//! Shared by the VM backend tests (uml, qemu, firecracker): the images (from the imagegen
//! store, which scripts/test builds first), and one end-to-end fleet scenario that boots
//! guests on a fleet network, exercises every channel and benchmark kind, powers them off
//! and checks nothing is left behind.

#![allow(dead_code)] // each test binary uses a different part

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use hostd::backend::{AnyBackend, BackendKind, BackendOptions, Exit, GuestSpec, Images};
use hostd::guest::{boot, RunningGuest};
use hostd::microbench::run_once;
use hostd::netlab::FleetNet;
use hostd::suite::Test;
use vb_protocol::bench::{BenchRequest, BenchSpec, Resource, Work};
use vb_protocol::msg::{Command, ReplyBody, Role};

/// Size of the data disk the disk benchmark reads.
pub const DISK_MIB: u64 = 4;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The imagegen store's images (kernels, initramfs with the agent as /init). Missing images
/// fail the test rather than skip it: `scripts/test` builds them first.
pub fn images(kind: BackendKind, _dir: &Path) -> Result<Images, String> {
    let im = hostd::images::resolve(None).map_err(|e| format!("{e:#}"))?;
    let kernel = match kind {
        BackendKind::Uml => &im.kernel_uml,
        BackendKind::QemuMicrovm | BackendKind::QemuFull | BackendKind::Firecracker => {
            &im.kernel_pv
        }
        other => panic!("{other} boots no kernel"),
    };
    assert!(
        kernel.is_some() && im.initramfs.is_some(),
        "images for {kind} are missing ({}): run `imagegen build` (scripts/test does)",
        im.notes.join("; ")
    );
    Ok(im)
}

/// `kind`'s images for a test that boots them as root; None, the test said skipped with
/// `why_root` or why the images cannot be had, where it cannot run here.
pub fn images_as_root(kind: BackendKind, why_root: &str) -> Option<Images> {
    if !super::skip::unless_root(Some(kind.name()), why_root) {
        return None;
    }
    images(kind, Path::new("/")).map_err(|e| super::skip::skip(Some(kind.name()), &e)).ok()
}

/// The release a kernel image reports (`uname -r` inside its guests): from a bzImage's
/// header, else from the "Linux version …" banner in an uncompressed image.
pub fn kernel_release(path: &Path) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    // bzImage: "HdrS" at 0x202, kernel_version pointer (relative to 0x200) at 0x20e.
    if data.get(0x202..0x206) == Some(b"HdrS") {
        let off = u16::from_le_bytes([data[0x20e], data[0x20f]]) as usize + 0x200;
        let s = data.get(off..)?;
        return String::from_utf8_lossy(&s[..s.iter().position(|&b| b == 0 || b == b' ')?])
            .into_owned()
            .into();
    }
    let pat = b"Linux version ";
    let mut from = 0;
    while let Some(i) = data[from..].windows(pat.len()).position(|w| w == pat) {
        let start = from + i + pat.len();
        if data.get(start).is_some_and(|b| b.is_ascii_digit()) {
            let end = start + data[start..].iter().position(|&b| b == b' ' || b == 0)?;
            return Some(String::from_utf8_lossy(&data[start..end]).into_owned());
        }
        from = start;
    }
    None
}

/// A test run's id: short, unique per process and backend ([a-z0-9]).
pub fn run_id(tag: &str) -> String {
    format!("t{tag}{}", std::process::id())
}

pub fn spec(
    run: &str,
    index: usize,
    dir: &Path,
    net: Option<&FleetNet>,
    disk: Option<&Path>,
) -> GuestSpec {
    GuestSpec {
        data_disk: disk.map(Path::to_path_buf),
        ..super::fault::spec_linked(run, index, dir, net, "vbt")
    }
}

/// Removes what a test run may have left if it fails half-way: every process and group
/// under its cgroup roots, then its fleet namespace.
pub struct RunGuard {
    pub run: String,
    pub net: Option<FleetNet>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        for root in hostd::cgroup::run_roots(&self.run) {
            let _ = hostd::cgroup::remove_tree(&root, Duration::from_secs(5));
        }
        if let Some(n) = &self.net {
            let _ = n.destroy();
        }
    }
}

/// What a scenario expects of a backend.
pub struct Expect {
    pub kind: BackendKind,
    /// Where the guest sees the data disk.
    pub disk: String,
    pub kernel_release: Option<String>,
    /// How a powered-off guest ends (Clean unless the VMM cannot notice the halt).
    pub exit: Exit,
}

/// Boots one guest alone (boot-to-ready time), then `n` guests concurrently on a fleet
/// network; pings, checks the guest clock runs at host speed, runs the CPU benchmark in
/// each, a network stream between guests 0 and 1 over fleet addresses and the disk
/// benchmark on the guest disk; powers them off and checks that no process, cgroup, tap,
/// namespace or work directory is left.
pub async fn fleet_scenario(backend: &AnyBackend, exp: &Expect, n: usize, dir: &Path, tag: &str) {
    assert!(n >= 2, "the network check needs two guests");
    let kind = exp.kind;
    let run = run_id(tag);
    let disk = dir.join("disk.img");
    hostd::microbench::write_data_file(&disk, DISK_MIB).unwrap();
    // Each of the n guests reads its own copy, on a disk-backed file system (the suite's
    // per-guest data sets), evicted from the host cache before each measured read.
    let copy_dir = tempfile::Builder::new().prefix("vb-copies").tempdir_in("/var/tmp").unwrap();
    let copies =
        hostd::datadisk::DataDisks::new(&disk, DISK_MIB << 20, &copy_dir.path().join(&run), &run)
            .unwrap();
    let fleet = FleetNet::create(&run).unwrap();
    let _guard = RunGuard { run: run.clone(), net: Some(fleet.clone()) };
    let hello_timeout = Duration::from_secs(120);

    // One guest alone: the uncontended boot time.
    let solo =
        boot(backend, spec(&run, 0, &dir.join("solo"), Some(&fleet), Some(&disk)), hello_timeout)
            .await
            .unwrap();
    println!("{kind}: 1 guest ready in {:.3} s", solo.startup.as_secs_f64());
    assert!(matches!(
        solo.conn.request(Command::Ping, Duration::from_secs(10)).await.unwrap(),
        ReplyBody::Pong { .. }
    ));
    let e = solo.shutdown(backend, Duration::from_secs(15)).await;
    assert!(same_exit(&e, &exp.exit), "{kind}: solo guest: {e:?}");

    // n guests at once.
    let t0 = Instant::now();
    let specs: Vec<GuestSpec> = (0..n)
        .map(|i| spec(&run, i, dir, Some(&fleet), Some(&copies.copy_for(i).unwrap())))
        .collect();
    let results =
        futures::future::join_all(specs.into_iter().map(|s| boot(backend, s, hello_timeout))).await;
    let all = t0.elapsed();
    let guests: Vec<RunningGuest> =
        results.into_iter().map(|r| r.unwrap_or_else(|e| panic!("{kind}: {e}"))).collect();
    let times: Vec<String> =
        guests.iter().map(|g| format!("{:.3}", g.startup.as_secs_f64())).collect();
    println!(
        "{kind}: {n} concurrent guests ready in [{}] s (all within {:.3} s)",
        times.join(", "),
        all.as_secs_f64()
    );

    let mut pids = Vec::new();
    let mut cgroup_dirs = Vec::new();
    let mut workdirs = Vec::new();
    for g in &guests {
        let h = &g.hello;
        assert_eq!(h.role, Role::Init, "{kind}");
        assert_eq!(h.hostname, g.spec.name);
        if let Some(r) = &exp.kernel_release {
            assert_eq!(&h.kernel_release, r, "{kind}");
        }
        assert_eq!(h.cpus, 1);
        assert!(
            h.mem_total_kib > 64 << 10 && h.mem_total_kib <= 128 << 10,
            "{kind}: {} KiB",
            h.mem_total_kib
        );
        assert!(
            h.clock.kernel_init_ns.is_some(),
            "{kind}: a VM's init knows when its kernel ran it"
        );
        let cg = g.process.cgroup.as_ref().expect("guests run in a cgroup");
        let p = cg.pids();
        assert!(p.contains(&g.process.pid()), "{kind}: the VMM is in its cgroup");
        pids.extend(p);
        cgroup_dirs.extend(cg.dirs.clone());
        workdirs.push(g.spec.workdir.clone());
        assert!(matches!(
            g.conn.request(Command::Ping, Duration::from_secs(10)).await.unwrap(),
            ReplyBody::Pong { .. }
        ));
    }
    // UML runs several host processes per guest (in its process group), all of which must
    // be in its cgroup.
    if kind == BackendKind::Uml {
        for g in &guests {
            let group = super::fault::group_members(g.process.pid() as i32);
            assert!(group.len() >= 2, "uml: one process only: {group:?}");
            let cg = g.process.pids();
            assert!(group.iter().all(|p| cg.contains(p)), "uml: group {group:?}, cgroup {cg:?}");
        }
    }

    // The guest clock runs at host speed (a TCG guest with a wrong TSC rate runs 30 % fast).
    let g0 = &guests[0];
    let pong = |r: ReplyBody| match r {
        ReplyBody::Pong { monotonic_ns } => monotonic_ns,
        other => panic!("{other:?}"),
    };
    let (h0, g0a) = (
        Instant::now(),
        pong(g0.conn.request(Command::Ping, Duration::from_secs(10)).await.unwrap()),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (h1, g0b) = (
        Instant::now(),
        pong(g0.conn.request(Command::Ping, Duration::from_secs(10)).await.unwrap()),
    );
    let ratio = (g0b - g0a) as f64 / 1e9 / (h1 - h0).as_secs_f64();
    println!("{kind}: guest clock / host clock = {ratio:.4}");
    assert!((0.97..1.03).contains(&ratio), "{kind}: guest clock runs at {ratio:.3}× host speed");

    // CPU benchmark in every guest at once.
    let cpu =
        BenchRequest { spec: BenchSpec::Cpu { rounds: 200_000 }, instances: 1, start_at_ns: None };
    let reports = futures::future::join_all(
        guests.iter().map(|g| run_once(&g.conn, &cpu, Duration::from_secs(120))),
    )
    .await;
    for r in reports {
        assert!(matches!(r.unwrap().instances[0].work, Work::Cpu { .. }));
    }

    // Network: guest 0 streams to guest 1 over the fleet bridge.
    let peer_addr: Ipv4Addr = guests[1].spec.net.as_ref().unwrap().addr;
    let port = super::fault::net_serve(&guests[1]).await;
    let stream = super::fault::net_stream(format!("{peer_addr}:{port}"), 300, 16384);
    let rep = run_once(&guests[0].conn, &stream, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{kind}: {e:#}"));
    let Work::NetStream { bytes } = rep.instances[0].work else { panic!() };
    let f = rep.instances[0].figure();
    println!("{kind}: net_stream g0 → g1 {bytes} bytes, {:.1} {}", f.value, f.unit);
    assert!(bytes > 0);

    // Disk: every guest reads the whole data disk through its virtual disk.
    let dreq = BenchRequest {
        spec: BenchSpec::Disk {
            path: exp.disk.clone(),
            block_size: 64 << 10,
            max_bytes: None,
            direct: true,
        },
        instances: 1,
        start_at_ns: None,
    };
    for g in &guests {
        // As the suite does it: the guest's copy evicted, its residency measured, the read,
        // and a sample that says both.
        let preps = hostd::suite::before_reads(kind, Resource::Disk, &[g])
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let rep = run_once(&g.conn, &dreq, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{kind}: disk: {e:#}"));
        let Work::Disk { bytes, .. } = rep.instances[0].work else { panic!() };
        assert_eq!(bytes, DISK_MIB << 20, "{kind}: {} is the data disk", exp.disk);
        let mut samples = hostd::suite::samples_of(
            kind,
            Test::Overhead,
            Resource::Disk,
            "",
            n,
            0,
            g.spec.index,
            &hostd::suite::sync::Timed { report: rep, sync: None },
            None,
        );
        hostd::suite::mark_reads(&mut samples, preps.as_deref());
        assert_disk_sample(kind, &samples);
    }
    // After a read the copy may be cached again (UML, Firecracker), never with O_DIRECT (QEMU).
    let after = hostd::pagecache::residency(guests[0].spec.data_disk.as_ref().unwrap()).unwrap();
    println!("{kind}: {:.0} % of the data resident after a read", after.fraction() * 100.0);
    if kind == BackendKind::QemuMicrovm || kind == BackendKind::QemuFull {
        assert_eq!(
            after.resident_bytes, 0,
            "{kind}: QEMU's cache.direct=on reads bypass the host page cache"
        );
    }
    let f = run_once(&guests[0].conn, &dreq, Duration::from_secs(60)).await.unwrap().instances[0]
        .figure();
    println!("{kind}: disk read {:.1} {}", f.value, f.unit);

    // Power off.
    let exits = futures::future::join_all(
        guests.into_iter().map(|g| g.shutdown(backend, Duration::from_secs(15))),
    )
    .await;
    for e in exits {
        assert!(same_exit(&e, &exp.exit), "{kind}: {e:?}");
    }

    // Nothing left: processes, cgroups, taps, work directories (UML umid dirs are inside).
    for p in &pids {
        assert!(!Path::new(&format!("/proc/{p}")).exists(), "{kind}: process {p} is left");
    }
    for d in &cgroup_dirs {
        assert!(!d.exists(), "{kind}: cgroup {} is left", d.display());
    }
    for w in &workdirs {
        assert!(!w.exists(), "{kind}: {} is left", w.display());
    }
    let links = std::process::Command::new("ip")
        .args(["-n", &fleet.netns, "-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("vbt"), "{kind}: taps left: {links}");
    fleet.destroy().unwrap();
    copies.remove().unwrap();
    let ns = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains(&fleet.netns), "{kind}: namespace left");
}

/// A disk sample records its backend's cache policy and that none of the data was in the
/// host page cache before the read.
pub fn assert_disk_sample(kind: BackendKind, samples: &[hostd::suite::BenchSample]) {
    assert_eq!(samples.len(), 1, "{kind}: one instance, one sample");
    let s = &samples[0];
    assert_eq!(s.cache_policy, hostd::datadisk::cache_policy(kind), "{kind}: {s:?}");
    assert_eq!(s.resident_before, Some(0.0), "{kind}: data resident before the read: {s:?}");
}

/// Serializes the heavy tests of one binary: TCG guests of two tests at once on a small
/// host only make both slow.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn backend(kind: BackendKind, images: &Images, opts: &BackendOptions) -> AnyBackend {
    AnyBackend::new(kind, images, opts)
}

/// Names of the entries of the temporary directory starting with `prefix`.
pub fn scratch_dirs(prefix: &str) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// `got` is `want`, counting a VMM that had already exited with status 0 by the time it was
/// stopped (after acknowledging the power-off) as a clean stop.
pub fn same_exit(got: &Exit, want: &Exit) -> bool {
    got == want || (*want == Exit::Clean && *got == Exit::Exited("exit status: 0".into()))
}
