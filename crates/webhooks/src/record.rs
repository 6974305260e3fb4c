//! The call record as the API and the webhooks serve it: [`store::CallRow`], for live calls
//! (converted from the b2bua's [`CallRecord`]) and stored ones alike, so that a record looks the
//! same before and after it reaches the store, in an event's `call` and in `GET /api/calls`.
//! It lives here, below the API, because the webhook events carry it too.

use b2bua::{CallRecord, CallState};
use store::{CallRow, DirectionCounts, MediaCounts};

/// The API's (and the store's) code of a state.
pub fn state_code(state: CallState) -> &'static str {
    match state {
        CallState::Intent => "intent",
        CallState::Trying => "trying",
        CallState::Ringing => "ringing",
        CallState::Answered => "answered",
        CallState::Ended => "ended",
    }
}

/// Every state code, for validating the `state` filter.
pub const STATE_CODES: [&str; 5] = ["intent", "trying", "ringing", "answered", "ended"];

/// The record as served and stored.
pub fn row_of(record: &CallRecord) -> CallRow {
    let counts = |d: &b2bua::media::DirectionStats| DirectionCounts {
        packets: d.packets,
        bytes: d.bytes,
        dropped: d.dropped,
    };
    CallRow {
        callid: record.callid.clone(),
        telnum: record.telnum.clone(),
        caller: record.caller.clone(),
        callee: record.callee.clone(),
        data: record.data.clone(),
        state: state_code(record.state).to_owned(),
        created_at: record.created_at,
        invite_at: record.invite_at,
        ringing_at: record.ringing_at,
        answered_at: record.answered_at,
        ended_at: record.ended_at,
        ring_ms: record.ring_ms,
        talk_ms: record.talk_ms,
        leg_a_code: record.leg_a_code,
        leg_b_code: record.leg_b_code,
        ended_by: record.ended_by.map(|p| p.code().to_owned()),
        end_cause: record.end_cause.map(|c| c.code().to_owned()),
        sip_reason: record.sip_reason.clone(),
        notify_url: record.notify_url.clone(),
        media: record.media.as_ref().map(|m| MediaCounts {
            a_to_b: counts(&m.a_to_b),
            b_to_a: counts(&m.b_to_a),
            latched_a: m.latched_a.map(|a| a.to_string()),
            latched_b: m.latched_b.map(|a| a.to_string()),
        }),
    }
}
