//! `uml` backend: being implemented (see issue 4); until then its probe says so.

use super::{Backend, BackendKind, BackendOptions, GuestSpec, Images, LaunchError, Launched, Unavailable};

pub struct Uml {}

impl Uml {
    pub fn new(_images: &Images, _opts: &BackendOptions) -> Self {
        Self {}
    }
}

impl Backend for Uml {
    fn kind(&self) -> BackendKind {
        BackendKind::Uml
    }
    async fn probe(&self) -> Result<String, Unavailable> {
        Err(Unavailable { backend: "uml", reason: "not implemented yet".into() })
    }
    async fn launch(&self, _spec: &GuestSpec) -> Result<Launched, LaunchError> {
        Err(LaunchError::Channel("uml backend not implemented yet".into()))
    }
}
