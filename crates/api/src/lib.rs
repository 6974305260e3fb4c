//! # api
//!
//! The HTTP API of callbridge over the handles the [`b2bua`] crate exports: `makecall`,
//! `cancelcall`, `cti/callin`, call status, health and metrics (see SPEC.md, "HTTP API").
//!
//! * [`handle`] is the whole router as one async function over a `Request`, generic over the
//!   body type, so every route is tested without a socket.
//! * [`serve`] runs hyper 1 HTTP/1.1 connections on a listener until a shutdown future resolves,
//!   then drains them.
//! * [`EngineStatus`] is how the SIP engine (which this crate does not depend on) reports its
//!   health and counters for `/healthz` and `/metrics`.
//!
//! Routes and their exact responses are documented on [`handle`].

mod engine;
mod error;
mod metrics;
mod router;
mod server;
mod settings;
mod state;

pub use b2bua;
pub use engine::{EngineSnapshot, EngineStatus, NoEngine};
pub use error::ApiError;
pub use router::handle;
pub use server::serve;
pub use settings::ApiSettings;
pub use state::{ApiState, Clock, ManualClock, SystemClock};
