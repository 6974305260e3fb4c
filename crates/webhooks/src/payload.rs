//! The JSON body of an event (SPEC.md *Webhooks*), and the outbox entry that keeps it.

use b2bua::WebhookEvent;
use serde::Serialize;
use store::{CallRow, OutboxEvent, EVENT_PENDING};

use crate::record::row_of;

/// What is POSTed: `{"id","event","callid","seq","at","data","call"}`.
///
/// It exists as a type so that the body's fields are written in one place, in the order the
/// SPEC lists them. `data` is makecall's opaque string (`""` when it gave none), repeated from
/// the record so that a receiver finds its own reference at the top.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    pub id: &'a str,
    pub event: &'static str,
    pub callid: &'a str,
    pub seq: u32,
    pub at: u64,
    pub data: &'a str,
    pub call: CallRow,
}

/// The event as the outbox keeps it: its body serialised once, here, and sent byte for byte
/// on every attempt (the signature covers those bytes), pending and due at once.
pub fn outbox_event(event: &WebhookEvent) -> OutboxEvent {
    let payload = Payload {
        id: &event.id,
        event: event.kind.code(),
        callid: &event.callid,
        seq: event.seq,
        at: event.at,
        data: event.record.data.as_deref().unwrap_or(""),
        call: row_of(&event.record),
    };
    // A struct of strings and numbers always serialises; the fallback keeps the event (with
    // an empty object) rather than panicking on the engine's data.
    let body = serde_json::to_string(&payload).unwrap_or_else(|_| "{}".to_owned());
    OutboxEvent {
        event_id: event.id.clone(),
        callid: event.callid.clone(),
        seq: event.seq,
        event: event.kind.code().to_owned(),
        target: event.target.clone(),
        body,
        created_at: event.at,
        state: EVENT_PENDING.to_owned(),
        attempts: 0,
        next_attempt_at: event.at,
        last_status: None,
        last_error: None,
        delivered_at: None,
    }
}
