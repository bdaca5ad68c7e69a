//! `firecracker` backend: being implemented (see issue 4); until then its probe says so.

use super::{Backend, BackendKind, BackendOptions, GuestSpec, Images, LaunchError, Launched, Unavailable};

pub struct Firecracker {}

impl Firecracker {
    pub fn new(_images: &Images, _opts: &BackendOptions) -> Self {
        Self {}
    }
}

impl Backend for Firecracker {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }
    async fn probe(&self) -> Result<String, Unavailable> {
        Err(Unavailable { backend: "firecracker", reason: "not implemented yet".into() })
    }
    async fn launch(&self, _spec: &GuestSpec) -> Result<Launched, LaunchError> {
        Err(LaunchError::Channel("firecracker backend not implemented yet".into()))
    }
}
