//! The multi-host test lab (issue 17, docs/multihost.md), in the normal test run: runs
//! `scripts/test-slurm-lab`, which lints the lab's scripts, brings up a Slurm cluster of 3
//! emulated hosts on this machine, gets the three host names from `srun -N3
//! --ntasks-per-node=1 hostname`, checks each host's CLOCK_MONOTONIC and CLOCK_BOOTTIME are the
//! machine's plus its configured offset, checks each host's /tmp, /run/virtbench and /run/netns
//! are its own, joins per-host fleet bridges by unicast VXLAN and pings across hosts, takes the
//! lab down with a job and a stray process still running, and fails on any namespace, process,
//! mount, link or directory left. About 7 s here. Needs root and the Slurm packages that
//! scripts/install-deps installs.

mod support {
    pub mod skip;
}

use std::path::Path;
use std::process::Command;

#[test]
fn slurm_lab_runs_jobs_on_every_host_and_leaves_nothing() {
    if !support::skip::unless_root(None, "the Slurm lab needs root (namespaces, mounts, daemons)") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-slurm-lab");
    let out = Command::new(&script)
        .arg("3")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        script.display(),
        out.status
    );
    assert!(
        stdout.contains("test-slurm-lab: passed"),
        "{} exited 0 without passing:\n{stdout}",
        script.display()
    );
}
