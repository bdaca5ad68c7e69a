//! `ns` backend: being implemented (see issue 4); until then its probe says so.

use super::{Backend, BackendKind, BackendOptions, GuestSpec, Images, LaunchError, Launched, Unavailable};

pub struct Ns {}

impl Ns {
    pub fn new(_images: &Images, _opts: &BackendOptions) -> Self {
        Self {}
    }
}

impl Backend for Ns {
    fn kind(&self) -> BackendKind {
        BackendKind::Ns
    }
    async fn probe(&self) -> Result<String, Unavailable> {
        Err(Unavailable { backend: "ns", reason: "not implemented yet".into() })
    }
    async fn launch(&self, _spec: &GuestSpec) -> Result<Launched, LaunchError> {
        Err(LaunchError::Channel("ns backend not implemented yet".into()))
    }
}
