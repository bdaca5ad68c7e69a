//! The emulated network end to end (needs root, and the static agent for native guests):
//! `hostd up` with a `[net]` section, `hostd net NAME set/show/clear` on the running fleet,
//! and the campaign's accuracy step, whose measured throughput must show the configured
//! rate. All traffic stays inside the fleet namespace the run makes. No timing is asserted
//! beyond broad factors; the figures themselves go to docs/benchmarks.md.

mod support {
    pub mod cli;
    pub mod skip;
}

use support::cli::{fleet_file, guest_pids_in, hostd, run_hostd, serial, text};

use std::path::{Path, PathBuf};

fn root() -> bool {
    support::skip::unless_root(Some("native"), "fleet networks need root")
}

fn guest_pids(name: &str) -> Vec<u32> {
    guest_pids_in(&text(&run_hostd(&["status", name])))
}

/// Whether this kernel has netem, tried in a namespace of the test's own.
fn netem_here() -> bool {
    let ns = format!("vbt-nq{}", std::process::id());
    hostd::netlab::ip(&["netns", "add", &ns]).unwrap();
    let r = hostd::netem::netem_supported(&ns).unwrap();
    hostd::netlab::ip(&["netns", "del", &ns]).unwrap();
    r
}

#[test]
fn running_fleet_links_change_without_restarting_guests() {
    let _serial = serial();
    if !root() {
        return;
    }
    let f =
        fleet_file("nt", "backend = \"native\"\nguests = 3\n[net]\nlink = { rate_mbit = 20 }\n");
    let (name, dir) = (f.name.as_str(), &f.dir);
    let out = run_hostd(&["up", f.path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let pids = guest_pids(name);
    assert_eq!(pids.len(), 3);
    let r = std::panic::AssertUnwindSafe(|| {
        let show = text(&run_hostd(&["net", name, "show"]));
        assert!(show.contains("site all: guests 0..3 (3), 20 Mbit/s"), "{show}");
        for i in 0..3 {
            assert!(show.contains(&format!("qdisc htb 1: dev vbl{i} ")), "{show}");
            assert!(show.contains(&format!("qdisc htb 1: dev vbi{i} ")), "{show}");
        }
        assert!(show.contains("rate 20Mbit"), "{show}");
        // One guest changed while the fleet runs.
        let out = run_hostd(&["net", name, "set", "--rate-mbit", "40", "--guests", "1"]);
        assert!(out.status.success(), "{}", text(&out));
        let out = run_hostd(&["net", name, "show"]);
        let show = text(&out);
        assert!(show.contains("to guests [1]") && show.contains("rate 40Mbit"), "{show}");
        // Bad input is named, and nothing changes.
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[[site]]\nname = 'a'\nguests = 3\nlink = { rate_mbit = 0 }\n")
            .unwrap();
        let out = run_hostd(&["net", name, "set", "--file", bad.to_str().unwrap()]);
        let t = text(&out);
        assert!(!out.status.success() && t.contains("site a: link: rate_mbit = 0"), "{t}");
        let out = run_hostd(&["net", name, "set", "--rate-mbit", "10", "--guests", "7"]);
        assert!(text(&out).contains("no guest 7"), "{}", text(&out));
        // Delay: applied where the kernel has netem, refused by name where it does not.
        let out = run_hostd(&["net", name, "set", "--delay-ms", "5", "--jitter-ms", "1"]);
        if netem_here() {
            assert!(out.status.success(), "{}", text(&out));
            assert!(text(&run_hostd(&["net", name, "show"])).contains("netem"));
        } else {
            assert!(text(&out).contains("no netem qdisc"), "{}", text(&out));
        }
        let out = run_hostd(&["net", name, "clear"]);
        assert!(out.status.success(), "{}", text(&out));
        let show = text(&run_hostd(&["net", name, "show"]));
        assert!(
            !show.contains("htb") && !show.contains("vbi") && !show.contains("ingress"),
            "{show}"
        );
        // The same guests throughout.
        assert_eq!(guest_pids(name), pids);
    });
    let caught = std::panic::catch_unwind(r);
    let down = run_hostd(&["down", name]);
    assert!(down.status.success(), "{}", text(&down));
    if let Err(e) = caught {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn bad_net_sections_fail_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for (net, want) in [
        ("link = { delay_ms = -1 }", "link: delay_ms = -1"),
        ("[[net.site]]\nname = 'a'\nguests = 2", "sites hold 2 guests, the fleet has 3"),
        ("matrix_csv = 'absent.csv'", "absent.csv"),
    ] {
        let p = dir.path().join("f.toml");
        let body = if net.starts_with("[[") {
            format!("name = \"x\"\nbackend = \"native\"\nguests = 3\n{net}\n")
        } else {
            format!("name = \"x\"\nbackend = \"native\"\nguests = 3\n[net]\n{net}\n")
        };
        std::fs::write(&p, body).unwrap();
        let out = run_hostd(&["up", p.to_str().unwrap()]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(t.contains("field `net`") && t.contains(want), "{want}: {t}");
    }
}

fn only_dir(parent: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(parent).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(v.len(), 1, "{v:?}");
    v.pop().unwrap()
}

/// Runs a native-only campaign whose `[netem]` section is `netem`; returns its report's
/// rows and index.html.
fn accuracy_campaign(netem: &str) -> (Vec<serde_json::Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("results");
    let camp = dir.path().join("c.toml");
    std::fs::write(
        &camp,
        format!(
            "name = \"netem\"\nbackends = [\"native\"]\nresources = [\"network\"]\nreps = 2\n\
             warmup = 1\n[startup]\nsizes = [1]\nmodes = [\"hot\"]\n[overhead]\nsizes = [1]\n\
             [isolation]\nenabled = false\n[ring]\nguests = 0\n\
             [network]\nnative_loopback = false\n[netem]\nenabled = true\n{netem}\n"
        ),
    )
    .unwrap();
    let out = hostd().arg("run").arg(&camp).arg("--results").arg(&res).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("netem accuracy at n="), "{t}");
    let run = only_dir(&res);
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    let rows = rep["netem"].as_array().unwrap_or_else(|| panic!("{rep}")).clone();
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    (rows, html)
}

fn row<'a>(rows: &'a [serde_json::Value], metric: &str) -> &'a serde_json::Value {
    rows.iter().find(|r| r["metric"] == metric).unwrap_or_else(|| panic!("{rows:?}"))
}

/// Achieved against configured throughput, broadly: the shaper holds the stream near its
/// rate (goodput is ~4 % under it, the headers), well under the unshaped path.
fn assert_rate(rows: &[serde_json::Value], rate: f64) {
    let tp = row(rows, "throughput");
    assert_eq!(tp["configured"], rate, "{tp}");
    let achieved = tp["achieved"]["mean"].as_f64().unwrap();
    let base = tp["base"]["mean"].as_f64().unwrap();
    assert!((rate * 0.5..=rate * 1.15).contains(&achieved), "achieved {achieved} of {rate} Mbit/s");
    assert!(base > 2.0 * achieved, "unshaped {base} Mbit/s vs shaped {achieved}");
}

/// The accuracy step on native guests (each in a network namespace of its own on a veth
/// to the fleet bridge), n = 2 guests against the peer: 40 Mbit/s links give about that;
/// the report shows configured beside achieved.
#[test]
fn accuracy_step_measures_the_configured_rate() {
    let _serial = serial();
    if !root() {
        return;
    }
    let delay = if netem_here() { "delay_ms = 5, " } else { "" };
    let (rows, html) =
        accuracy_campaign(&format!("sizes = [2]\nlink = {{ {delay}rate_mbit = 40 }}"));
    assert_rate(&rows, 40.0);
    if !delay.is_empty() {
        let a = row(&rows, "rtt")["achieved"]["mean"].as_f64().unwrap();
        assert!((10.0..=10.0 * 3.0).contains(&a), "RTT {a} ms for 2 × 5 ms");
    } else {
        support::skip::skip(None, "no netem in this kernel: the RTT half is not checked");
    }
    assert!(html.contains("Emulated network accuracy") && html.contains("<svg"), "no section");
}

/// Between two sites of two guests: each guest streams to its counterpart in the other
/// site through its own 40 Mbit/s link and the 20 Mbit/s between the sites (classified on
/// destination in its ifb); the slower, 20, is what it gets.
#[test]
fn accuracy_step_between_sites_gets_the_matrix_rate() {
    let _serial = serial();
    if !root() {
        return;
    }
    let delay = if netem_here() { "delay_ms = 5, " } else { "" };
    let (rows, html) = accuracy_campaign(&format!(
        "sizes = [4]\nsites = 2\nlink = {{ rate_mbit = 40 }}\nbetween = {{ {delay}rate_mbit = 20 }}"
    ));
    assert_eq!(row(&rows, "throughput")["sites"], 2);
    assert_rate(&rows, 20.0);
    if !delay.is_empty() {
        let a = row(&rows, "rtt")["achieved"]["mean"].as_f64().unwrap();
        assert!((10.0..=10.0 * 3.0).contains(&a), "RTT {a} ms for 2 × 5 ms");
    } else {
        support::skip::skip(None, "no netem in this kernel: the RTT half is not checked");
    }
    assert!(html.contains("4 (2 sites)"), "no sites in the table");
}
