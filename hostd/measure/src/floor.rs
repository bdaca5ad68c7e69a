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
    /// The backend.
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
    /// The floor started n at once, for each hot fleet size up to [`FLEET_MAX`] (ns, oci):
    /// the same concurrency as the fleet it is compared with.
    #[serde(default)]
    pub fleets: Vec<FloorFleet>,
}

/// n floors started together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorFleet {
    /// Floors started together.
    pub n: usize,
    /// How many of them said hello.
    pub ready: usize,
    /// Each floor's own launch → hello, seconds.
    pub own_s: Summary,
    /// The last hello after the common start, seconds.
    pub t_startup_s: f64,
}

/// Largest floor fleet: every floor keeps its `unshare` or `runc` process waiting beside the
/// agent, memory a real fleet does not spend.
pub const FLEET_MAX: usize = 1000;

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
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum FloorError {
    #[error(transparent)]
    Network(#[from] crate::netlab::NetError),
    #[error("floor boot: {0}")]
    FloorBoot(crate::guest::BootError),
    #[error("fleet-style boot: {0}")]
    FullBoot(crate::guest::BootError),
    #[error("no floor samples")]
    NoSamples,
    #[error("preparing the floor: no rootfs image")]
    NoRootfs,
    #[error("the floor's bundle: {0}")]
    Bundle(#[from] crate::backend::oci::FloorBundleError),
}

/// Measures `reps` interleaved pairs, then (ns, oci) a floor fleet of each of
/// `fleet_sizes` up to [`FLEET_MAX`]. None for the native backend (it is the floor).
pub async fn measure(
    kind: BackendKind,
    images: &Images,
    opts: &BackendOptions,
    run: &RunState,
    reps: usize,
    fleet_sizes: &[usize],
    timeout: Duration,
) -> Result<Option<Floor>, FloorError> {
    let floor_dir = run.scratch.join("floor-bundle");
    let Some((bare, what)) = floor_backend(kind, images, opts, run, &floor_dir)? else {
        return Ok(None);
    };
    let full = AnyBackend::new(kind, images, opts);
    let net = FleetNet::create(&run.run)?;
    let r = async {
        let spec = |i: usize, name: String, full: bool| GuestSpec {
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
        let (h, f) = pairs(&bare, &full, &spec, reps, timeout).await?;
        let pr = paired_ratio(&h, &f).ok_or(FloorError::NoSamples)?;
        let floor_s = Summary::of("floor", "s", f).ok_or(FloorError::NoSamples)?;
        let hostd_s = Summary::of("hostd", "s", h).ok_or(FloorError::NoSamples)?;
        let mut fleets = Vec::new();
        if matches!(kind, BackendKind::Ns | BackendKind::Oci) {
            for &n in fleet_sizes.iter().filter(|&&n| n > 1 && n <= FLEET_MAX) {
                fleets.extend(floor_fleet(&bare, &spec, n, timeout).await);
            }
        }
        Ok(Some(Floor {
            backend: kind,
            floor: what,
            ratio: pr.ratio,
            ratio_ci95: pr.ci95,
            floor_s,
            hostd_s,
            fleets,
        }))
    }
    .await;
    let _ = net.destroy();
    let _ = std::fs::remove_dir_all(&floor_dir);
    r
}

/// The backend that starts `kind`'s floor and what it is, in words; None for native.
fn floor_backend(
    kind: BackendKind,
    images: &Images,
    opts: &BackendOptions,
    run: &RunState,
    floor_dir: &std::path::Path,
) -> Result<Option<(AnyBackend, String)>, FloorError> {
    Ok(Some(match kind {
        BackendKind::Native => return Ok(None),
        BackendKind::Ns => {
            let rootfs = images
                .rootfs
                .clone()
                .ok_or(FloorError::NoRootfs)?;
            let w = Wrap::Unshare { rootfs };
            (
                AnyBackend::Native(Native::floor(images.agent.clone(), w)),
                "`unshare` of pid, mount, uts, ipc and net namespaces + chroot into the rootfs + exec of the agent (no veth, cgroup or data disk)".to_string(),
            )
        }
        BackendKind::Oci => {
            let w = Oci::new(images, opts).floor_bundle(floor_dir, &run.run)?;
            (
                AnyBackend::Native(Native::floor(images.agent.clone(), w)),
                "a bare foreground `runc run` of the same bundle, written beforehand (the template's own network namespace, no veth, limits or data disk)".to_string(),
            )
        }
        vm => (AnyBackend::new(vm, images, opts), format!("{vm}'s VMM with only kernel, initramfs and control channel (no network, disk or cgroup)")),
    }))
}

/// `reps` interleaved pairs after a warm-up pair: a floor start, then a fleet-style start
/// of the backend itself; each one's launch → hello, seconds (hostd's, the floor's).
async fn pairs(
    bare: &AnyBackend,
    full: &AnyBackend,
    spec: &dyn Fn(usize, String, bool) -> GuestSpec,
    reps: usize,
    timeout: Duration,
) -> Result<(Vec<f64>, Vec<f64>), FloorError> {
    let (mut f, mut h) = (Vec::new(), Vec::new());
    for i in 0..reps + 1 {
        let g = boot(bare, spec(i, format!("floor{i}"), false), timeout)
            .await
            .map_err(FloorError::FloorBoot)?;
        let fs = g.startup.as_secs_f64();
        g.shutdown(bare, Duration::from_secs(5)).await;
        let g = boot(full, spec(i, format!("full{i}"), true), timeout)
            .await
            .map_err(FloorError::FullBoot)?;
        let hs = g.startup.as_secs_f64();
        g.shutdown(full, Duration::from_secs(5)).await;
        // The first pair warms the page cache (these are hot starts).
        if i > 0 {
            f.push(fs);
            h.push(hs);
        }
    }
    Ok((h, f))
}

/// `n` floors started together: each one's own start and the last hello after the common
/// start; None when none came up.
async fn floor_fleet(
    bare: &AnyBackend,
    spec: &dyn Fn(usize, String, bool) -> GuestSpec,
    n: usize,
    timeout: Duration,
) -> Option<FloorFleet> {
    let t0 = std::time::Instant::now();
    let boots = (0..n).map(|i| {
        let spec = spec(i, format!("ff{n}-{i}"), false);
        async move { boot(bare, spec, timeout).await.map(|g| (g, t0.elapsed())) }
    });
    let done = futures::future::join_all(boots).await;
    let mut own = Vec::new();
    let mut last = Duration::ZERO;
    let mut up = Vec::new();
    for (g, at) in done.into_iter().flatten() {
        own.push(g.startup.as_secs_f64());
        last = last.max(at);
        up.push(g);
    }
    let ready = up.len();
    futures::future::join_all(up.into_iter().map(|g| g.shutdown(bare, Duration::from_secs(5))))
        .await;
    let own_s = Summary::of("floor_fleet", "s", own)?;
    Some(FloorFleet { n, ready, own_s, t_startup_s: last.as_secs_f64() })
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

/// A hot fleet of `n` against the floor: its guests' own starts (each guest's launch call
/// → hello, `own_s`) against the floor fleet of the same n started together where there is
/// one (the same competition for the CPUs), else against the single floor; unpaired. With a
/// floor fleet, `t_startup_s` (the fleet's) is set beside the floor fleet's. None without
/// samples on either side.
pub fn fleet_line(f: &Floor, n: usize, own_s: &[f64], t_startup_s: Option<f64>) -> Option<String> {
    let same_n = f.fleets.iter().find(|x| x.n == n);
    let (floor, what) = match same_n {
        Some(ff) => (&ff.own_s, format!("{} floors started together", ff.ready)),
        None => (&f.floor_s, "the single floor".to_string()),
    };
    let r = ratio(own_s, &floor.samples)?;
    let mean = own_s.iter().sum::<f64>() / own_s.len() as f64;
    let mut s = format!(
        "floor ({}): n={n} hot, each guest's own start (launch → hello) {mean:.4} s mean over {} guests vs {:.4} s for {what}: ratio {}",
        f.backend,
        own_s.len(),
        floor.mean,
        ratio_text(r.ratio, r.ci95)
    );
    if let Some(g) = goal(f.backend) {
        s.push_str(&format!(" (goal ≤ {g}: {})", verdict(r.ratio, r.ci95, g)));
    }
    if let (Some(ff), Some(t)) = (same_n, t_startup_s) {
        s.push_str(&format!(
            "; T_startup {t:.3} s vs {:.3} s for the floors: {:.2}×",
            ff.t_startup_s,
            t / ff.t_startup_s
        ));
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
