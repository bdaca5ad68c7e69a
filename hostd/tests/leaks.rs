//! Leaks (issue 6, fault 7): 500 launch/teardown cycles of ns guests, in this process
//! through the library, leave hostd's descriptors, threads, resident memory, and the run's
//! cgroups, network namespaces, links and mounts where they started. Also checks the
//! descriptor budget a fleet reserves per guest (`fleet::FDS_PER_GUEST`) against what a
//! running guest really holds. Alone in its binary so nothing else moves the counts.
//! `VB_LEAK_CYCLES` changes the number of cycles. Needs root and the images.

mod support {
    pub mod fault;
    pub mod skip;
}

use std::time::{Duration, Instant};

use hostd::backend::{AnyBackend, BackendKind};
use hostd::guest::boot;
use hostd::netlab::FleetNet;
use support::fault::*;
use vb_protocol::msg::{Command, ReplyBody};

#[derive(Debug, PartialEq)]
struct Counts {
    fds: usize,
    threads: u64,
    rss_kib: u64,
    cgroups: usize,
    netns: usize,
    links: usize,
    mounts: usize,
    zombies: usize,
}

/// The run's footprint (its cgroups, namespaces, links and mounts: others' come and go on a
/// shared host) and this process's.
fn counts(run: &str, net: &FleetNet, dir: &std::path::Path) -> Counts {
    let dir = dir.display().to_string();
    Counts {
        fds: fd_count(),
        threads: status_field("Threads:"),
        rss_kib: rss_kib(),
        cgroups: guest_cgroups_of(run).len(),
        netns: netns_of(run).len(),
        links: links_in(&net.netns, "vbl").len(),
        mounts: mountinfo().iter().filter(|m| m.contains(run) || m.contains(&dir)).count(),
        zombies: zombie_children().len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_guest_cycles_leak_nothing() {
    if !is_root() {
        return skip("the leak test needs root (namespaces, cgroups, veths)");
    }
    let cycles: usize =
        std::env::var("VB_LEAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let dir = tempfile::tempdir().unwrap();
    let images = hostd::images::resolve(None).unwrap();
    let backend = AnyBackend::new(BackendKind::Ns, &images, &Default::default());
    let run = run_id("lk");
    let _litter = Litter(run.clone());
    let net = FleetNet::create(&run).unwrap();
    let cycle = |i: usize| {
        let backend = &backend;
        let s = spec(&run, i % 50, dir.path(), Some(&net));
        async move {
            let g = boot(backend, s, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
            assert!(matches!(
                g.conn.request(Command::Ping, Duration::from_secs(5)).await,
                Ok(ReplyBody::Pong { .. })
            ));
            g.shutdown(backend, Duration::from_secs(2)).await;
        }
    };
    // Warm-up: runtime worker threads, allocator arenas and lazily made state settle.
    for i in 0..20 {
        cycle(i).await;
    }
    let before = counts(&run, &net, dir.path());
    let t0 = Instant::now();
    for i in 0..cycles {
        cycle(i).await;
    }
    let took = t0.elapsed();
    // Namespaces and links go asynchronously in the kernel: give them a moment.
    let mut after = counts(&run, &net, dir.path());
    for _ in 0..40 {
        if after.links == before.links && after.zombies == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = counts(&run, &net, dir.path());
    }
    println!(
        "{cycles} ns launch/teardown cycles in {:.1} s ({:.1} ms each)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e3 / cycles as f64
    );
    println!("before: {before:?}");
    println!("after:  {after:?}");
    assert_eq!(after.fds, before.fds, "descriptors leaked");
    assert_eq!(after.threads, before.threads, "threads leaked");
    assert_eq!(
        (after.cgroups, after.netns, after.links, after.mounts, after.zombies),
        (before.cgroups, before.netns, before.links, before.mounts, 0)
    );
    // Allocator noise only: a leak of even 1 KiB per cycle would show as 500 KiB and more.
    assert!(
        after.rss_kib < before.rss_kib + 4096,
        "resident memory grew from {} to {} KiB",
        before.rss_kib,
        after.rss_kib
    );

    // What each running guest costs hostd in descriptors, against the fleet's budget.
    let idle = fd_count();
    let mut guests = Vec::new();
    for i in 0..10 {
        guests.push(
            boot(&backend, spec(&run, i, dir.path(), Some(&net)), Duration::from_secs(10))
                .await
                .unwrap(),
        );
    }
    let per_guest = (fd_count() - idle) as f64 / 10.0;
    println!(
        "descriptors per running ns guest: {per_guest:.1} (budget {})",
        hostd::fleet::FDS_PER_GUEST
    );
    assert!(per_guest <= hostd::fleet::FDS_PER_GUEST as f64 / 2.0, "{per_guest}");
    for g in guests {
        g.shutdown(&backend, Duration::from_secs(2)).await;
    }
    net.destroy().unwrap();
}
