//! The network benchmarks' far end: a native agent serving on the fleet bridge's address, in
//! the fleet's network namespace (the paper's netperf server on another host; here the host
//! side of the guests' network path).

use std::net::SocketAddr;
use std::time::Duration;

use vb_protocol::msg::{Command, ReplyBody};

use crate::backend::{AnyBackend, BackendKind, BackendOptions, GuestNet, GuestSpec, Images};
use crate::cgroup::{self, Limits};
use crate::guest::{boot, RunningGuest};
use crate::netlab::{self, FleetNet};
use crate::runstate::RunState;

/// Why the network peer did not start.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum PeerError {
    #[error("starting the network peer: {0}")]
    Boot(crate::guest::BootError),
    #[error("network peer answered net_serve with {0}")]
    Answer(String),
    #[error(transparent)]
    Network(#[from] crate::netlab::NetError),
}

/// Peers this process has launched (`hostd run`'s closing count of boots).
static LAUNCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many peers this process has launched so far.
pub fn launched() -> usize {
    LAUNCHED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The native agent serving the fleet's network benchmarks.
pub struct Peer {
    backend: AnyBackend,
    guest: RunningGuest,
    /// Where guests send their streams and requests.
    pub addr: SocketAddr,
}

impl Peer {
    /// Boots the peer (a native agent on the bridge's address, in the fleet's namespace)
    /// and has it listen; its address is [`Peer::addr`].
    pub async fn start(
        images: &Images,
        opts: &BackendOptions,
        run: &RunState,
        net: &FleetNet,
    ) -> Result<Self, PeerError> {
        let backend = AnyBackend::new(BackendKind::Native, images, opts);
        // This host's bridge: in a fleet across hosts, each host's peer is its own.
        let bridge = net.bridge_addr()?;
        let spec = GuestSpec {
            index: usize::MAX,
            name: "peer".into(),
            run: run.run.clone(),
            vcpus: 1,
            mem_mib: 64,
            data_disk: None,
            workdir: run.scratch.join("peer"),
            net: Some(GuestNet {
                fleet: net.shared(),
                addr: bridge,
                prefix: netlab::PREFIX,
                link: String::new(),
            }),
            cgroup: cgroup::detect().ok(),
            limits: Limits::default(),
            images: None,
        };
        LAUNCHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let guest = boot(&backend, spec, Duration::from_secs(30)).await.map_err(PeerError::Boot)?;
        let port = match guest
            .conn
            .request(Command::NetServe { port: 0 }, Duration::from_secs(10))
            .await
        {
            Ok(ReplyBody::Listening { port }) => port,
            other => {
                guest.shutdown(&backend, Duration::ZERO).await;
                return Err(PeerError::Answer(format!("{other:?}")));
            }
        };
        Ok(Peer { backend, guest, addr: SocketAddr::from((bridge, port)) })
    }

    /// Shuts the peer down (it holds no guest state worth waiting for).
    pub async fn stop(self) {
        self.guest.shutdown(&self.backend, Duration::from_secs(5)).await;
    }
}
