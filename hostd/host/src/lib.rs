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
pub mod scratch;

/// Declares an enum whose values are a closed set of names: results store them, reports
/// group and order by them, the schema lists them. It gets the derives all such enums
/// share (copied, compared, ordered, hashed, serialized, in the JSON schema); the item's own
/// attributes (its serde names, a `clap::ValueEnum` under the `clap` feature) follow.
/// The calling crate needs `serde` and `schemars`, as every crate with records has.
#[macro_export]
macro_rules! named_set {
    ($item:item) => {
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            ::serde::Serialize,
            ::serde::Deserialize,
            ::schemars::JsonSchema,
        )]
        $item
    };
}
