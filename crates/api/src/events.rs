//! `GET /api/calls/{callid}/events` and `POST /api/events/{id}/redeliver`: a call's webhook
//! events as the store's outbox keeps them, with their delivery state, and the operator's
//! retry of one that was given up (SPEC.md *Webhooks*).
//!
//! The store is the record of the events (the dispatcher writes every event there before it
//! sends it); the API reads it on a blocking thread and never waits on delivery. A redelivery
//! is made pending in the store first, then handed to the dispatcher through the
//! [`webhooks::WebhookHandle`]: if the hand-off fails, the event is still pending in the outbox
//! and goes at the dispatcher's next start.

use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{OutboxEvent, Requeue, EVENT_PENDING, MAX_EVENT_PAGE};
use utoipa::ToSchema;

use crate::body::ApiBody;
use crate::error::ApiError;
use crate::router::{json_response, percent_decode};
use crate::state::ApiState;

/// One webhook event as the API shows it: what was (or is to be) POSTed where, and how its
/// delivery went.
///
/// It exists so that the API's answer has its own stable shape (and schema), apart from the
/// store's row: the body is shown parsed, as the receiver sees it, and the fields that mean
/// nothing in the event's state are `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Unique per event (`Callbridge-Event-Id`): the receiver's deduplication key, and the
    /// `{id}` of `POST /api/events/{id}/redeliver`.
    pub id: String,
    /// The event's type, e.g. `intent.created`, `call.ringing`, `call.ended`.
    pub event: String,
    /// The call it is about.
    pub callid: String,
    /// 1, 2, 3… per call: the order of delivery.
    pub seq: u32,
    /// When the change happened (ms since the epoch).
    pub at: u64,
    /// The URL it is POSTed to.
    pub target: String,
    /// `pending` (to be tried), `delivered` (a 2xx came back), `failed` (given up after the
    /// last attempt) or `dropped` (let go because the outbox was full).
    #[schema(pattern = "^(pending|delivered|failed|dropped)$")]
    pub state: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When the next attempt is due (ms since the epoch); `null` unless pending.
    pub next_attempt_at: Option<u64>,
    /// The last attempt's HTTP status; `null` if it got none or none was made.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the target acknowledged it (ms since the epoch).
    pub delivered_at: Option<u64>,
    /// The JSON body POSTed: `{"id","event","callid","seq","at","data","call"}` (the raw text,
    /// as a string, in the unlikely case that it is not JSON).
    pub payload: Value,
}

impl EventView {
    /// The view of a stored event.
    pub fn of(event: &OutboxEvent) -> EventView {
        let payload =
            serde_json::from_str(&event.body).unwrap_or_else(|_| Value::String(event.body.clone()));
        EventView {
            id: event.event_id.clone(),
            event: event.event.clone(),
            callid: event.callid.clone(),
            seq: event.seq,
            at: event.created_at,
            target: event.target.clone(),
            state: event.state.clone(),
            attempts: event.attempts,
            next_attempt_at: (event.state == EVENT_PENDING).then_some(event.next_attempt_at),
            last_status: event.last_status,
            last_error: event.last_error.clone(),
            delivered_at: event.delivered_at,
            payload,
        }
    }
}

/// Every field of an [`EventView`] on the wire (for the tests of the view and of its schema).
#[cfg(test)]
pub(crate) const EVENT_FIELDS: [&str; 13] = [
    "id",
    "event",
    "callid",
    "seq",
    "at",
    "target",
    "state",
    "attempts",
    "next_attempt_at",
    "last_status",
    "last_error",
    "delivered_at",
    "payload",
];

/// The body of `GET /api/calls/{callid}/events`.
///
/// It exists so that the list is an object (room for more fields later) with its schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventsResponse {
    /// The call's events by `seq` (at most 10,000).
    pub events: Vec<EventView>,
}

/// `GET /api/calls/{callid}/events`: the call's events by `seq`; `[]` for a known call that
/// has none (no webhook target, or none yet), `404 unknown_call` for an unknown one.
pub(crate) async fn of_call(state: &ApiState, raw: &str) -> Result<Response<ApiBody>, ApiError> {
    let callid = percent_decode(raw).ok_or(ApiError::UnknownCall)?;
    let store = state.store()?.clone();
    let id = callid.clone();
    let stored = store.clone();
    let events = crate::blocking(move || stored.events_of_call(&id, MAX_EVENT_PAGE)).await?;
    if events.is_empty() && state.control.call(&callid).is_none() {
        let known = crate::blocking(move || store.get_call(&callid)).await?;
        if known.is_none() {
            return Err(ApiError::UnknownCall);
        }
    }
    let body = EventsResponse {
        events: events.iter().map(EventView::of).collect(),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// `POST /api/events/{id}/redeliver`: a failed (or dropped) event made pending again and handed
/// to the dispatcher; `409 event_not_failed` for one pending or delivered, `404 unknown_event`,
/// `503 webhooks_unavailable` (checked first: without a dispatcher nothing is requeued).
pub(crate) async fn redeliver(state: &ApiState, raw: &str) -> Result<Response<ApiBody>, ApiError> {
    let webhooks = state
        .webhooks
        .as_ref()
        .ok_or(ApiError::WebhooksUnavailable)?;
    let id = percent_decode(raw).ok_or(ApiError::UnknownEvent)?;
    let store = state.store()?.clone();
    let now_ms = crate::idempotency::now_ms();
    let outcome = crate::blocking(move || store.requeue_event(&id, now_ms)).await?;
    match outcome {
        Requeue::Requeued(event) => {
            match webhooks.redeliver(event.clone()) {
                Ok(()) => tracing::info!(event_id = %event.event_id, callid = %event.callid,
                    seq = event.seq, "webhook event requeued by the API"),
                // Pending in the outbox: the dispatcher's next start sends it.
                Err(error) => tracing::warn!(event_id = %event.event_id,
                    callid = %event.callid, %error,
                    "webhook event requeued in the store but not handed to the dispatcher; \
                     it goes at the next start"),
            }
            Ok(json_response(StatusCode::OK, &EventView::of(&event)))
        }
        Requeue::NotFailed(event_state) => Err(ApiError::EventNotFailed(event_state)),
        Requeue::Unknown => Err(ApiError::UnknownEvent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(state: &str, body: &str) -> OutboxEvent {
        OutboxEvent {
            event_id: "evt_1".into(),
            callid: "42".into(),
            seq: 3,
            event: "call.ringing".into(),
            target: "http://app.example/hook".into(),
            body: body.into(),
            created_at: 1_000,
            state: state.into(),
            attempts: 2,
            next_attempt_at: 5_000,
            last_status: Some(503),
            last_error: Some("503 Service Unavailable".into()),
            delivered_at: None,
        }
    }

    #[test]
    fn the_view_parses_the_body_and_nulls_what_the_state_makes_meaningless() {
        let pending = EventView::of(&stored("pending", r#"{"id":"evt_1","seq":3}"#));
        assert_eq!(pending.id, "evt_1");
        assert_eq!(pending.at, 1_000);
        assert_eq!(pending.next_attempt_at, Some(5_000));
        assert_eq!(
            pending.payload,
            serde_json::json!({"id": "evt_1", "seq": 3})
        );
        let failed = EventView::of(&stored("failed", "not json"));
        assert_eq!(failed.next_attempt_at, None);
        assert_eq!(failed.payload, Value::String("not json".into()));
        let json = serde_json::to_value(&failed).unwrap();
        for field in EVENT_FIELDS {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert!(json["next_attempt_at"].is_null());
        assert!(json["delivered_at"].is_null());
    }
}
