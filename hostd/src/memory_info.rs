//! Reading the host's memory accounting (/proc/meminfo, smaps_rollup).

/// A `Key:   123 kB` field of /proc/meminfo, in KiB.
pub fn meminfo_field(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_meminfo() {
        let m = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        assert_eq!(super::meminfo_field(m, "MemTotal"), Some(24576000));
        assert_eq!(super::meminfo_field(m, "MemFree"), Some(1000));
        assert_eq!(super::meminfo_field(m, "Mem"), None);
    }
}
