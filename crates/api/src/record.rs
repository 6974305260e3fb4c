//! The call record as the API serves it: [`store::CallRow`], for live calls (converted from the
//! b2bua's [`CallRecord`]) and stored ones alike, so that a record looks the same before and
//! after it reaches the store, and one schema describes both in the OpenAPI document.

use b2bua::{CallRecord, CallState};
use store::{normalize_number, CallFilter, CallRow, Cursor, DirectionCounts, MediaCounts};

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

/// Does a live record pass the listing's filter, and come after `cursor` in its order?
pub fn matches(record: &CallRecord, filter: &CallFilter, cursor: Option<&Cursor>) -> bool {
    filter
        .telnum
        .as_deref()
        .is_none_or(|t| normalize_number(t) == normalize_number(&record.telnum))
        && filter
            .state
            .as_deref()
            .is_none_or(|s| s == state_code(record.state))
        && filter.since.is_none_or(|since| record.created_at >= since)
        && filter.until.is_none_or(|until| record.created_at < until)
        && cursor.is_none_or(|c| {
            (record.created_at, record.callid.as_str()) < (c.created_at, c.callid.as_str())
        })
}

/// The listing's order: newest first, then callid descending.
pub fn newest_first(a: &CallRow, b: &CallRow) -> std::cmp::Ordering {
    (b.created_at, &b.callid).cmp(&(a.created_at, &a.callid))
}
