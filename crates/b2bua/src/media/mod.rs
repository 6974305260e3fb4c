//! The one place where a call touches session descriptions.
//!
//! Every SDP body the call forwards goes through its [`MediaSession`]: from leg A towards leg B
//! with [`MediaSession::towards_b`], from leg B towards leg A with [`MediaSession::towards_a`].
//! Today's implementation, [`PassThrough`], forwards bodies unchanged (the media then flows
//! end to end). Media anchoring replaces it with a session that allocates relay ports and
//! rewrites `c=`/`m=` lines; the call state machine does not change.
//!
//! Media anchoring is [`AnchoredMedia`]: [`ports`] (the relay port range), [`sdp`] (parsing and
//! rewriting), [`relay`] (the RTP/RTCP forwarding tasks, latching and counters) and [`anchored`]
//! (the factory and session tying them to the call).

pub mod anchored;
pub mod ports;
pub mod relay;
pub mod sdp;

use std::net::SocketAddr;

use bytes::Bytes;
use serde::Serialize;

pub use anchored::{AnchoredMedia, AnchoredSession, MediaConfig};
pub use ports::{PortPair, PortPool};
pub use relay::{MediaLeg, MediaNotice, MediaNoticeKind};

/// Why an SDP body cannot be forwarded; the call answers with the SIP code given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The body is not a usable session description: `488 Not Acceptable Here`.
    #[error("unusable session description: {0}")]
    Malformed(String),
    /// No relay ports are free: `503 Service Unavailable`.
    #[error("no media ports available")]
    Exhausted,
}

impl MediaError {
    /// The SIP status a leg is answered with when its SDP cannot be handled.
    pub fn sip_status(&self) -> u16 {
        match self {
            MediaError::Malformed(_) => 488,
            MediaError::Exhausted => 503,
        }
    }
}

/// The media side of one bridged call. Dropped when the call ends, which must release every
/// resource it holds.
pub trait MediaSession: Send {
    /// An SDP body from leg A, about to be sent on leg B.
    fn towards_b(&mut self, sdp: &Bytes) -> Result<Bytes, MediaError>;
    /// An SDP body from leg B, about to be sent on leg A.
    fn towards_a(&mut self, sdp: &Bytes) -> Result<Bytes, MediaError>;
    /// What the media of this call did so far; nothing for sessions that relay nothing.
    fn stats(&self) -> MediaStats {
        MediaStats::default()
    }
}

/// Packets relayed in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    /// Packets (RTP and RTCP) forwarded.
    pub packets: u64,
    /// Bytes of those packets (UDP payload).
    pub bytes: u64,
    /// Packets received and not forwarded: not RTP/RTCP, from a source other than the latched
    /// one, with nowhere to go yet, or refused by the kernel on send.
    pub dropped: u64,
}

/// The media counters of one call, shown by the API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MediaStats {
    /// From leg A (received on A-facing sockets) towards leg B.
    pub a_to_b: DirectionStats,
    /// From leg B towards leg A.
    pub b_to_a: DirectionStats,
    /// The address leg A's RTP was latched to (first stream that latched).
    pub latched_a: Option<SocketAddr>,
    /// The address leg B's RTP was latched to (first stream that latched).
    pub latched_b: Option<SocketAddr>,
    /// How many streams (`m=` lines) have relay ports.
    pub streams: usize,
    /// Milliseconds since the last valid packet in either direction (or since both legs had
    /// sent SDP, when no packet came yet); `None` before either.
    pub idle_ms: Option<u64>,
}

/// Creates a [`MediaSession`] for each new call.
pub trait MediaFactory: Send + Sync {
    fn new_session(&self, callid: &str) -> Result<Box<dyn MediaSession>, MediaError>;

    /// Whether a new call's media (one audio stream, both legs) can be anchored now. Checked
    /// before an intent is consumed, so that a call refused for lack of ports leaves the
    /// user's intent in place for a retry.
    fn has_capacity(&self) -> bool {
        true
    }
}

/// Forwards SDP untouched: the state before media anchoring exists.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassThrough;

impl MediaSession for PassThrough {
    fn towards_b(&mut self, sdp: &Bytes) -> Result<Bytes, MediaError> {
        Ok(sdp.clone())
    }

    fn towards_a(&mut self, sdp: &Bytes) -> Result<Bytes, MediaError> {
        Ok(sdp.clone())
    }
}

impl MediaFactory for PassThrough {
    fn new_session(&self, _callid: &str) -> Result<Box<dyn MediaSession>, MediaError> {
        Ok(Box::new(PassThrough))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_forwards_bytes_unchanged() {
        let mut session = PassThrough.new_session("1").unwrap();
        let body = Bytes::from_static(b"v=0\r\n\xff");
        assert_eq!(session.towards_b(&body).unwrap(), body);
        assert_eq!(session.towards_a(&body).unwrap(), body);
        assert_eq!(MediaError::Exhausted.sip_status(), 503);
        assert_eq!(MediaError::Malformed("x".into()).sip_status(), 488);
    }
}
