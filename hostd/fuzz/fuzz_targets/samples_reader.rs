//! Feeds arbitrary bytes to the results-directory reader as a `samples.jsonl`, in small and
//! whole reads, then builds the report from what it took in. Nothing may panic; every line
//! is accounted for once (a record, unreadable, or left out as implausible), however the
//! bytes arrive; every record taken in makes physical sense; and no figure of the report
//! built from them is NaN or infinite.
#![no_main]

use std::collections::BTreeMap;

use hostd::provenance::{HostInfo, Provenance};
use hostd::report;
use hostd::samples::Samples;
use libfuzzer_sys::fuzz_target;

/// A fixed provenance: the report would otherwise read this host's on every input.
fn provenance() -> Provenance {
    Provenance {
        artifacts: BTreeMap::new(),
        host: HostInfo {
            hostname: "fuzz".into(),
            kernel: "6.1".into(),
            cpu_model: "fuzz".into(),
            cpus: 2,
            mem_total_kib: 1 << 20,
        },
        git_revision: "fuzz".into(),
        hostd_version: "0".into(),
        date: "2026-11-01T00:00:00Z".into(),
        notes: Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    // Lines split across many refills of a 7-byte buffer, and read whole.
    let small = Samples::parse(std::io::BufReader::with_capacity(7, data))
        .expect("reading bytes cannot fail");
    let whole = Samples::parse(data).expect("reading bytes cannot fail");
    assert_eq!(
        (
            small.records.len(),
            small.unreadable,
            small.implausible,
            &small.rejected
        ),
        (
            whole.records.len(),
            whole.unreadable,
            whole.implausible,
            &whole.rejected
        ),
        "how the bytes arrive changed what was read"
    );
    let lines = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(|b| b.is_ascii_whitespace()))
        .count();
    assert_eq!(
        whole.records.len() + whole.unreadable + whole.implausible,
        lines,
        "every non-blank line counted once"
    );
    assert!(whole.rejected.len() <= Samples::KEEP_REJECTED.min(whole.implausible));
    for r in &whole.records {
        assert!(r.implausible().is_none(), "{r:?} taken in");
    }
    let rep = report::build_from(whole, Some(provenance()));
    let bad = rep.non_finite();
    assert!(bad.is_empty(), "figures that are not numbers: {bad:?}");
    let _ = (rep.data_points(), report::figures(&rep));
});
