//! The skip gates, from the workspace's one copy (`hostd/test-support`): a test that cannot
//! run here records why, and `scripts/test` lists it after the run.

#[allow(unused_imports)] // not every test file including this module has a privileged test
pub use hostd_test_support::{skip, unless_root};
