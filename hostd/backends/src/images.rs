//! Finding the artifacts a backend boots: the imagegen store's current builds (kernels,
//! initramfs, rootfs and bundle trees, data disk, agent), with their hashes for provenance.

use std::path::{Path, PathBuf};

use crate::backend::rootdisk::{InitMode, System};
use crate::backend::{BackendKind, Images, Kernel};

/// Why the images a run needs cannot be found or trusted. The messages say what to run.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum ImagesError {
    #[error("agent binary {} does not exist", .0.display())]
    NoAgentAt(PathBuf),
    #[error("VIRTBENCH_AGENT={} does not exist", .0.display())]
    NoAgentEnv(PathBuf),
    #[error(
        "no guest-agent binary found: run `imagegen build` (or scripts/build-agent), or pass --agent PATH"
    )]
    NoAgent,
    #[error("locating the image store: {0}")]
    Config(imagegen::ConfigError),
    #[error("hashing the agent {}: {error}", path.display())]
    HashAgent { path: PathBuf, error: std::io::Error },
    #[error("no image store at {}: run `imagegen build` ({error})", path.display())]
    NoStore { path: PathBuf, error: imagegen::StoreError },
    /// A store artifact missing, or not what its manifest says.
    #[error("image {recipe}: {reason}")]
    Artifact { recipe: String, reason: String },
}

type Result<T, E = ImagesError> = std::result::Result<T, E>;

/// The workspace this hostd was built from (where `target/` and `images/` live), unless
/// $VIRTBENCH_ROOT says otherwise.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("VIRTBENCH_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The store images (their names in [`Images::hashes`], whose entries are `NAME` and
/// `NAME (PART)`) that guests of `kind` boot: what a fleet across hosts must have alike on
/// every host. A guest with a system image boots it as well (`system NAME`), instead of
/// the agent's rootfs or bundle for a container.
pub fn booted_by(kind: BackendKind, with_system: bool) -> &'static [&'static str] {
    match (kind, with_system) {
        (BackendKind::Native, _) => &["agent"],
        // A container boots the agent's tree (the rootfs, the OCI bundle), or with a
        // system image the agent as PID 1 over the system's tree.
        (BackendKind::Ns, false) => &["agent", "rootfs"],
        (BackendKind::Oci, false) => &["agent", "oci-bundle"],
        (BackendKind::Ns | BackendKind::Oci, true) => &["agent"],
        // The initramfs holds the agent; a system image is the root disk beside it.
        (BackendKind::Uml, _) => &["kernel-uml", "initramfs"],
        (
            BackendKind::QemuMicrovm
            | BackendKind::QemuFull
            | BackendKind::Firecracker
            | BackendKind::Xen,
            _,
        ) => &["kernel-pv", "initramfs"],
    }
}

/// The agent binary built in this workspace by scripts/build-agent.
fn workspace_agent() -> PathBuf {
    workspace_root().join("target/x86_64-unknown-linux-musl/agent/guest-agent")
}

/// Resolves the agent binary for the native backend: explicit path, then the store's, then
/// $VIRTBENCH_AGENT, then the musl build in this workspace.
pub fn find_agent(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(ImagesError::NoAgentAt(p.to_path_buf()));
        }
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("VIRTBENCH_AGENT") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(ImagesError::NoAgentEnv(p));
        }
        return Ok(p);
    }
    let built = workspace_agent();
    if built.is_file() {
        return Ok(built);
    }
    Err(ImagesError::NoAgent)
}

/// Everything the store has, plus the agent. Recipes not built yet stay None (a backend
/// that needs one says so in its probe); `notes` says what is stale or missing.
pub fn resolve(agent: Option<&Path>) -> Result<Images> {
    let cfg = imagegen::Config::for_workspace(&workspace_root()).map_err(ImagesError::Config)?;
    let mut images = Images::default();
    let store = match imagegen::Store::open(&cfg.store) {
        Ok(s) => Some(s),
        Err(e) => {
            images.notes.push(format!(
                "no image store at {} ({e}): run `imagegen build`",
                cfg.store.display()
            ));
            None
        }
    };
    if let Some(store) = &store {
        fill_from_store(store, &mut images);
    }
    images.agent = match agent {
        Some(p) => find_agent(Some(p))?,
        None => match store.as_ref().and_then(|s| output(s, "agent", "agent", &mut images)) {
            Some(p) => p,
            None => find_agent(None)?,
        },
    };
    images.hashes.insert(
        "agent".into(),
        imagegen::hash::sha256_file(&images.agent)
            .map(|(h, _)| h)
            .map_err(|error| ImagesError::HashAgent { path: images.agent.clone(), error })?,
    );
    // The VM images hold the agent imagegen built; a newer workspace build means a stale store.
    let built = workspace_agent();
    if let (Some(store_agent), true) = (images.hashes.get("agent").cloned(), built.is_file()) {
        if imagegen::hash::sha256_file(&built)
            .ok()
            .map(|(h, _)| h)
            .is_some_and(|h| h != store_agent)
            && agent.is_none()
        {
            images.notes.push(format!(
                "{} differs from the image store's agent: guests run the store's; run `imagegen build` to rebuild the images",
                built.display()
            ));
        }
    }
    Ok(images)
}

fn fill_from_store(store: &imagegen::Store, images: &mut Images) {
    images.initramfs = output(store, "initramfs", "initramfs", images).and_then(|p| {
        match crate::integrity::check_initramfs(&p) {
            Ok(()) => Some(p),
            Err(e) => {
                images.notes.push(format!("image initramfs: {e}"));
                None
            }
        }
    });
    images.disk = output(store, "disk", "disk", images);
    images.rootfs = tree(store, "rootfs", "rootfs", images);
    images.bundle = tree(store, "oci-bundle", "bundle", images);
    images.kernel_uml = kernel(store, "kernel-uml", images);
    images.kernel_pv = kernel(store, "kernel-pv", images);
}

/// A current store artifact outside [`Images`] (the Xen lab's hypervisor, dom0 kernel and
/// dom0 initramfs), checked against its manifest: its path, sha256 and recorded command line.
pub fn store_artifact(recipe: &str, output: &str) -> Result<(PathBuf, String, String)> {
    let cfg = imagegen::Config::for_workspace(&workspace_root()).map_err(ImagesError::Config)?;
    let store = imagegen::Store::open(&cfg.store)
        .map_err(|error| ImagesError::NoStore { path: cfg.store.clone(), error })?;
    let artifact = |reason: String| ImagesError::Artifact { recipe: recipe.to_string(), reason };
    let m = store.current(recipe).map_err(|e| artifact(format!("{e}: run `imagegen build`")))?;
    let out = m.output(output).ok_or_else(|| artifact(format!("has no output {output}")))?;
    let path = store.output_path(&m, output).map_err(|e| artifact(e.to_string()))?;
    // Like every image hostd boots: refused if its bytes are not its manifest's.
    crate::integrity::check_blob(&path, &out.sha256).map_err(|e| artifact(e.to_string()))?;
    Ok((path, out.sha256.clone(), m.cmdline.clone().unwrap_or_default()))
}

/// A recipe's output path, recording its hash and its recipe's.
fn output(
    store: &imagegen::Store,
    recipe: &str,
    name: &str,
    images: &mut Images,
) -> Option<PathBuf> {
    let m = match store.current(recipe) {
        Ok(m) => m,
        Err(e) => {
            images.notes.push(format!("image {recipe}: {e}"));
            return None;
        }
    };
    let out = m.output(name)?;
    // Refused before any guest boots it: an artifact whose bytes are not its manifest's.
    match store.output_path(&m, name).map_err(|e| e.to_string()).and_then(|p| {
        crate::integrity::check_blob(&p, &out.sha256).map_err(|e| e.to_string()).map(|()| p)
    }) {
        Ok(p) => {
            images.hashes.insert(recipe.to_string(), out.sha256.clone());
            images.hashes.insert(format!("{recipe} (recipe)"), m.recipe_file.sha256.clone());
            Some(p)
        }
        Err(e) => {
            images.notes.push(format!("image {recipe}: {e}"));
            None
        }
    }
}

fn tree(store: &imagegen::Store, recipe: &str, name: &str, images: &mut Images) -> Option<PathBuf> {
    output(store, recipe, name, images)?;
    let sha = images.hashes.get(recipe)?.clone();
    match store.materialize_tree(&sha) {
        Ok(p) => match crate::integrity::check_tree(store, &sha) {
            Ok(()) => Some(p),
            Err(e) => {
                images.notes.push(format!("image {recipe}: {e}"));
                None
            }
        },
        Err(e) => {
            images.notes.push(format!("image {recipe}: unpacking: {e}"));
            None
        }
    }
}

fn kernel(store: &imagegen::Store, recipe: &str, images: &mut Images) -> Option<Kernel> {
    let path = output(store, recipe, "kernel", images)?;
    let cmdline = store.current(recipe).ok()?.cmdline.unwrap_or_default();
    Some(Kernel { path, cmdline })
}

/// The system image `name` (a root file system recipe's current build: `debian-rootfs`,
/// `rootfs-import` or `oci-image`) for guests to boot with `init`, checked against its
/// manifest, its tree unpacked for containers; recorded in `images` (hash and provenance).
pub fn add_system(images: &mut Images, name: &str, init: InitMode) -> Result<()> {
    let cfg = imagegen::Config::for_workspace(&workspace_root()).map_err(ImagesError::Config)?;
    let store = imagegen::Store::open(&cfg.store)
        .map_err(|error| ImagesError::NoStore { path: cfg.store.clone(), error })?;
    let fail = |reason: String| ImagesError::Artifact { recipe: name.to_string(), reason };
    let m = store.current(name).map_err(|e| {
        fail(format!(
            "system image not in the image store {} ({e}): build it with `imagegen build {name}`",
            cfg.store.display()
        ))
    })?;
    let Some(info) = m.system.as_deref() else {
        return Err(fail(format!(
            "a {} recipe, not a root file system (kinds debian-rootfs, rootfs-import, oci-image)",
            m.kind
        )));
    };
    let out = m.output("rootfs.ext4").ok_or_else(|| fail("no rootfs.ext4 output".into()))?;
    let ext4 = store.output_path(&m, "rootfs.ext4").map_err(|e| fail(e.to_string()))?;
    crate::integrity::check_blob(&ext4, &out.sha256).map_err(|e| fail(e.to_string()))?;
    let tree =
        store.materialize_system_tree(&m).map_err(|e| fail(format!("unpacking its tree: {e}")))?;
    let system = System {
        name: name.to_string(),
        ext4,
        ext4_uuid: info.ext4_uuid.clone(),
        tree,
        init,
        image_init: info.init.clone(),
        private: false,
    };
    system.check().map_err(|e| fail(e.to_string()))?;
    images.hashes.insert(format!("system {name} (rootfs.ext4)"), out.sha256.clone());
    // The tree containers boot is unpacked from this blob (checked against it on unpacking).
    if let Some(tree) = m.output("rootfs") {
        images.hashes.insert(format!("system {name} (tree)"), tree.sha256.clone());
    }
    images.hashes.insert(format!("system {name} (recipe)"), m.recipe_file.sha256.clone());
    images.system = Some(system);
    Ok(())
}
