//! The toolstack as hostd reads it: programs found on PATH, `xl info` and `xl list`
//! parsed, the domid `xl create` reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::launch::{run_tool, ToolError};

/// A program on PATH (or a path), if it exists.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `xl info` as key → value.
pub fn parse_xl_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Memory Xen has handed out (to dom0 and every domU, with its own per-domain overhead),
/// KiB, from `xl info`: on a Xen host, the part of the machine's used memory that dom0's
/// /proc/meminfo does not see.
pub fn xen_used_kib(info: &BTreeMap<String, String>) -> Option<u64> {
    let mib = |k: &str| info.get(k)?.parse::<u64>().ok();
    Some(mib("total_memory")?.saturating_sub(mib("free_memory")?) * 1024)
}

/// `xl info`'s fields (the toolstack answering is what a probe checks).
pub async fn xl_info(xl: &str) -> Result<BTreeMap<String, String>, ToolError> {
    Ok(parse_xl_info(&run_tool(xl, &["info"], Duration::from_secs(60)).await?))
}

/// One line of `xl list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DomainInfo {
    /// The domain's name.
    pub name: String,
    /// Its domid.
    pub id: u32,
    /// Memory Xen gives the domain, MiB.
    pub mem_mib: u64,
    /// Its virtual CPUs.
    pub vcpus: u32,
    /// Its state flags as xl prints them (`r-----`, …).
    pub state: String,
}

/// A line of `xl list` that is not a domain's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
#[error("unexpected `xl list` line {0:?}")]
pub struct XlListError(pub String);

/// Why Xen's domain list could not be had.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum XlListFailed {
    #[error(transparent)]
    Run(#[from] ToolError),
    #[error(transparent)]
    Parse(#[from] XlListError),
}

/// Parses `xl list`'s output (lines after the header).
pub fn parse_xl_list(text: &str) -> Result<Vec<DomainInfo>, XlListError> {
    let mut out = Vec::new();
    for l in
        text.lines().skip_while(|l| !l.starts_with("Name")).skip(1).filter(|l| !l.trim().is_empty())
    {
        let w: Vec<&str> = l.split_whitespace().collect();
        let bad = || XlListError(l.to_string());
        if w.len() < 6 {
            return Err(bad());
        }
        // Name ID Mem VCPUs State Time(s): a name cannot contain blanks, the rest are fixed.
        out.push(DomainInfo {
            name: w[0].to_string(),
            id: w[1].parse().map_err(|_| bad())?,
            mem_mib: w[2].parse().map_err(|_| bad())?,
            vcpus: w[3].parse().map_err(|_| bad())?,
            state: w[4].to_string(),
        });
    }
    Ok(out)
}

/// Runs `xl list` and parses it.
pub async fn xl_list(xl: &str) -> Result<Vec<DomainInfo>, XlListFailed> {
    Ok(parse_xl_list(&run_tool(xl, &["list"], Duration::from_secs(60)).await?)?)
}

/// The domid in `xl create`'s "Waiting for domain NAME (domid N) to die" line.
pub fn created_domid(xl_output: &str) -> Option<u32> {
    xl_output.lines().find_map(|l| {
        let rest = l.strip_prefix("Waiting for domain ")?;
        rest.split_once("(domid ")?.1.split_once(')')?.0.parse().ok()
    })
}
