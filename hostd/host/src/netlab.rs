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

/// Bridge name inside the fleet namespace: the root bridge, which holds the bridge address
/// and the first [`PORTS_PER_BRIDGE`] guests ([`bridge_of`]).
pub const BRIDGE: &str = "vbbr0";
/// Guests on one bridge. The kernel caps a bridge at 1,024 ports (BR_MAX_PORTS); the root
/// bridge also holds one join port per leaf bridge, so guests from this index on go to leaf
/// bridges of this many each, every leaf joined to the root by a veth pair.
pub const PORTS_PER_BRIDGE: usize = 1000;
/// Leaf bridges the root has room to join (1,024 ports less its own guests).
pub const MAX_LEAF_BRIDGES: usize = 24;

/// The bridge guest `index` is on: the root for the first [`PORTS_PER_BRIDGE`], then leaf
/// `vbbr<k>` for each next block of as many.
pub fn bridge_of(index: usize) -> String {
    match index / PORTS_PER_BRIDGE {
        0 => BRIDGE.into(),
        k => format!("vbbr{k}"),
    }
}
/// Guests are numbered into 10.211.0.0/16 (inside the fleet namespace only).
pub const PREFIX: u8 = 16;
const BASE: [u8; 2] = [10, 211];
/// The bridge's own MAC (locally administered): a fleet on one host's, and slot 0's of a
/// fleet across hosts.
pub const BRIDGE_MAC: &str = "02:76:62:00:00:01";
/// [`BRIDGE_MAC`] as bytes (checked against it in the tests).
const BRIDGE_MAC_BYTES: [u8; 6] = [0x02, 0x76, 0x62, 0x00, 0x00, 0x01];
/// The bridge's own address: where a peer running in the fleet namespace itself (outside
/// any guest) is reached, e.g. the network benchmarks' host-side server. A fleet on one
/// host's, and slot 0's of a fleet across hosts ([`host_bridge_addr`] for the others).
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(BASE[0], BASE[1], 0, 1);
/// The first host part (of the /16) kept for the bridges of hosts 1.. of a fleet across
/// hosts: 10.211.252.0/22. Guest addresses stop below it.
const HOSTS_FROM: usize = 0xFC00;
/// Most hosts in one fleet: slot 0 on [`BRIDGE_ADDR`], slots 1..=1022 on 10.211.252.1 to
/// 10.211.255.254 (10.211.255.255 is the /16's broadcast address).
pub const MAX_HOSTS: u16 = 1023;
/// The guests' highest index: guest i is host part i + 2, below [`HOSTS_FROM`].
pub const MAX_GUEST_INDEX: usize = HOSTS_FROM - 3;
/// The VXLAN port's name inside a fleet namespace that spans hosts.
pub const VXLAN_DEV: &str = "vbvx0";
/// VXLAN's UDP port (IANA's), at every host.
pub const VXLAN_PORT: u16 = 4789;

/// The root bridge's address on the host in slot `slot` of a fleet across hosts: slot 0
/// keeps [`BRIDGE_ADDR`] (a fleet on one host is slot 0 of 1), the others take the range
/// kept for them at the top of the /16, which no guest address reaches.
pub fn host_bridge_addr(slot: u16) -> Result<Ipv4Addr, NetError> {
    if slot >= MAX_HOSTS {
        return Err(NetError::Plan(format!(
            "host slot {slot} is past the last ({})",
            MAX_HOSTS - 1
        )));
    }
    if slot == 0 {
        return Ok(BRIDGE_ADDR);
    }
    let host = HOSTS_FROM + slot as usize;
    Ok(Ipv4Addr::new(BASE[0], BASE[1], (host >> 8) as u8, (host & 0xff) as u8))
}

/// The root bridge's MAC on the host in slot `slot`: 02:76:62:00:HH:LL with HHLL = slot + 1,
/// so slot 0's is [`BRIDGE_MAC`]. Guests' MACs (the VMs', 02:76:62:d3:…) never take this
/// form; veths' and taps' are random.
pub fn host_bridge_mac(slot: u16) -> Result<[u8; 6], NetError> {
    host_bridge_addr(slot)?;
    let [hi, lo] = (slot + 1).to_be_bytes();
    Ok([0x02, 0x76, 0x62, 0x00, hi, lo])
}

/// One host's part of a fleet that spans hosts: what its worker is told, and all that
/// [`FleetNet::create_on_host`] needs. The coordinator makes one per host, with the same
/// `hosts` and `vni` for all, each host's own `slot` and `local`, and every other host's
/// underlay address in `peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    /// This host's place, 0..hosts: its bridge's MAC and address ([`host_bridge_addr`]).
    pub slot: u16,
    /// Hosts in the fleet (at most [`MAX_HOSTS`]).
    pub hosts: u16,
    /// The VXLAN network identifier (1..2^24), the same on every host. Two fleets on one
    /// host need different ones: the kernel refuses a second device with the same VNI and
    /// port in a namespace.
    pub vni: u32,
    /// This host's address on the underlay (the source of its VXLAN packets).
    pub local: Ipv4Addr,
    /// The underlay device (in the caller's network namespace) the VXLAN sends through;
    /// its MTU less 50 bytes is the fleet's MTU on this host.
    pub underlay_dev: String,
    /// Every other host's underlay address: one static forwarding entry each.
    pub peers: Vec<Ipv4Addr>,
}

impl HostPlan {
    /// The device holding `local` in the calling thread's network namespace: the
    /// `underlay_dev` of a host whose underlay address is `local` (a Slurm node's
    /// `NodeAddr`).
    pub fn underlay_dev_of(local: Ipv4Addr) -> Result<String, NetError> {
        Ok(crate::rtnl::dev_with_addr(local)?)
    }

    /// Checks the plan, naming the first thing wrong with it.
    pub fn check(&self) -> Result<(), NetError> {
        let bad = |m: String| Err(NetError::Plan(m));
        if self.hosts == 0 || self.hosts > MAX_HOSTS {
            return bad(format!("{} hosts: a fleet spans 1 to {MAX_HOSTS}", self.hosts));
        }
        if self.slot >= self.hosts {
            return bad(format!(
                "slot {} of {} hosts: slots are 0..{}",
                self.slot, self.hosts, self.hosts
            ));
        }
        if self.vni == 0 || self.vni >= 1 << 24 {
            return bad(format!("VNI {}: VXLAN identifiers are 1 to {}", self.vni, (1 << 24) - 1));
        }
        let d = &self.underlay_dev;
        if d.is_empty()
            || d.len() >= libc::IFNAMSIZ
            || d == "."
            || d == ".."
            || d.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            return bad(format!("underlay device {d:?} is not an interface name"));
        }
        let unicast = |a: &Ipv4Addr| !(a.is_unspecified() || a.is_multicast() || a.is_broadcast());
        if !unicast(&self.local) {
            return bad(format!("local address {} is not a unicast address", self.local));
        }
        if self.peers.len() >= self.hosts as usize {
            return bad(format!(
                "{} peers for {} hosts: at most one per other host",
                self.peers.len(),
                self.hosts
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if !unicast(p) {
                return bad(format!("peer {p} is not a unicast address"));
            }
            if *p == self.local {
                return bad(format!("peer {p} is this host's own address"));
            }
            if self.peers[..i].contains(p) {
                return bad(format!("peer {p} is listed twice"));
            }
        }
        Ok(())
    }

    /// This host's root bridge address.
    pub fn bridge_addr(&self) -> Result<Ipv4Addr, NetError> {
        host_bridge_addr(self.slot)
    }
}

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

/// The kind of path a network sample's traffic took between a guest and its far end.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
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
}

impl NetPath {
    /// The path's name in results and reports.
    pub fn name(self) -> &'static str {
        match self {
            NetPath::Loopback => "loopback",
            NetPath::VethBridge => "veth+bridge",
            NetPath::TapBridge => "tap+bridge",
            NetPath::HostStack => "host-stack",
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_from_ip_output() {
        let l = "5: vbl0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master vbbr0 state UP mode DEFAULT";
        assert_eq!(parse_mtu(l), Some(1500));
        assert_eq!(parse_mtu("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue"), Some(65536));
        assert_eq!(parse_mtu("1: lo: <LOOPBACK> qdisc noqueue"), None);
        assert_eq!(serde_json::to_string(&NetPath::VethBridge).unwrap(), "\"veth+bridge\"");
    }

    #[test]
    fn addresses() {
        assert_eq!(FleetNet::guest_addr(0).unwrap(), Ipv4Addr::new(10, 211, 0, 2));
        assert_eq!(FleetNet::guest_addr(300).unwrap(), Ipv4Addr::new(10, 211, 1, 46));
        assert!(FleetNet::guest_addr(70_000).is_err());
        // The last guest sits just below the hosts' range; the next is refused, saying why.
        let last = FleetNet::guest_addr(MAX_GUEST_INDEX).unwrap();
        assert_eq!(last, Ipv4Addr::new(10, 211, 251, 255));
        let e = FleetNet::guest_addr(MAX_GUEST_INDEX + 1).unwrap_err();
        assert!(matches!(e, NetError::TooMany(_)) && e.to_string().contains("kept for"), "{e}");
    }

    fn plan(slot: u16, hosts: u16) -> HostPlan {
        HostPlan {
            slot,
            hosts,
            vni: 4242,
            local: Ipv4Addr::new(10, 250, 0, 11 + slot as u8),
            underlay_dev: "eth0".into(),
            peers: (0..hosts)
                .filter(|&h| h != slot)
                .map(|h| Ipv4Addr::new(10, 250, 0, 11 + h as u8))
                .collect(),
        }
    }

    #[test]
    fn each_host_slot_has_its_own_bridge_address_and_mac_outside_the_guests() {
        // Slot 0 is the fleet on one host, unchanged.
        assert_eq!(host_bridge_addr(0).unwrap(), BRIDGE_ADDR);
        assert_eq!(host_bridge_addr(0).unwrap(), Ipv4Addr::new(10, 211, 0, 1));
        assert_eq!(host_bridge_mac(0).unwrap(), BRIDGE_MAC_BYTES);
        assert_eq!(host_bridge_addr(1).unwrap(), Ipv4Addr::new(10, 211, 252, 1));
        assert_eq!(host_bridge_mac(1).unwrap(), [0x02, 0x76, 0x62, 0, 0, 2]);
        assert_eq!(host_bridge_addr(MAX_HOSTS - 1).unwrap(), Ipv4Addr::new(10, 211, 255, 254));
        assert_eq!(host_bridge_mac(MAX_HOSTS - 1).unwrap(), [0x02, 0x76, 0x62, 0, 0x03, 0xff]);
        assert!(matches!(host_bridge_addr(MAX_HOSTS), Err(NetError::Plan(_))));
        assert!(host_bridge_mac(MAX_HOSTS).is_err());
        let mut addrs = std::collections::HashSet::new();
        let mut macs = std::collections::HashSet::new();
        let last_guest = u32::from(FleetNet::guest_addr(MAX_GUEST_INDEX).unwrap());
        for slot in 0..MAX_HOSTS {
            let (a, m) = (host_bridge_addr(slot).unwrap(), host_bridge_mac(slot).unwrap());
            assert!(addrs.insert(a) && macs.insert(m), "slot {slot}: {a} {m:?} taken");
            // Inside the /16, not its network or broadcast address, no guest's.
            let o = a.octets();
            assert_eq!(&o[..2], &BASE, "{a}");
            assert!(a != Ipv4Addr::new(10, 211, 0, 0) && a != Ipv4Addr::new(10, 211, 255, 255));
            assert!(slot == 0 || u32::from(a) > last_guest, "{a}");
            // Locally administered unicast, not a VM guest's 02:76:62:d3:… form.
            assert!(m[0] & 0b11 == 0b10 && m[3] != 0xd3, "{m:?}");
        }
        assert!(!addrs.contains(&FleetNet::guest_addr(0).unwrap()));
    }

    #[test]
    fn host_plans_are_checked_before_anything_is_made() {
        for slot in 0..3 {
            plan(slot, 3).check().unwrap();
        }
        plan(0, 1).check().unwrap();
        let refused = |p: HostPlan, what: &str| {
            let e = p.check().unwrap_err();
            assert!(matches!(e, NetError::Plan(_)) && e.to_string().contains(what), "{e}");
        };
        refused(HostPlan { slot: 3, ..plan(0, 3) }, "slot 3 of 3");
        refused(plan(0, 0), "0 hosts");
        refused(HostPlan { hosts: MAX_HOSTS + 1, ..plan(0, 2) }, "1024 hosts");
        refused(HostPlan { vni: 0, ..plan(0, 2) }, "VNI 0");
        refused(HostPlan { vni: 1 << 24, ..plan(0, 2) }, "VNI 16777216");
        refused(HostPlan { underlay_dev: "".into(), ..plan(0, 2) }, "interface name");
        refused(HostPlan { underlay_dev: "a/b".into(), ..plan(0, 2) }, "interface name");
        refused(HostPlan { underlay_dev: "x".repeat(16), ..plan(0, 2) }, "interface name");
        refused(HostPlan { local: Ipv4Addr::UNSPECIFIED, ..plan(0, 2) }, "local address");
        let mut p = plan(0, 3);
        p.peers.push(Ipv4Addr::new(10, 250, 0, 99));
        refused(p, "3 peers for 3 hosts");
        let mut p = plan(0, 3);
        p.peers[1] = p.peers[0];
        refused(p, "listed twice");
        let mut p = plan(1, 3);
        p.peers[0] = p.local;
        refused(p, "own address");
        let mut p = plan(0, 2);
        p.peers[0] = Ipv4Addr::new(239, 1, 1, 1);
        refused(p, "not a unicast");
        // It travels to workers as JSON and back unchanged.
        let p = plan(2, 3);
        assert_eq!(
            serde_json::from_str::<HostPlan>(&serde_json::to_string(&p).unwrap()).unwrap(),
            p
        );
        // An older FleetNet record (no slot, no MTU) still reads as a one-host fleet.
        let old: FleetNet = serde_json::from_str(r#"{"netns":"vb-x","mode":"private"}"#).unwrap();
        assert_eq!(old, FleetNet::named("vb-x"));
        assert_eq!(old.bridge_addr().unwrap(), BRIDGE_ADDR);
    }

    /// Needs root: a namespace with a bridge and a tap comes and goes without a trace.
    #[test]
    fn namespace_bridge_and_tap() {
        if !nix::unistd::geteuid().is_root() {
            hostd_test_support::skip(None, "network namespaces need root");
            return;
        }
        let net = FleetNet::create(&format!("t{}", std::process::id())).unwrap();
        net.add_tap("vbt0", 0).unwrap();
        let out = Command::new("ip")
            .args(["-n", &net.netns, "-o", "link", "show", "master", BRIDGE])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("vbt0"));
        // The bridge keeps its own MAC when ports join.
        let out = Command::new("ip")
            .args(["-n", &net.netns, "-o", "link", "show", BRIDGE])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(BRIDGE_MAC),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(link_mtu(&net.netns, "vbt0").unwrap(), 1500);
        assert_eq!(link_mtu(&net.netns, "lo").unwrap(), 65536);
        let e = net.add_tap("vbt0", 0).unwrap_err();
        assert!(e.to_string().contains("tuntap add vbt0"), "{e}");
        net.destroy().unwrap();
        assert!(!net.path().exists());
        net.destroy().unwrap();
    }

    /// Needs root: a guest past the root bridge's share goes on a leaf bridge joined to the
    /// root, and reaches a guest on the root bridge; past the last leaf is refused.
    #[test]
    fn the_fleet_namespace_and_bridge_are_made_through_netlink() {
        let hex: Vec<String> = BRIDGE_MAC_BYTES.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex.join(":"), BRIDGE_MAC);
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: network namespaces need root");
            return;
        }
        let net = FleetNet::create(&format!("fb{}", std::process::id())).unwrap();
        let show = |args: &[&str]| {
            let out = Command::new("ip").args(["-n", &net.netns]).args(args).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let (bridge, addr, lo) = (
            show(&["-d", "link", "show", BRIDGE]),
            show(&["-4", "addr", "show", BRIDGE]),
            show(&["link", "show", "lo"]),
        );
        net.destroy().unwrap();
        assert!(
            bridge.contains(BRIDGE_MAC) && bridge.contains("bridge") && bridge.contains("UP"),
            "{bridge}"
        );
        assert!(addr.contains(&format!("{BRIDGE_ADDR}/{PREFIX}")), "{addr}");
        assert!(lo.contains("UP"), "{lo}");
        assert!(!net.path().exists(), "the namespace's file is gone");
        net.destroy().unwrap();
    }

    #[test]
    fn guests_beyond_one_bridge_reach_each_other() {
        if !nix::unistd::geteuid().is_root() {
            hostd_test_support::skip(None, "network namespaces need root");
            return;
        }
        assert_eq!(bridge_of(999), BRIDGE);
        assert_eq!(bridge_of(1000), "vbbr1");
        assert_eq!(bridge_of(2500), "vbbr2");
        let id = std::process::id();
        let net = FleetNet::create(&format!("mb{id}")).unwrap();
        let guests = [(0usize, format!("vbmb{id}a")), (1500, format!("vbmb{id}b"))];
        let run = |args: &[&str]| {
            let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
            (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let r = (|| {
            for (i, g) in &guests {
                FleetNet::add_netns(g)?;
                net.add_veth_to_netns(&link_name("vbl", *i), *i, g)?;
                let addr = format!("{}/{PREFIX}", FleetNet::guest_addr(*i)?);
                ip(&["-n", g, "addr", "add", &addr, "dev", "eth0"])?;
                ip(&["-n", g, "link", "set", "eth0", "up"])?;
            }
            Ok::<_, NetError>(())
        })();
        let (_, leaf) = run(&["ip", "-n", &net.netns, "-o", "link", "show", "master", "vbbr1"]);
        let (_, root) = run(&["ip", "-n", &net.netns, "-o", "link", "show", "master", BRIDGE]);
        let far = FleetNet::guest_addr(1500).unwrap().to_string();
        let (pinged, _) =
            run(&["ip", "netns", "exec", &guests[0].1, "ping", "-c", "1", "-W", "5", &far]);
        let too_many = net.add_tap("vbt9", PORTS_PER_BRIDGE * (MAX_LEAF_BRIDGES + 1));
        for (_, g) in &guests {
            let _ = ip(&["netns", "del", g]);
        }
        net.destroy().unwrap();
        r.unwrap();
        assert!(leaf.contains("vbl1500") && leaf.contains("vbjl1"), "{leaf}");
        assert!(root.contains("vbl0") && root.contains("vbj1") && !root.contains("vbl1500"));
        assert!(pinged, "guest 0 on the root bridge did not reach guest 1500 on a leaf");
        assert!(matches!(too_many, Err(NetError::TooMany(_))), "{too_many:?}");
    }

    /// Emulated hosts for the tests: network namespaces `<name>h<i>` whose `eth0` has
    /// 10.250.0.(11+i)/24, all on bridge `br0` of namespace `<name>f` (the fabric). Every
    /// address exists only in these namespaces; all are removed on drop.
    pub(crate) struct Hosts {
        pub(crate) names: Vec<String>,
        fabric: String,
    }

    impl Hosts {
        pub(crate) fn new(name: &str, k: u8) -> Hosts {
            let fabric = format!("{name}f");
            let names: Vec<String> = (0..k).map(|i| format!("{name}h{i}")).collect();
            let h = Hosts { names, fabric };
            ip(&["netns", "add", &h.fabric]).unwrap();
            ip(&["-n", &h.fabric, "link", "add", "br0", "type", "bridge"]).unwrap();
            ip(&["-n", &h.fabric, "link", "set", "br0", "up"]).unwrap();
            for (i, n) in h.names.iter().enumerate() {
                ip(&["netns", "add", n]).unwrap();
                let port = format!("p{i}");
                ip(&[
                    "-n", n, "link", "add", "eth0", "type", "veth", "peer", &port, "netns",
                    &h.fabric,
                ])
                .unwrap();
                ip(&["-n", &h.fabric, "link", "set", &port, "master", "br0", "up"]).unwrap();
                ip(&["-n", n, "addr", "add", &format!("{}/24", Self::addr(i)), "dev", "eth0"])
                    .unwrap();
                ip(&["-n", n, "link", "set", "eth0", "up"]).unwrap();
            }
            h
        }

        pub(crate) fn addr(i: usize) -> Ipv4Addr {
            Ipv4Addr::new(10, 250, 0, 11 + i as u8)
        }

        /// Host `slot`'s plan in a fleet over all of them.
        pub(crate) fn plan(&self, slot: usize, vni: u32) -> HostPlan {
            HostPlan {
                slot: slot as u16,
                hosts: self.names.len() as u16,
                vni,
                local: Self::addr(slot),
                underlay_dev: "eth0".into(),
                peers: (0..self.names.len()).filter(|&h| h != slot).map(Self::addr).collect(),
            }
        }

        /// `f` on a thread inside host `i`'s network namespace.
        pub(crate) fn on<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
            let path = PathBuf::from(crate::rtnl::NETNS_DIR).join(&self.names[i]);
            crate::rtnl::in_netns(&path, || Ok(f())).unwrap()
        }
    }

    impl Drop for Hosts {
        fn drop(&mut self) {
            for n in self.names.iter().chain([&self.fabric]) {
                let _ = ip(&["netns", "del", n]);
            }
        }
    }

    /// Needs root: three hosts' fleet networks on one VXLAN segment: each bridge with its
    /// slot's MAC, address and the VXLAN's MTU, the VXLAN's socket on the host's underlay,
    /// one forwarding entry per peer; the bridges reach each other with full-size frames
    /// that may not be fragmented; a plan the kernel refuses leaves nothing behind.
    #[test]
    fn fleet_networks_of_three_hosts_form_one_segment_over_vxlan() {
        if !hostd_test_support::unless_root(None, "network namespaces need root") {
            return;
        }
        let id = std::process::id();
        let hosts = Hosts::new(&format!("vbvx{id}"), 3);
        let vni = 100_000 + id % 1000;
        // The underlay device is found from the host's address, in the host's namespace.
        assert_eq!(hosts.on(1, || HostPlan::underlay_dev_of(Hosts::addr(1))).unwrap(), "eth0");
        let e = hosts.on(1, || HostPlan::underlay_dev_of(Hosts::addr(2))).unwrap_err();
        assert!(e.to_string().contains("addr show to 10.250.0.13"), "{e}");
        let nets: Vec<FleetNet> = (0..3)
            .map(|i| {
                let plan = hosts.plan(i, vni);
                hosts.on(i, || FleetNet::create_on_host(&format!("vx{id}-{i}"), &plan)).unwrap()
            })
            .collect();
        let show = |ns: &str, args: &[&str]| {
            let out = Command::new(args[0]).args(["-n", ns]).args(&args[1..]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let r = std::panic::catch_unwind(|| {
            for (i, net) in nets.iter().enumerate() {
                assert_eq!((net.slot, net.mtu), (i as u16, Some(1450)));
                let mac = host_bridge_mac(i as u16).unwrap().map(|b| format!("{b:02x}")).join(":");
                let br = show(&net.netns, &["ip", "-d", "link", "show", BRIDGE]);
                assert!(br.contains(&mac) && br.contains("mtu 1450"), "{br}");
                let a = show(&net.netns, &["ip", "-4", "addr", "show", BRIDGE]);
                assert!(a.contains(&format!("{}/16", net.bridge_addr().unwrap())), "{a}");
                let vx = show(&net.netns, &["ip", "-d", "link", "show", VXLAN_DEV]);
                assert!(vx.contains(&format!("master {BRIDGE}")) && vx.contains(",UP"), "{vx}");
                assert!(vx.contains(&format!("vxlan id {vni} local {}", Hosts::addr(i))), "{vx}");
                assert!(vx.contains("dstport 4789") && vx.contains("nolearning"), "{vx}");
                assert!(vx.contains(&format!("link-netns {}", hosts.names[i])), "{vx}");
                let fdb = show(&net.netns, &["bridge", "fdb", "show", "dev", VXLAN_DEV]);
                for j in (0..3).filter(|&j| j != i) {
                    let e = format!("00:00:00:00:00:00 dst {} ", Hosts::addr(j));
                    let line = fdb.lines().find(|l| l.starts_with(&e));
                    assert!(line.is_some_and(|l| l.ends_with("self permanent")), "host {i}: {fdb}");
                }
                // Nothing of the fleet in the host's own namespace.
                let h = show(&hosts.names[i], &["ip", "-o", "link", "show"]);
                assert!(!h.contains("vxlan") && !h.contains(VXLAN_DEV), "{h}");
                for (j, other) in nets.iter().enumerate().filter(|(j, _)| *j != i) {
                    let to = other.bridge_addr().unwrap().to_string();
                    // 1422 bytes of payload + 28 of headers: a 1450-byte packet, DF set.
                    let out = Command::new("ip")
                        .args(["netns", "exec", &net.netns, "ping", "-c", "1", "-W", "5"])
                        .args(["-M", "do", "-s", "1422", &to])
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "host {i} → host {j} ({to}): {out:?}");
                }
            }
        });
        for n in &nets {
            n.destroy().unwrap();
        }
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
        // The kernel refuses a device that is not there: nothing is left.
        let bad = HostPlan { underlay_dev: "nosuchdev".into(), ..hosts.plan(0, vni + 1) };
        let run = format!("vx{id}-bad");
        let e = hosts.on(0, || FleetNet::create_on_host(&run, &bad)).unwrap_err();
        assert!(e.to_string().contains("type vxlan") && e.to_string().contains("nosuchdev"), "{e}");
        assert!(!FleetNet::named(FleetNet::name_of(&run)).path().exists());
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(!list.contains(&format!("vb-vx{id}-")), "{list}");
    }
}
