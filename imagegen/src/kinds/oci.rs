//! `kind = "oci-bundle"`: a tar of `config.json` (OCI runtime spec, built with `oci-spec`)
//! and `rootfs/` (the rootfs recipe's tree). hostd edits per-guest fields (hostname,
//! network namespace path, cgroupsPath) on a copy of `config.json` with the same crate and
//! writes it back with [`config_json`].

use std::collections::BTreeMap;

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_readonly_paths, Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use oci_spec::OciSpecError;
use serde_json::Value;

use super::Ctx;
use crate::archive::{Node, Tree};
use crate::build::BuildError;
use crate::manifest::Output;
use crate::recipe::{OciBundleSpec, Recipe};
use crate::store::output_record;

/// The runtime spec version written (runc and crun take 1.0.x and later).
pub const OCI_VERSION: &str = "1.0.2";

/// The bundle's runtime spec. Everything per guest (hostname, netns path, cgroupsPath) is
/// left for hostd.
pub fn runtime_spec(b: &OciBundleSpec) -> Result<Spec, OciSpecError> {
    let caps: Capabilities = b.capabilities.iter().copied().collect();
    // Set every set explicitly: the builder's defaults would add youki's three defaults to
    // the inheritable and ambient sets.
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(b.args.clone())
        .env(b.env.clone())
        .cwd(&b.cwd)
        .capabilities(capabilities)
        .no_new_privileges(b.no_new_privileges)
        .rlimits(Vec::new())
        .build()?;
    let mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
        mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"])?,
    ];
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
    .collect::<Result<Vec<_>, _>>()?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()?;
    let mut spec = SpecBuilder::default()
        .version(OCI_VERSION)
        .root(RootBuilder::default().path("rootfs").readonly(b.readonly).build()?)
        .mounts(mounts)
        .process(process)
        .hostname(b.hostname.clone())
        .linux(linux)
        .build()?;
    // Not ours to set: the builder's defaults fill in resources and annotations.
    if let Some(l) = spec.linux_mut() {
        l.set_resources(None);
    }
    spec.set_annotations(None);
    Ok(spec)
}

fn mount(dst: &str, typ: &str, src: &str, options: &[&str]) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
}

/// `config.json` bytes: pretty JSON with object keys sorted and capability sets sorted
/// (oci-spec keeps them in HashSets, whose order changes from one process to the next).
pub fn config_json(spec: &Spec) -> serde_json::Result<Vec<u8>> {
    let mut v = serde_json::to_value(spec)?;
    if let Some(caps) = v.pointer_mut("/process/capabilities").and_then(Value::as_object_mut) {
        for set in caps.values_mut() {
            if let Some(a) = set.as_array_mut() {
                a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
    }
    let mut out = serde_json::to_vec_pretty(&sort_keys(v))?;
    out.push(b'\n');
    Ok(out)
}

/// Recursively sorted object keys, whatever map type serde_json was built with.
fn sort_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sort_keys(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

pub(crate) fn build(ctx: &Ctx<'_>, r: &Recipe, b: &OciBundleSpec) -> Result<BTreeMap<String, Output>, BuildError> {
    let rootfs_tar = ctx.read_dep(&r.name, &b.rootfs, "rootfs")?;
    let rootfs = Tree::from_tar(&rootfs_tar[..]).map_err(|e| ctx.fail(&r.name, "reading the rootfs", e))?;
    let spec = runtime_spec(b).map_err(|e| ctx.fail(&r.name, "runtime spec", e))?;
    let json = config_json(&spec).map_err(|e| ctx.fail(&r.name, "runtime spec", e))?;
    let tree_err = |e: crate::archive::TreeError| ctx.fail(&r.name, "assembling the bundle", e);
    let mut tree = Tree::new();
    tree.add("rootfs", Node::Dir { mode: 0o755 }).map_err(tree_err)?;
    rootfs.nest_under("rootfs", &mut tree).map_err(tree_err)?;
    tree.add("config.json", Node::File { mode: 0o644, data: json }).map_err(tree_err)?;
    let tar = tree.write_tar(Vec::new(), ctx.cfg.source_date_epoch).map_err(|e| ctx.fail(&r.name, "writing tar", e))?;
    let (sha, size) = ctx
        .store
        .put_blob_bytes(&tar)
        .map_err(|e| BuildError::Store { context: format!("recipe {}", r.name), source: e })?;
    Ok(BTreeMap::from([("bundle".to_string(), output_record(sha, size))]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{parse, Spec as RSpec};

    fn bundle_spec() -> OciBundleSpec {
        let r = parse("oci-bundle", "oci-bundle.toml".into(), "kind = \"oci-bundle\"\n".into()).unwrap();
        let RSpec::OciBundle(b) = r.spec else { panic!() };
        b
    }

    #[test]
    fn config_is_what_the_agent_needs() {
        let json = config_json(&runtime_spec(&bundle_spec()).unwrap()).unwrap();
        let v: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["process"]["args"], serde_json::json!(["/sbin/guest-agent", "--ctl", "fd:3"]));
        assert_eq!(v["process"]["terminal"], false);
        assert_eq!(v["root"], serde_json::json!({"path": "rootfs", "readonly": true}));
        let ns: Vec<&str> =
            v["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        let dsts: Vec<&str> =
            v["mounts"].as_array().unwrap().iter().map(|m| m["destination"].as_str().unwrap()).collect();
        assert_eq!(dsts, ["/proc", "/dev", "/dev/pts", "/dev/shm", "/sys", "/tmp"]);
        let sys = &v["mounts"][4];
        assert!(sys["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        let caps = &v["process"]["capabilities"];
        assert_eq!(
            caps["bounding"],
            serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"])
        );
        assert_eq!(caps["ambient"], serde_json::json!([]));
        assert!(!String::from_utf8_lossy(&json).contains("CAP_SYS_BOOT"));
        assert!(v.get("annotations").is_none());
        assert!(v["linux"].get("resources").is_none());
        // Round-trips through oci-spec, as hostd will load it.
        let back: oci_spec::runtime::Spec = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.hostname().as_deref(), Some("virtbench"));
    }

    #[test]
    fn config_bytes_do_not_depend_on_hash_set_order() {
        // Each HashSet gets its own random seed: many specs, one serialisation.
        let b = bundle_spec();
        let first = config_json(&runtime_spec(&b).unwrap()).unwrap();
        for _ in 0..32 {
            assert_eq!(config_json(&runtime_spec(&b).unwrap()).unwrap(), first);
        }
    }
}
