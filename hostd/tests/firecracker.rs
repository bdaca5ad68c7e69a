//! The `firecracker` backend. Where Firecracker and a working KVM exist, guests boot end
//! to end; elsewhere that test prints why it is skipped, and the rest still runs: the probe
//! must name what is missing, and the launch plumbing (config file, arguments, serial port
//! on stdin/stdout, fleet namespace, cgroup, teardown) is exercised with a stand-in VMM
//! that checks what Firecracker would be given and then runs the agent on the serial
//! socket. Config-file field names are unit-tested in the backend itself.

mod support {
    pub mod fault;
    pub mod skip;
    pub mod vm;
}

use std::path::Path;
use std::time::Duration;

use hostd::backend::firecracker::Firecracker;
use hostd::backend::{Backend, BackendKind, BackendOptions, Exit, Images};
use hostd::guest::boot;
use hostd::netlab::FleetNet;
use support::vm::{self, Expect};
use vb_protocol::msg::{Command, ReplyBody, Role};

fn skip(why: &str) {
    support::skip::skip(Some("firecracker"), why);
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// Without the binary the backend is unavailable and says exactly that.
#[tokio::test]
async fn probe_without_the_binary_is_unavailable() {
    let opts =
        BackendOptions { firecracker: "/nonexistent/bin/firecracker".into(), ..Default::default() };
    let e = Firecracker::new(&Images::default(), &opts).probe().await.unwrap_err();
    assert_eq!(e.backend, "firecracker");
    assert_eq!(e.reason.to_string(), "firecracker binary not found (/nonexistent/bin/firecracker)");
    // The default name, looked up on PATH.
    let r = Firecracker::new(&Images::default(), &BackendOptions::default()).probe().await;
    if on_path("firecracker") {
        println!("firecracker is on PATH; its probe says: {r:?}");
    } else {
        assert_eq!(r.unwrap_err().reason.to_string(), "firecracker binary not found (firecracker)");
    }
}

/// Real guests, where Firecracker and KVM work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_guests_on_a_fleet_network() {
    let Some(images) =
        vm::images_as_root(BackendKind::Firecracker, "firecracker fleet test needs root")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let backend = vm::backend(BackendKind::Firecracker, &images, &Default::default());
    match backend.probe().await {
        Ok(d) => println!("firecracker probe: {d}"),
        Err(e) => return skip(&e.to_string()),
    }
    let release = vm::kernel_release(&images.kernel_pv.as_ref().unwrap().path);
    // Clean: without ACPI the guest cannot power off, so the agent reboots (vb.poweroff=reboot)
    // and Firecracker exits on the i8042 reset that `reboot=k` performs.
    let exp = Expect {
        kind: BackendKind::Firecracker,
        disk: "/dev/vda".into(),
        kernel_release: release,
        exit: Exit::Clean,
    };
    vm::fleet_scenario(&backend, &exp, 3, dir.path(), "f").await;
}

/// A stand-in for the firecracker binary: checks its arguments, the config file, the log
/// file, that it runs in the fleet namespace (its tap is visible) and that stdin and stdout
/// are one socket; then becomes the agent on that socket. A failed check is written to the
/// log, which the boot error quotes.
fn stand_in(dir: &Path, agent: &Path) -> std::path::PathBuf {
    let script = format!(
        r#"#!/usr/bin/env python3
import json, os, stat, sys
a = sys.argv[1:]
def fail(msg):
    log = a[a.index("--log-path") + 1] if "--log-path" in a else None
    if log and os.path.exists(log):
        open(log, "a").write("stand-in: " + msg + "\n")
    sys.exit(3)
if a[:1] != ["--no-api"] or a[5:] != ["--log-path", a[6], "--level", "Warning"] or a[1] != "--config-file" or a[3] != "--id":
    fail("unexpected arguments %r" % a)
log = a[6]
if not os.path.isfile(log) or os.path.getsize(log) != 0:
    fail("log file must exist and be empty")
c = json.load(open(a[2]))
if sorted(c) != ["boot-source", "drives", "machine-config", "network-interfaces"]:
    fail("config keys %r" % sorted(c))
bs = c["boot-source"]
for k in ("kernel_image_path", "initrd_path"):
    if not os.path.isfile(bs[k]):
        fail("%s %s missing" % (k, bs[k]))
args = bs["boot_args"].split()
for w in ("vb.ctl=tty:/dev/ttyS0", "vb.hostname=" + a[4], "reboot=k", "loglevel=0"):
    if w not in args:
        fail("boot_args lack %s: %r" % (w, args))
if any(w.startswith("console=") for w in args):
    fail("the kernel console must stay off the serial port")
if c["drives"] != [dict(drive_id="data", path_on_host=c["drives"][0]["path_on_host"], is_root_device=False, is_read_only=True)]:
    fail("drives %r" % c["drives"])
nic = c["network-interfaces"][0]
if nic["host_dev_name"] not in open("/proc/self/net/dev").read():
    fail("tap %s not visible: not in the fleet namespace" % nic["host_dev_name"])
s0, s1 = os.fstat(0), os.fstat(1)
if not stat.S_ISSOCK(s0.st_mode) or (s0.st_dev, s0.st_ino) != (s1.st_dev, s1.st_ino):
    fail("stdin and stdout must be the same socket")
os.execv("{agent}", ["{agent}", "--ctl", "fd:0"])
"#,
        agent = agent.display()
    );
    let p = dir.join("firecracker");
    std::fs::write(&p, script).unwrap();
    std::process::Command::new("chmod").arg("755").arg(&p).status().unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_plumbing_with_a_stand_in_vmm() {
    if !vm::is_root() {
        return skip("firecracker plumbing test needs root (namespace, tap, cgroup)");
    }
    if !on_path("python3") {
        return skip("the stand-in VMM needs python3");
    }
    let dir = tempfile::tempdir().unwrap();
    let images = match vm::images(BackendKind::Firecracker, dir.path()) {
        Ok(i) => i,
        Err(e) => return skip(&e),
    };
    let fake = stand_in(dir.path(), &images.agent);
    let opts = BackendOptions { firecracker: fake.display().to_string(), ..Default::default() };
    let backend = vm::backend(BackendKind::Firecracker, &images, &opts);
    let run = vm::run_id("fs");
    let fleet = FleetNet::create(&run).unwrap();
    let _guard = vm::RunGuard { run: run.clone(), net: Some(fleet.clone()) };
    let disk = dir.path().join("disk.img");
    hostd::microbench::write_data_file(&disk, 1).unwrap();
    let spec = vm::spec(&run, 0, dir.path(), Some(&fleet), Some(&disk));
    let workdir = spec.workdir.clone();
    let g = boot(&backend, spec, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.hello.role, Role::Process);
    assert_eq!(g.hello.transport, "fd:0");
    let cg = g.process.cgroup.clone().expect("a cgroup");
    assert_eq!(cg.pids(), vec![g.process.pid()]);
    assert!(matches!(
        g.conn.request(Command::Ping, Duration::from_secs(5)).await.unwrap(),
        ReplyBody::Pong { .. }
    ));
    // The agent exits right after acknowledging: still a clean stop.
    assert_eq!(g.shutdown(&backend, Duration::from_secs(5)).await, Exit::Clean);
    for d in &cg.dirs {
        assert!(!d.exists(), "cgroup {} is left", d.display());
    }
    assert!(!workdir.exists(), "{} is left", workdir.display());
    let links = std::process::Command::new("ip")
        .args(["-n", &fleet.netns, "-o", "link", "show"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("vbt0"), "tap left");
    fleet.destroy().unwrap();
}
