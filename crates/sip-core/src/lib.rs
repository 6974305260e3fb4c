//! # sip-core
//!
//! SIP for callbridge, in four layers; the protocol logic does no I/O.
//!
//! - [`message`]: bytes ⇄ [`Message`]. rsip 0.4 checks URI grammar; framing, the header model
//!   (compact names, folding, multi-value rows, byte bodies, `Content-Length` recomputed on
//!   write) and the typed headers are our own, because rsip gets those wrong (see the module).
//!   The CANCEL and the ACK for a non-2xx that RFC 3261 derives from an INVITE are built here
//!   too ([`build_cancel`], [`build_ack_for_non_2xx`]).
//! - [`transport`]: UDP and TCP on one port under tokio, and TLS (rustls) on a port of its
//!   own sharing the TCP connection machinery, with a sans-IO [`StreamFramer`]
//!   (`Content-Length` framing, CRLF keep-alives), `received`/`rport` stamping, responses on
//!   the connection their request came on, and malformed input answered 400 or dropped — both
//!   counted. TCP and TLS connections pass a sans-IO admission check at accept, before any
//!   TLS handshake (trusted sources only,
//!   a per-IP limit, a reserve for the trunk); write queues are bounded; a failed send names
//!   the one transaction it fails. Received events come in two queues ([`TransportEvents`]):
//!   the messages of existing transactions first, new out-of-dialog requests after (dropped,
//!   counted, when their queue is full), so a flood never delays a call's BYE.
//! - [`transaction`]: the RFC 3261 §17 state machines (and RFC 6026) behind one sans-IO
//!   [`TransactionLayer`]: feed it messages and the time, drain transmits and events. A
//!   response counts only from where its request went; requests too large for UDP go over
//!   TCP (§18.1.1); stateless answers (§8.2.7) are sent without any state. Client
//!   and server transactions have a module each, with the INVITE and non-INVITE machines apart;
//!   all timers live in one heap ([`TimerQueue`]); tests drive them with a fake clock.
//! - [`dialog`]: UAC/UAS dialogs (§12): ids, CSeq spaces, route sets, target refresh, and the
//!   in-dialog requests and ACKs built from them.
//!
//! The shape follows quinn-proto and str0m: `handle_*` inputs, `poll_*` outputs,
//! `poll_timeout` for the next deadline. A runtime owns the sockets and calls these; the
//! [`transport`] module is the tokio half.
//!
//! [`StreamFramer`]: transport::StreamFramer
//! [`TransportEvents`]: transport::TransportEvents
//! [`TransactionLayer`]: transaction::TransactionLayer
//! [`TimerQueue`]: transaction::TimerQueue
//! [`build_cancel`]: message::build_cancel
//! [`build_ack_for_non_2xx`]: message::build_ack_for_non_2xx

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
