//! # api
//!
//! The HTTP API of callbridge over the handles the [`b2bua`] crate exports: `makecall`,
//! `cancelcall`, `cti/callin`, call status, records, numbers, webhook events, health and
//! metrics (see SPEC.md, "HTTP API" and "Webhooks").
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
//! * The store ([`store::Store`], [`ApiState::with_store`]) answers for the calls that have
//!   ended (`GET /api/calls/{callid}` after memory, the listing and export merged with the live
//!   calls), the number assignments and the `Idempotency-Key`s; its calls run on blocking
//!   threads. [`openapi`] is the OpenAPI 3.1 document of all of it.
//! * Webhooks ([`ApiState::with_webhooks`], a [`webhooks::WebhookHandle`]): a makecall's
//!   `notify_url` must pass the handle's allow-list (none passes without a handle); the
//!   [`events`] of a call are read from the store's outbox (`GET /api/calls/{callid}/events`),
//!   and a failed one is made pending again in the store and handed to the dispatcher
//!   (`POST /api/events/{id}/redeliver`); `/metrics` shows the dispatcher's counters. The API
//!   never waits on a delivery.
//! * [`CallActions`] is the way back: requests the API makes of the SIP task (hang up a call),
//!   each answered by the engine over a oneshot channel.
//!
//! Routes and their exact responses are documented on [`handle`].

mod actions;
mod body;
pub mod cluster;
mod error;
pub mod events;
mod idempotency;
mod listing;
mod metrics;
mod numbers;
pub mod openapi;
pub mod record;
mod router;
mod server;
mod settings;
mod sip_status;
mod state;

pub use actions::CallActions;
pub use b2bua;
pub use body::ApiBody;
pub use cluster::{ClusterCalls, ClusterFuture, RemoteCall, RemoteHangup};
pub use error::ApiError;
pub use router::handle;
pub use server::serve;
pub use settings::ApiSettings;
pub use sip_status::{HeapStats, NoSip, RegistrationStatus, SipSnapshot, SipStatus, TrunkStatus};
pub use state::{ApiState, Clock, ManualClock, SystemClock};

/// Runs a store call on a blocking thread (the store's calls block on the database).
pub(crate) async fn blocking<T, F>(call: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, store::StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(ApiError::StoreUnavailable),
    }
}
