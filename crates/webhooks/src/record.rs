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

/// The record a row describes: the reverse of [`row_of`], for a record another node held (a
/// cluster's call index keeps rows). `None` when a code in it is unknown to this build.
pub fn record_of(row: &CallRow) -> Option<CallRecord> {
    let counts = |d: &DirectionCounts| b2bua::media::DirectionStats {
        packets: d.packets,
        bytes: d.bytes,
        dropped: d.dropped,
    };
    let code = |code: &Option<String>| code.as_deref().map(str::to_owned);
    let ended_by = match code(&row.ended_by) {
        Some(by) => Some(b2bua::Party::from_code(&by)?),
        None => None,
    };
    let end_cause = match code(&row.end_cause) {
        Some(cause) => Some(b2bua::EndCause::from_code(&cause)?),
        None => None,
    };
    Some(CallRecord {
        callid: row.callid.clone(),
        telnum: row.telnum.clone(),
        caller: row.caller.clone(),
        callee: row.callee.clone(),
        state: CallState::from_code(&row.state)?,
        created_at: row.created_at,
        invite_at: row.invite_at,
        ringing_at: row.ringing_at,
        answered_at: row.answered_at,
        ended_at: row.ended_at,
        leg_a_code: row.leg_a_code,
        leg_b_code: row.leg_b_code,
        ended_by,
        end_cause,
        media: row.media.as_ref().map(|m| b2bua::media::MediaStats {
            a_to_b: counts(&m.a_to_b),
            b_to_a: counts(&m.b_to_a),
            latched_a: m.latched_a.as_deref().and_then(|a| a.parse().ok()),
            latched_b: m.latched_b.as_deref().and_then(|a| a.parse().ok()),
            ..b2bua::media::MediaStats::default()
        }),
        data: row.data.clone(),
        notify_url: row.notify_url.clone(),
        ring_ms: row.ring_ms,
        talk_ms: row.talk_ms,
        sip_reason: row.sip_reason.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_reads_back_as_its_record() {
        let row = CallRow {
            callid: "1".into(),
            telnum: "1001".into(),
            caller: "2001".into(),
            callee: "3001".into(),
            data: Some("d".into()),
            state: "answered".into(),
            created_at: 10,
            invite_at: Some(11),
            ringing_at: Some(12),
            answered_at: Some(13),
            leg_a_code: Some(200),
            leg_b_code: Some(200),
            media: Some(MediaCounts {
                a_to_b: DirectionCounts {
                    packets: 5,
                    bytes: 800,
                    dropped: 1,
                },
                latched_a: Some("127.0.0.1:4000".into()),
                ..MediaCounts::default()
            }),
            ..CallRow::default()
        };
        let record = record_of(&row).unwrap();
        assert_eq!(row_of(&record), row);
        let ended = CallRow {
            state: "ended".into(),
            ended_by: Some("system".into()),
            end_cause: Some("node_lost".into()),
            ..row.clone()
        };
        assert_eq!(row_of(&record_of(&ended).unwrap()), ended);
        let unknown = CallRow {
            end_cause: Some("from_the_future".into()),
            ..row
        };
        assert_eq!(record_of(&unknown), None);
    }
}
