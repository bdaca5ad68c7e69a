//! The contract between `hostd` and `guest-agent`: framing with limits and resynchronisation
//! ([`frame`]), the messages ([`msg`]) and the microbenchmark requests and results ([`mod@bench`]).
//! No I/O here, so both the synchronous agent and the async host use the same code.

#![warn(missing_docs)]

pub mod bench;
pub mod frame;
pub mod msg;

pub use bench::{BenchReport, BenchRequest, BenchSpec, InstanceResult, Resource, Work};
pub use frame::{FrameDecoder, FrameError, MAX_PAYLOAD};
pub use msg::{
    Command, GuestMsg, Hello, MessageError, Outcome, Reply, ReplyBody, Request, PROTOCOL_VERSION,
};

/// Frames a guest message.
pub fn frame_guest(msg: &GuestMsg) -> Result<Vec<u8>, FrameError> {
    frame::encode(&msg.encode(), MAX_PAYLOAD)
}

/// Frames a host request.
pub fn frame_request(req: &Request) -> Result<Vec<u8>, FrameError> {
    frame::encode(&req.encode(), MAX_PAYLOAD)
}
