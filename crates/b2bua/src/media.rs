//! The one place where a call touches session descriptions.
//!
//! Every SDP body the call forwards goes through its [`MediaSession`]: from leg A towards leg B
//! with [`MediaSession::towards_b`], from leg B towards leg A with [`MediaSession::towards_a`].
//! Today's implementation, [`PassThrough`], forwards bodies unchanged (the media then flows
//! end to end). Media anchoring replaces it with a session that allocates relay ports and
//! rewrites `c=`/`m=` lines; the call state machine does not change.

use bytes::Bytes;

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
}

/// Creates a [`MediaSession`] for each new call.
pub trait MediaFactory: Send + Sync {
    fn new_session(&self, callid: &str) -> Result<Box<dyn MediaSession>, MediaError>;
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
