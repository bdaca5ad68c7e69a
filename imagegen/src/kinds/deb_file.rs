//! `kind = "deb-file"`: one file out of a pinned Debian package (the Xen lab's hypervisor
//! and dom0 kernel), optionally gunzip'd.

use std::collections::BTreeMap;
use std::io::Read;

use super::debs::{entries, Pin};
use super::Ctx;
use crate::archive::Node;
use crate::build::BuildError;
use crate::manifest::Output;
use crate::recipe::{DebFileSpec, Recipe};
use crate::store::output_record;

pub(crate) fn build(ctx: &Ctx<'_>, r: &Recipe, d: &DebFileSpec) -> Result<BTreeMap<String, Output>, BuildError> {
    let pin = Pin { name: &d.package, version: &d.version, sha256: &d.sha256 };
    let deb = ctx.fetcher().fetch(&r.name, &r.file, &pin)?;
    let label = format!("{}={}", d.package, d.version);
    let found = entries(&r.name, &deb, &label, std::slice::from_ref(&d.path))?;
    let data = match found.into_iter().next() {
        Some((_, Node::File { data, .. })) => data,
        Some((p, other)) => {
            return Err(ctx.fail(
                &r.name,
                "taking the file",
                format!("{p} in {label} is not a regular file: {other:?}"),
            ))
        }
        None => return Err(ctx.fail(&r.name, "taking the file", format!("{label} has no {}", d.path))),
    };
    let data = if d.gunzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .map_err(|e| ctx.fail(&r.name, "gunzip", format!("{} in {label}: {e}", d.path)))?;
        out
    } else {
        data
    };
    let (sha, size) = ctx
        .store
        .put_blob_bytes(&data)
        .map_err(|e| BuildError::Store { context: format!("recipe {}", r.name), source: e })?;
    Ok(BTreeMap::from([("file".to_string(), output_record(sha, size))]))
}
