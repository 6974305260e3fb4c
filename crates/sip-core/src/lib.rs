//! # sip-core
//!
//! SIP for callbridge, in four layers; the protocol logic does no I/O.
//!
//! - [`message`]: bytes ⇄ [`Message`]. rsip 0.4 checks URI grammar; framing, the header model
//!   (compact names, folding, multi-value rows, byte bodies, `Content-Length` recomputed on
//!   write) and the typed headers are our own, because rsip gets those wrong (see the module).
//! - [`transport`]: UDP and TCP on one port under tokio, with a sans-IO [`StreamFramer`]
//!   (`Content-Length` framing, CRLF keep-alives), `received`/`rport` stamping, responses on
//!   the connection their request came on, and malformed input answered 400 or dropped — both
//!   counted.
//! - [`transaction`]: the RFC 3261 §17 state machines (and RFC 6026) in one sans-IO
//!   [`TransactionLayer`]: feed it messages and the time, drain transmits and events. All
//!   timers live in one heap; tests drive them with a fake clock.
//! - [`dialog`]: UAC/UAS dialogs (§12): ids, CSeq spaces, route sets, target refresh, and the
//!   in-dialog requests and ACKs built from them.
//!
//! The shape follows quinn-proto and str0m: `handle_*` inputs, `poll_*` outputs,
//! `poll_timeout` for the next deadline. A runtime owns the sockets and calls these; the
//! [`transport`] module is the tokio half.
//!
//! [`StreamFramer`]: transport::StreamFramer
//! [`TransactionLayer`]: transaction::TransactionLayer

pub mod capacity;
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
