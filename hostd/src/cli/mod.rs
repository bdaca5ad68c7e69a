//! The binary's command-line side: argument types and the commands too long to sit in
//! main.rs; the work itself is in the library crates.

pub(crate) mod args;
pub(crate) mod boot;
pub(crate) mod fleet;
pub(crate) mod run;
