//! Topologies: guests grouped into sites (consecutive guest indices), each site's guests
//! with their own link properties, and a site-to-site matrix of one-way delay, jitter and
//! rate. Written by hand (`[[site]]` + `[matrix]`), or made from a ready-made shape: a star
//! (sites around a hub), a two-level tree (sites of clusters, as Grid'5000's), or a latency
//! matrix read from a CSV file (one site per guest). Everything is checked, with the
//! offending site, row or field named, before any guest starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::csv::csv_topology;
use super::{check_rate, LinkError, LinkProps, MAX_DELAY_MS};

/// Why one matrix entry (what lies between two sites) is refused; `at` names the entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum EntryError {
    /// A matrix delay or jitter below 0 or not a number (`at` names the entry).
    #[error("{at} = {v}: a delay must be ≥ 0")]
    NegativeDelay { at: String, v: f64 },
    #[error("{at} = {v}: more than {MAX_DELAY_MS} ms")]
    DelayTooLong { at: String, v: f64 },
    /// A delay or jitter on the diagonal: within a site only the guests' links apply.
    #[error(
        "{at} = {v}: the diagonal must be 0 (within a site only the guests' own links apply; \
         give them a link instead)"
    )]
    DiagonalDelay { at: String, v: f64 },
    #[error("{at} = {v}: jitter needs a delay")]
    JitterWithoutDelay { at: String, v: f64 },
    #[error("{at} = {v}: the diagonal must be 0")]
    DiagonalRate { at: String, v: f64 },
    /// An off-diagonal rate out of range.
    #[error(transparent)]
    Rate(#[from] LinkError),
}

/// Why a topology is refused, named after the check that failed; each message names the
/// file, site, row or field at fault.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum TopologyError {
    /// A link's properties (the topology's, a site's, or a matrix rate).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The topology or CSV file could not be read.
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The topology file is not valid TOML for a topology.
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("give one of [[site]], [star], [tree] and matrix_csv, not several")]
    SeveralShapes,
    #[error("[matrix] needs [[site]] entries to name its rows")]
    MatrixWithoutSites,
    /// The sites hold another number of guests than the fleet.
    #[error("the topology's sites hold {sites} guests, the fleet has {fleet}")]
    GuestCount { sites: usize, fleet: usize },
    #[error("site {name:?}: a name of 1 to 32 characters")]
    SiteName { name: String },
    #[error("site {name:?} is given twice")]
    SiteTwice { name: String },
    #[error("site {name}: guests = 0: a site holds at least one guest")]
    EmptySite { name: String },
    /// `matrix.sites` names a site that `[[site]]` does not; `known` lists those that it does.
    #[error("matrix.sites: unknown site {name:?} (sites: {known})")]
    UnknownMatrixSite { name: String, known: String },
    #[error("matrix.sites: site {name:?} is given twice")]
    MatrixSiteTwice { name: String },
    #[error("matrix.sites: site {name:?} is missing")]
    MatrixSiteMissing { name: String },
    #[error("{field}: {rows} rows for {k} sites: the matrix must be square")]
    NotSquare { field: String, rows: usize, k: usize },
    #[error("{field}: row {row} has {len} entries for {k} sites: the matrix must be square")]
    RowNotSquare { field: String, row: usize, len: usize, k: usize },
    /// A matrix entry (hand-made, star, tree or CSV).
    #[error(transparent)]
    Entry(#[from] EntryError),
    #[error(
        "star: sites = {sites}, guests_per_site = {per_site}: at least 2 sites of at least 1 guest"
    )]
    StarTooSmall { sites: usize, per_site: usize },
    #[error("tree: sites, clusters_per_site and guests_per_cluster must be ≥ 1")]
    TreeEmpty,
    #[error("tree: at least 2 clusters in all")]
    TreeOneCluster,
    #[error("{name}: not a regular file of at most {} bytes", super::csv::MAX_CSV_BYTES)]
    CsvNotRegular { name: String },
    /// The CSV reader's own error (unreadable or malformed record).
    #[error("{name}: {source}")]
    Csv { name: String, source: csv::Error },
    #[error("{name}: row {row}, column {col}: {v:?} is not a number")]
    CsvNotNumber { name: String, row: usize, col: usize, v: String },
    #[error("{name}: {k} rows: a matrix of at least 2 guests")]
    CsvTooFew { name: String, k: usize },
    #[error("{name}: {k} rows: more guests than a fleet holds")]
    CsvTooMany { name: String, k: usize },
}

/// A topology as written in a fleet file's `[net]`, a campaign's `[netem]` or a file given
/// to `hostd net FLEET set`. Unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    /// Every guest's link, unless its site gives its own. Default unshaped.
    #[serde(default)]
    pub link: LinkProps,
    /// Sites in guest order: the first `guests` guests are the first site's, and so on.
    #[serde(default, rename = "site", skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteFile>,
    /// One-way delay, jitter and rate between the sites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<MatrixFile>,
    /// Ready-made: sites around one hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub star: Option<Star>,
    /// Ready-made: sites of clusters (two levels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<Tree>,
    /// Ready-made: a CSV of one-way delays (ms) between guests, a square matrix with one row
    /// per guest and zeros on the diagonal. Relative to the file that names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix_csv: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// A hand-made site in a topology file (`[[site]]`).
pub struct SiteFile {
    /// Its name, named by `[matrix]` (1 to 32 characters).
    pub name: String,
    /// Number of guests in the site.
    pub guests: usize,
    /// The site's guests' links. Default: the topology's `link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkProps>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// A hand-made site-to-site matrix (`[matrix]`), rows and columns in `sites`' order.
pub struct MatrixFile {
    /// The order of the rows and columns (every site once).
    pub sites: Vec<String>,
    /// One-way delay from row to column, ms; zeros on the diagonal.
    pub delay_ms: Vec<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Jitter on the delays, ms; zeros on the diagonal. Default none.
    pub jitter_ms: Option<Vec<Vec<f64>>>,
    /// Rate from row to column, Mbit/s (> 0 off the diagonal, 0 on it). Default unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbit: Option<Vec<Vec<f64>>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// Ready-made: `sites` sites of `guests_per_site` guests around one hub.
pub struct Star {
    /// Number of sites (at least 2).
    pub sites: usize,
    /// Guests in each site (at least 1).
    pub guests_per_site: usize,
    /// One-way delay from each site to the hub, ms (site to site: twice).
    pub delay_ms: f64,
    #[serde(default)]
    /// Jitter of each site's delay to the hub, ms.
    pub jitter_ms: f64,
    /// Each site's uplink to the hub, Mbit/s. Default unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbit: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// Ready-made: `sites` sites of `clusters_per_site` clusters of `guests_per_cluster` guests.
pub struct Tree {
    /// Number of sites.
    pub sites: usize,
    /// Clusters in each site.
    pub clusters_per_site: usize,
    /// Guests in each cluster.
    pub guests_per_cluster: usize,
    /// One-way delay from a cluster to its site's router, ms.
    pub cluster_delay_ms: f64,
    /// One-way delay from a site's router to the root, ms.
    pub site_delay_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Each cluster's uplink to its site's router, Mbit/s. Default unlimited.
    pub cluster_rate_mbit: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Each site's uplink to the root, Mbit/s. Default unlimited.
    pub site_rate_mbit: Option<f64>,
}

/// A checked topology: sites of consecutive guests, and the matrix between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// The sites in guest order.
    pub sites: Vec<Site>,
    /// `matrix[s][t]`: from site s to site t; empty when there is none.
    #[serde(default)]
    pub matrix: Vec<Vec<Between>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// One site of a checked topology: guests `first..first + count`.
pub struct Site {
    /// Its name (hand-made, or `s<i>`, `s<i>c<j>`, `g<i>` for made ones).
    pub name: String,
    /// Its first guest's index.
    pub first: usize,
    /// Its number of guests.
    pub count: usize,
    /// Each of its guests' own links.
    pub link: LinkProps,
}

/// What lies between two sites, one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Between {
    #[serde(default)]
    /// One-way delay, ms.
    pub delay_ms: f64,
    #[serde(default)]
    /// Jitter on that delay, ms.
    pub jitter_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Rate, Mbit/s; None: unlimited.
    pub rate_mbit: Option<f64>,
}

impl Between {
    /// Checks an entry off the diagonal; errors name `what`.
    pub fn check(&self, what: &str) -> Result<(), EntryError> {
        entry(&|f| format!("{what}.{f}"), self, false)
    }

    /// Whether nothing lies between the two sites.
    pub fn is_none(&self) -> bool {
        self.delay_ms == 0.0 && self.jitter_ms == 0.0 && self.rate_mbit.is_none()
    }
}

static NONE: Between = Between { delay_ms: 0.0, jitter_ms: 0.0, rate_mbit: None };

impl Topology {
    /// Every one of `n` guests in one site with `link`.
    pub fn uniform(n: usize, link: LinkProps) -> Self {
        Topology {
            sites: vec![Site { name: "all".into(), first: 0, count: n, link }],
            matrix: Vec::new(),
        }
    }

    /// The site guest `guest` is in, if any.
    pub fn site_of(&self, guest: usize) -> Option<usize> {
        self.sites.iter().position(|s| (s.first..s.first + s.count).contains(&guest))
    }

    /// What lies from site `s` to site `t` (nothing when there is no matrix).
    pub fn between(&self, s: usize, t: usize) -> &Between {
        self.matrix.get(s).and_then(|r| r.get(t)).unwrap_or(&NONE)
    }

    /// `k` sites of `per_site` guests each (`s0`, `s1`, …), every guest with `link`, and
    /// `between` from every site to every other.
    pub fn sites(k: usize, per_site: usize, link: LinkProps, between: Between) -> Self {
        let sites = (0..k)
            .map(|i| Site { name: format!("s{i}"), first: i * per_site, count: per_site, link })
            .collect();
        let matrix = (0..k)
            .map(|i| (0..k).map(|j| if i == j { Between::default() } else { between }).collect())
            .collect();
        Topology { sites, matrix }
    }

    /// The configured rate from guest `a` to guest `b`, Mbit/s: the slowest of a's link,
    /// the matrix and b's link; None when nothing limits it.
    pub fn rate_mbit(&self, a: usize, b: usize) -> Option<f64> {
        let (s, t) = (self.site_of(a)?, self.site_of(b)?);
        let mid = if s == t { None } else { self.between(s, t).rate_mbit };
        super::min_rate(
            super::min_rate(self.sites[s].link.rate_mbit, mid),
            self.sites[t].link.rate_mbit,
        )
    }

    /// The number of guests the sites hold.
    pub fn guests(&self) -> usize {
        self.sites.iter().map(|s| s.count).sum()
    }

    /// The configured one-way delay from guest `a` to guest `b`, ms: a's link, the matrix,
    /// b's link.
    pub fn one_way_ms(&self, a: usize, b: usize) -> Option<f64> {
        let (s, t) = (self.site_of(a)?, self.site_of(b)?);
        let mid = if s == t { 0.0 } else { self.between(s, t).delay_ms };
        Some(self.sites[s].link.delay_ms + mid + self.sites[t].link.delay_ms)
    }

    /// A few lines for people: each site and the matrix.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in &self.sites {
            out.push_str(&format!(
                "site {}: guests {}..{} ({}), {}\n",
                s.name,
                s.first,
                s.first + s.count,
                s.count,
                s.link.describe()
            ));
        }
        for (i, row) in self.matrix.iter().enumerate() {
            for (j, b) in row.iter().enumerate() {
                if i != j && !b.is_none() {
                    let mut d =
                        format!("{} → {}: {}ms", self.sites[i].name, self.sites[j].name, {
                            b.delay_ms
                        });
                    if b.jitter_ms > 0.0 {
                        d.push_str(&format!(" ±{}ms", b.jitter_ms));
                    }
                    if let Some(r) = b.rate_mbit {
                        d.push_str(&format!(", {r} Mbit/s"));
                    }
                    out.push_str(&d);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl TopologyFile {
    /// Parses a topology file (TOML); errors name the file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TopologyError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| TopologyError::Parse { path: path.into(), source })
    }

    /// Checks everything and lays the sites out over `n` guests; `base` is the directory a
    /// relative `matrix_csv` is found in.
    pub fn resolve(&self, n: usize, base: &Path) -> Result<Topology, TopologyError> {
        self.link.check("link")?;
        let shapes = [
            !self.sites.is_empty(),
            self.star.is_some(),
            self.tree.is_some(),
            self.matrix_csv.is_some(),
        ];
        if shapes.iter().filter(|&&x| x).count() > 1 {
            return Err(TopologyError::SeveralShapes);
        }
        if self.matrix.is_some() && self.sites.is_empty() {
            return Err(TopologyError::MatrixWithoutSites);
        }
        let topo = if let Some(star) = &self.star {
            star.resolve(self.link)?
        } else if let Some(tree) = &self.tree {
            tree.resolve(self.link)?
        } else if let Some(csv) = &self.matrix_csv {
            let path = base.join(csv);
            csv_topology(&path, self.link)?
        } else if !self.sites.is_empty() {
            self.hand_made()?
        } else {
            Topology::uniform(n, self.link)
        };
        if topo.guests() != n {
            return Err(TopologyError::GuestCount { sites: topo.guests(), fleet: n });
        }
        Ok(topo)
    }

    fn hand_made(&self) -> Result<Topology, TopologyError> {
        let mut sites = Vec::new();
        let mut index = BTreeMap::new();
        let mut first = 0;
        for s in &self.sites {
            if s.name.is_empty() || s.name.len() > 32 {
                return Err(TopologyError::SiteName { name: s.name.clone() });
            }
            if index.insert(s.name.clone(), sites.len()).is_some() {
                return Err(TopologyError::SiteTwice { name: s.name.clone() });
            }
            if s.guests == 0 {
                return Err(TopologyError::EmptySite { name: s.name.clone() });
            }
            let link = s.link.unwrap_or(self.link);
            link.check(&format!("site {}: link", s.name))?;
            sites.push(Site { name: s.name.clone(), first, count: s.guests, link });
            first += s.guests;
        }
        let Some(m) = &self.matrix else { return Ok(Topology { sites, matrix: Vec::new() }) };
        let k = sites.len();
        // Row order as the matrix names it → site positions.
        let mut order = Vec::with_capacity(k);
        for name in &m.sites {
            let &i = index.get(name).ok_or_else(|| TopologyError::UnknownMatrixSite {
                name: name.clone(),
                known: index.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
            if order.contains(&i) {
                return Err(TopologyError::MatrixSiteTwice { name: name.clone() });
            }
            order.push(i);
        }
        if let Some(missing) = sites.iter().find(|s| !m.sites.contains(&s.name)) {
            return Err(TopologyError::MatrixSiteMissing { name: missing.name.clone() });
        }
        let delay = square("matrix.delay_ms", &m.delay_ms, k)?;
        let jitter = m.jitter_ms.as_ref().map(|j| square("matrix.jitter_ms", j, k)).transpose()?;
        let rate = m.rate_mbit.as_ref().map(|r| square("matrix.rate_mbit", r, k)).transpose()?;
        let mut matrix = vec![vec![Between::default(); k]; k];
        for (r, &s) in order.iter().enumerate() {
            for (c, &t) in order.iter().enumerate() {
                let at =
                    |f: &str| format!("matrix.{f}[{r}][{c}] ({} → {})", m.sites[r], m.sites[c]);
                let b = Between {
                    delay_ms: delay[r][c],
                    jitter_ms: jitter.map_or(0.0, |j| j[r][c]),
                    rate_mbit: rate.map(|x| x[r][c]),
                };
                entry(&at, &b, r == c)?;
                matrix[s][t] = if r == c { Between::default() } else { b };
            }
        }
        Ok(Topology { sites, matrix })
    }
}

/// Checks that `m` is `k` × `k`, naming the first row that is not.
pub(super) fn square<'a>(
    field: &str,
    m: &'a [Vec<f64>],
    k: usize,
) -> Result<&'a [Vec<f64>], TopologyError> {
    if m.len() != k {
        return Err(TopologyError::NotSquare { field: field.into(), rows: m.len(), k });
    }
    if let Some((i, r)) = m.iter().enumerate().find(|(_, r)| r.len() != k) {
        return Err(TopologyError::RowNotSquare { field: field.into(), row: i, len: r.len(), k });
    }
    Ok(m)
}

/// One matrix entry's checks: delays and jitters finite and ≥ 0, rates > 0 off the
/// diagonal; the diagonal (within a site: only the guests' own links) all zero.
pub(super) fn entry(
    at: &dyn Fn(&str) -> String,
    b: &Between,
    diagonal: bool,
) -> Result<(), EntryError> {
    for (f, v) in [("delay_ms", b.delay_ms), ("jitter_ms", b.jitter_ms)] {
        if !v.is_finite() || v < 0.0 {
            return Err(EntryError::NegativeDelay { at: at(f), v });
        }
        if v > MAX_DELAY_MS {
            return Err(EntryError::DelayTooLong { at: at(f), v });
        }
        if diagonal && v != 0.0 {
            return Err(EntryError::DiagonalDelay { at: at(f), v });
        }
    }
    if b.jitter_ms > 0.0 && b.delay_ms == 0.0 {
        return Err(EntryError::JitterWithoutDelay { at: at("jitter_ms"), v: b.jitter_ms });
    }
    if let Some(r) = b.rate_mbit {
        if diagonal {
            if r != 0.0 {
                return Err(EntryError::DiagonalRate { at: at("rate_mbit"), v: r });
            }
        } else {
            check_rate(&at("rate_mbit"), "rate", r)?;
        }
    }
    Ok(())
}

impl Star {
    fn resolve(&self, link: LinkProps) -> Result<Topology, TopologyError> {
        if self.sites < 2 || self.guests_per_site == 0 {
            return Err(TopologyError::StarTooSmall {
                sites: self.sites,
                per_site: self.guests_per_site,
            });
        }
        let b = Between {
            delay_ms: 2.0 * self.delay_ms,
            jitter_ms: self.jitter_ms * std::f64::consts::SQRT_2,
            rate_mbit: self.rate_mbit,
        };
        entry(&|f| format!("star.{f} (twice, site to site)"), &b, false)?;
        let sites = (0..self.sites)
            .map(|i| Site {
                name: format!("s{i}"),
                first: i * self.guests_per_site,
                count: self.guests_per_site,
                link,
            })
            .collect();
        let matrix = (0..self.sites)
            .map(|i| (0..self.sites).map(|j| if i == j { Between::default() } else { b }).collect())
            .collect();
        Ok(Topology { sites, matrix })
    }
}

impl Tree {
    fn resolve(&self, link: LinkProps) -> Result<Topology, TopologyError> {
        if self.sites == 0 || self.clusters_per_site == 0 || self.guests_per_cluster == 0 {
            return Err(TopologyError::TreeEmpty);
        }
        if self.sites * self.clusters_per_site < 2 {
            return Err(TopologyError::TreeOneCluster);
        }
        let near = Between {
            delay_ms: 2.0 * self.cluster_delay_ms,
            jitter_ms: 0.0,
            rate_mbit: self.cluster_rate_mbit,
        };
        let far = Between {
            delay_ms: 2.0 * (self.cluster_delay_ms + self.site_delay_ms),
            jitter_ms: 0.0,
            rate_mbit: super::min_rate(self.cluster_rate_mbit, self.site_rate_mbit),
        };
        entry(&|f| format!("tree.cluster_{f}"), &near, false)?;
        entry(&|f| format!("tree.site_{f}"), &far, false)?;
        let k = self.sites * self.clusters_per_site;
        let sites = (0..k)
            .map(|c| Site {
                name: format!("s{}c{}", c / self.clusters_per_site, c % self.clusters_per_site),
                first: c * self.guests_per_cluster,
                count: self.guests_per_cluster,
                link,
            })
            .collect();
        let cps = self.clusters_per_site;
        let matrix = (0..k)
            .map(|i| {
                (0..k)
                    .map(|j| match (i == j, i / cps == j / cps) {
                        (true, _) => Between::default(),
                        (false, true) => near,
                        (false, false) => far,
                    })
                    .collect()
            })
            .collect();
        Ok(Topology { sites, matrix })
    }
}
