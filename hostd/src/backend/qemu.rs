//! `qemu-microvm` and `qemu-full` backends: being implemented (see issue 4).

use super::{Backend, BackendKind, BackendOptions, GuestSpec, Images, LaunchError, Launched, Unavailable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Microvm,
    Full,
}

pub struct Qemu {
    profile: Profile,
}

impl Qemu {
    pub fn new(profile: Profile, _images: &Images, _opts: &BackendOptions) -> Self {
        Self { profile }
    }
}

impl Backend for Qemu {
    fn kind(&self) -> BackendKind {
        match self.profile {
            Profile::Microvm => BackendKind::QemuMicrovm,
            Profile::Full => BackendKind::QemuFull,
        }
    }
    async fn probe(&self) -> Result<String, Unavailable> {
        Err(Unavailable { backend: self.kind().name(), reason: "not implemented yet".into() })
    }
    async fn launch(&self, _spec: &GuestSpec) -> Result<Launched, LaunchError> {
        Err(LaunchError::Channel("qemu backend not implemented yet".into()))
    }
}
