//! `kind = "initramfs"` (gzip'd newc cpio) and `kind = "rootfs"` (tar): the same tree.

use std::collections::BTreeMap;
use std::io::Write;

use super::Ctx;
use crate::archive::{gzip, DeviceKind, Node, Tree};
use crate::build::BuildError;
use crate::manifest::Output;
use crate::plan::{Busybox, FileSource};
use crate::recipe::{Kind, NodeType, Recipe, Spec};
use crate::store::output_record;

pub(crate) fn build(
    ctx: &Ctx<'_>,
    r: &Recipe,
    files: &[(String, FileSource, u32)],
    busybox: Option<&Busybox>,
) -> Result<BTreeMap<String, Output>, BuildError> {
    let Spec::Tree(t) = &r.spec else { unreachable!("tree recipes only") };
    let tree_err = |e: crate::archive::TreeError| ctx.fail(&r.name, "assembling the tree", e);
    let mut tree = Tree::new();
    for d in &t.dirs {
        tree.add(&d.path, Node::Dir { mode: d.mode }).map_err(tree_err)?;
    }
    for (dst, src, mode) in files {
        let data = match src {
            FileSource::Host(p) => {
                std::fs::read(p).map_err(|e| ctx.fail(&r.name, "reading inputs", format!("{}: {e}", p.display())))?
            }
            FileSource::Inline(text) => text.as_bytes().to_vec(),
            FileSource::Recipe { recipe, output } => ctx.read_dep(&r.name, recipe, output)?,
        };
        tree.add(dst, Node::File { mode: *mode, data }).map_err(tree_err)?;
    }
    for (i, pkg) in t.packages.iter().enumerate() {
        let pin = super::debs::Pin { name: &pkg.name, version: &pkg.version, sha256: &pkg.sha256 };
        let deb = ctx.fetcher().fetch(&r.name, &r.file, &pin)?;
        let label = format!("packages[{i}] ({}={})", pkg.name, pkg.version);
        for (path, node) in super::debs::entries(&r.name, &deb, &label, &pkg.paths)? {
            tree.add(&path, node).map_err(|e| ctx.fail(&r.name, &format!("adding {label}"), e))?;
        }
    }
    for n in &t.nodes {
        let kind = if n.node_type == NodeType::Char { DeviceKind::Char } else { DeviceKind::Block };
        tree.add(&n.path, Node::Device { kind, mode: n.mode, major: n.major, minor: n.minor }).map_err(tree_err)?;
    }
    if let Some(bb) = busybox {
        let (data, applets) = busybox_binary(ctx, r, bb)?;
        tree.add("/bin/busybox", Node::File { mode: 0o755, data }).map_err(tree_err)?;
        for a in &applets {
            // A package's own program (iproute2's ip, say) wins over the applet.
            if !t.packages.is_empty() && tree.get(&format!("/bin/{a}")).is_some() {
                continue;
            }
            tree.add(&format!("/bin/{a}"), Node::Symlink { target: "busybox".into() }).map_err(tree_err)?;
        }
    }
    let sde = ctx.cfg.source_date_epoch;
    let write_err = |e| BuildError::Store { context: format!("recipe {}", r.name), source: e };
    let (name, (sha, size)) = if r.kind == Kind::Initramfs {
        let cpio = tree.write_cpio_newc(Vec::new(), sde).map_err(|e| ctx.fail(&r.name, "writing cpio", e))?;
        let blob = ctx.store.put_blob_with(|w| {
            let mut gz = gzip(w);
            gz.write_all(&cpio)?;
            gz.finish().map(drop)
        });
        ("initramfs", blob.map_err(write_err)?)
    } else {
        let tar = tree.write_tar(Vec::new(), sde).map_err(|e| ctx.fail(&r.name, "writing tar", e))?;
        ("rootfs", ctx.store.put_blob_bytes(&tar).map_err(write_err)?)
    };
    Ok(BTreeMap::from([(name.to_string(), output_record(sha, size))]))
}

/// The busybox binary and its applets: a host file (applets listed at plan time), or
/// `/bin/busybox` of a pinned package, run once from the cache to list its applets.
fn busybox_binary(ctx: &Ctx<'_>, r: &Recipe, bb: &Busybox) -> Result<(Vec<u8>, Vec<String>), BuildError> {
    match bb {
        Busybox::Host { path, applets } => {
            let data = std::fs::read(path)
                .map_err(|e| ctx.fail(&r.name, "reading busybox", format!("{}: {e}", path.display())))?;
            Ok((data, applets.clone()))
        }
        Busybox::Package(pin) => {
            let p = super::debs::Pin { name: &pin.name, version: &pin.version, sha256: &pin.sha256 };
            let deb = ctx.fetcher().fetch(&r.name, &r.file, &p)?;
            let label = format!("busybox_package ({}={})", pin.name, pin.version);
            let data = match super::debs::entries(&r.name, &deb, &label, &["/bin/busybox".to_string()])?.pop() {
                Some((_, Node::File { data, .. })) => data,
                _ => {
                    return Err(ctx.fail(
                        &r.name,
                        "taking busybox",
                        format!("{label} has no regular file /bin/busybox"),
                    ))
                }
            };
            let fail = |e: std::io::Error| ctx.fail(&r.name, "listing busybox applets", e);
            // Named `busybox`: busybox runs the applet its argv[0] names.
            let tmp =
                tempfile::Builder::new().prefix(crate::store::TMP_PREFIX).tempdir_in(&ctx.cfg.cache).map_err(fail)?;
            let path = tmp.path().join("busybox");
            std::fs::write(&path, &data).map_err(fail)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(fail)?;
            let applets =
                crate::plan::busybox_applets(&path).map_err(|e| ctx.fail(&r.name, "listing busybox applets", e))?;
            Ok((data, applets))
        }
    }
}
