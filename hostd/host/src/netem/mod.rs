//! Network emulation: link properties (delay, jitter, rate, loss, duplication, reordering)
//! and site-to-site matrices applied on the host side of each guest's link (`vbl<i>` in the
//! fleet namespace: a veth end, a tap or a Xen vif), by the kernel's own qdiscs. The kernel
//! does the shaping; hostd only writes the configuration.
//!
//! Per guest `i` (site `s`):
//! - traffic *to* the guest leaves the bridge through `vbl<i>`: `htb` (the guest's rate) with
//!   a `netem` leaf (the guest's own delay, loss, …);
//! - traffic *from* the guest enters through `vbl<i>`: an ingress qdisc redirects it (u32
//!   match-all, `mirred`) to the guest's own ifb `vbi<i>`, whose `htb` classifies on the
//!   destination address: one class per other site `t` (rate min(guest, matrix[s][t]), a
//!   `netem` leaf with the guest's delay plus the matrix's one-way delay), the default class
//!   (own site, the bridge, ARP) with the guest's own properties only.
//!
//! So a packet from guest a (site s) to guest b (site t) gets a's delay, then
//! matrix[s][t], then b's delay, and the rate of the slowest of the three.
//!
//! Configured through iproute2's `ip -batch` and `tc -batch` (one exec each per apply):
//! netlink-packet-route (0.30) and rtnetlink model the ingress and fq_codel qdiscs (and the
//! u32/matchall/flower/bpf filters and mirred) but not netem, htb or tbf, and hand-encoding
//! their netlink attributes would duplicate tc's own code. Applied after guests are up, never
//! inside the timed startup window.

mod csv;
pub mod topology;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::netlab::{self, FleetNet};
pub use topology::{Between, EntryError, Site, Topology, TopologyError, TopologyFile};

/// Highest one-way delay or jitter accepted, ms (a minute: beyond any real path).
pub const MAX_DELAY_MS: f64 = 60_000.0;
/// Highest rate accepted, Mbit/s (100 Gbit/s; htb's 64-bit rates go further, links here do not).
pub const MAX_RATE_MBIT: f64 = 100_000.0;
/// The rate of a class that should not limit (htb needs one).
const UNLIMITED: &str = "100gbit";

#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum NetemError {
    #[error(
        "this host's kernel has no netem qdisc (CONFIG_NET_SCH_NETEM, module sch_netem): \
         delay, jitter, loss, duplication and reordering cannot be emulated here; rate alone \
         (htb) can"
    )]
    NoNetem,
    #[error("`{tool} -n {netns} -batch` failed: {msg}")]
    Batch { tool: &'static str, netns: String, msg: String },
    #[error("shaping left behind in {netns}: {what}")]
    Leftover { netns: String, what: String },
    #[error(transparent)]
    Net(#[from] netlab::NetError),
}

/// The shape of netem's jitter.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// Uniform in [delay − jitter, delay + jitter] (netem's default).
    #[default]
    Uniform,
    /// Normal around the delay (netem's `normal` table).
    Normal,
    /// Pareto: a long tail of late packets (`pareto`).
    Pareto,
    /// Pareto with a normal body (`paretonormal`).
    Paretonormal,
}

impl Distribution {
    fn tc_name(self) -> Option<&'static str> {
        match self {
            Distribution::Uniform => None,
            Distribution::Normal => Some("normal"),
            Distribution::Pareto => Some("pareto"),
            Distribution::Paretonormal => Some("paretonormal"),
        }
    }
}

/// One link's properties, each direction: a guest's own link, or a site's guests' links.
/// Every field defaults to "no effect".
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkProps {
    /// One-way delay added in each direction, ms.
    #[serde(default)]
    pub delay_ms: f64,
    /// Jitter around the delay, ms.
    #[serde(default)]
    pub jitter_ms: f64,
    /// The jitter's distribution. Default uniform.
    #[serde(default)]
    pub distribution: Distribution,
    /// Rate in each direction, Mbit/s. Default unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbit: Option<f64>,
    /// Packets dropped, %.
    #[serde(default)]
    pub loss_pct: f64,
    /// Packets duplicated, %.
    #[serde(default)]
    pub duplicate_pct: f64,
    /// Packets sent at once, ahead of the delayed others, %. Needs a delay.
    #[serde(default)]
    pub reorder_pct: f64,
}

/// Why a link's properties are refused; each names the link (`what`) and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum LinkError {
    /// A delay, jitter or percentage that is negative or not a number.
    #[error("{what}: {field} = {v}: must be a number ≥ 0")]
    Negative { what: String, field: &'static str, v: f64 },
    /// A delay, jitter or percentage above its range.
    #[error("{what}: {field} = {v}: more than {max}")]
    TooLarge { what: String, field: &'static str, v: f64, max: f64 },
    /// A rate of zero, below or not a number (no rate is written as none).
    #[error("{what}: {field} = {v}: a rate must be > 0 (leave it out for none)")]
    RateNotPositive { what: String, field: &'static str, v: f64 },
    /// A rate above [`MAX_RATE_MBIT`].
    #[error("{what}: {field} = {v}: more than {MAX_RATE_MBIT} Mbit/s")]
    RateTooHigh { what: String, field: &'static str, v: f64 },
    /// Reordering without a delay: netem reorders by not delaying some packets.
    #[error(
        "{what}: reorder_pct = {v} needs delay_ms > 0 (netem reorders by sending some packets \
         without the delay)"
    )]
    ReorderWithoutDelay { what: String, v: f64 },
    /// Jitter without a delay to vary.
    #[error("{what}: jitter_ms = {v} needs delay_ms > 0")]
    JitterWithoutDelay { what: String, v: f64 },
}

/// A delay, jitter or percentage field's check: finite, ≥ 0, ≤ `max`.
fn check_num(what: &str, field: &'static str, v: f64, max: f64) -> Result<(), LinkError> {
    if !v.is_finite() || v < 0.0 {
        return Err(LinkError::Negative { what: what.into(), field, v });
    }
    if v > max {
        return Err(LinkError::TooLarge { what: what.into(), field, v, max });
    }
    Ok(())
}

/// A rate's check: finite, > 0, ≤ [`MAX_RATE_MBIT`].
pub fn check_rate(what: &str, field: &'static str, v: f64) -> Result<(), LinkError> {
    if !v.is_finite() || v <= 0.0 {
        return Err(LinkError::RateNotPositive { what: what.into(), field, v });
    }
    if v > MAX_RATE_MBIT {
        return Err(LinkError::RateTooHigh { what: what.into(), field, v });
    }
    Ok(())
}

impl LinkProps {
    /// Checks every field; errors name `what` (e.g. "site a: link") and the field.
    pub fn check(&self, what: &str) -> Result<(), LinkError> {
        check_num(what, "delay_ms", self.delay_ms, MAX_DELAY_MS)?;
        check_num(what, "jitter_ms", self.jitter_ms, MAX_DELAY_MS)?;
        for (f, v) in [
            ("loss_pct", self.loss_pct),
            ("duplicate_pct", self.duplicate_pct),
            ("reorder_pct", self.reorder_pct),
        ] {
            check_num(what, f, v, 100.0)?;
        }
        if let Some(r) = self.rate_mbit {
            check_rate(what, "rate_mbit", r)?;
        }
        if self.reorder_pct > 0.0 && self.delay_ms == 0.0 {
            return Err(LinkError::ReorderWithoutDelay { what: what.into(), v: self.reorder_pct });
        }
        if self.jitter_ms > 0.0 && self.delay_ms == 0.0 {
            return Err(LinkError::JitterWithoutDelay { what: what.into(), v: self.jitter_ms });
        }
        Ok(())
    }

    /// Whether any property needs netem (all but the rate).
    pub fn needs_netem(&self) -> bool {
        self.delay_ms > 0.0
            || self.jitter_ms > 0.0
            || self.loss_pct > 0.0
            || self.duplicate_pct > 0.0
            || self.reorder_pct > 0.0
    }

    /// Whether the link is left as it is: nothing to shape.
    pub fn is_none(&self) -> bool {
        !self.needs_netem() && self.rate_mbit.is_none()
    }

    /// netem's arguments for this link with `extra` (a matrix entry's delay and jitter)
    /// added; jitters combine as independent deviations (root of the sum of squares).
    fn netem_args(&self, extra: Option<&Between>) -> String {
        let (d, j) = match extra {
            Some(b) => (self.delay_ms + b.delay_ms, self.jitter_ms.hypot(b.jitter_ms)),
            None => (self.delay_ms, self.jitter_ms),
        };
        let mut s = String::from("netem");
        if d > 0.0 {
            write!(s, " delay {}us", ms_to_us(d)).unwrap();
            if j > 0.0 {
                write!(s, " {}us", ms_to_us(j)).unwrap();
                if let Some(dist) = self.distribution.tc_name() {
                    write!(s, " distribution {dist}").unwrap();
                }
            }
        }
        for (k, v) in [
            ("loss", self.loss_pct),
            ("duplicate", self.duplicate_pct),
            ("reorder", self.reorder_pct),
        ] {
            if v > 0.0 {
                write!(s, " {k} {v}%").unwrap();
            }
        }
        // netem's own queue (1000 packets) would drop under a large rate × delay product.
        s.push_str(" limit 100000");
        s
    }

    /// A short description, e.g. "delay 10ms ±1ms normal, 100 Mbit/s, loss 0.1%".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.delay_ms > 0.0 {
            let mut d = format!("delay {}ms", self.delay_ms);
            if self.jitter_ms > 0.0 {
                write!(d, " ±{}ms", self.jitter_ms).unwrap();
                if let Some(n) = self.distribution.tc_name() {
                    write!(d, " {n}").unwrap();
                }
            }
            parts.push(d);
        }
        if let Some(r) = self.rate_mbit {
            parts.push(format!("{r} Mbit/s"));
        }
        for (k, v) in [
            ("loss", self.loss_pct),
            ("duplicate", self.duplicate_pct),
            ("reorder", self.reorder_pct),
        ] {
            if v > 0.0 {
                parts.push(format!("{k} {v}%"));
            }
        }
        if parts.is_empty() {
            "unshaped".into()
        } else {
            parts.join(", ")
        }
    }
}

fn ms_to_us(ms: f64) -> u64 {
    (ms * 1000.0).round() as u64
}

fn rate_arg(mbit: Option<f64>) -> String {
    match mbit {
        // tc takes integer bit rates; kbit keeps three decimals of a Mbit/s.
        Some(r) => format!("{}kbit", (r * 1000.0).round().max(1.0) as u64),
        None => UNLIMITED.into(),
    }
}

fn min_rate(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The ifb device carrying guest `index`'s outbound traffic.
pub fn ifb_name(index: usize) -> String {
    netlab::link_name("vbi", index)
}

/// Addresses `first..first + count` of the fleet's guests as CIDR blocks (sites are
/// consecutive guests, so a site is a handful of prefixes, not one filter per guest).
pub fn cidrs(first: usize, count: usize) -> Result<Vec<(Ipv4Addr, u8)>, NetemError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let lo = u32::from(FleetNet::guest_addr(first)?);
    let hi = u32::from(FleetNet::guest_addr(first + count - 1)?);
    let mut out = Vec::new();
    let mut at = lo as u64;
    let end = hi as u64 + 1;
    while at < end {
        // The largest aligned block starting at `at` that fits before `end`.
        let mut size = if at == 0 { 1u64 << 32 } else { 1u64 << at.trailing_zeros() };
        while at + size > end {
            size >>= 1;
        }
        out.push((Ipv4Addr::from(at as u32), 32 - size.trailing_zeros() as u8));
        at += size;
    }
    Ok(out)
}

/// The `ip` and `tc` batch scripts shaping guests `indices` under `topo`.
pub fn scripts(topo: &Topology, indices: &[usize]) -> Result<(String, String), NetemError> {
    let mut ip = String::new();
    let mut tc = String::new();
    // Destination blocks per site, computed once.
    let blocks: Vec<Vec<(Ipv4Addr, u8)>> =
        topo.sites.iter().map(|s| cidrs(s.first, s.count)).collect::<Result<_, _>>()?;
    for &i in indices {
        let Some(s) = topo.site_of(i) else { continue };
        let site = &topo.sites[s];
        let own = site.link;
        let dev = netlab::link_name("vbl", i);
        let ifb = ifb_name(i);
        let others: Vec<usize> = (0..topo.sites.len())
            .filter(|&t| t != s && topo.sites[t].count > 0 && !topo.between(s, t).is_none())
            .collect();
        // Inbound (bridge → guest): the guest's own link.
        if !own.is_none() {
            writeln!(tc, "qdisc add dev {dev} root handle 1: htb default 1").unwrap();
            writeln!(
                tc,
                "class add dev {dev} parent 1: classid 1:1 htb rate {r} ceil {r} quantum 1514",
                r = rate_arg(own.rate_mbit)
            )
            .unwrap();
            if own.needs_netem() {
                writeln!(tc, "qdisc add dev {dev} parent 1:1 handle 2: {}", own.netem_args(None))
                    .unwrap();
            }
        }
        // Outbound (guest → bridge), through the guest's ifb.
        if own.is_none() && others.is_empty() {
            continue;
        }
        writeln!(ip, "link add {ifb} type ifb").unwrap();
        writeln!(ip, "link set {ifb} up").unwrap();
        writeln!(tc, "qdisc add dev {dev} handle ffff: ingress").unwrap();
        writeln!(
            tc,
            "filter add dev {dev} parent ffff: protocol all prio 1 u32 match u32 0 0 \
             action mirred egress redirect dev {ifb}"
        )
        .unwrap();
        writeln!(tc, "qdisc add dev {ifb} root handle 1: htb default 2").unwrap();
        let top = rate_arg(own.rate_mbit);
        writeln!(
            tc,
            "class add dev {ifb} parent 1: classid 1:1 htb rate {top} ceil {top} quantum 1514"
        )
        .unwrap();
        writeln!(
            tc,
            "class add dev {ifb} parent 1:1 classid 1:2 htb rate {top} ceil {top} quantum 1514"
        )
        .unwrap();
        if own.needs_netem() {
            writeln!(tc, "qdisc add dev {ifb} parent 1:2 handle 2: {}", own.netem_args(None))
                .unwrap();
        }
        for t in others {
            let b = topo.between(s, t);
            // Class and leaf handles are hex in tc; 0x10 + t stays clear of 1 and 2.
            let id = format!("{:x}", 0x10 + t);
            let r = rate_arg(min_rate(own.rate_mbit, b.rate_mbit));
            writeln!(
                tc,
                "class add dev {ifb} parent 1:1 classid 1:{id} htb rate {r} ceil {r} quantum 1514"
            )
            .unwrap();
            let leaf = LinkProps { rate_mbit: None, ..own };
            if leaf.needs_netem() || b.delay_ms > 0.0 {
                writeln!(tc, "qdisc add dev {ifb} parent 1:{id} handle {id}: {}", {
                    leaf.netem_args(Some(b))
                })
                .unwrap();
            }
            for (net, len) in &blocks[t] {
                writeln!(
                    tc,
                    "filter add dev {ifb} parent 1: protocol ip prio 1 u32 match ip dst \
                     {net}/{len} flowid 1:{id}"
                )
                .unwrap();
            }
        }
    }
    Ok((ip, tc))
}

/// Runs `tool -n NETNS [-force] -batch -` on `script`.
fn batch(tool: &'static str, netns: &str, script: &str, force: bool) -> Result<(), NetemError> {
    if script.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new(tool);
    cmd.args(["-n", netns]);
    if force {
        cmd.arg("-force");
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetemError::Batch {
            tool,
            netns: netns.into(),
            msg: format!("cannot run {tool}: {e}"),
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let write = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| NetemError::Batch {
        tool,
        netns: netns.into(),
        msg: e.to_string(),
    })?;
    if out.status.success() && write.is_ok() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.contains("Specified qdisc kind is unknown") && script.contains(" netem") {
        return Err(NetemError::NoNetem);
    }
    Err(NetemError::Batch { tool, netns: netns.into(), msg })
}

/// Shapes guests `indices` of the fleet in `netns` under `topo`, replacing whatever shaping
/// they had.
pub fn apply(netns: &str, topo: &Topology, indices: &[usize]) -> Result<(), NetemError> {
    clear(netns, indices)?;
    let (ip, tc) = scripts(topo, indices)?;
    let r = batch("ip", netns, &ip, false).and_then(|()| batch("tc", netns, &tc, false));
    if r.is_err() {
        // Half-applied shaping is worse than none: the error says nothing was kept.
        let _ = clear(netns, indices);
    }
    r
}

/// Removes every qdisc, filter and ifb device [`apply`] made for guests `indices`, and
/// checks that none is left.
pub fn clear(netns: &str, indices: &[usize]) -> Result<(), NetemError> {
    let links = present_links(netns)?;
    let mut tc = String::new();
    let mut ip = String::new();
    for &i in indices {
        let dev = netlab::link_name("vbl", i);
        if links.contains(&dev) {
            writeln!(tc, "qdisc del dev {dev} root").unwrap();
            writeln!(tc, "qdisc del dev {dev} ingress").unwrap();
        }
        let ifb = ifb_name(i);
        if links.contains(&ifb) {
            writeln!(ip, "link del {ifb}").unwrap();
        }
    }
    // Forced: a link without shaping answers "no such qdisc", which is what we want. What
    // is left afterwards is checked below instead.
    let _ = batch("tc", netns, &tc, true);
    let _ = batch("ip", netns, &ip, true);
    let left = leftovers(netns, indices)?;
    if !left.is_empty() {
        return Err(NetemError::Leftover { netns: netns.into(), what: left.join("; ") });
    }
    Ok(())
}

/// Names of the links in `netns`.
fn present_links(netns: &str) -> Result<Vec<String>, NetemError> {
    let out = run("ip", &["-n", netns, "-o", "link", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect())
}

fn run(tool: &'static str, args: &[&str]) -> Result<String, NetemError> {
    let out = Command::new(tool).args(args).output().map_err(|e| NetemError::Batch {
        tool,
        netns: String::new(),
        msg: format!("cannot run {tool}: {e}"),
    })?;
    if !out.status.success() {
        return Err(NetemError::Batch {
            tool,
            netns: args.get(1).unwrap_or(&"").to_string(),
            msg: format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Shaping still present on guests `indices`: ifb devices, and qdiscs other than the
/// kernel's defaults on their links.
pub fn leftovers(netns: &str, indices: &[usize]) -> Result<Vec<String>, NetemError> {
    let links = present_links(netns)?;
    let qdiscs = run("tc", &["-n", netns, "qdisc", "show"])?;
    let mut left = Vec::new();
    for &i in indices {
        let ifb = ifb_name(i);
        if links.contains(&ifb) {
            left.push(format!("ifb {ifb}"));
        }
        let dev = netlab::link_name("vbl", i);
        for l in qdiscs.lines() {
            let mut w = l.split_whitespace();
            let kind = w.nth(1).unwrap_or("");
            let on = l.split(" dev ").nth(1).and_then(|r| r.split_whitespace().next());
            if on == Some(dev.as_str()) && matches!(kind, "htb" | "netem" | "tbf" | "ingress") {
                left.push(format!("{kind} on {dev}"));
            }
        }
    }
    Ok(left)
}

/// The qdiscs and classes on guests' links and ifbs in `netns`, as `tc -s` prints them.
pub fn show(netns: &str) -> Result<String, NetemError> {
    let mut out = run("tc", &["-n", netns, "-s", "qdisc", "show"])?;
    for dev in present_links(netns)?.iter().filter(|l| l.starts_with("vbi")) {
        out.push_str(&run("tc", &["-n", netns, "class", "show", "dev", dev])?);
    }
    Ok(out
        .lines()
        .filter(|l| !l.contains(" dev lo ") && !l.contains(" dev vbbr0 "))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// Whether this host's kernel has netem: tried on the loopback of `netns` (a namespace the
/// caller made) and removed at once.
pub fn netem_supported(netns: &str) -> Result<bool, NetemError> {
    match batch(
        "tc",
        netns,
        "qdisc add dev lo root netem delay 1us\nqdisc del dev lo root\n",
        false,
    ) {
        Ok(()) => Ok(true),
        Err(NetemError::NoNetem) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Guest indices with a link in `netns` (`vbl<i>`), sorted: a running fleet's guests.
pub fn guest_indices(netns: &str) -> Result<Vec<usize>, NetemError> {
    let mut v: Vec<usize> =
        present_links(netns)?.iter().filter_map(|l| l.strip_prefix("vbl")?.parse().ok()).collect();
    v.sort_unstable();
    Ok(v)
}

#[cfg(test)]
mod tests;
