//! Startup floors: how close a backend's measured startup comes to the cheapest way of
//! starting the same thing. For namespaces and OCI containers the floor is a bare fork+exec
//! of the agent (the native backend: no namespaces, no cgroup); for VMs it is the same VMM
//! and image with nothing else (no network, no data disk, no cgroup). Both sides are hot
//! starts, interleaved, timed from the launch request to the agent's hello.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{AnyBackend, BackendKind, BackendOptions, GuestNet, GuestSpec, Images};
use crate::cgroup;
use crate::guest::boot;
use crate::netlab::{self, FleetNet};
use crate::runstate::RunState;
use crate::stats::Summary;

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
    let (floor_kind, what) = match kind {
        BackendKind::Native => return Ok(None),
        BackendKind::Ns | BackendKind::Oci => (BackendKind::Native, "a bare fork+exec of the agent (no namespaces, no cgroup)".to_string()),
        vm => (vm, format!("{vm}'s VMM with only kernel, initramfs and control channel (no network, disk or cgroup)")),
    };
    let full = AnyBackend::new(kind, images, opts);
    let bare = AnyBackend::new(floor_kind, images, opts);
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
        let floor_s = Summary::of("floor", "s", f).ok_or(FloorError::NoSamples)?;
        let hostd_s = Summary::of("hostd", "s", h).ok_or(FloorError::NoSamples)?;
        Ok(Some(Floor {
            backend: kind,
            floor: what,
            ratio: hostd_s.mean / floor_s.mean,
            floor_s,
            hostd_s,
        }))
    }
    .await;
    let _ = net.destroy();
    r
}

/// The floor in one line, for `hostd boot`'s table.
pub fn line(f: &Floor) -> String {
    format!(
        "floor ({}): {} hot start {:.4} s ± {:.4} vs {:.4} s ± {:.4} for {} ({} pairs): ratio {:.2}",
        f.backend,
        f.backend,
        f.hostd_s.mean,
        f.hostd_s.std_dev,
        f.floor_s.mean,
        f.floor_s.std_dev,
        f.floor,
        f.floor_s.samples.len(),
        f.ratio
    )
}
