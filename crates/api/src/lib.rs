//! # api
//!
//! The HTTP API of callbridge over the handles the [`b2bua`] crate exports: `makecall`,
//! `cancelcall`, `cti/callin`, call status, health and metrics (see SPEC.md, "HTTP API").
//!
//! * [`handle`] is the whole router as one async function over a `Request`, generic over the
//!   body type, so every route is tested without a socket.
//! * [`serve`] runs hyper 1 HTTP/1.1 connections on a listener until a shutdown future resolves,
//!   then drains them.
//! * [`ApiState`] is what every handler shares: the [`b2bua::CallControl`], the
//!   [`ApiSettings`] (tokens and input limits; the caller binds the listener), the SIP side's
//!   status and a [`Clock`].
//! * [`SipStatus`] is how the SIP side (transport, call engine and media relay) reports its live
//!   health and counters for `/healthz` and `/metrics`. The API never holds the engine, which
//!   belongs to the SIP task alone: the binary implements this over what that task publishes.
//!   [`NoSip`] stands in when there is no SIP side.
//! * [`CallActions`] is the way back: requests the API makes of the SIP task (hang up a call),
//!   each answered by the engine over a oneshot channel.
//!
//! Routes and their exact responses are documented on [`handle`].

mod actions;
mod error;
mod metrics;
mod router;
mod server;
mod settings;
mod sip_status;
mod state;

pub use actions::CallActions;
pub use b2bua;
pub use error::ApiError;
pub use router::handle;
pub use server::serve;
pub use settings::ApiSettings;
pub use sip_status::{HeapStats, NoSip, SipSnapshot, SipStatus};
pub use state::{ApiState, Clock, ManualClock, SystemClock};
