//! # webhooks
//!
//! Every change of an intent or call, pushed to the app's backend as a signed JSON POST, in
//! per-call order, retried, and kept in the store's outbox so that a restart loses none
//! (SPEC.md *Webhooks*).
//!
//! ```text
//!  b2bua registry ──take_events──▶ dispatcher ──insert_events──▶ store outbox (SQLite)
//!   (builds each event                │   ▲                          ▲
//!    under its lock)                  │   │ outcome                  │ EventAttempt
//!                                     ▼   │                          │ (via the Writer)
//!                               Schedule (sans-IO) ──Send──▶ client ──POST──▶ target
//! ```
//!
//! * The registry ([`b2bua::CallRegistry`]) builds a [`b2bua::WebhookEvent`] at the moment of
//!   each change, with the call's next `seq`, into a bounded queue. The SIP engine does no
//!   more: no JSON, no I/O.
//! * The dispatcher ([`dispatcher::start`]) runs on its own tokio task. Every few
//!   milliseconds it takes the new events, serialises them ([`payload`]), writes them to the
//!   outbox in one transaction **before** any is sent, and feeds them to the [`Schedule`].
//! * The [`Schedule`] is the delivery policy as a plain state machine over a clock value
//!   (quinn-proto style: inputs and `now` in, actions out; tests run it with a fake clock):
//!   one queue per call whose head alone may be on the wire, so event n+1 of a call never
//!   leaves before event n is delivered or given up; calls in parallel up to
//!   `webhooks.max_in_flight`; [`Backoff`] between attempts; `webhooks.max_attempts`, then
//!   failed; `webhooks.max_pending` events at most, the oldest dropped beyond it.
//! * The [`client`] POSTs with hyper's pooled client over TCP or rustls, signs each attempt
//!   afresh ([`sign`]: `Callbridge-Signature`, plus `Callbridge-Event-Id` for deduplication)
//!   and bounds each attempt by `webhooks.timeout_ms`. Each outcome goes back to the
//!   schedule and, as a [`store::EventAttempt`], to the store's writer.
//! * At start, the pending events in the outbox go back into the schedule, in their order.
//! * The API holds a [`WebhookHandle`]: the `notify_url` allow-list ([`TargetPolicy`]), the
//!   way to redeliver a failed event, and the counters ([`WebhookStats`]).
//!
//! Delivery is at least once: an attempt whose answer was lost (a timeout, a crash between
//! the POST and its record) is sent again, with the same `Callbridge-Event-Id`.

pub mod backoff;
pub mod client;
pub mod dispatcher;
pub mod handle;
pub mod payload;
pub mod record;
pub mod schedule;
pub mod sign;
pub mod stats;
pub mod targets;

pub use backoff::Backoff;
pub use client::{Client, ClientError};
pub use dispatcher::{start, Dispatcher, WebhookConfig, WebhookError};
pub use handle::{HandOffError, Requeued, WebhookHandle};
pub use schedule::{Outcome, Schedule, ScheduleConfig, Send, Settled};
pub use sign::{
    signature, verify, VerifyError, EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER,
};
pub use stats::{WebhookStats, LATENCY_BUCKETS};
pub use targets::{parse_target, TargetError, TargetPolicy, TargetUrl};
