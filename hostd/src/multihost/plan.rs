//! Pure arithmetic of a multi-host fleet: splitting n guests (or several groups of guests)
//! over hosts, and merging the hosts' startups into one T_startup.

use serde::{Deserialize, Serialize};

use crate::backend::rootdisk::InitMode;
use crate::backend::BackendKind;

/// One group of a fleet across hosts: guests `first..first + guests`, numbered as on one
/// machine (in the fleet file's order, across groups).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetGroup {
    /// The fleet file's group name (the backend's name for a file without groups).
    pub name: String,
    pub backend: BackendKind,
    pub first: usize,
    pub guests: usize,
    pub mem_mib: u32,
    pub vcpus: u32,
    /// The system image its guests boot, and who is their PID 1 (None: the agent's own).
    pub system: Option<(String, InitMode)>,
}

impl FleetGroup {
    /// The one group of a fleet of `guests` guests of `backend` (`boot`, `run`).
    pub fn only(backend: BackendKind, guests: usize, mem_mib: u32, vcpus: u32) -> Vec<FleetGroup> {
        let name = backend.name().to_string();
        vec![FleetGroup { name, backend, first: 0, guests, mem_mib, vcpus, system: None }]
    }
}

/// One group's part of a host's slice: its guests `first..first + count` (global indices).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlicePart {
    pub group: String,
    pub backend: BackendKind,
    pub first: usize,
    pub count: usize,
    pub mem_mib: u32,
    pub vcpus: u32,
    /// Its group's system image and init mode (None: the agent's own image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<(String, InitMode)>,
}

impl SlicePart {
    /// Guests in all the parts.
    pub fn total(parts: &[SlicePart]) -> usize {
        parts.iter().map(|p| p.count).sum()
    }

    /// The part holding global index `index`.
    pub fn find(parts: &[SlicePart], index: usize) -> Option<&SlicePart> {
        parts.iter().find(|p| (p.first..p.first + p.count).contains(&index))
    }

    /// Every global index of the parts, with its part, in part order.
    pub fn indices(parts: &[SlicePart]) -> impl Iterator<Item = (usize, &SlicePart)> {
        parts.iter().flat_map(|p| (p.first..p.first + p.count).map(move |i| (i, p)))
    }

    /// The parts in words: `g0–g3 (ns), g8 (uml)`; `none` for no guest.
    pub fn describe(parts: &[SlicePart]) -> String {
        let text: Vec<String> = parts
            .iter()
            .filter(|p| p.count > 0)
            .map(|p| match p.count {
                1 => format!("g{} ({})", p.first, p.group),
                _ => format!("g{}–g{} ({})", p.first, p.first + p.count - 1, p.group),
            })
            .collect();
        if text.is_empty() {
            "none".into()
        } else {
            text.join(", ")
        }
    }
}

/// Splits every group over the hosts by [`split`] (each group as one fleet is split), as
/// each host's parts in group order; a group with no guest on a host has no part there.
pub fn split_groups(groups: &[FleetGroup], weights: &[f64]) -> Result<Vec<Vec<SlicePart>>, String> {
    let mut hosts = vec![Vec::new(); weights.len()];
    for g in groups {
        for (h, (off, count)) in split(g.guests, weights)?.into_iter().enumerate() {
            if count > 0 {
                hosts[h].push(SlicePart {
                    group: g.name.clone(),
                    backend: g.backend,
                    first: g.first + off,
                    count,
                    mem_mib: g.mem_mib,
                    vcpus: g.vcpus,
                    system: g.system.clone(),
                });
            }
        }
    }
    Ok(hosts)
}

/// Splits `n` guests over `weights.len()` hosts in proportion to the weights (largest
/// remainders get the rounding), as (first global index, count) per host in host order.
pub fn split(n: usize, weights: &[f64]) -> Result<Vec<(usize, usize)>, String> {
    if weights.is_empty() {
        return Err("no hosts to split the fleet over".into());
    }
    if let Some(w) = weights.iter().find(|w| !w.is_finite() || **w <= 0.0) {
        return Err(format!("weight {w}: weights must be positive numbers"));
    }
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| n as f64 * w / total).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut left = n - counts.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Largest remainder first; ties to the earlier host, so an even split is stable.
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    let mut first = 0;
    Ok(counts
        .into_iter()
        .map(|c| {
            let r = (first, c);
            first += c;
            r
        })
        .collect())
}

/// One host's part in the merged startup.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HostStart {
    /// Its fleet's start minus T0 on the realtime clock, s.
    pub lateness_s: f64,
    /// Its slowest ready guest after its own start, on its own monotonic clock, s.
    pub slowest_s: Option<f64>,
}

/// Global T_startup: the latest of every host's (lateness + slowest guest), measured from
/// T0; None when no guest anywhere was ready.
pub fn t_startup(hosts: &[HostStart]) -> Option<f64> {
    hosts
        .iter()
        .filter_map(|h| h.slowest_s.map(|s| h.lateness_s + s))
        .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
}

/// The cross-host reach check's exchanges, per host: (its guest, the guest it reaches), by
/// global index, given each host's ready guests in index order. Every ready guest reaches
/// one guest on each other host that has any, the one at its own place there (wrapping), so
/// each target takes about one connection per other host rather than all of them.
pub fn reach_pairs(ready: &[Vec<usize>]) -> Vec<Vec<(usize, usize)>> {
    ready
        .iter()
        .enumerate()
        .map(|(h, mine)| {
            let mut pairs = Vec::new();
            for (p, &g) in mine.iter().enumerate() {
                for (o, theirs) in ready.iter().enumerate() {
                    if o != h && !theirs.is_empty() {
                        pairs.push((g, theirs[p % theirs.len()]));
                    }
                }
            }
            pairs
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_pairs_cover_every_other_host_and_spread_the_targets() {
        let ready = vec![vec![0, 1, 2], vec![3, 5], vec![], vec![6, 7, 8]];
        let p = reach_pairs(&ready);
        assert_eq!(p[0], vec![(0, 3), (0, 6), (1, 5), (1, 7), (2, 3), (2, 8)]);
        assert_eq!(p[1], vec![(3, 0), (3, 6), (5, 1), (5, 7)]);
        assert!(p[2].is_empty());
        assert_eq!(p[3].len(), 6);
        // 8 hosts of 10: every guest is a target 7 times, not one guest 70 times.
        let ready: Vec<Vec<usize>> = (0..8).map(|h| (h * 10..h * 10 + 10).collect()).collect();
        let mut hits = std::collections::BTreeMap::new();
        for (_, t) in reach_pairs(&ready).into_iter().flatten() {
            *hits.entry(t).or_insert(0) += 1;
        }
        assert_eq!(hits.len(), 80);
        assert!(hits.values().all(|&n| n == 7), "{hits:?}");
    }

    #[test]
    fn groups_split_each_by_the_one_group_rule_keeping_global_indices() {
        let g = |name: &str, backend, first, guests| FleetGroup {
            name: name.into(),
            backend,
            first,
            guests,
            mem_mib: 64,
            vcpus: 1,
            system: None,
        };
        let groups = [g("a", BackendKind::Ns, 0, 4), g("b", BackendKind::Uml, 4, 2)];
        let hosts = split_groups(&groups, &[1.0; 3]).unwrap();
        let parts = |h: usize| -> Vec<(String, usize, usize)> {
            hosts[h].iter().map(|p| (p.group.clone(), p.first, p.count)).collect()
        };
        assert_eq!(parts(0), [("a".into(), 0, 2), ("b".into(), 4, 1)]);
        assert_eq!(parts(1), [("a".into(), 2, 1), ("b".into(), 5, 1)]);
        assert_eq!(parts(2), [("a".into(), 3, 1)]);
        assert_eq!(SlicePart::describe(&hosts[0]), "g0–g1 (a), g4 (b)");
        assert_eq!(SlicePart::describe(&[]), "none");
        let all: Vec<usize> =
            hosts.iter().flat_map(|h| SlicePart::indices(h).map(|x| x.0)).collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2, 3, 4, 5], "{all:?}");
        assert_eq!(SlicePart::find(&hosts[1], 5).map(|p| p.backend), Some(BackendKind::Uml));
        assert_eq!(SlicePart::find(&hosts[1], 4), None);
        assert!(split_groups(&groups, &[]).is_err());
    }

    #[test]
    fn even_and_weighted_splits_cover_every_index_once() {
        assert_eq!(split(30, &[1.0; 3]).unwrap(), vec![(0, 10), (10, 10), (20, 10)]);
        assert_eq!(split(10, &[1.0; 3]).unwrap(), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(split(10, &[2.0, 1.0, 1.0, 1.0]).unwrap(), vec![(0, 4), (4, 2), (6, 2), (8, 2)]);
        assert_eq!(split(2, &[1.0; 3]).unwrap(), vec![(0, 1), (1, 1), (2, 0)]);
        for n in [0, 1, 7, 299, 300, 301] {
            for w in [&[1.0, 3.0][..], &[0.5, 0.25, 0.25, 2.0], &[1.0; 8]] {
                let s = split(n, w).unwrap();
                assert_eq!(s.iter().map(|x| x.1).sum::<usize>(), n);
                assert!(s.windows(2).all(|p| p[0].0 + p[0].1 == p[1].0));
            }
        }
        assert!(split(3, &[]).is_err());
        assert!(split(3, &[1.0, 0.0]).unwrap_err().contains("positive"));
        assert!(split(3, &[f64::NAN]).is_err());
    }

    #[test]
    fn t_startup_is_the_latest_host_counting_its_lateness() {
        let h = |l, s| HostStart { lateness_s: l, slowest_s: s };
        assert_eq!(t_startup(&[h(0.01, Some(1.0)), h(0.5, Some(0.7)), h(0.0, None)]), Some(1.2));
        assert_eq!(t_startup(&[h(0.01, None)]), None);
        // Early start (negative lateness) counts too.
        assert_eq!(t_startup(&[h(-0.25, Some(1.0))]), Some(0.75));
    }
}
