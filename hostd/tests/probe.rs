//! `hostd probe`: every backend listed with whether it is available and why, and what
//! `hostd boot` then does agrees with it.

mod support {
    pub mod cli;
}

use hostd::backend::BackendKind;
use hostd::probe::ProbeReport;
use support::cli::{hostd, hot_boot};

fn probe_json(args: &[&str]) -> (ProbeReport, i32) {
    let out = hostd().arg("probe").arg("--json").args(args).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let r: ProbeReport = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("probe --json printed no report ({e}): {text}"));
    (r, out.status.code().unwrap_or(-1))
}

#[test]
fn probe_lists_every_backend_with_a_reason() {
    let (r, code) = probe_json(&[]);
    assert_eq!(code, 0, "probing all backends succeeds whatever is available");
    assert_eq!(r.schema_version, hostd::probe::SCHEMA_VERSION);
    let kinds: Vec<_> = r.backends.iter().map(|b| b.backend).collect();
    assert_eq!(kinds, BackendKind::ALL.to_vec());
    for b in &r.backends {
        assert!(!b.detail.trim().is_empty(), "{}: no detail", b.backend);
    }
    // The native backend needs only the agent; it is the reference every run measures.
    assert!(r.backends[0].available, "native: {}", r.backends[0].detail);
    assert!(r.host.cpus >= 1 && !r.host.kernel.is_empty());
    println!("{}", hostd::probe::table(&r));
}

/// For an available and an unavailable backend, `hostd boot` does what the probe said: the
/// one boots, the other stops with exit status 1 and the probe's reason.
#[test]
fn boot_agrees_with_probe() {
    let (r, code) = probe_json(&["--backend", "native,firecracker"]);
    let native = &r.backends[0];
    let fc = &r.backends[1];
    assert!(native.available, "{}", native.detail);
    assert_eq!(
        code,
        i32::from(!fc.available),
        "exit status: 1 exactly when a named backend is unavailable"
    );
    let dir = tempfile::tempdir().unwrap();
    let boot = |b: &str| {
        hot_boot(b, "1").arg("--no-network").arg("--results").arg(dir.path()).output().unwrap()
    };
    let out = boot("native");
    assert!(
        out.status.success(),
        "probe said native is available, boot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = boot("firecracker");
    let err = String::from_utf8_lossy(&out.stderr);
    if fc.available {
        // An ordinary KVM host with firecracker installed: then boot must work too.
        assert!(out.status.success(), "probe said firecracker is available, boot failed: {err}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&fc.detail),
            "boot's error does not give the probe's reason {:?}: {err}",
            fc.detail
        );
    }
}
