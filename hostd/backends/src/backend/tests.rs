use super::*;

/// Callers may run launches on any worker thread (tokio::spawn): every backend's launch
/// future is Send (the enum's is only if each one's is).
#[test]
fn launch_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let spec = GuestSpec { mem_mib: 64, ..test_spec(false, false) };
    for kind in BackendKind::ALL {
        let b = AnyBackend::new(kind, &Images::default(), &BackendOptions::default());
        send(&b.launch(&spec));
    }
}

/// A guest spec for the VM backends' command-line tests: guest 1 of run r1, 2 vCPUs,
/// 192 MiB, optionally on the fleet network (10.211.0.3/16) and with a data disk whose
/// path holds a comma (which QEMU and xl must quote).
pub(crate) fn test_spec(net: bool, disk: bool) -> GuestSpec {
    GuestSpec {
        index: 1,
        name: "g1".into(),
        run: "r1".into(),
        vcpus: 2,
        mem_mib: 192,
        data_disk: disk.then(|| PathBuf::from("/store/disk,1.img")),
        workdir: PathBuf::from("/run/virtbench/r1/g1"),
        net: net.then(|| GuestNet {
            fleet: crate::netlab::FleetNet::named("vb-r1"),
            addr: Ipv4Addr::new(10, 211, 0, 3),
            prefix: 16,
            link: "vbl1".into(),
        }),
        cgroup: None,
        limits: Default::default(),
        images: None,
    }
}
