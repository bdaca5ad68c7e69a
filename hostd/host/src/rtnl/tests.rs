use super::*;
use std::process::Command;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace name of this test process that `ip netns del` removes on drop.
struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Needs root: namespaces, a bridge port veth to a named namespace and to a process's,
/// a tap, deletion, and each failure naming the operation and the kernel's reason.
#[test]
fn links_taps_and_namespaces_as_ip_makes_them() {
    if !nix::unistd::geteuid().is_root() {
        hostd_test_support::skip(None, "network namespaces need root");
        return;
    }
    let id = std::process::id();
    let (fleet, guest) = (Ns(format!("vbrt{id}f")), Ns(format!("vbrt{id}g")));
    add_netns(&fleet.0).unwrap();
    add_netns(&guest.0).unwrap();
    // iproute2 sees both, and a second add is refused by name.
    let list = ip(&["netns", "list"]);
    assert!(list.contains(&fleet.0) && list.contains(&guest.0), "{list}");
    let e = add_netns(&fleet.0).unwrap_err();
    assert!(e.to_string().contains(&format!("netns add {}", fleet.0)), "{e}");
    assert!(Path::new(NETNS_DIR).join(&fleet.0).exists(), "someone else's file kept");
    ip(&["-n", &fleet.0, "link", "add", "vbbr0", "type", "bridge"]);
    ip(&["-n", &fleet.0, "link", "set", "vbbr0", "up"]);

    add_veth(&fleet.0, "vbl0", "vbbr0", "eth0", &PeerNs::Named(guest.0.clone()), None).unwrap();
    let l = ip(&["-n", &fleet.0, "-o", "link", "show", "vbl0"]);
    assert!(l.contains("master vbbr0") && l.contains(",UP"), "{l}");
    assert!(ip(&["-n", &guest.0, "-o", "link", "show", "eth0"]).contains("eth0@"));

    // A veth into a process's namespace (a child in a namespace of its own).
    let mut child = Command::new("unshare").args(["-n", "sleep", "30"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // With an MTU: both ends get it.
    add_veth(&fleet.0, "vbl1", "vbbr0", "eth0", &PeerNs::Pid(child.id()), Some(1450)).unwrap();
    let here = ip(&["-n", &fleet.0, "-o", "link", "show", "vbl1"]);
    let out = Command::new("nsenter")
        .args(["-t", &child.id().to_string(), "-n", "ip", "-o", "link", "show", "eth0"])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(String::from_utf8_lossy(&out.stdout).contains("eth0@"), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("mtu 1450"), "{out:?}");
    assert!(here.contains("mtu 1450"), "{here}");
    // The guest's end has IPv6 off: no address of its own, so nothing it multicasts.
    let v6 = in_netns(&Path::new(NETNS_DIR).join(&guest.0), || {
        Ok(std::fs::read_to_string("/proc/sys/net/ipv6/conf/eth0/disable_ipv6")?)
    });
    if Path::new("/proc/sys/net/ipv6").exists() {
        assert_eq!(v6.unwrap().trim(), "1", "IPv6 on the guest's end");
    }

    add_tap(&fleet.0, "vbt0", "vbbr0", None).unwrap();
    let l = ip(&["-n", &fleet.0, "-d", "-o", "link", "show", "vbt0"]);
    assert!(l.contains("master vbbr0") && l.contains("tun type tap"), "{l}");
    assert!(l.contains("pi off"), "no packet information header: {l}");

    // Failures name the step and the kernel's reason.
    let e = add_tap(&fleet.0, "vbt0", "vbbr0", None).unwrap_err();
    assert!(e.to_string().contains("tuntap add vbt0"), "{e}");
    let e = add_veth(&fleet.0, "vbl0", "vbbr0", "eth1", &PeerNs::Named(guest.0.clone()), None)
        .unwrap_err();
    assert!(e.to_string().contains("link add vbl0") && e.to_string().contains("exists"), "{e}");
    let e = add_veth(&fleet.0, "vbl9", "nobr", "eth1", &PeerNs::Named(guest.0.clone()), None)
        .unwrap_err();
    assert!(e.is_no_device(), "{e}");

    del_link(&fleet.0, "vbl0").unwrap();
    del_link(&fleet.0, "vbt0").unwrap();
    assert!(del_link(&fleet.0, "vbl0").unwrap_err().is_no_device());
    let left = ip(&["-n", &fleet.0, "-o", "link", "show"]);
    assert!(!left.contains("vbl0") && !left.contains("vbt0"), "{left}");
    assert!(!ip(&["-n", &guest.0, "-o", "link", "show"]).contains("eth0"));
    assert!(add_netns("a/b").is_err());
}

/// Bad names are refused before anything is asked of the kernel, each by its own case and
/// naming the name; no root needed.
#[test]
fn bad_names_are_refused_by_name() {
    for name in ["", "sixteen-bytes-xx", "a\0b"] {
        let e = make_tap(name).unwrap_err();
        assert!(matches!(&e, RtnlCause::BadInterfaceName { name: n } if n == name), "{e:?}");
    }
    assert!(make_tap("sixteen-bytes-xx").unwrap_err().to_string().contains("sixteen-bytes-xx"));
    for name in ["", "a/b", ".", ".."] {
        let e = add_netns(name).unwrap_err();
        assert!(matches!(&e.source, RtnlCause::BadNamespaceName { name: n } if n == name), "{e:?}");
        assert!(e.to_string().contains(&format!("netns add {name}")), "{e}");
    }
}

/// An address no device holds is its own case, naming the address (a netlink dump needs no
/// privilege).
#[test]
fn no_device_with_an_unheld_address() {
    // TEST-NET-1: documentation only, never configured.
    let addr = std::net::Ipv4Addr::new(192, 0, 2, 77);
    let e = dev_with_addr(addr).unwrap_err();
    assert!(matches!(e.source, RtnlCause::NoDeviceWithAddress { addr: a } if a == addr), "{e:?}");
    assert!(e.to_string().contains("192.0.2.77"), "{e}");
    // And a loopback address is found on lo.
    assert_eq!(dev_with_addr(std::net::Ipv4Addr::LOCALHOST).unwrap(), "lo");
}

/// Entering a namespace that is not there is the OS's answer (ENOENT), not a panic.
#[test]
fn entering_a_missing_namespace_is_an_os_error() {
    let e = in_netns(Path::new("/run/netns/vb-no-such-namespace"), || Ok(())).unwrap_err();
    assert!(matches!(&e, RtnlCause::Os(o) if o.kind() == io::ErrorKind::NotFound), "{e:?}");
}
