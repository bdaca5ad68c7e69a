use super::*;

/// A memory record written before the checks existed.
const OLD: &str = r#"{"backend":"uml","n":2,"mode":"cold","ready":2,"used_before_kib":1000,"used_after_kib":3000,"m_used_kib":2000,"settle_s":1.0,"guests":[{"cgroup_kib":900,"pss_kib":800,"processes":3}],"hostd_pss_kib":5000}"#;

#[test]
fn older_memory_samples_still_read() {
    let m: MemorySample = serde_json::from_str(OLD).unwrap();
    assert_eq!(m.checks, MemoryChecks::default());
    assert_eq!((m.fleet_kib(), m.fleet_repeats_kib()), (2000, vec![2000]));
    assert!(!m.disagrees());
    assert_eq!(m.guests[0].cgroup_used_kib, None);
    // And a new one round-trips with its checks.
    let mut n = m.clone();
    n.checks = MemoryChecks {
        noise_kib: Some(10),
        scratch_tmpfs_kib: Some(300),
        m_used_repeats_kib: vec![2000, 2010],
        ..Default::default()
    };
    let back: MemorySample = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
    assert_eq!(back, n);
}

#[test]
fn scratch_is_apart_and_disagreement_needs_more_than_the_bound() {
    let mut m: MemorySample = serde_json::from_str(OLD).unwrap();
    m.checks = MemoryChecks {
        m_used_repeats_kib: vec![2000, 2100, 1900],
        noise_kib: Some(200),
        scratch_tmpfs_kib: Some(500),
        cross_check_kib: Some(1700),
        hostd_rss_before_kib: Some(10_000),
        hostd_rss_after_kib: Some(10_600),
        ..Default::default()
    };
    assert_eq!(m.fleet_kib(), 1500);
    assert_eq!(m.fleet_repeats_kib(), vec![1500, 1600, 1400]);
    assert_eq!(m.hostd_growth_kib(), Some(600));
    // |1500 − 1700| = 200: within the bound.
    assert!(!m.disagrees());
    m.checks.cross_check_kib = Some(1701);
    assert!(m.disagrees());
}
