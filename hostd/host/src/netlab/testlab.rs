//! Emulated hosts for tests of fleets across hosts (hostd-host's own and hostd's): network
//! namespaces joined by a bridge, so a fleet's per-host networks and their VXLAN segment
//! can be made on one machine. Only with the `test-lab` feature (and in this crate's
//! tests); it panics where a test would, on any failure to set the hosts up.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{ip, HostPlan};

/// Emulated hosts: network namespaces `<name>h<i>` whose `eth0` has 10.250.0.(11+i)/24, all
/// on bridge `br0` of namespace `<name>f` (the fabric). Every address exists only in these
/// namespaces; all are removed on drop.
pub struct Hosts {
    /// Each host's network namespace, by slot.
    pub names: Vec<String>,
    fabric: String,
}

impl Hosts {
    /// Makes `k` hosts whose namespaces are named after `name`.
    pub fn new(name: &str, k: usize) -> Hosts {
        let fabric = format!("{name}f");
        let names: Vec<String> = (0..k).map(|i| format!("{name}h{i}")).collect();
        let h = Hosts { names, fabric };
        let ip = |args: &[&str]| ip(args).unwrap_or_else(|e| panic!("{e}"));
        ip(&["netns", "add", &h.fabric]);
        ip(&["-n", &h.fabric, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &h.fabric, "link", "set", "br0", "up"]);
        for (i, n) in h.names.iter().enumerate() {
            ip(&["netns", "add", n]);
            let port = format!("p{i}");
            ip(&[
                "-n", n, "link", "add", "eth0", "type", "veth", "peer", &port, "netns", &h.fabric,
            ]);
            ip(&["-n", &h.fabric, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", n, "addr", "add", &format!("{}/24", Self::addr(i)), "dev", "eth0"]);
            ip(&["-n", n, "link", "set", "eth0", "up"]);
        }
        h
    }

    /// Host `i`'s underlay address.
    pub fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, 0, 11 + i as u8)
    }

    /// Host `slot`'s plan in a fleet over all of them.
    pub fn plan(&self, slot: usize, vni: u32) -> HostPlan {
        Self::plan_among(self.names.len(), slot, vni)
    }

    /// Host `slot`'s plan in a fleet over `hosts` such hosts (made or not), on VXLAN `vni`.
    pub fn plan_among(hosts: usize, slot: usize, vni: u32) -> HostPlan {
        HostPlan {
            slot: slot as u16,
            hosts: hosts as u16,
            vni,
            local: Self::addr(slot),
            underlay_dev: "eth0".into(),
            peers: (0..hosts).filter(|&h| h != slot).map(Self::addr).collect(),
        }
    }

    /// `f` on a thread inside host `i`'s network namespace.
    pub fn on<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from(crate::rtnl::NETNS_DIR).join(&self.names[i]);
        crate::rtnl::in_netns(&path, || Ok(f())).expect("entering the host's namespace")
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in self.names.iter().chain([&self.fabric]) {
            let _ = ip(&["netns", "del", n]);
        }
    }
}
