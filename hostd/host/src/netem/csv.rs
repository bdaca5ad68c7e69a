//! A topology from a CSV file of one-way delays between guests (`matrix_csv`): one site
//! per guest, every entry checked like a hand-made matrix's.

use std::path::Path;

use super::topology::{entry, square, Between, Site, Topology, TopologyError};
use super::LinkProps;

/// The largest CSV matrix file read (1000 guests × 1000 entries of a few characters fit).
pub(super) const MAX_CSV_BYTES: u64 = 32 << 20;

/// A per-guest one-way delay matrix from a CSV file: one site per guest (`g<i>`).
pub fn csv_topology(path: &Path, link: LinkProps) -> Result<Topology, TopologyError> {
    let name = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|source| TopologyError::Read { path: path.into(), source })?;
    if !meta.is_file() || meta.len() > MAX_CSV_BYTES {
        return Err(TopologyError::CsvNotRegular { name: name.to_string() });
    }
    let csv_err = |source| TopologyError::Csv { name: name.to_string(), source };
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .flexible(true)
        .from_path(path)
        .map_err(csv_err)?;
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for (i, rec) in rd.records().enumerate() {
        let rec = rec.map_err(csv_err)?;
        let row = rec
            .iter()
            .enumerate()
            .map(|(j, v)| {
                v.parse::<f64>().map_err(|_| TopologyError::CsvNotNumber {
                    name: name.to_string(),
                    row: i,
                    col: j,
                    v: v.into(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        rows.push(row);
    }
    let k = rows.len();
    if k < 2 {
        return Err(TopologyError::CsvTooFew { name: name.to_string(), k });
    }
    if k > crate::limits::GUESTS.max as usize {
        return Err(TopologyError::CsvTooMany { name: name.to_string(), k });
    }
    square(&name.to_string(), &rows, k)?;
    let mut matrix = vec![vec![Between::default(); k]; k];
    for r in 0..k {
        for c in 0..k {
            let b = Between { delay_ms: rows[r][c], jitter_ms: 0.0, rate_mbit: None };
            entry(&|_| format!("{name}: row {r}, column {c}"), &b, r == c)?;
            matrix[r][c] = b;
        }
    }
    let sites = (0..k).map(|i| Site { name: format!("g{i}"), first: i, count: 1, link }).collect();
    Ok(Topology { sites, matrix })
}
