//! Parses arbitrary text as a recipe file. Nothing may panic; a recipe that parses must
//! hash to its text, and every path a tree recipe names must either be refused or
//! normalise to a path inside the image (no `..`, no leading `/`, no empty component).
//! The tree the recipe's inline parts describe must survive a cpio round trip.
#![no_main]

use imagegen::archive::{normalize_path, read_cpio_newc, DeviceKind, Node, Tree};
use imagegen::recipe::{parse, NodeType, Spec};
use libfuzzer_sys::fuzz_target;

fn inside(p: &str) -> bool {
    !p.starts_with('/') && !p.is_empty() && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(r) = parse("fuzz", "fuzz.toml".into(), text.to_string()) else { return };
    assert_eq!(r.sha256, imagegen::hash::sha256_hex(text.as_bytes()));
    let _ = (r.dependencies(), r.cmdline(), r.kind.outputs(), r.kind.primary_output());
    let Spec::Tree(t) = &r.spec else { return };
    let mut tree = Tree::new();
    let mut paths = Vec::new();
    paths.extend(t.dirs.iter().map(|d| d.path.clone()));
    paths.extend(t.files.iter().map(|f| f.dst.clone()));
    paths.extend(t.nodes.iter().map(|n| n.path.clone()));
    paths.extend(t.agent_path.clone());
    for p in &paths {
        if let Ok(n) = normalize_path(p, true) {
            assert!(inside(&n), "{p:?} normalised to {n:?}");
        }
    }
    for d in &t.dirs {
        let _ = tree.add(&d.path, Node::Dir { mode: d.mode });
    }
    for f in &t.files {
        if let Some(c) = &f.contents {
            let _ = tree.add(&f.dst, Node::File { mode: f.mode, data: c.as_bytes().to_vec() });
        }
    }
    for n in &t.nodes {
        let kind = if n.node_type == NodeType::Char { DeviceKind::Char } else { DeviceKind::Block };
        let _ = tree.add(&n.path, Node::Device { kind, mode: n.mode, major: n.major, minor: n.minor });
    }
    let cpio = match tree.write_cpio_newc(Vec::new(), 1_700_000_000) {
        Ok(c) => c,
        // The one tree a cpio cannot hold: an entry that reads as the end of the archive.
        Err(_) => return assert!(tree.get(imagegen::archive::CPIO_TRAILER).is_some()),
    };
    let back = read_cpio_newc(&cpio).expect("our own cpio reads back");
    assert_eq!(back.len(), tree.len());
    for (e, (p, _)) in back.iter().zip(tree.iter()) {
        assert_eq!(e.name, p);
        assert!(inside(&e.name));
    }
});
