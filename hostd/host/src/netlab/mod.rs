//! The fleet's private network: one network namespace holding a bridge, with every guest
//! attached by a veth (namespaces, containers) or a tap (UML, QEMU, Firecracker). Guests reach
//! each other through the bridge and nothing else: the namespace has no uplink, so no guest
//! address is ever routed on the host. A fleet's namespace, bridge and each guest's link
//! (and a container's namespace) are made through rtnetlink and the TUN ioctls
//! ([`crate::rtnl`]), which spawn nothing inside the startup window.
//!
//! A fleet spanning several hosts is one such network per host ([`FleetNet::create_on_host`],
//! from a [`HostPlan`]): each host's root bridge has its own MAC and address by its slot,
//! and a VXLAN port whose UDP socket is on the host's underlay, with a static forwarding
//! entry to every other host, so all the hosts' bridges form one Ethernet segment. Guest
//! addresses come from the global guest index, so they are distinct across hosts.
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;

use serde::{Deserialize, Serialize};

mod plan;
pub use plan::{
    bridge_of, host_bridge_addr, host_bridge_mac, HostPlan, BRIDGE, BRIDGE_ADDR, BRIDGE_MAC,
    MAX_GUEST_INDEX, MAX_HOSTS, MAX_LEAF_BRIDGES, PORTS_PER_BRIDGE, PREFIX, VXLAN_DEV, VXLAN_PORT,
};
use plan::{BASE, BRIDGE_MAC_BYTES};

/// Why a fleet network operation failed: the `ip` command and what it said.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum NetError {
    #[error("`ip {args}` failed: {msg}")]
    Ip { args: String, msg: String },
    #[error("fleet network {0}: {1}")]
    Netns(String, io::Error),
    #[error(
        "guest index {0} does not fit in the fleet network (guests 0 to {MAX_GUEST_INDEX}: 10.211.0.2 to 10.211.251.255; \
         10.211.252.0/22 is kept for the bridges of a fleet's hosts; at most 25,000 on one host's bridges)"
    )]
    TooMany(usize),
    #[error("multi-host fleet plan: {0}")]
    Plan(String),
    #[error(transparent)]
    Link(#[from] crate::rtnl::RtnlError),
}

/// How a fleet's guests are attached to its network.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum NetMode {
    /// Each guest has a network stack of its own (a network namespace or a VM's kernel)
    /// linked to the fleet bridge by a veth pair or a tap: the guests' usual path.
    #[default]
    Private,
    /// Guests have no network stack of their own: they run in the fleet namespace itself,
    /// the stack the bridge and the network peer live in, as processes of a host without
    /// network virtualization (the paper's Vserver) share the host's. Traffic between them
    /// and to the peer is local (loopback). Only for backends without a kernel of their own.
    Shared,
}

crate::named_set! {
    /// The kind of path a network sample's traffic took between a guest and its far end.
    pub enum NetPath {
        /// The host's loopback: both ends in one network stack (the native second reference).
        #[serde(rename = "loopback")]
        Loopback,
        /// A guest network namespace's veth pair, over the fleet bridge.
        #[serde(rename = "veth+bridge")]
        VethBridge,
        /// A VM's virtual NIC backed by a tap (or Xen's vif) on the fleet bridge.
        #[serde(rename = "tap+bridge")]
        TapBridge,
        /// Guests sharing one network stack with each other and the peer (ns's Vserver-like
        /// mode): local traffic, as on loopback.
        #[serde(rename = "host-stack")]
        HostStack,
        /// A guest network namespace's veth pair over its host's fleet bridge, then VXLAN
        /// (encapsulated in UDP over the hosts' own link) to another host's bridge: a fleet
        /// across hosts, traffic between guests on different hosts (docs/multihost.md).
        #[serde(rename = "veth+bridge+vxlan")]
        VethBridgeVxlan,
        /// A VM's NIC and tap over its host's fleet bridge, then VXLAN to another host's
        /// bridge: a VM guest of a fleet across hosts to a guest on another host.
        #[serde(rename = "tap+bridge+vxlan")]
        TapBridgeVxlan,
    }
}

impl NetPath {
    /// The path's name in results and reports.
    pub fn name(self) -> &'static str {
        match self {
            NetPath::Loopback => "loopback",
            NetPath::VethBridge => "veth+bridge",
            NetPath::TapBridge => "tap+bridge",
            NetPath::HostStack => "host-stack",
            NetPath::VethBridgeVxlan => "veth+bridge+vxlan",
            NetPath::TapBridgeVxlan => "tap+bridge+vxlan",
        }
    }

    /// The same link continued over a VXLAN to another host (None: a path that cannot
    /// cross hosts, or one that already does).
    pub fn across_hosts(self) -> Option<NetPath> {
        match self {
            NetPath::VethBridge => Some(NetPath::VethBridgeVxlan),
            NetPath::TapBridge => Some(NetPath::TapBridgeVxlan),
            _ => None,
        }
    }

    /// Whether the path goes over a VXLAN to another host.
    pub fn crosses_hosts(self) -> bool {
        matches!(self, NetPath::VethBridgeVxlan | NetPath::TapBridgeVxlan)
    }

    /// Both ends in one network stack (no link, no bridge).
    pub fn is_local(self) -> bool {
        matches!(self, NetPath::Loopback | NetPath::HostStack)
    }
}

impl std::fmt::Display for NetPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The MTU of link `dev` in namespace `netns`, as `ip` reports it.
pub fn link_mtu(netns: &str, dev: &str) -> Result<u32, NetError> {
    let args = ["-n", netns, "-o", "link", "show", "dev", dev];
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Ip { args: args.join(" "), msg: format!("cannot run ip: {e}") })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(NetError::Ip {
            args: args.join(" "),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    parse_mtu(&text).ok_or_else(|| NetError::Ip {
        args: args.join(" "),
        msg: format!("no mtu in {:?}", text.trim()),
    })
}

fn parse_mtu(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// Kernel limits a fleet's one Ethernet segment runs into, each shared by every network
/// namespace and set only in the machine's own (`/proc/sys` there), with what a guest needs
/// of each. Past them the kernel drops silently and guests' connections time out.
/// - The per-CPU receive backlog (`net.core.netdev_max_backlog`, 1000): a bridge floods a
///   broadcast (ARP) by handing one copy to every port at once, each veth copy waits there,
///   and a leaf bridge's flood joins the root's in the same round: one copy per guest of
///   the segment, the rest lost. Measured here: 5000 ns guests on five bridges, no guest
///   of the root reached one of the first leaf (every ARP request lost there; 21,000
///   drops in `/proc/net/softnet_stat` for 3 pings); 1100 guests, a few connections lost.
/// - The neighbour (ARP) table's hard and soft limits (`gc_thresh3` 1024, `gc_thresh2`
///   512): each guest that talks to another holds an entry for it and its peer one back;
///   past them "neighbor table overflow!" and `sendmsg: No buffer space available` (seen
///   here in a fleet of 5000 with 1027 entries).
const KERNEL_KNOBS: [(&str, usize, usize); 3] = [
    // (knob, per guest, floor): two copies of a flood per guest; about eight peers per
    // guest (the reach check's one, a ring's two, the network benchmarks' peer, and
    // headroom), and half that before the kernel starts collecting.
    ("/proc/sys/net/core/netdev_max_backlog", 2, 1000),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh3", 8, 1024),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh2", 4, 512),
];

/// What [`kernel_room`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelRoom {
    /// The kernel already has room for the fleet.
    Enough,
    /// Raised: each knob with its old and new value (host-wide, and left so: other fleets
    /// may be running).
    Raised(Vec<(&'static str, u64, u64)>),
    /// Possibly or surely too small, and not raised from here: each knob that is.
    Short(Vec<ShortKnob>),
}

/// A kernel limit [`kernel_room`] could not make room in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortKnob {
    /// Its path under /proc/sys.
    pub knob: &'static str,
    /// What the fleet needs.
    pub want: u64,
    /// Why it was not raised.
    pub why: Unraised,
}

/// Why a kernel limit was not raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unraised {
    /// It is below the need, and writing it failed (not permitted).
    Refused {
        /// Its value.
        have: u64,
        /// The kernel's reason.
        error: String,
    },
    /// It does not exist in this network namespace: the knobs of [`KERNEL_KNOBS`] are the
    /// machine's initial namespace's alone (hostd runs in another, as in an emulated host
    /// of `scripts/slurm-lab`), so its value is unknown here. Only said when the fleet
    /// needs more than the kernel's default.
    Unseen,
}

/// Makes room in the kernel for `guests` guests of fleets on this host ([`KERNEL_KNOBS`]),
/// raising each limit that is lower than the fleet needs (as hostd raises its descriptor
/// limit); never lowers one.
pub fn kernel_room(guests: usize) -> KernelRoom {
    let mut raised = Vec::new();
    let mut short = Vec::new();
    for (knob, per_guest, floor) in KERNEL_KNOBS {
        let want = (guests * per_guest).max(floor) as u64;
        let have = std::fs::read_to_string(knob).ok().and_then(|t| t.trim().parse::<u64>().ok());
        match have {
            Some(have) if have >= want => {}
            Some(have) => match std::fs::write(knob, want.to_string()) {
                Ok(()) => raised.push((knob, have, want)),
                Err(e) => short.push(ShortKnob {
                    knob,
                    want,
                    why: Unraised::Refused { have, error: e.to_string() },
                }),
            },
            // Not the machine's initial namespace (the knob exists only there): its value
            // is unknown; the kernel's default is enough unless someone lowered it.
            None if want > floor as u64 => {
                short.push(ShortKnob { knob, want, why: Unraised::Unseen })
            }
            None => {}
        }
    }
    match (raised.is_empty(), short.is_empty()) {
        (_, false) => KernelRoom::Short(short),
        (false, true) => KernelRoom::Raised(raised),
        (true, true) => KernelRoom::Enough,
    }
}

/// A fleet network namespace. Serializable so a later hostd can remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetNet {
    /// The named network namespace (`ip netns`) holding the fleet's bridges and links.
    pub netns: String,
    /// How guests attach to it (a guest's spec carries the fleet's value; the network
    /// peer's says `shared`, as it always runs in the fleet namespace itself).
    #[serde(default)]
    pub mode: NetMode,
    /// This host's slot in a fleet across hosts (0 for a fleet on one host): its bridge's
    /// address is [`host_bridge_addr`] of it.
    #[serde(default)]
    pub slot: u16,
    /// The MTU every guest link gets, when not the kernel's 1500: a fleet across hosts's
    /// VXLAN carries 50 bytes less than its underlay, and a larger frame would be dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Runs `ip ARGS`, turning failure into an error carrying its stderr.
pub fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Ip { args: args.join(" "), msg: format!("cannot run ip: {e}") })?;
    if !out.status.success() {
        return Err(NetError::Ip {
            args: args.join(" "),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

impl FleetNet {
    /// The fleet namespace's name for run `run` (also how `hostd net` finds it).
    pub fn name_of(run: &str) -> String {
        format!("vb-{run}")
    }

    /// A network namespace named `netns`, with nothing more said about it (a guest's own,
    /// a container's, or a fleet's to remove).
    pub fn named(netns: impl Into<String>) -> Self {
        FleetNet { netns: netns.into(), mode: NetMode::Private, slot: 0, mtu: None }
    }

    /// Creates namespace `vb-<run>` with an up bridge and loopback.
    pub fn create(run: &str) -> Result<Self, NetError> {
        let net = Self::named(Self::name_of(run));
        net.make_bridge(BRIDGE_MAC_BYTES, BRIDGE_ADDR)?;
        Ok(net)
    }

    /// Makes the namespace and its root bridge with `mac` and `addr`; nothing is left if
    /// that fails.
    fn make_bridge(&self, mac: [u8; 6], addr: Ipv4Addr) -> Result<(), NetError> {
        // Through netlink, as every guest's link: no `ip` process.
        crate::rtnl::add_netns(&self.netns)?;
        // A fixed MAC: by default a bridge takes the lowest MAC among its ports, so a guest
        // joining later could change it under the others' ARP caches (their traffic to the
        // bridge address then vanished for tens of seconds).
        let r = crate::rtnl::add_fleet_bridge(&self.netns, BRIDGE, mac, addr, PREFIX);
        if let Err(e) = r {
            let _ = self.destroy();
            return Err(e.into());
        }
        Ok(())
    }

    /// This host's part of a fleet across hosts: namespace `vb-<run>` whose root bridge has
    /// the MAC and address of `plan.slot`, and a VXLAN port ([`VXLAN_DEV`], id `plan.vni`,
    /// UDP port [`VXLAN_PORT`], no learning) whose socket is in the calling thread's network
    /// namespace (the host's, where `plan.underlay_dev` is), with one static all-zeros
    /// forwarding entry per peer: broadcasts and unknown destinations go once to each other
    /// host, no multicast. The bridge and every guest link made later get the VXLAN's MTU
    /// (the underlay's less 50), so full-size frames are not dropped between hosts. If a
    /// step fails nothing is left (the VXLAN device only ever exists in the fleet namespace);
    /// [`FleetNet::destroy`] removes it all.
    pub fn create_on_host(run: &str, plan: &HostPlan) -> Result<Self, NetError> {
        plan.check()?;
        let (mac, addr) = (host_bridge_mac(plan.slot)?, host_bridge_addr(plan.slot)?);
        let mut net = FleetNet { slot: plan.slot, ..Self::named(Self::name_of(run)) };
        net.make_bridge(mac, addr)?;
        let vx = crate::rtnl::Vxlan {
            name: VXLAN_DEV.into(),
            vni: plan.vni,
            local: plan.local,
            dev: plan.underlay_dev.clone(),
            port: VXLAN_PORT,
        };
        match crate::rtnl::add_vxlan(&net.netns, &vx, BRIDGE, &plan.peers) {
            Ok(mtu) => net.mtu = Some(mtu),
            Err(e) => {
                let _ = net.destroy();
                return Err(e.into());
            }
        }
        Ok(net)
    }

    /// The root bridge's own address (where the network benchmarks' peer listens).
    pub fn bridge_addr(&self) -> Result<Ipv4Addr, NetError> {
        host_bridge_addr(self.slot)
    }

    /// The same network as seen by a guest that runs in the fleet namespace itself.
    pub fn shared(&self) -> Self {
        FleetNet { mode: NetMode::Shared, ..self.clone() }
    }

    /// The namespace's file under /run/netns (what `setns` opens).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// Deletes the namespace; every tap, veth end and the bridge inside go with it.
    pub fn destroy(&self) -> Result<(), NetError> {
        Ok(crate::rtnl::del_netns(&self.netns)?)
    }

    /// The address of guest `index` (its global index in a fleet across hosts).
    pub fn guest_addr(index: usize) -> Result<Ipv4Addr, NetError> {
        // .0.0 is the network, .0.1 the (slot 0) bridge, from HOSTS_FROM the other hosts'.
        if index > MAX_GUEST_INDEX {
            return Err(NetError::TooMany(index));
        }
        let host = index + 2;
        Ok(Ipv4Addr::new(BASE[0], BASE[1], (host >> 8) as u8, (host & 0xff) as u8))
    }

    /// The bridge for guest `index`, made (and joined to the root) if it is a leaf not made
    /// yet. Launches run concurrently: one at a time makes a leaf.
    fn bridge_for(&self, index: usize) -> Result<String, NetError> {
        let bridge = bridge_of(index);
        let k = index / PORTS_PER_BRIDGE;
        if k == 0 {
            return Ok(bridge);
        }
        if k > MAX_LEAF_BRIDGES {
            return Err(NetError::TooMany(index));
        }
        static LEAVES: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = LEAVES.lock().unwrap_or_else(|e| e.into_inner());
        let (join, leaf) = (format!("vbj{k}"), format!("vbjl{k}"));
        crate::rtnl::add_leaf_bridge(&self.netns, &bridge, BRIDGE, &join, &leaf)?;
        Ok(bridge)
    }

    /// A persistent tap `name` for guest `index`, up on its bridge ([`bridge_of`]), for a VMM
    /// that runs inside the namespace.
    pub fn add_tap(&self, name: &str, index: usize) -> Result<(), NetError> {
        let bridge = self.bridge_for(index)?;
        Ok(crate::rtnl::add_tap(&self.netns, name, &bridge, self.mtu)?)
    }

    /// A veth pair for guest `index`: `name` up on its bridge, its peer `eth0` in the network
    /// namespace of `pid`.
    pub fn add_veth(&self, name: &str, index: usize, pid: u32) -> Result<(), NetError> {
        let bridge = self.bridge_for(index)?;
        let peer = crate::rtnl::PeerNs::Pid(pid);
        Ok(crate::rtnl::add_veth(&self.netns, name, &bridge, "eth0", &peer, self.mtu)?)
    }

    /// A veth pair for guest `index`: `name` up on its bridge, its peer `eth0` in the named
    /// namespace `guest_netns`.
    pub fn add_veth_to_netns(
        &self,
        name: &str,
        index: usize,
        guest_netns: &str,
    ) -> Result<(), NetError> {
        let bridge = self.bridge_for(index)?;
        let peer = crate::rtnl::PeerNs::Named(guest_netns.into());
        Ok(crate::rtnl::add_veth(&self.netns, name, &bridge, "eth0", &peer, self.mtu)?)
    }

    /// Creates the named namespace `name` (a container's own), without spawning `ip`.
    pub fn add_netns(name: &str) -> Result<FleetNet, NetError> {
        crate::rtnl::add_netns(name)?;
        Ok(Self::named(name))
    }

    /// Deletes link `name` in this namespace; Ok if it is already gone (a veth whose peer's
    /// namespace died takes its other end with it).
    pub fn del_link(&self, name: &str) -> Result<(), NetError> {
        match crate::rtnl::del_link(&self.netns, name) {
            Err(e) if e.is_no_device() => Ok(()),
            r => Ok(r?),
        }
    }

    /// Opens the namespace for [`enter_in_child`].
    pub fn open(&self) -> Result<OwnedFd, NetError> {
        File::open(self.path())
            .map(OwnedFd::from)
            .map_err(|e| NetError::Netns(self.netns.clone(), e))
    }
}

/// Makes `cmd` start inside the network namespace `ns` (so a VMM can open its tap by name).
pub fn enter_in_child(cmd: &mut tokio::process::Command, ns: OwnedFd) {
    let fd = ns.as_raw_fd();
    // SAFETY: runs in the forked child before exec; setns(2) is async-signal-safe. `ns` is
    // moved into the closure so the descriptor stays open until the child has used it.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &ns;
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Host-side interface name of guest `index` (≤ 15 bytes, unique in the fleet namespace).
pub fn link_name(prefix: &str, index: usize) -> String {
    format!("{prefix}{index}")
}

#[cfg(any(test, feature = "test-lab"))]
pub mod testlab;
#[cfg(test)]
mod tests;
