//! # media
//!
//! callbridge's RTP/RTCP data plane (issue 9). First part: the sans-IO logic of one stream.

pub mod packet;
mod stream;

pub use packet::{is_rtcp, is_rtp};
pub use stream::{
    DirectionCounters, DropReason, Leg, SocketKind, StreamCounters, StreamState, Verdict,
};
