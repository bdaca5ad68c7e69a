//! `oci` backend: being implemented (see issue 4); until then its probe says so.

use super::{Backend, BackendKind, BackendOptions, GuestSpec, Images, LaunchError, Launched, Unavailable};

pub struct Oci {}

impl Oci {
    pub fn new(_images: &Images, _opts: &BackendOptions) -> Self {
        Self {}
    }
}

impl Backend for Oci {
    fn kind(&self) -> BackendKind {
        BackendKind::Oci
    }
    async fn probe(&self) -> Result<String, Unavailable> {
        Err(Unavailable { backend: "oci", reason: "not implemented yet".into() })
    }
    async fn launch(&self, _spec: &GuestSpec) -> Result<Launched, LaunchError> {
        Err(LaunchError::Channel("oci backend not implemented yet".into()))
    }
}
