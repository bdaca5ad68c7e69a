#![warn(missing_docs)]
//! hostd's host facilities: what a run needs from the machine, whatever it boots. Nothing
//! here knows a backend, a measurement or a report (the crate cannot name them).

pub mod cgroup;
pub mod console;
pub mod limits;
pub mod netem;
pub mod netlab;
pub mod pagecache;
pub mod pressure;
pub mod results;
pub mod rtnl;
pub mod runstate;
