//! The launch path's network operations without spawning a process: veth pairs, bridge
//! ports, taps and named network namespaces made through rtnetlink and the TUN ioctls, as
//! `ip link`, `ip tuntap` and `ip netns add` make them. Each `ip` exec costs milliseconds
//! (about 2.75 ms here) and sat inside the startup window of every guest; a netlink request
//! costs microseconds. Messages are built and parsed by `netlink-packet-route`, the crate
//! the rtnetlink stack uses; the socket is `netlink-sys`'s, used synchronously (one request,
//! its acknowledgement).
//!
//! A netlink socket and a TUN device act on the network namespace of the thread that made
//! them, so work inside a fleet namespace runs on a short-lived thread that entered it
//! ([`in_netns`]): the caller's thread (a tokio worker) never changes namespace. The one
//! exception is deliberate: a fleet's VXLAN device ([`add_vxlan`]) is requested on the
//! caller's thread, so that its UDP socket is in the caller's (the host's) namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeader, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

mod error;
mod netns;
use error::err;
pub use error::{RtnlCause, RtnlError};
pub use netns::{add_netns, del_netns};

/// Where named network namespaces live, as iproute2 keeps them.
pub const NETNS_DIR: &str = "/run/netns";

/// In the calling thread's network namespace: IPv6 off for every interface there and every
/// one made or moved in later (`net.ipv6.conf.{all,default}.disable_ipv6 = 1`); nothing to
/// do on a kernel without IPv6. Fleets address guests over IPv4 only, and an IPv6 interface
/// multicasts on its own as it comes up (duplicate address detection, router solicitations,
/// MLD reports) — each frame flooded by the bridge to every port. Measured here: 1000
/// namespaces on one bridge, IPv6 on, lost 840,000 frames to the full per-CPU backlog
/// (`/proc/net/softnet_stat`) while they were made and 63,000 a second while idle; IPv6 off,
/// none. At 5000 guests the storm left no room for ARP: no guest reached the next bridge.
fn ipv4_only() -> Result<(), RtnlCause> {
    for which in ["default", "all"] {
        let knob = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{which}/disable_ipv6"));
        match std::fs::write(&knob, b"1") {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            r => r.map_err(|source| RtnlCause::Sysctl { knob, source })?,
        }
    }
    Ok(())
}

/// Runs `f` on a new thread that has joined the network namespace at `path` (a file under
/// /run/netns); the namespace is left with the thread.
pub fn in_netns<T: Send>(
    path: &Path,
    f: impl FnOnce() -> Result<T, RtnlCause> + Send,
) -> Result<T, RtnlCause> {
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            f()
        })
        .join()
        .unwrap_or(Err(RtnlCause::ThreadPanicked))
    })
}

/// One request at a time on a route netlink socket of the current thread's namespace.
struct Conn {
    sock: Socket,
    seq: u32,
}

impl Conn {
    fn open() -> Result<Conn, RtnlCause> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Conn { sock, seq: 0 })
    }

    /// Sends `msg` with `flags` (plus request and ack) and returns the replies before the
    /// acknowledgement; a negative acknowledgement is the errno it carries.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlCause> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0; nl.header.length as usize];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    match reply.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out),
                                Some(code) => Err(io::Error::from_raw_os_error(-code.get()).into()),
                            };
                        }
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        NetlinkPayload::Done(_) => return Ok(out),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// The index of link `name`.
    fn index_of(&mut self, name: &str) -> Result<u32, RtnlCause> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        let replies = self.request(RouteNetlinkMessage::GetLink(m), 0)?;
        replies
            .into_iter()
            .find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV).into())
    }

    /// The first attribute `pick` takes from the link `m` asks for (by name or index).
    fn link_attr<T>(
        &mut self,
        m: LinkMessage,
        pick: impl Fn(LinkAttribute) -> Option<T>,
    ) -> Result<Option<T>, RtnlCause> {
        let replies = self.request(RouteNetlinkMessage::GetLink(m), 0)?;
        Ok(replies.into_iter().find_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(&pick),
            _ => None,
        }))
    }

    /// The MTU of link `name`.
    fn mtu_of(&mut self, name: &str) -> Result<u32, RtnlCause> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        self.link_attr(m, |a| match a {
            LinkAttribute::Mtu(m) => Some(m),
            _ => None,
        })?
        .ok_or_else(|| RtnlCause::NoMtu { link: name.into() })
    }

    /// Sets link `index`'s MTU.
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), RtnlCause> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(RouteNetlinkMessage::SetLink(m), 0).map(drop)
    }

    /// Puts link `index` on bridge `master` and sets it up.
    fn set_master_up(&mut self, index: u32, master: u32) -> Result<(), RtnlCause> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::Controller(master));
        self.request(RouteNetlinkMessage::SetLink(m), 0).map(drop)
    }
}

/// A new veth pair's message: `name` up on bridge `master`, its peer described by `peer`
/// (its name, and where it goes if not here); both ends with MTU `mtu` if given.
fn new_veth(name: &str, master: u32, peer: Vec<LinkAttribute>, mtu: Option<u32>) -> LinkMessage {
    let mut p = LinkMessage::default();
    p.attributes = peer;
    let mut m = LinkMessage::default();
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes = vec![LinkAttribute::IfName(name.into()), LinkAttribute::Controller(master)];
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
        p.attributes.push(LinkAttribute::Mtu(mtu));
    }
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
    ]));
    m
}

/// Where a veth pair's peer end goes.
#[derive(Debug, Clone)]
pub enum PeerNs {
    /// The network namespace of a process.
    Pid(u32),
    /// A named namespace under /run/netns, made by [`add_netns`] (IPv6 already off there).
    Named(String),
}

impl std::fmt::Display for PeerNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerNs::Pid(p) => write!(f, "netns of pid {p}"),
            PeerNs::Named(n) => write!(f, "netns {n}"),
        }
    }
}

/// In namespace `netns`: a veth pair, `name` up on bridge `bridge`, its peer `peer` in
/// `peer_ns` (down: the guest brings its end up), both ends with MTU `mtu` if given (else
/// the kernel's 1500). One request, as `ip link add NAME master BRIDGE up mtu MTU type veth
/// peer name PEER netns NS mtu MTU` would send.
pub fn add_veth(
    netns: &str,
    name: &str,
    bridge: &str,
    peer: &str,
    peer_ns: &PeerNs,
    mtu: Option<u32>,
) -> Result<(), RtnlError> {
    let what = format!(
        "in netns {netns}: link add {name} master {bridge} type veth peer {peer} in {peer_ns}"
    );
    // A named namespace is passed to the kernel by a descriptor, kept open until the request.
    let peer_path = match peer_ns {
        PeerNs::Pid(p) => PathBuf::from(format!("/proc/{p}/ns/net")),
        PeerNs::Named(n) => Path::new(NETNS_DIR).join(n),
    };
    // Before the peer moves in: it takes the namespace's defaults as it arrives. A named
    // namespace had them set by add_netns as it was made.
    if let PeerNs::Pid(_) = peer_ns {
        in_netns(&peer_path, ipv4_only).map_err(err(&what))?;
    }
    let (peer_attr, _peer_fd) = match peer_ns {
        PeerNs::Pid(p) => (LinkAttribute::NetNsPid(*p), None),
        PeerNs::Named(_) => {
            let f = File::open(&peer_path).map_err(err(&what))?;
            (LinkAttribute::NetNsFd(f.as_raw_fd()), Some(f))
        }
    };
    let path = Path::new(NETNS_DIR).join(netns);
    in_netns(&path, || {
        let mut c = Conn::open()?;
        let master = c.index_of(bridge)?;
        let m = new_veth(name, master, vec![LinkAttribute::IfName(peer.into()), peer_attr], mtu);
        c.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    })
    .map_err(err(what))
}

/// In namespace `netns`, unless link `bridge` exists: a bridge `bridge`, up, joined to bridge
/// `root` by a veth pair (`join` on `root`, `join_leaf` on the new bridge), so guests on
/// either reach each other as on one bridge. The kernel caps a bridge at 1,024 ports; a
/// fleet larger than one bridge holds is a tree of two levels. Ok(false): it existed.
pub fn add_leaf_bridge(
    netns: &str,
    bridge: &str,
    root: &str,
    join: &str,
    join_leaf: &str,
) -> Result<bool, RtnlError> {
    let what = format!("in netns {netns}: bridge {bridge} joined to {root} by {join}/{join_leaf}");
    let path = Path::new(NETNS_DIR).join(netns);
    in_netns(&path, || {
        let mut c = Conn::open()?;
        match c.index_of(bridge) {
            Ok(_) => return Ok(false),
            Err(e) if e.errno() == Some(libc::ENODEV) => {}
            Err(e) => return Err(e),
        }
        let mut b = LinkMessage::default();
        b.header.flags = LinkFlags::Up;
        b.header.change_mask = LinkFlags::Up;
        b.attributes = vec![
            LinkAttribute::IfName(bridge.into()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        c.request(RouteNetlinkMessage::NewLink(b), NLM_F_CREATE | NLM_F_EXCL)?;
        let (root_i, leaf_i) = (c.index_of(root)?, c.index_of(bridge)?);
        let m = new_veth(join, root_i, vec![LinkAttribute::IfName(join_leaf.into())], None);
        c.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)?;
        let leaf_end = c.index_of(join_leaf)?;
        c.set_master_up(leaf_end, leaf_i)?;
        Ok(true)
    })
    .map_err(err(what))
}

/// In namespace `netns`: a persistent tap `name` (no packet information header, as `ip
/// tuntap add mode tap` makes it), with MTU `mtu` if given, up on bridge `bridge`. The VMM
/// opens it by name later.
pub fn add_tap(netns: &str, name: &str, bridge: &str, mtu: Option<u32>) -> Result<(), RtnlError> {
    let what = format!("in netns {netns}: tuntap add {name} mode tap, master {bridge} up");
    let path = Path::new(NETNS_DIR).join(netns);
    in_netns(&path, || {
        make_tap(name)?;
        let mut c = Conn::open()?;
        let master = c.index_of(bridge)?;
        let index = c.index_of(name)?;
        if let Some(mtu) = mtu {
            c.set_mtu(index, mtu)?;
        }
        c.set_master_up(index, master)
    })
    .map_err(err(what))
}

/// The name of the device that holds IPv4 address `addr` in the calling thread's network
/// namespace (as `ip -o addr show to ADDR` finds it): a host's underlay device from its
/// underlay address.
pub fn dev_with_addr(addr: std::net::Ipv4Addr) -> Result<String, RtnlError> {
    let what = format!("addr show to {addr}");
    (|| {
        let mut c = Conn::open()?;
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let all = c.request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP)?;
        let want = std::net::IpAddr::V4(addr);
        let index = all
            .into_iter()
            .find_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a)
                    if a.attributes.iter().any(|x| {
                        matches!(x, AddressAttribute::Local(l) | AddressAttribute::Address(l)
                            if *l == want)
                    }) =>
                {
                    Some(a.header.index)
                }
                _ => None,
            })
            .ok_or(RtnlCause::NoDeviceWithAddress { addr })?;
        let mut l = LinkMessage::default();
        l.header.index = index;
        c.link_attr(l, |a| match a {
            LinkAttribute::IfName(n) => Some(n),
            _ => None,
        })?
        .ok_or_else(|| RtnlCause::Os(io::Error::from_raw_os_error(libc::ENODEV)))
    })()
    .map_err(err(what))
}

/// A VXLAN port of a fleet bridge: what `ip link add NAME type vxlan id VNI local LOCAL dev
/// DEV dstport PORT nolearning` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    /// The device's name (inside the fleet namespace).
    pub name: String,
    /// The VXLAN network identifier (24 bits).
    pub vni: u32,
    /// This host's address on the underlay: the outer packets' source.
    pub local: std::net::Ipv4Addr,
    /// The underlay device, in the caller's namespace.
    pub dev: String,
    /// The UDP port, at both ends.
    pub port: u16,
}

/// A VXLAN device whose UDP socket is in the calling thread's network namespace (the host's,
/// where its underlay `vx.dev` is) but which itself sits in namespace `netns`, up on bridge
/// `bridge`, with one static all-zeros forwarding entry per peer (`bridge fdb append
/// 00:00:00:00:00:00 dev NAME dst PEER self permanent`): broadcast and unknown unicast go once
/// to each peer, no multicast, no learning of remote endpoints. The bridge takes the VXLAN's
/// MTU (its underlay's less the 50 bytes of encapsulation), which is returned: guests' links
/// must not exceed it. The device is made in `netns` by the same request (IFLA_NET_NS_FD),
/// as `ip link add NAME netns NS type vxlan …` does: the kernel keeps its socket in the
/// requester's namespace, and it never exists in the caller's, so a failure leaves nothing
/// there; deleting `netns` deletes it.
pub fn add_vxlan(
    netns: &str,
    vx: &Vxlan,
    bridge: &str,
    peers: &[std::net::Ipv4Addr],
) -> Result<u32, RtnlError> {
    let what = format!(
        "link add {} netns {netns} type vxlan id {} local {} dev {} dstport {} nolearning",
        vx.name, vx.vni, vx.local, vx.dev, vx.port
    );
    let path = Path::new(NETNS_DIR).join(netns);
    let ns = File::open(&path).map_err(err(&what))?;
    // On the caller's thread: the socket, and so the device's UDP socket, is in its namespace.
    (|| {
        let mut c = Conn::open()?;
        let dev = c.index_of(&vx.dev)?;
        let mut m = LinkMessage::default();
        m.attributes = vec![
            LinkAttribute::IfName(vx.name.clone()),
            LinkAttribute::NetNsFd(ns.as_raw_fd()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(vx.vni),
                    InfoVxlan::Local(vx.local),
                    InfoVxlan::Link(dev),
                    InfoVxlan::Port(vx.port),
                    InfoVxlan::Learning(false),
                ])),
            ]),
        ];
        c.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    })()
    .map_err(err(&what))?;
    let what =
        format!("in netns {netns}: {} on bridge {bridge}, fdb entries to {peers:?}", vx.name);
    in_netns(&path, || {
        let mut c = Conn::open()?;
        let (index, master) = (c.index_of(&vx.name)?, c.index_of(bridge)?);
        let mtu = c.mtu_of(&vx.name)?;
        // Set on the bridge, not left to follow its smallest port: its own address (where
        // the network benchmarks' peer listens) then never sends more than the VXLAN carries.
        c.set_mtu(master, mtu)?;
        c.set_master_up(index, master)?;
        for peer in peers {
            let mut n = NeighbourMessage::default();
            n.header.family = AddressFamily::Bridge;
            n.header.ifindex = index;
            // NUD_NOARP | NUD_PERMANENT, NTF_SELF: what `bridge fdb append` sends by default.
            n.header.state = NeighbourState::Other(0x40 | 0x80);
            n.header.flags = NeighbourFlags::Own;
            n.attributes = vec![
                NeighbourAttribute::LinkLayerAddress(vec![0; 6]),
                NeighbourAttribute::Destination(NeighbourAddress::Inet(*peer)),
            ];
            c.request(RouteNetlinkMessage::NewNeighbour(n), NLM_F_CREATE | NLM_F_APPEND)?;
        }
        Ok(mtu)
    })
    .map_err(err(what))
}

/// `struct ifreq` as TUNSETIFF reads it: the name, the flags, and the union's rest.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

nix::ioctl_write_ptr_bad!(
    /// TUNSETIFF: makes or attaches the tap named in the request.
    tun_set_iff,
    TUNSETIFF,
    IfReq
);
nix::ioctl_write_int_bad!(
    /// TUNSETPERSIST: keeps the tap after its descriptor closes.
    tun_set_persist,
    TUNSETPERSIST
);
// _IOW('T', 202, int) and _IOW('T', 203, int), as linux/if_tun.h defines them.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN_EXCL: libc::c_int = 0x8000;

/// Creates persistent tap `name` in the current thread's network namespace.
fn make_tap(name: &str) -> Result<(), RtnlCause> {
    check_ifname(name)?;
    let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    for (d, s) in req.name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    // IFF_TUN_EXCL: an existing tap of that name is an error, not attached to (as ip's).
    req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | IFF_TUN_EXCL) as libc::c_short;
    // SAFETY: `tun` is an open /dev/net/tun descriptor and `req` a properly laid out,
    // NUL-terminated ifreq that lives across the call; the kernel only reads it.
    unsafe { tun_set_iff(tun.as_raw_fd(), &req) }.map_err(io::Error::from)?;
    // SAFETY: TUNSETPERSIST takes an int by value on the descriptor TUNSETIFF attached.
    unsafe { tun_set_persist(tun.as_raw_fd(), 1) }.map_err(io::Error::from)?;
    Ok(())
}

/// An interface name the kernel takes: 1 to IFNAMSIZ - 1 bytes, no NUL.
fn check_ifname(name: &str) -> Result<(), RtnlCause> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(RtnlCause::BadInterfaceName { name: name.into() });
    }
    Ok(())
}

/// In namespace `netns`: deletes link `name` (and a veth's peer with it).
pub fn del_link(netns: &str, name: &str) -> Result<(), RtnlError> {
    let what = format!("in netns {netns}: link del {name}");
    let path = Path::new(NETNS_DIR).join(netns);
    in_netns(&path, || {
        let mut c = Conn::open()?;
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        c.request(RouteNetlinkMessage::DelLink(m), 0).map(drop)
    })
    .map_err(err(what))
}

/// In namespace `netns`: loopback up, and a bridge `bridge` with MAC `mac` and address
/// `addr/prefix`, up — what `ip link set lo up; ip link add BRIDGE address MAC type bridge;
/// ip addr add ADDR/PREFIX dev BRIDGE; ip link set BRIDGE up` do, in one netlink socket.
pub fn add_fleet_bridge(
    netns: &str,
    bridge: &str,
    mac: [u8; 6],
    addr: std::net::Ipv4Addr,
    prefix: u8,
) -> Result<(), RtnlError> {
    let what = format!("in netns {netns}: bridge {bridge} with {addr}/{prefix}");
    let path = Path::new(NETNS_DIR).join(netns);
    in_netns(&path, || {
        // First: the bridge, and every port, tap, join and VXLAN made here later, IPv4 only.
        ipv4_only()?;
        let mut c = Conn::open()?;
        let lo = c.index_of("lo")?;
        let mut m = LinkMessage::default();
        m.header.index = lo;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        c.request(RouteNetlinkMessage::SetLink(m), 0)?;
        let mut b = LinkMessage::default();
        b.header.flags = LinkFlags::Up;
        b.header.change_mask = LinkFlags::Up;
        b.attributes = vec![
            LinkAttribute::IfName(bridge.into()),
            LinkAttribute::Address(mac.to_vec()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        c.request(RouteNetlinkMessage::NewLink(b), NLM_F_CREATE | NLM_F_EXCL)?;
        let index = c.index_of(bridge)?;
        let mut a = AddressMessage::default();
        a.header =
            AddressHeader { family: AddressFamily::Inet, prefix_len: prefix, index, ..a.header };
        a.attributes =
            vec![AddressAttribute::Local(addr.into()), AddressAttribute::Address(addr.into())];
        c.request(RouteNetlinkMessage::NewAddress(a), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    })
    .map_err(err(what))
}

#[cfg(test)]
mod tests;
