//! The image check of a run across hosts: every worker must boot exactly the images (agent,
//! kernels, system images) of the reference, or the run stops naming the host and image.

use std::collections::BTreeMap;

use anyhow::Result;

use super::Worker;

/// Every worker boots the same images as the coordinator (or, if it has none, the first
/// worker); the first that differs is named.
pub(super) fn check_images(ws: &[Worker], own: Option<&BTreeMap<String, String>>) -> Result<()> {
    let (reference, whose) = match own {
        Some(o) => (o.clone(), "the coordinator's".to_string()),
        None => (ws[0].hello.images.clone(), format!("{}'s", ws[0].name())),
    };
    for w in ws {
        same_images(&w.hello.images, &reference, w.name())
            .map_err(|e| anyhow::anyhow!("{e} ({whose} images are the reference)"))?;
    }
    Ok(())
}

/// Whether host `host`'s images are exactly `reference`: what differs, in words.
pub(super) fn same_images(
    theirs: &BTreeMap<String, String>,
    reference: &BTreeMap<String, String>,
    host: &str,
) -> Result<(), String> {
    for (name, hash) in reference {
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
        return Err(format!("host {host} has an image {extra} the others lack"));
    }
    Ok(())
}
