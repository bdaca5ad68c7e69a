//! The image check of a run across hosts: every worker must have exactly the reference's
//! images that the fleet boots (each group's backend's, its system image), or the run stops
//! naming the host and image. Images no group boots may differ or be missing: an ns fleet
//! does not care which kernels a host's store holds.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use super::Worker;
use crate::multihost::plan::FleetGroup;

/// The images the groups boot, by name (an image's hash entries are `NAME` and
/// `NAME (PART)`: its recipe, a system's ext4 and tree).
pub(super) fn booted(groups: &[FleetGroup]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for g in groups {
        let names = crate::images::booted_by(g.backend, g.system.is_some());
        out.extend(names.iter().map(|n| n.to_string()));
        out.extend(g.system.iter().map(|(name, _)| format!("system {name}")));
    }
    out
}

/// The entries of `images` that belong to an image in `used`.
fn only_used(
    images: &BTreeMap<String, String>,
    used: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let image_of = |key: &str| key.split_once(" (").map_or(key, |(name, _)| name).to_string();
    images
        .iter()
        .filter(|(k, _)| used.contains(&image_of(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Every worker has the images the groups boot as the coordinator has them (or, if it has
/// none, as the first worker has them); the first that differs is named.
pub(super) fn check_images(
    ws: &[Worker],
    own: Option<&BTreeMap<String, String>>,
    groups: &[FleetGroup],
) -> Result<()> {
    let (reference, whose) = match own {
        Some(o) => (o, "the coordinator's".to_string()),
        None => (&ws[0].hello.images, format!("{}'s", ws[0].name())),
    };
    let used = booted(groups);
    for w in ws {
        same_images(&w.hello.images, reference, w.name(), &used)
            .map_err(|e| anyhow::anyhow!("{e} ({whose} images are the reference)"))?;
    }
    Ok(())
}

/// Whether host `host` has the images in `used` exactly as `reference` has them: what
/// differs, in words.
pub(super) fn same_images(
    theirs: &BTreeMap<String, String>,
    reference: &BTreeMap<String, String>,
    host: &str,
    used: &BTreeSet<String>,
) -> Result<(), String> {
    let (theirs, reference) = (only_used(theirs, used), only_used(reference, used));
    for (name, hash) in &reference {
        match theirs.get(name) {
            None => return Err(format!("host {host} has no image {name} (sha256 {hash})")),
            Some(h) if h != hash => {
                return Err(format!(
                    "host {host}: image {name} is sha256 {h}, not {hash}: build or ship the same images"
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = theirs.keys().find(|k| !reference.contains_key(*k)) {
        return Err(format!(
            "host {host} has an image {extra} the fleet boots that the reference lacks"
        ));
    }
    Ok(())
}
