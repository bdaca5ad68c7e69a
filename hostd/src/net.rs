//! `hostd net FLEET set|show|clear`: link properties of a fleet kept by `hostd up`,
//! changed while its guests run (the qdiscs are replaced on the host side of their links;
//! guests are not touched). What was applied last is kept in the run's scratch directory
//! (`netem.json`) for `show`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::netem::{Distribution, LinkProps, NetemError, Topology, TopologyFile};

#[derive(Debug, Subcommand)]
pub enum NetCmd {
    /// Replace the fleet's link properties: one set for every guest (or --guests), or a
    /// topology file.
    Set(SetArgs),
    /// What was applied, and the qdiscs and classes on the guests' links as tc shows them.
    Show,
    /// Remove every qdisc, filter and ifb device shaping the fleet's guests.
    Clear,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// A topology file (TOML: link, [[site]], [matrix], [star], [tree], matrix_csv); the
    /// flags below are then not allowed.
    #[arg(long, conflicts_with_all = ["delay_ms", "jitter_ms", "rate_mbit", "loss_pct", "duplicate_pct", "reorder_pct", "guests"])]
    pub file: Option<PathBuf>,
    /// One-way delay in each direction, ms.
    #[arg(long, default_value_t = 0.0)]
    pub delay_ms: f64,
    /// Jitter around the delay, ms.
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// The jitter's distribution (uniform, normal, pareto, paretonormal).
    #[arg(long, default_value = "uniform", value_parser = parse_distribution)]
    pub distribution: Distribution,
    /// Rate in each direction, Mbit/s.
    #[arg(long)]
    pub rate_mbit: Option<f64>,
    /// Packets lost at random, % (netem loss).
    #[arg(long, default_value_t = 0.0)]
    pub loss_pct: f64,
    /// Packets sent twice, % (netem duplicate).
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_pct: f64,
    /// Packets sent at once instead of delayed, so they overtake others, % (netem reorder;
    /// needs a delay).
    #[arg(long, default_value_t = 0.0)]
    pub reorder_pct: f64,
    /// Only these guests (indices, e.g. "0-3,7"); the others keep what they have.
    #[arg(long)]
    pub guests: Option<String>,
}

fn parse_distribution(s: &str) -> Result<Distribution, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?}: one of uniform, normal, pareto, paretonormal"))
}

/// Parses "0-3,7" into indices; each must be one of `present`.
pub fn parse_guests(list: &str, present: &[usize]) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("--guests: {part:?} is not an index or a range"))
        };
        let (a, b) = (num(a)?, num(b)?);
        if a > b {
            return Err(format!("--guests: {part:?} runs backwards"));
        }
        for i in a..=b {
            if !present.contains(&i) {
                return Err(format!("--guests: the fleet has no guest {i}"));
            }
            out.push(i);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn record_path(scratch: &Path) -> PathBuf {
    scratch.join("netem.json")
}

/// What `set` applied last, for `show`.
#[derive(Debug, Serialize, Deserialize)]
struct Applied {
    guests: Vec<usize>,
    topology: Topology,
}

/// Applies `topo` to guests `indices` of the fleet in `netns` and records it.
pub fn set(scratch: &Path, netns: &str, topo: &Topology, indices: &[usize]) -> Result<(), String> {
    crate::netem::apply(netns, topo, indices).map_err(|e| e.to_string())?;
    let applied = Applied { guests: indices.to_vec(), topology: topo.clone() };
    let text = serde_json::to_vec_pretty(&applied).map_err(|e| e.to_string())?;
    std::fs::write(record_path(scratch), text)
        .map_err(|e| format!("{}: {e}", record_path(scratch).display()))
}

/// Runs one `hostd net` command on the fleet whose scratch is `scratch` and namespace
/// `netns`; returns what to print.
pub fn run(cmd: &NetCmd, scratch: &Path, netns: &str) -> Result<String, String> {
    if !Path::new("/run/netns").join(netns).exists() {
        return Err(format!("the fleet has no network (namespace {netns} is absent)"));
    }
    let present = crate::netem::guest_indices(netns).map_err(|e| e.to_string())?;
    let n = present.iter().max().map_or(0, |m| m + 1);
    match cmd {
        NetCmd::Set(a) => {
            let (topo, indices) = if let Some(f) = &a.file {
                let file = TopologyFile::load(f).map_err(|e| e.to_string())?;
                let base = f.parent().unwrap_or(Path::new("."));
                let topo = file.resolve(n, base).map_err(|e| format!("{}: {e}", f.display()))?;
                (topo, present.clone())
            } else {
                let link = LinkProps {
                    delay_ms: a.delay_ms,
                    jitter_ms: a.jitter_ms,
                    distribution: a.distribution,
                    rate_mbit: a.rate_mbit,
                    loss_pct: a.loss_pct,
                    duplicate_pct: a.duplicate_pct,
                    reorder_pct: a.reorder_pct,
                };
                link.check("link").map_err(|e| e.to_string())?;
                let indices = match &a.guests {
                    Some(g) => parse_guests(g, &present)?,
                    None => present.clone(),
                };
                (Topology::uniform(n, link), indices)
            };
            set(scratch, netns, &topo, &indices)?;
            Ok(format!("applied to {} guests:\n{}", indices.len(), topo.describe()))
        }
        NetCmd::Show => {
            let mut out = match std::fs::read(record_path(scratch)) {
                Ok(b) => match serde_json::from_slice::<Applied>(&b) {
                    Ok(a) => format!(
                        "last applied, to guests {:?}:\n{}",
                        a.guests,
                        a.topology.describe()
                    ),
                    Err(e) => format!("last applied: unreadable record ({e})\n"),
                },
                Err(_) => "last applied: nothing\n".into(),
            };
            out.push_str(&crate::netem::show(netns).map_err(|e| e.to_string())?);
            Ok(out)
        }
        NetCmd::Clear => {
            crate::netem::clear(netns, &present).map_err(|e: NetemError| e.to_string())?;
            let _ = std::fs::remove_file(record_path(scratch));
            Ok(format!("shaping removed from {} guests", present.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_lists() {
        let present = [0, 1, 2, 3, 7];
        assert_eq!(parse_guests("0-2, 7", &present).unwrap(), [0, 1, 2, 7]);
        assert_eq!(parse_guests("3,3", &present).unwrap(), [3]);
        assert!(parse_guests("5", &present).unwrap_err().contains("no guest 5"));
        assert!(parse_guests("3-1", &present).unwrap_err().contains("backwards"));
        assert!(parse_guests("x", &present).unwrap_err().contains("not an index"));
        assert_eq!(parse_distribution("normal").unwrap(), Distribution::Normal);
        assert!(parse_distribution("gauss").is_err());
    }
}
