//! Fleets across many hosts on Slurm (issue 17, docs/multihost.md): `hostd worker` on each
//! node and the coordinator of `hostd boot --engine slurm`, talking hostd's own messages.
//! The pure parts (messages and their checks, clock-offset arithmetic, splitting and
//! merging) are separate modules with unit tests.

pub mod clock;
pub mod coordinator;
pub mod guests;
pub mod link;
pub mod memory;
pub mod plan;
pub mod proto;
pub mod ring;
mod slice;
pub mod worker;
