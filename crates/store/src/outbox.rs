//! The webhook outbox's values: the events waiting for delivery (or settled), and the
//! outcome of one delivery attempt.
//!
//! The store keeps the events so that a restart neither loses nor reorders them; it does not
//! deliver them, schedule them, or interpret their body (the server's webhook loop does).

use serde::{Deserialize, Serialize};

/// State of an event not yet delivered, and still to be tried (at `next_attempt_at`).
pub const EVENT_PENDING: &str = "pending";

/// State of an event its target acknowledged (a `2xx`).
pub const EVENT_DELIVERED: &str = "delivered";

/// State of an event given up after the last attempt the retry policy allows.
pub const EVENT_FAILED: &str = "failed";

/// State of an event let go without delivery because the outbox's bound was exceeded.
pub const EVENT_DROPPED: &str = "dropped";

/// Most events one outbox listing ([`Store::pending_events`](crate::Store::pending_events),
/// [`Store::events_of_call`](crate::Store::events_of_call)) returns.
pub const MAX_EVENT_PAGE: usize = 10_000;

/// Longest `last_error` kept, in bytes: an error text (a resolver's, a TLS library's) can be
/// long, and only its start tells an operator what happened. Longer ones are cut at a char
/// boundary when written.
pub const MAX_LAST_ERROR: usize = 512;

/// One webhook event as the outbox keeps it: what is POSTed where, and how delivery went.
///
/// It exists so that the events a call produced survive a restart and are delivered in their
/// `seq` order, and so that the API can show (and requeue) what was not delivered. `event`,
/// `state` and `body` are the server's codes and JSON text; the store neither validates nor
/// parses them. Timestamps are ms since the Unix epoch and must fit in 63 bits, or the write
/// fails with [`StoreError::OutOfRange`](crate::StoreError::OutOfRange).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboxEvent {
    /// Unique per event; the receiver's deduplication key.
    pub event_id: String,
    /// The call the event is about.
    pub callid: String,
    /// 1, 2, 3, ... per call: the order the events are delivered in.
    pub seq: u32,
    /// The event's type code (e.g. `call.ringing`).
    pub event: String,
    /// The URL the event is POSTed to (`""` for an event stored before schema version 4).
    pub target: String,
    /// The JSON body POSTed, as text.
    pub body: String,
    /// When the event happened (its `at`); `0` for an event stored before schema version 4.
    pub created_at: u64,
    /// [`EVENT_PENDING`], [`EVENT_DELIVERED`], [`EVENT_FAILED`] or [`EVENT_DROPPED`].
    pub state: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When the next attempt is due (meaningful while pending).
    pub next_attempt_at: u64,
    /// The last attempt's HTTP status; `None` if it got none (a timeout, a refused
    /// connection) or none was made.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, at most [`MAX_LAST_ERROR`] bytes.
    pub last_error: Option<String>,
    /// When the target acknowledged it.
    pub delivered_at: Option<u64>,
}

/// The outcome of one delivery attempt of a stored event: its new state and counters.
///
/// It exists so that the delivery loop records attempts through the
/// [`Writer`](crate::Writer) (as [`WriteOp::EventAttempt`](crate::WriteOp::EventAttempt)),
/// batched and never blocking it. Applied to an `event_id` not stored (swept meanwhile), it
/// does nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAttempt {
    /// The event attempted.
    pub event_id: String,
    /// Its state after the attempt.
    pub state: String,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_at: u64,
    /// The HTTP status received, if any.
    pub last_status: Option<u16>,
    /// Why the attempt failed, if it did (cut to [`MAX_LAST_ERROR`] bytes when written).
    pub last_error: Option<String>,
    /// When the target acknowledged it, if it did.
    pub delivered_at: Option<u64>,
}

/// What [`Store::requeue_event`](crate::Store::requeue_event) did: the API's answer in one
/// value (the event, `409` with its state, or `404`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// The failed or dropped event is pending again, due now; here as it is stored now.
    Requeued(OutboxEvent),
    /// The event is pending or delivered (its state): there is nothing to requeue.
    NotFailed(String),
    /// No event has that `event_id`.
    Unknown,
}

/// `error` cut to at most [`MAX_LAST_ERROR`] bytes, at a char boundary.
pub(crate) fn cap_error(error: &str) -> &str {
    if error.len() <= MAX_LAST_ERROR {
        return error;
    }
    let mut end = MAX_LAST_ERROR;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_error_cuts_at_a_char_boundary() {
        assert_eq!(cap_error("short"), "short");
        let exact = "a".repeat(MAX_LAST_ERROR);
        assert_eq!(cap_error(&exact), exact);
        // 511 ASCII bytes, then a 3-byte char straddling the cap.
        let long = format!("{}€tail", "a".repeat(MAX_LAST_ERROR - 1));
        assert_eq!(cap_error(&long), "a".repeat(MAX_LAST_ERROR - 1));
    }
}
