//! dom0's end of a system image in the lab: the host hands the image's ext4 to the lab
//! machine as a read-only virtio disk (serial [`SYSTEM_SERIAL`]); dom0 finds it by that
//! serial, checks its size and sha256 against the job's (what the host's store manifest
//! says; the job is untrusted input like any message), and hands the device to the
//! unchanged xen backend as the system image. Each domU's qcow2 overlay over it is made in
//! the guest's work directory in dom0's tmpfs: overlays are small, the base stays the disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::ferry::{LabSystem, SystemDisk, SYSTEM_SERIAL};
use crate::backend::rootdisk::{NoImageInit, System};

/// How long dom0 waits for the disk to appear (its virtio driver probes it as the
/// module loads, before hostd starts; this covers a slow probe under TCG).
const APPEAR: Duration = Duration::from_secs(10);

/// Why dom0 will not boot the job's system image; each step that can fail.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum SystemDiskError {
    #[error("the job's system image has a bad {field}: {value:?}")]
    BadJob { field: &'static str, value: String },
    #[error(transparent)]
    NoInit(#[from] NoImageInit),
    #[error("listing {}: {error}", dir.display())]
    ListDisks { dir: PathBuf, error: std::io::Error },
    #[error("system {name}: no disk with serial {SYSTEM_SERIAL} under {} after {}s (is the virtio_blk module loaded? the lab machine carries the image as a virtio disk)", dir.display(), APPEAR.as_secs())]
    NoDisk { name: String, dir: PathBuf },
    #[error("system {name}: reading the size of {device}: {error}")]
    Size { name: String, device: String, error: String },
    #[error("system {name}: the disk {device} has {found} bytes, the image {expected}: not the job's image")]
    SizeMismatch { name: String, device: String, found: u64, expected: u64 },
    #[error("system {name}: hashing {device}: {error}")]
    Hash { name: String, device: String, error: String },
    #[error("system {name}: the disk {device} has sha256 {found}, the image's manifest {expected}: not booting it")]
    HashMismatch { name: String, device: String, found: String, expected: String },
}

/// The job's system image as the disk under `dev` that `sys_block` (`/sys/block`) lists with
/// serial [`SYSTEM_SERIAL`], once its size and sha256 are the job's.
pub(super) async fn find(
    job: &LabSystem,
    sys_block: &Path,
    dev: &Path,
) -> Result<(System, SystemDisk), SystemDiskError> {
    check_job(job)?;
    let name = job.name.clone();
    let t0 = Instant::now();
    let disk = loop {
        if let Some(d) = by_serial(sys_block)? {
            break d;
        }
        if t0.elapsed() > APPEAR {
            return Err(SystemDiskError::NoDisk { name, dir: sys_block.to_path_buf() });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let device = dev.join(&disk);
    let shown = device.display().to_string();
    let sectors = std::fs::read_to_string(sys_block.join(&disk).join("size"))
        .map_err(|e| e.to_string())
        .and_then(|s| s.trim().parse::<u64>().map_err(|e| format!("{s:?}: {e}")));
    let bytes = sectors.map_err(|error| SystemDiskError::Size {
        name: name.clone(),
        device: shown.clone(),
        error,
    })? * 512;
    if bytes != job.ext4_bytes {
        return Err(SystemDiskError::SizeMismatch {
            name,
            device: shown,
            found: bytes,
            expected: job.ext4_bytes,
        });
    }
    let t_hash = Instant::now();
    let path = device.clone();
    let hashed = tokio::task::spawn_blocking(move || imagegen::hash::sha256_file(&path))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let (sha, _) = hashed.map_err(|error| SystemDiskError::Hash {
        name: name.clone(),
        device: shown.clone(),
        error,
    })?;
    if sha != job.ext4_sha256 {
        return Err(SystemDiskError::HashMismatch {
            name,
            device: shown,
            found: sha,
            expected: job.ext4_sha256.clone(),
        });
    }
    let system = System {
        name,
        ext4: device,
        ext4_uuid: job.ext4_uuid.clone(),
        // dom0 has no unpacked tree: only containers use one, and the lab boots domUs.
        tree: PathBuf::new(),
        init: job.init,
        image_init: job.image_init.clone(),
        private: false,
    };
    system.check()?;
    let hash_s = t_hash.elapsed().as_secs_f64();
    Ok((system, SystemDisk { device: shown, sha256: sha, hash_s }))
}

/// The name of the disk under `sys_block` whose serial is [`SYSTEM_SERIAL`] (virtio disks
/// only: `vd*`), if there is one yet.
fn by_serial(sys_block: &Path) -> Result<Option<String>, SystemDiskError> {
    let list = |error| SystemDiskError::ListDisks { dir: sys_block.to_path_buf(), error };
    let mut names = Vec::new();
    for e in std::fs::read_dir(sys_block).map_err(list)? {
        let name = e.map_err(list)?.file_name().to_string_lossy().into_owned();
        if name.starts_with("vd") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.into_iter().find(|n| {
        std::fs::read_to_string(sys_block.join(n).join("serial"))
            .is_ok_and(|s| s.trim() == SYSTEM_SERIAL)
    }))
}

/// The job's fields dom0 uses, checked before use: the UUID goes on every domU's kernel
/// command line, so it must be a UUID and nothing more.
fn check_job(job: &LabSystem) -> Result<(), SystemDiskError> {
    let bad = |field, value: &str| Err(SystemDiskError::BadJob { field, value: value.into() });
    let name_ok = !job.name.is_empty()
        && job.name.len() <= 64
        && job
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !name_ok {
        return bad("name", &job.name);
    }
    if !imagegen::hash::is_sha256_hex(&job.ext4_sha256) {
        return bad("ext4_sha256", &job.ext4_sha256);
    }
    if !is_uuid(&job.ext4_uuid) {
        return bad("ext4_uuid", &job.ext4_uuid);
    }
    Ok(())
}

/// 8-4-4-4-12 hex digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::rootdisk::InitMode;

    /// A fake /sys/block with `disks` (name, serial) each of `bytes`, and /dev files with
    /// `data` for each.
    fn fake(disks: &[(&str, &str)], data: &[u8]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        for (name, serial) in disks {
            let b = d.path().join("block").join(name);
            std::fs::create_dir_all(&b).unwrap();
            std::fs::write(b.join("serial"), format!("{serial}\n")).unwrap();
            std::fs::write(b.join("size"), format!("{}\n", data.len() / 512)).unwrap();
            std::fs::write(d.path().join("dev").join(name), data).unwrap();
        }
        d
    }

    fn job(data: &[u8]) -> LabSystem {
        LabSystem {
            name: "hostd-test-system".into(),
            ext4_sha256: imagegen::hash::sha256_reader(data).unwrap().0,
            ext4_bytes: data.len() as u64,
            ext4_uuid: "0123abcd-4567-89ab-cdef-0123456789ab".into(),
            init: InitMode::Agent,
            image_init: Some("/sbin/init".into()),
        }
    }

    async fn find_in(d: &tempfile::TempDir, j: &LabSystem) -> Result<(System, SystemDisk), String> {
        find(j, &d.path().join("block"), &d.path().join("dev")).await.map_err(|e| e.to_string())
    }

    /// The disk with the lab's serial is the image, among others, once its hash is the job's.
    #[tokio::test]
    async fn the_system_disk_is_found_by_serial_and_checked() {
        let data = vec![7u8; 4096];
        let d = fake(&[("vda", "other"), ("vdb", SYSTEM_SERIAL)], &data);
        let (sys, disk) = find_in(&d, &job(&data)).await.unwrap();
        assert_eq!(sys.ext4, d.path().join("dev/vdb"));
        assert_eq!(
            sys.cmdline(),
            ["vb.root=0123abcd-4567-89ab-cdef-0123456789ab", "vb.init=agent"]
        );
        assert_eq!(disk.sha256, job(&data).ext4_sha256);
    }

    /// Another image's bytes, another size, or a job that is not what it claims are each
    /// refused, naming the problem.
    #[tokio::test]
    async fn a_wrong_disk_or_job_is_refused() {
        let data = vec![7u8; 4096];
        let d = fake(&[("vda", SYSTEM_SERIAL)], &data);
        let other = job(&[8u8; 4096]);
        let e = find_in(&d, &other).await.unwrap_err();
        assert!(e.contains("has sha256") && e.contains("not booting it"), "{e}");
        let e = find_in(&d, &LabSystem { ext4_bytes: 8192, ..job(&data) }).await.unwrap_err();
        assert!(e.contains("has 4096 bytes, the image 8192"), "{e}");
        let evil = LabSystem { ext4_uuid: "x init=/bin/sh".into(), ..job(&data) };
        assert!(find_in(&d, &evil).await.unwrap_err().contains("bad ext4_uuid"));
        let evil = LabSystem { name: "../x".into(), ..job(&data) };
        assert!(find_in(&d, &evil).await.unwrap_err().contains("bad name"));
        let noinit = LabSystem { init: InitMode::Image, image_init: None, ..job(&data) };
        assert!(find_in(&d, &noinit).await.unwrap_err().contains("no usable /sbin/init"));
    }
}
