//! # sip-core
//!
//! SIP messages, UDP/TCP transport, and the RFC 3261 transaction and dialog layers.
//! (The full front page is written once all layers exist.)

pub mod dialog;
pub mod ids;
pub mod message;
pub mod peer;
pub mod transaction;
pub mod transport;

pub use message::{
    CSeq, Header, HeaderName, Headers, Message, Method, NameAddr, Params, ParseError, ParseLimits,
    Request, Response, Scheme, Transport, Uri, Via,
};
pub use peer::{ConnectionId, Peer, Transmit};
