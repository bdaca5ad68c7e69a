//! Recipe files: `recipes/NAME.toml`, one artifact family each, name = file stem. Every
//! field and its default is documented in `recipes/README.md`; keep the two in step.
//!
//! A recipe is parsed twice: once for `kind` only, then into the struct of that kind with
//! `deny_unknown_fields`, so a key that does not belong to the kind is refused with the
//! list of keys that do, and toml's line and column.

use std::fmt;
use std::path::PathBuf;

use oci_spec::runtime::Capability;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Outputs of every root file system kind (`debian-rootfs`, `rootfs-import`, `oci-image`):
/// the tree as a tar, an ext4 image and an erofs image of the same tree.
pub const SYSTEM_OUTPUTS: &[&str] = &["rootfs", "rootfs.ext4", "rootfs.erofs"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Agent,
    Initramfs,
    Rootfs,
    OciBundle,
    Disk,
    Kernel,
    DebFile,
    DebianRootfs,
    RootfsImport,
    OciImage,
    KernelPackage,
}

impl Kind {
    /// Every kind, in the order recipes/README.md documents them.
    pub const ALL: [Kind; 11] = [
        Kind::Agent,
        Kind::Initramfs,
        Kind::Rootfs,
        Kind::OciBundle,
        Kind::Disk,
        Kind::Kernel,
        Kind::DebFile,
        Kind::DebianRootfs,
        Kind::RootfsImport,
        Kind::OciImage,
        Kind::KernelPackage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Initramfs => "initramfs",
            Kind::Rootfs => "rootfs",
            Kind::OciBundle => "oci-bundle",
            Kind::Disk => "disk",
            Kind::Kernel => "kernel",
            Kind::DebFile => "deb-file",
            Kind::DebianRootfs => "debian-rootfs",
            Kind::RootfsImport => "rootfs-import",
            Kind::OciImage => "oci-image",
            Kind::KernelPackage => "kernel-package",
        }
    }

    /// Output names a build of this kind records; the first is what a reference to the
    /// recipe without an explicit output means.
    pub fn outputs(self) -> &'static [&'static str] {
        match self {
            Kind::Agent => &["agent"],
            Kind::Initramfs => &["initramfs"],
            Kind::Rootfs => &["rootfs"],
            Kind::OciBundle => &["bundle"],
            Kind::Disk => &["disk"],
            Kind::Kernel => &["kernel", "config"],
            Kind::DebFile => &["file"],
            Kind::DebianRootfs | Kind::RootfsImport | Kind::OciImage => SYSTEM_OUTPUTS,
            // `modules` and `config` only when taken from a package.
            Kind::KernelPackage => &["kernel", "modules", "config"],
        }
    }

    /// The kinds whose build is a whole root file system with disk images of it.
    pub fn is_system(self) -> bool {
        matches!(self, Kind::DebianRootfs | Kind::RootfsImport | Kind::OciImage)
    }

    pub fn primary_output(self) -> &'static str {
        self.outputs()[0]
    }

    /// Version of the code turning this kind's inputs into bytes. It is part of the input
    /// hash: bump it with any change to imagegen that changes an output for unchanged
    /// inputs, so stale store and cache entries are not reused.
    pub fn generator(self) -> u32 {
        1
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    /// A kind as a recipe's `kind` names it; an unknown one is an error listing them all.
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            format!("no recipe kind {s:?} (kinds: {})", all.join(", "))
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed recipe file.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub name: String,
    pub kind: Kind,
    /// The recipe file as given (inside the recipe directory).
    pub file: PathBuf,
    pub text: String,
    pub sha256: String,
    pub spec: Spec,
}

#[derive(Debug, Clone)]
pub enum Spec {
    Agent(AgentSpec),
    /// `initramfs` and `rootfs`: the same tree, serialised as cpio.gz or tar.
    Tree(TreeSpec),
    OciBundle(OciBundleSpec),
    Disk(DiskSpec),
    Kernel(KernelSpec),
    DebFile(DebFileSpec),
    /// `debian-rootfs`, `rootfs-import`, `oci-image`: a root file system and its images.
    System(SystemSpec),
    KernelPackage(KernelPackageSpec),
}

/// What `init = …` asks of a root file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitMode {
    /// The agent will be PID 1: the image's own init is recorded but not required.
    #[default]
    Agent,
    /// The image's `/sbin/init` boots it: the build fails without a usable one.
    Image,
}

/// Where a root file system comes from, with the fields of its kind.
#[derive(Debug, Clone)]
pub enum SystemSource {
    Debian(DebianRootfsSpec),
    Import(RootfsImportSpec),
    Oci(OciImageSpec),
}

/// A root file system recipe: its source and what every such kind shares.
#[derive(Debug, Clone)]
pub struct SystemSpec {
    pub source: SystemSource,
    pub common: SystemCommon,
}

/// Fields every root file system kind has (each kind's struct carries them: `system_spec!`).
#[derive(Debug, Clone)]
pub struct SystemCommon {
    pub init: InitMode,
    /// A `kernel-package` recipe whose modules go into `/lib/modules/<release>`.
    pub kernel: Option<String>,
    /// Free space left in the ext4 image beyond what the tree needs.
    pub headroom_mib: u64,
    /// Built only when named (or needed by a named recipe), not by a plain `imagegen build`.
    pub explicit: bool,
    pub cmdline: String,
}

/// Defines a root file system kind's recipe struct: `kind` and `description`, the kind's own
/// fields, then the fields of [`SystemCommon`] (written out once here, as serde's `flatten`
/// does not combine with `deny_unknown_fields`), and its `common()`.
macro_rules! system_spec {
    ($(#[$m:meta])* pub struct $t:ident { $($(#[$fm:meta])* pub $f:ident: $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $t {
            #[serde(rename = "kind")]
            _kind: IgnoredAny,
            #[serde(default)]
            pub description: String,
            $($(#[$fm])* pub $f: $ty,)*
            #[serde(default)]
            pub init: InitMode,
            #[serde(default)]
            pub kernel: Option<String>,
            #[serde(default = "default_headroom")]
            pub headroom_mib: u64,
            #[serde(default)]
            pub explicit: bool,
            #[serde(default)]
            pub cmdline: String,
        }

        impl $t {
            pub fn common(&self) -> SystemCommon {
                SystemCommon {
                    init: self.init,
                    kernel: self.kernel.clone(),
                    headroom_mib: self.headroom_mib,
                    explicit: self.explicit,
                    cmdline: self.cmdline.clone(),
                }
            }
        }
    };
}

system_spec! {
    /// `kind = "debian-rootfs"`: a Debian system made by mmdebstrap.
    pub struct DebianRootfsSpec {
        /// `bookworm`, `trixie`, …
        pub suite: String,
        #[serde(default = "default_variant")]
        pub variant: String,
        /// Packages installed on top of the variant (`--include`).
        #[serde(default)]
        pub packages: Vec<String>,
        /// sources.list one-line entries (`deb URI SUITE… COMPONENT…`); default: the host's apt
        /// sources for the suite and its -updates and -security suites.
        #[serde(default)]
        pub mirrors: Vec<String>,
    }
}

system_spec! {
    /// `kind = "rootfs-import"`: a directory or tarball the user points at.
    pub struct RootfsImportSpec {
        /// A directory or a tarball (plain, gzip, xz, bzip2 or zstd): absolute, or relative to
        /// the recipe directory.
        pub path: String,
    }
}

/// The container image formats `oci-image` takes (skopeo transports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OciFormat {
    /// An OCI image layout directory.
    Oci,
    /// A tar of an OCI image layout (`podman save --format oci-archive`).
    OciArchive,
    /// `docker save` output.
    DockerArchive,
}

impl OciFormat {
    /// skopeo's transport name.
    pub fn transport(self) -> &'static str {
        match self {
            OciFormat::Oci => "oci",
            OciFormat::OciArchive => "oci-archive",
            OciFormat::DockerArchive => "docker-archive",
        }
    }
}

system_spec! {
    /// `kind = "oci-image"`: a container image's layers, applied by umoci.
    pub struct OciImageSpec {
        /// The layout directory or archive: absolute, or relative to the recipe directory.
        pub path: String,
        /// Default: a directory is `oci`; a tar holding `oci-layout` is `oci-archive`, one
        /// holding `manifest.json` is `docker-archive`.
        #[serde(default)]
        pub format: Option<OciFormat>,
        /// The image in a layout or archive holding several (a tag, or `name:tag` for a docker
        /// archive); default: the only one.
        #[serde(default)]
        pub image: Option<String>,
    }
}

/// `kind = "kernel-package"`: a prebuilt kernel, from a pinned Debian `linux-image-*` package
/// (with its modules) or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPackageSpec {
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    pub description: String,
    /// The pinned `linux-image-*` package (`{ name, version, sha256 }`).
    #[serde(default)]
    pub package: Option<DebPin>,
    /// Or a kernel image file (absolute, or relative to the recipe directory) ...
    #[serde(default)]
    pub file: Option<String>,
    /// ... and its sha256.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub explicit: bool,
    #[serde(default)]
    pub cmdline: String,
}

/// `kind = "agent"`: the workspace's guest agent, built by cargo.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_agent_package")]
    pub package: String,
    /// Binary target; default: the package name.
    #[serde(default)]
    pub bin: Option<String>,
    #[serde(default = "default_agent_target")]
    pub target: String,
    #[serde(default = "default_agent_profile")]
    pub profile: String,
    /// Cargo features to enable (e.g. `evil` for the fault tests' hostile agent).
    #[serde(default)]
    pub features: Vec<String>,
}

/// `kind = "initramfs"` / `"rootfs"`: a small root tree around the agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeSpec {
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    pub description: String,
    /// Recipe (kind agent) whose binary goes in.
    #[serde(default = "default_agent_recipe")]
    pub agent: String,
    /// Where it goes; default `/init` (initramfs) or `/sbin/guest-agent` (rootfs).
    #[serde(default)]
    pub agent_path: Option<String>,
    #[serde(default)]
    pub busybox: bool,
    /// A host busybox (absolute path, hashed as an input); the default when `busybox_package`
    /// is not given.
    #[serde(default)]
    pub busybox_path: Option<String>,
    /// Busybox from a pinned Debian package (its `/bin/busybox`): what the shipped recipes use.
    #[serde(default)]
    pub busybox_package: Option<DebPin>,
    #[serde(default)]
    pub dirs: Vec<DirSpec>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// Debian packages whose files go in (see [`PackageSpec`]).
    #[serde(default)]
    pub packages: Vec<PackageSpec>,
    #[serde(default)]
    pub cmdline: String,
}

/// A Debian package pinned by version and sha256, fetched with `apt-get download
/// NAME=VERSION`; `paths` says what of it goes into the tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    pub name: String,
    pub version: String,
    /// The .deb file's sha256.
    pub sha256: String,
    /// Absolute paths in the package: a file or symlink, or a directory ending in `/`
    /// (everything below it). Empty: the whole package. Each must match something.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// A Debian package pinned by name, version and the .deb's sha256 (`busybox_package`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebPin {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// Where a kernel's source tarball comes from: a file (`source = "PATH"`: an absolute host
/// path, or relative to `recipes/`), or a file in a pinned Debian package (`[source]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    File(String),
    Deb(DebSource),
}

/// `[source]` of a kernel recipe: `path` inside package `package` at `version`, whose .deb
/// has `sha256`. imagegen fetches that exact .deb and takes the tarball out of it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebSource {
    pub package: String,
    pub version: String,
    /// The .deb file's sha256 (the recipe's top-level `sha256` is the tarball's).
    pub sha256: String,
    /// Absolute path of the tarball in the package.
    pub path: String,
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SourceSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a tarball path or a table { package, version, sha256, path }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SourceSpec, E> {
                Ok(SourceSpec::File(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<SourceSpec, A::Error> {
                DebSource::deserialize(de::value::MapAccessDeserializer::new(m)).map(SourceSpec::Deb)
            }
        }
        d.deserialize_any(V)
    }
}

/// `kind = "deb-file"`: one file out of a pinned Debian package (a kernel, a hypervisor).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebFileSpec {
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    pub description: String,
    pub package: String,
    pub version: String,
    pub sha256: String,
    /// Absolute path of the file in the package.
    pub path: String,
    /// The file is gzip'd and the artifact is its decompressed content.
    #[serde(default)]
    pub gunzip: bool,
    #[serde(default)]
    pub cmdline: String,
}

/// A directory: `"/path"` (mode 0755) or `{ path = "/tmp", mode = 0o1777 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSpec {
    pub path: String,
    pub mode: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirTable {
    path: String,
    #[serde(default = "default_dir_mode")]
    mode: u32,
}

impl<'de> Deserialize<'de> for DirSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DirSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path string or a table { path, mode }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DirSpec, E> {
                Ok(DirSpec { path: s.to_string(), mode: default_dir_mode() })
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<DirSpec, A::Error> {
                let t = DirTable::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(DirSpec { path: t.path, mode: t.mode })
            }
        }
        d.deserialize_any(V)
    }
}

/// An extra file: exactly one of `src` (under recipes/), `contents` (inline text) or
/// `recipe` (another recipe's output, `output` naming which).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub dst: String,
    #[serde(default)]
    pub src: Option<String>,
    #[serde(default)]
    pub contents: Option<String>,
    #[serde(default)]
    pub recipe: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default = "default_file_mode")]
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeType {
    Char,
    Block,
}

/// A device node written into the archive (no root needed: the archive is ours).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub path: String,
    #[serde(rename = "type")]
    pub node_type: NodeType,
    pub major: u32,
    pub minor: u32,
    #[serde(default = "default_node_mode")]
    pub mode: u32,
}

/// `kind = "oci-bundle"`: `config.json` + `rootfs/` for runc/crun.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciBundleSpec {
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    pub description: String,
    /// Recipe (kind rootfs) unpacked as the bundle's `rootfs/`.
    #[serde(default = "default_rootfs_recipe")]
    pub rootfs: String,
    #[serde(default = "default_args")]
    pub args: Vec<String>,
    #[serde(default = "default_env")]
    pub env: Vec<String>,
    #[serde(default = "default_cwd")]
    pub cwd: String,
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default = "default_true")]
    pub readonly: bool,
    #[serde(default = "default_true")]
    pub no_new_privileges: bool,
    /// Kept in every capability set (bounding, effective, permitted; not inheritable or ambient).
    #[serde(default = "default_capabilities")]
    pub capabilities: Vec<Capability>,
}

/// `kind = "disk"`: raw pseudo-random bytes for the disk benchmark.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_size_mib")]
    pub size_mib: u64,
    #[serde(default)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "um")]
    Um,
}

impl Arch {
    /// `make ARCH=…`.
    pub fn make_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Um => "um",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseConfig {
    Tinyconfig,
    Defconfig,
}

impl BaseConfig {
    pub fn make_target(self) -> &'static str {
        match self {
            BaseConfig::Tinyconfig => "tinyconfig",
            BaseConfig::Defconfig => "defconfig",
        }
    }
}

/// `kind = "kernel"`: a Linux kernel from a pinned source tarball.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    pub description: String,
    /// Where the source tarball comes from.
    pub source: SourceSpec,
    /// The source tarball's sha256.
    pub sha256: String,
    pub arch: Arch,
    #[serde(default = "default_base_config")]
    pub base_config: BaseConfig,
    #[serde(default)]
    pub fragments: Vec<String>,
    #[serde(default)]
    pub patches: Vec<String>,
    pub target: String,
    pub output: String,
    #[serde(default)]
    pub cmdline: String,
}

fn default_agent_package() -> String {
    "guest-agent".into()
}
fn default_agent_target() -> String {
    "x86_64-unknown-linux-musl".into()
}
fn default_agent_profile() -> String {
    "agent".into()
}
fn default_agent_recipe() -> String {
    "agent".into()
}
fn default_dir_mode() -> u32 {
    0o755
}
fn default_file_mode() -> u32 {
    0o644
}
fn default_node_mode() -> u32 {
    0o600
}
fn default_rootfs_recipe() -> String {
    "rootfs".into()
}
fn default_args() -> Vec<String> {
    ["/sbin/guest-agent", "--ctl", "fd:3"].map(String::from).to_vec()
}
fn default_env() -> Vec<String> {
    vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]
}
fn default_cwd() -> String {
    "/".into()
}
fn default_hostname() -> String {
    "virtbench".into()
}
fn default_true() -> bool {
    true
}
/// runc's `runc spec` set (AUDIT_WRITE, KILL, NET_BIND_SERVICE) plus NET_ADMIN, which the
/// agent needs to configure its eth0. SYS_BOOT stays off.
pub fn default_capabilities() -> Vec<Capability> {
    vec![Capability::AuditWrite, Capability::Kill, Capability::NetBindService, Capability::NetAdmin]
}
fn default_size_mib() -> u64 {
    64
}
fn default_variant() -> String {
    "minbase".into()
}
fn default_headroom() -> u64 {
    256
}
fn default_base_config() -> BaseConfig {
    BaseConfig::Tinyconfig
}

impl Recipe {
    /// Command line defaults recorded in the manifest (empty: none).
    pub fn cmdline(&self) -> &str {
        match &self.spec {
            Spec::Tree(t) => &t.cmdline,
            Spec::Kernel(k) => &k.cmdline,
            Spec::DebFile(d) => &d.cmdline,
            Spec::System(s) => &s.common.cmdline,
            Spec::KernelPackage(k) => &k.cmdline,
            _ => "",
        }
    }

    /// Built only when named or needed (`explicit = true`), not by a plain `imagegen build`.
    pub fn explicit(&self) -> bool {
        match &self.spec {
            Spec::System(s) => s.common.explicit,
            Spec::KernelPackage(k) => k.explicit,
            _ => false,
        }
    }

    /// (field, recipe name) of every recipe whose outputs this one takes.
    pub fn dependencies(&self) -> Vec<(String, String)> {
        match &self.spec {
            Spec::Tree(t) => {
                let mut v = vec![("agent".to_string(), t.agent.clone())];
                for (i, f) in t.files.iter().enumerate() {
                    if let Some(r) = &f.recipe {
                        v.push((format!("files[{i}].recipe"), r.clone()));
                    }
                }
                v
            }
            Spec::OciBundle(b) => vec![("rootfs".into(), b.rootfs.clone())],
            Spec::System(s) => s.common.kernel.iter().map(|k| ("kernel".to_string(), k.clone())).collect(),
            Spec::Agent(_) | Spec::Disk(_) | Spec::Kernel(_) | Spec::DebFile(_) | Spec::KernelPackage(_) => vec![],
        }
    }
}

/// Why a recipe file did not parse: toml's message and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure {
    pub message: String,
    /// 1-based; 0 when toml gave no position.
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for ParseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}, column {}: ", self.line, self.column)?;
        }
        f.write_str(self.message.trim_end())
    }
}

/// A file stem usable as a recipe name (also a file name in the store).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

#[derive(Deserialize)]
struct KindOnly {
    kind: Kind,
}

/// Parses recipe `text` named `name`. Only syntax and types are checked here; paths,
/// files and dependencies are resolved by [`crate::plan`].
pub fn parse(name: &str, file: PathBuf, text: String) -> Result<Recipe, ParseFailure> {
    let fail = |e: toml::de::Error| {
        let (line, column) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
        ParseFailure { message: e.message().to_string(), line, column }
    };
    let kind = toml::from_str::<KindOnly>(&text).map_err(fail)?.kind;
    let spec = match kind {
        Kind::Agent => Spec::Agent(toml::from_str(&text).map_err(fail)?),
        Kind::Initramfs | Kind::Rootfs => Spec::Tree(toml::from_str(&text).map_err(fail)?),
        Kind::OciBundle => Spec::OciBundle(toml::from_str(&text).map_err(fail)?),
        Kind::Disk => Spec::Disk(toml::from_str(&text).map_err(fail)?),
        Kind::Kernel => Spec::Kernel(toml::from_str(&text).map_err(fail)?),
        Kind::DebFile => Spec::DebFile(toml::from_str(&text).map_err(fail)?),
        Kind::DebianRootfs => {
            let d: DebianRootfsSpec = toml::from_str(&text).map_err(fail)?;
            Spec::System(SystemSpec { common: d.common(), source: SystemSource::Debian(d) })
        }
        Kind::RootfsImport => {
            let d: RootfsImportSpec = toml::from_str(&text).map_err(fail)?;
            Spec::System(SystemSpec { common: d.common(), source: SystemSource::Import(d) })
        }
        Kind::OciImage => {
            let d: OciImageSpec = toml::from_str(&text).map_err(fail)?;
            Spec::System(SystemSpec { common: d.common(), source: SystemSource::Oci(d) })
        }
        Kind::KernelPackage => Spec::KernelPackage(toml::from_str(&text).map_err(fail)?),
    };
    let sha256 = crate::hash::sha256_hex(text.as_bytes());
    Ok(Recipe { name: name.to_string(), kind, file, text, sha256, spec })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Recipe, ParseFailure> {
        parse("t", "t.toml".into(), text.to_string())
    }

    #[test]
    fn defaults_apply() {
        let r = p("kind = \"initramfs\"\n").unwrap();
        let Spec::Tree(t) = &r.spec else { panic!() };
        assert_eq!(t.agent, "agent");
        assert!(!t.busybox);
        assert_eq!(t.agent_path, None);
        let r = p("kind = \"disk\"\n").unwrap();
        let Spec::Disk(d) = &r.spec else { panic!() };
        assert_eq!((d.size_mib, d.seed), (64, 0));
        let r = p("kind = \"oci-bundle\"\n").unwrap();
        let Spec::OciBundle(b) = &r.spec else { panic!() };
        assert_eq!(b.args, ["/sbin/guest-agent", "--ctl", "fd:3"]);
        assert!(!b.capabilities.contains(&Capability::SysBoot));
        assert!(b.capabilities.contains(&Capability::NetAdmin));
    }

    #[test]
    fn dirs_take_strings_or_tables() {
        let r = p("kind = \"rootfs\"\ndirs = [\"/dev\", { path = \"/tmp\", mode = 0o1777 }]\n").unwrap();
        let Spec::Tree(t) = &r.spec else { panic!() };
        assert_eq!(
            t.dirs,
            [DirSpec { path: "/dev".into(), mode: 0o755 }, DirSpec { path: "/tmp".into(), mode: 0o1777 }]
        );
        let e = p("kind = \"rootfs\"\ndirs = [{ path = \"/tmp\", mood = 1 }]\n").unwrap_err();
        assert!(e.message.contains("unknown field `mood`"), "{e}");
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_kind_fields() {
        let e = p("kind = \"disk\"\nsize_mb = 3\n").unwrap_err();
        assert!(e.message.contains("unknown field `size_mb`"), "{e}");
        assert!(e.message.contains("size_mib"), "{e}");
        assert_eq!(e.line, 2);
        let e = p("kind = \"disk\"\ncmdline = \"x\"\n").unwrap_err();
        assert!(e.message.contains("unknown field `cmdline`"), "{e}");
        // The root file system kinds (system_spec!): their own and the common fields read,
        // anything else refused.
        let e = p("kind = \"rootfs-import\"\npath = \"t.tar\"\nheadroom = 1\n").unwrap_err();
        assert!(e.message.contains("unknown field `headroom`"), "{e}");
        assert!(e.message.contains("headroom_mib"), "{e}");
        let r = p("kind = \"oci-image\"\npath = \"i.tar\"\ninit = \"image\"\nheadroom_mib = 7\n").unwrap();
        let Spec::System(sys) = &r.spec else { panic!("{:?}", r.spec) };
        assert_eq!((sys.common.init, sys.common.headroom_mib), (InitMode::Image, 7));
        let e = p("kind = \"floppy\"\n").unwrap_err();
        assert!(e.message.contains("unknown variant `floppy`"), "{e}");
        let e = p("description = \"x\"\n").unwrap_err();
        assert!(e.message.contains("missing field `kind`"), "{e}");
        let e = p("kind = \"kernel\"\narch = \"x86_64\"\ntarget = \"vmlinux\"\noutput = \"vmlinux\"\n").unwrap_err();
        assert!(e.message.contains("missing field `source`"), "{e}");
        let e =
            p("kind = \"kernel\"\nsource = \"s.tar\"\narch = \"x86_64\"\ntarget = \"vmlinux\"\noutput = \"vmlinux\"\n")
                .unwrap_err();
        assert!(e.message.contains("missing field `sha256`"), "{e}");
    }

    #[test]
    fn packages_and_deb_files() {
        let r =
            p("kind = \"initramfs\"\n[[packages]]\nname = \"libc6\"\nversion = \"2.36-9\"\nsha256 = \"ab\"\n").unwrap();
        let Spec::Tree(t) = &r.spec else { panic!() };
        assert_eq!(t.packages.len(), 1);
        assert!(t.packages[0].paths.is_empty(), "default: the whole package");
        let e = p("kind = \"rootfs\"\n[[packages]]\nname = \"x\"\nversion = \"1\"\n").unwrap_err();
        assert!(e.message.contains("missing field `sha256`"), "{e}");
        let r = p("kind = \"deb-file\"\npackage = \"p\"\nversion = \"1\"\nsha256 = \"ab\"\npath = \"/boot/x.gz\"\ngunzip = true\ncmdline = \"c\"\n").unwrap();
        let Spec::DebFile(d) = &r.spec else { panic!() };
        assert!(d.gunzip);
        assert_eq!(r.cmdline(), "c");
        assert_eq!(Kind::DebFile.outputs(), ["file"]);
        let e = p("kind = \"deb-file\"\npackage = \"p\"\nversion = \"1\"\nsha256 = \"ab\"\n").unwrap_err();
        assert!(e.message.contains("missing field `path`"), "{e}");
    }

    #[test]
    fn kernel_sources_are_a_path_or_a_package_pin() {
        let k = "kind = \"kernel\"\nsha256 = \"ab\"\narch = \"um\"\ntarget = \"linux\"\noutput = \"linux\"\n";
        let r = p(&format!("{k}source = \"src.tar.xz\"\n")).unwrap();
        let Spec::Kernel(s) = &r.spec else { panic!() };
        assert_eq!(s.source, SourceSpec::File("src.tar.xz".into()));
        let r = p(&format!("{k}[source]\npackage = \"linux-source-6.12\"\nversion = \"6.12.118-1~deb12u1\"\nsha256 = \"cd\"\npath = \"/usr/src/l.tar.xz\"\n")).unwrap();
        let Spec::Kernel(s) = &r.spec else { panic!() };
        let SourceSpec::Deb(d) = &s.source else { panic!("{:?}", s.source) };
        assert_eq!(
            (d.package.as_str(), d.version.as_str(), d.sha256.as_str()),
            ("linux-source-6.12", "6.12.118-1~deb12u1", "cd")
        );
        let e = p(&format!("{k}[source]\npackage = \"p\"\nversion = \"1\"\nsha256 = \"cd\"\n")).unwrap_err();
        assert!(e.message.contains("missing field `path`"), "{e}");
        let e =
            p(&format!("{k}[source]\npackage = \"p\"\nversion = \"1\"\nsha256 = \"cd\"\npath = \"/x\"\nurl = \"u\"\n"))
                .unwrap_err();
        assert!(e.message.contains("unknown field `url`"), "{e}");
        let r = p("kind = \"initramfs\"\nbusybox = true\nbusybox_package = { name = \"busybox-static\", version = \"1\", sha256 = \"ab\" }\n").unwrap();
        let Spec::Tree(t) = &r.spec else { panic!() };
        assert_eq!(t.busybox_package.as_ref().map(|b| b.name.as_str()), Some("busybox-static"));
    }

    #[test]
    fn names() {
        assert!(valid_name("kernel-pv"));
        assert!(valid_name("a_1"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("Kernel"));
        assert!(!valid_name("a.b"));
    }
}
