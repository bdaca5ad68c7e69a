//! The fleet network's address plan: its bridges (the root and the leaves past
//! [`PORTS_PER_BRIDGE`] guests), the /16 its guests and hosts are numbered into, each host's
//! bridge MAC and address by its slot in a fleet across hosts, and [`HostPlan`], one host's
//! part of such a fleet.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::NetError;

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
pub(super) const BASE: [u8; 2] = [10, 211];
/// The bridge's own MAC (locally administered): a fleet on one host's, and slot 0's of a
/// fleet across hosts.
pub const BRIDGE_MAC: &str = "02:76:62:00:00:01";
/// [`BRIDGE_MAC`] as bytes (checked against it in the tests).
pub(super) const BRIDGE_MAC_BYTES: [u8; 6] = [0x02, 0x76, 0x62, 0x00, 0x00, 0x01];
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
/// [`FleetNet::create_on_host`](super::FleetNet::create_on_host) needs. The coordinator
/// makes one per host, with the same `hosts` and `vni` for all, each host's own `slot` and
/// `local`, and every other host's underlay address in `peers`.
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
