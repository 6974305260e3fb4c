//! The call record as the API serves it: [`store::CallRow`] (see [`webhooks::record`], which
//! converts live records and is shared with the webhook events), and the listing's filter and
//! order over live records.

pub use webhooks::record::{row_of, state_code, STATE_CODES};

use b2bua::CallRecord;
use store::{normalize_number, CallFilter, CallRow, Cursor};

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
