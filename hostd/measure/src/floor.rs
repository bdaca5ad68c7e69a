//! Startup floors: how close a backend's measured startup comes to the cheapest way of
//! starting the same thing with the same mechanism, measured in the same run. For ns the
//! floor is `unshare` of the same namespace set + `chroot` into the rootfs + exec of the
//! agent; for OCI containers a bare foreground `runc run` of the same bundle (written before
//! the timing); for VMs the same VMM and image with nothing else (no network, no data disk,
//! no cgroup). Both sides are hot starts, interleaved, timed from the launch request to the
//! agent's hello; the ratio of their means is given with its paired 95 % interval.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::native::{Native, Wrap};
use crate::backend::oci::Oci;
use crate::backend::{AnyBackend, BackendKind, BackendOptions, GuestNet, GuestSpec, Images};
use crate::cgroup;
use crate::guest::boot;
use crate::netlab::{self, FleetNet};
use crate::runstate::RunState;
use crate::stats::{paired_ratio, ratio, Summary};

/// A backend's hot start against its floor: both distributions and the ratio of means.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Floor {
    pub backend: BackendKind,
    /// What the floor is, in words.
    pub floor: String,
    /// Launch → hello of the floor, seconds.
    pub floor_s: Summary,
    /// Launch → hello of one guest the way fleets start it (network, cgroup, data disk).
    pub hostd_s: Summary,
    /// hostd_s mean ÷ floor_s mean.
    pub ratio: f64,
    /// The ratio's 95 % interval over the interleaved pairs ([`crate::stats::paired_ratio`]);
    /// None in older summaries and with a single pair.
    #[serde(default)]
    pub ratio_ci95: Option<[f64; 2]>,
}

/// The goal for a backend's hot start against its floor (ns 2×, oci 1.3×).
pub fn goal(kind: BackendKind) -> Option<f64> {
    match kind {
        BackendKind::Ns => Some(2.0),
        BackendKind::Oci => Some(1.3),
        _ => None,
    }
}

/// Whether a ratio with interval `ci` meets `goal`: "holds" when the whole interval is at
/// or below it, "fails" when all of it is above, "undecided" when the interval straddles it.
pub fn verdict(ratio: f64, ci: Option<[f64; 2]>, goal: f64) -> &'static str {
    match ci {
        Some([_, hi]) if hi <= goal => "holds",
        Some([lo, _]) if lo > goal => "fails",
        Some(_) => "undecided (the interval straddles it)",
        None if ratio <= goal => "holds (no interval)",
        None => "fails (no interval)",
    }
}

/// Why the floor could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error(transparent)]
    Network(#[from] crate::netlab::NetError),
    #[error("floor boot: {0}")]
    FloorBoot(crate::guest::BootError),
    #[error("fleet-style boot: {0}")]
    FullBoot(crate::guest::BootError),
    #[error("no floor samples")]
    NoSamples,
    #[error("preparing the floor: {0}")]
    Prepare(String),
}

/// Measures `reps` interleaved pairs. None for the native backend (it is the floor).
pub async fn measure(
    kind: BackendKind,
    images: &Images,
    opts: &BackendOptions,
    run: &RunState,
    reps: usize,
    timeout: Duration,
) -> Result<Option<Floor>, FloorError> {
    let floor_dir = run.scratch.join("floor-bundle");
    let (bare, what) = match kind {
        BackendKind::Native => return Ok(None),
        BackendKind::Ns => {
            let rootfs = images
                .rootfs
                .clone()
                .ok_or_else(|| FloorError::Prepare("no rootfs image".into()))?;
            let w = Wrap::Unshare { rootfs };
            (
                AnyBackend::Native(Native::floor(images.agent.clone(), w)),
                "`unshare` of pid, mount, uts, ipc and net namespaces + chroot into the rootfs + exec of the agent (no veth, cgroup or data disk)".to_string(),
            )
        }
        BackendKind::Oci => {
            let w = Oci::new(images, opts)
                .floor_bundle(&floor_dir, &run.run)
                .map_err(FloorError::Prepare)?;
            (
                AnyBackend::Native(Native::floor(images.agent.clone(), w)),
                "a bare foreground `runc run` of the same bundle, written beforehand (the template's own network namespace, no veth, limits or data disk)".to_string(),
            )
        }
        vm => (AnyBackend::new(vm, images, opts), format!("{vm}'s VMM with only kernel, initramfs and control channel (no network, disk or cgroup)")),
    };
    let full = AnyBackend::new(kind, images, opts);
    let net = FleetNet::create(&run.run)?;
    let r = async {
        let (mut f, mut h) = (Vec::new(), Vec::new());
        for i in 0..reps + 1 {
            let spec = |name: String, full: bool| GuestSpec {
                index: i,
                workdir: run.scratch.join(&name),
                name,
                run: run.run.clone(),
                vcpus: 1,
                mem_mib: 128,
                data_disk: if full { images.disk.clone() } else { None },
                net: full.then(|| GuestNet {
                    fleet: net.clone(),
                    addr: FleetNet::guest_addr(i).expect("small index"),
                    prefix: netlab::PREFIX,
                    link: netlab::link_name("vbl", i),
                }),
                cgroup: if full { cgroup::detect().ok() } else { None },
                limits: Default::default(),
                images: None,
            };
            let g = boot(&bare, spec(format!("floor{i}"), false), timeout)
                .await
                .map_err(FloorError::FloorBoot)?;
            let fs = g.startup.as_secs_f64();
            g.shutdown(&bare, Duration::from_secs(5)).await;
            let g = boot(&full, spec(format!("full{i}"), true), timeout)
                .await
                .map_err(FloorError::FullBoot)?;
            let hs = g.startup.as_secs_f64();
            g.shutdown(&full, Duration::from_secs(5)).await;
            // The first pair warms the page cache (these are hot starts).
            if i > 0 {
                f.push(fs);
                h.push(hs);
            }
        }
        let pr = paired_ratio(&h, &f).ok_or(FloorError::NoSamples)?;
        let floor_s = Summary::of("floor", "s", f).ok_or(FloorError::NoSamples)?;
        let hostd_s = Summary::of("hostd", "s", h).ok_or(FloorError::NoSamples)?;
        Ok(Some(Floor {
            backend: kind,
            floor: what,
            ratio: pr.ratio,
            ratio_ci95: pr.ci95,
            floor_s,
            hostd_s,
        }))
    }
    .await;
    let _ = net.destroy();
    let _ = std::fs::remove_dir_all(&floor_dir);
    r
}

/// "R [lo, hi]" or "R" alone.
fn ratio_text(r: f64, ci: Option<[f64; 2]>) -> String {
    match ci {
        Some([lo, hi]) => format!("{r:.2} [95 % CI {lo:.2}, {hi:.2}]"),
        None => format!("{r:.2}"),
    }
}

/// The floor in one line, for `hostd boot`'s table.
pub fn line(f: &Floor) -> String {
    let mut s = format!(
        "floor ({}): one {} guest's hot start {:.4} s ± {:.4} vs {:.4} s ± {:.4} for {} ({} interleaved pairs): ratio {}",
        f.backend,
        f.backend,
        f.hostd_s.mean,
        f.hostd_s.std_dev,
        f.floor_s.mean,
        f.floor_s.std_dev,
        f.floor,
        f.floor_s.samples.len(),
        ratio_text(f.ratio, f.ratio_ci95)
    );
    if let Some(g) = goal(f.backend) {
        s.push_str(&format!(" (goal ≤ {g}: {})", verdict(f.ratio, f.ratio_ci95, g)));
    }
    s
}

/// A hot fleet's guests' own starts (each guest's launch call → hello, `own_s`) against the
/// floor, unpaired; None without samples on either side.
pub fn fleet_line(f: &Floor, n: usize, own_s: &[f64]) -> Option<String> {
    let r = ratio(own_s, &f.floor_s.samples)?;
    let mean = own_s.iter().sum::<f64>() / own_s.len() as f64;
    let mut s = format!(
        "floor ({}): n={n} hot, each guest's own start (launch → hello) {mean:.4} s mean over {} guests vs the floor's {:.4} s: ratio {}",
        f.backend,
        own_s.len(),
        f.floor_s.mean,
        ratio_text(r.ratio, r.ci95)
    );
    if let Some(g) = goal(f.backend) {
        s.push_str(&format!(" (goal ≤ {g}: {})", verdict(r.ratio, r.ci95, g)));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_interval() {
        assert_eq!(verdict(1.5, Some([1.2, 1.8]), 2.0), "holds");
        assert_eq!(verdict(2.5, Some([2.1, 2.9]), 2.0), "fails");
        assert!(verdict(1.9, Some([1.5, 2.3]), 2.0).starts_with("undecided"));
        assert_eq!(verdict(1.1, None, 1.3), "holds (no interval)");
        assert_eq!(goal(BackendKind::Oci), Some(1.3));
        assert_eq!(goal(BackendKind::Uml), None);
    }
}
