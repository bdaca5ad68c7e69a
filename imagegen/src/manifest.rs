//! Build manifests (`builds/<input-hash>.json`, `current/<recipe>.json`) and the canonical
//! input serialisation whose sha256 is the input hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::recipe::Kind;

/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;
/// Names the canonical input serialisation; part of what is hashed.
const INPUT_SCHEME: &str = "virtbench-imagegen-inputs/1";

/// What one build of one recipe was made from and what it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub recipe: String,
    pub kind: Kind,
    pub recipe_file: RecipeFile,
    /// sha256 of the canonical serialisation of everything that determines the outputs.
    pub input_hash: String,
    /// Every input with its sha256, in a fixed order (recipe file first).
    pub inputs: Vec<Input>,
    /// Versions of the tools whose output lands in the artifacts (hashed).
    pub tools: BTreeMap<String, String>,
    /// The imagegen that built it (recorded, not hashed: `generator` is).
    pub imagegen: ImagegenVersion,
    pub source_date_epoch: u64,
    /// Wall time of the build itself (a cache hit keeps the original build's).
    pub build_seconds: f64,
    pub outputs: BTreeMap<String, Output>,
    /// Kernel command line defaults for hostd (recipe `cmdline`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// What a root file system build holds (`debian-rootfs`, `rootfs-import`, `oci-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Box<SystemInfo>>,
    /// The release (`uname -r`, the `/lib/modules` directory) of a `kernel-package` taken from
    /// a Debian package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
}

/// What is in a root file system build: what hostd needs to boot it, and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemInfo {
    /// Where `/sbin/init` leads inside the image (symlinks followed inside the tree) when
    /// it is an executable regular file; `None`: the image has no usable init of its own.
    pub init: Option<String>,
    /// Every installed package (dpkg's status database), by name; empty without one.
    pub packages: Vec<Package>,
    /// Kernel releases with modules under `/lib/modules`.
    pub kernel_modules: Vec<String>,
    /// `PRETTY_NAME` of `/etc/os-release`, when there is one.
    pub os: Option<String>,
    /// Bytes the tree takes in 4 KiB blocks (files, directories, long symlinks).
    pub tree_bytes: u64,
    /// Entries in the tree (inodes).
    pub tree_inodes: u64,
    /// Size of the `rootfs.ext4` image: the tree plus 10 %, inode tables, journal and
    /// `headroom_mib` of free space.
    pub ext4_bytes: u64,
    pub headroom_mib: u64,
    /// File system UUIDs of `rootfs.ext4` and `rootfs.erofs` (derived from the input hash).
    pub ext4_uuid: String,
    pub erofs_uuid: String,
}

/// One installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    /// File name inside the recipe directory.
    pub path: String,
    pub sha256: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// What kind of input: `recipe`, `fragment`, `patch`, `file`, `busybox`, `dependency`,
    /// `source` (pinned tarball), `cargo-output` (the agent binary).
    pub role: String,
    /// Path (recipes-relative or absolute host path) or `recipe/output` for dependencies.
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagegenVersion {
    pub version: String,
    pub generator: u32,
}

/// One artifact of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub sha256: String,
    pub size: u64,
    /// Blob path relative to the store root (`blobs/sha256/<hex>`).
    pub path: String,
}

impl Manifest {
    pub fn output(&self, name: &str) -> Option<&Output> {
        self.outputs.get(name)
    }
}

/// Everything hashed into an input hash. serde_json of this struct is canonical: field
/// order is the declaration order, maps are BTreeMaps, inputs are in a fixed order.
#[derive(Serialize)]
pub(crate) struct HashedInputs<'a> {
    pub scheme: &'static str,
    pub recipe: &'a str,
    pub kind: Kind,
    pub generator: u32,
    pub source_date_epoch: u64,
    pub inputs: &'a [Input],
    pub tools: &'a BTreeMap<String, String>,
}

impl<'a> HashedInputs<'a> {
    pub fn new(
        recipe: &'a str,
        kind: Kind,
        source_date_epoch: u64,
        inputs: &'a [Input],
        tools: &'a BTreeMap<String, String>,
    ) -> Self {
        Self { scheme: INPUT_SCHEME, recipe, kind, generator: kind.generator(), source_date_epoch, inputs, tools }
    }

    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("serialising plain data cannot fail");
        crate::hash::sha256_hex(&bytes)
    }
}

pub(crate) fn blob_rel_path(sha256: &str) -> String {
    format!("blobs/sha256/{sha256}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_hash_changes_with_any_input() {
        let tools = BTreeMap::from([("gcc".to_string(), "12".to_string())]);
        let inputs = vec![Input { role: "recipe".into(), name: "a.toml".into(), sha256: "0".repeat(64) }];
        let h = HashedInputs::new("a", Kind::Disk, 1, &inputs, &tools).hash();
        assert_eq!(h, HashedInputs::new("a", Kind::Disk, 1, &inputs, &tools).hash());
        assert_ne!(h, HashedInputs::new("b", Kind::Disk, 1, &inputs, &tools).hash());
        assert_ne!(h, HashedInputs::new("a", Kind::Disk, 2, &inputs, &tools).hash());
        assert_ne!(h, HashedInputs::new("a", Kind::Disk, 1, &[], &tools).hash());
        assert_ne!(h, HashedInputs::new("a", Kind::Disk, 1, &inputs, &BTreeMap::new()).hash());
    }
}
