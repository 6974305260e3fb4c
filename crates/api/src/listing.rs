//! `GET /api/calls` and `GET /api/calls/export`: the stored records merged with the live ones.
//!
//! Records reach the store when their call has ended (and settled, about a second later);
//! calls still live — an intent waiting for its phone, a call ringing or talking — are only in
//! memory. A page takes the store's page after the cursor and the live records after it, and
//! keeps the newest `limit` of the two: the same order and cursor for both, so a backend sees
//! its user's current call first and pages on through the history without a gap.

use std::collections::HashSet;
use std::sync::Arc;

use b2bua::CallControl;
use bytes::{BufMut, Bytes, BytesMut};
use store::{CallFilter, CallRow, Cursor, Page, Store, StoreError};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::record::{matches, newest_first, row_of, STATE_CODES};

/// The listing's query parameters, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Query {
    pub filter: CallFilter,
    pub limit: usize,
    pub cursor: Option<String>,
    pub format: Option<String>,
}

/// Parses `telnum, state, since, until, limit, cursor` (and `format` for the export).
pub(crate) fn parse_query(query: Option<&str>, max_number_len: usize) -> Result<Query, ApiError> {
    let mut parsed = Query {
        limit: store::DEFAULT_LIMIT,
        ..Query::default()
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = crate::router::query_decode(raw).ok_or(ApiError::InvalidParameter("query"))?;
        match name {
            "telnum" => {
                crate::router::check_number_len("telnum", &value, max_number_len)
                    .map_err(|_| ApiError::InvalidParameter("telnum"))?;
                parsed.filter.telnum = Some(value);
            }
            "state" => {
                if !STATE_CODES.contains(&value.as_str()) {
                    return Err(ApiError::InvalidParameter("state"));
                }
                parsed.filter.state = Some(value);
            }
            "since" => parsed.filter.since = Some(millis("since", &value)?),
            "until" => parsed.filter.until = Some(millis("until", &value)?),
            "limit" => {
                let limit: usize = value
                    .parse()
                    .map_err(|_| ApiError::InvalidParameter("limit"))?;
                if !(1..=store::MAX_LIMIT).contains(&limit) {
                    return Err(ApiError::InvalidParameter("limit"));
                }
                parsed.limit = limit;
            }
            "cursor" => {
                Cursor::decode(&value).map_err(|_| ApiError::InvalidParameter("cursor"))?;
                parsed.cursor = Some(value);
            }
            "format" => {
                if value != "csv" && value != "ndjson" {
                    return Err(ApiError::InvalidParameter("format"));
                }
                parsed.format = Some(value);
            }
            // Unknown parameters are ignored, as most HTTP APIs do (cache busters, tracing).
            _ => {}
        }
    }
    Ok(parsed)
}

/// Milliseconds since the epoch that the store can hold (< 2^63).
fn millis(name: &'static str, value: &str) -> Result<u64, ApiError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidParameter(name));
    }
    value
        .parse::<u64>()
        .ok()
        .filter(|v| i64::try_from(*v).is_ok())
        .ok_or(ApiError::InvalidParameter(name))
}

/// One page: the store's newest `limit` after the cursor merged with the live ones.
/// Blocking (the store): run it on a blocking thread.
pub(crate) fn page(
    store: &dyn Store,
    control: &CallControl,
    filter: &CallFilter,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Page, StoreError> {
    let decoded = cursor.map(Cursor::decode).transpose()?;
    let stored = store.list_calls(filter, limit, cursor)?;
    let more_stored = stored.next_cursor.is_some();
    let mut rows: Vec<CallRow> = stored.calls;
    if filter.state.as_deref() != Some(store::ENDED) {
        let live = control
            .registry()
            .live_newest(limit + 1, |r| matches(r, filter, decoded.as_ref()));
        // A record just ended may be live in memory and stored at once only in a restart
        // race; the live copy wins.
        let live_ids: HashSet<&str> = live.iter().map(|r| r.callid.as_str()).collect();
        rows.retain(|row| !live_ids.contains(row.callid.as_str()));
        rows.extend(live.iter().map(row_of));
        rows.sort_unstable_by(newest_first);
    }
    Ok(Page::keep(rows, limit, more_stored))
}

/// Rows fetched per page by an export.
const EXPORT_PAGE: usize = 500;
/// Pages an export may have rendered ahead of a slow client.
const EXPORT_AHEAD: usize = 2;

/// The CSV header row (RFC 4180), in the record's field order.
pub(crate) const CSV_COLUMNS: [&str; 27] = [
    "callid",
    "telnum",
    "caller",
    "callee",
    "data",
    "state",
    "created_at",
    "invite_at",
    "ringing_at",
    "answered_at",
    "ended_at",
    "ring_ms",
    "talk_ms",
    "leg_a_code",
    "leg_b_code",
    "ended_by",
    "end_cause",
    "sip_reason",
    "notify_url",
    "a_to_b_packets",
    "a_to_b_bytes",
    "a_to_b_dropped",
    "b_to_a_packets",
    "b_to_a_bytes",
    "b_to_a_dropped",
    "latched_a",
    "latched_b",
];

/// Starts the export's producer: pages rendered on a blocking thread and sent down a bounded
/// channel, which the response body drains. It stops when the records run out, on a store
/// error (the body is cut short), or when the client goes away.
pub(crate) fn export(
    store: Arc<dyn Store>,
    control: Arc<CallControl>,
    filter: CallFilter,
    csv: bool,
) -> mpsc::Receiver<Bytes> {
    let (chunks, receiver) = mpsc::channel(EXPORT_AHEAD);
    tokio::task::spawn_blocking(move || {
        if csv {
            let mut head = BytesMut::new();
            csv_line(&mut head, CSV_COLUMNS.iter().map(|c| Some(c.to_string())));
            if chunks.blocking_send(head.freeze()).is_err() {
                return;
            }
        }
        let mut cursor: Option<String> = None;
        loop {
            let page = match page(&*store, &control, &filter, EXPORT_PAGE, cursor.as_deref()) {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "export: store error; the response is cut short");
                    return;
                }
            };
            let mut out = BytesMut::new();
            for row in &page.calls {
                if csv {
                    csv_line(&mut out, csv_fields(row));
                } else if serde_json::to_writer((&mut out).writer(), row).is_ok() {
                    out.put_u8(b'\n');
                }
            }
            if !out.is_empty() && chunks.blocking_send(out.freeze()).is_err() {
                return; // The client went away.
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return,
            }
        }
    });
    receiver
}

fn csv_fields(row: &CallRow) -> impl Iterator<Item = Option<String>> + '_ {
    let n = |v: Option<u64>| v.map(|v| v.to_string());
    let code = |v: Option<u16>| v.map(|v| v.to_string());
    let media = row.media.as_ref();
    let count = |f: fn(&store::MediaCounts) -> u64| media.map(|m| f(m).to_string());
    [
        Some(row.callid.clone()),
        Some(row.telnum.clone()),
        Some(row.caller.clone()),
        Some(row.callee.clone()),
        row.data.clone(),
        Some(row.state.clone()),
        Some(row.created_at.to_string()),
        n(row.invite_at),
        n(row.ringing_at),
        n(row.answered_at),
        n(row.ended_at),
        n(row.ring_ms),
        n(row.talk_ms),
        code(row.leg_a_code),
        code(row.leg_b_code),
        row.ended_by.clone(),
        row.end_cause.clone(),
        row.sip_reason.clone(),
        row.notify_url.clone(),
        count(|m| m.a_to_b.packets),
        count(|m| m.a_to_b.bytes),
        count(|m| m.a_to_b.dropped),
        count(|m| m.b_to_a.packets),
        count(|m| m.b_to_a.bytes),
        count(|m| m.b_to_a.dropped),
        media.and_then(|m| m.latched_a.clone()),
        media.and_then(|m| m.latched_b.clone()),
    ]
    .into_iter()
}

/// One RFC 4180 line: fields separated by commas, quoted when they hold a comma, a quote, CR
/// or LF (quotes doubled), CRLF at the end. An absent value is an empty field.
pub(crate) fn csv_line(out: &mut BytesMut, fields: impl Iterator<Item = Option<String>>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        let field = field.unwrap_or_default();
        if field.contains([',', '"', '\r', '\n']) {
            out.put_u8(b'"');
            out.put_slice(field.replace('"', "\"\"").as_bytes());
            out.put_u8(b'"');
        } else {
            out.put_slice(field.as_bytes());
        }
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_rfc_4180_says() {
        let mut out = BytesMut::new();
        csv_line(
            &mut out,
            [
                Some("plain".to_owned()),
                None,
                Some("a,b".to_owned()),
                Some("say \"hi\"".to_owned()),
                Some("two\r\nlines".to_owned()),
            ]
            .into_iter(),
        );
        assert_eq!(
            &out[..],
            b"plain,,\"a,b\",\"say \"\"hi\"\"\",\"two\r\nlines\"\r\n"
        );
    }

    #[test]
    fn query_parameters_are_checked() {
        let q = parse_query(
            Some("telnum=%2B1001&state=ended&since=5&until=9&limit=7"),
            32,
        )
        .unwrap();
        assert_eq!(q.filter.telnum.as_deref(), Some("+1001"));
        assert_eq!(
            (q.filter.since, q.filter.until, q.limit),
            (Some(5), Some(9), 7)
        );
        assert_eq!(parse_query(None, 32).unwrap().limit, 100);
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "state=nope",
            "since=-1",
            "until=99999999999999999999",
            "cursor=garbage",
            "telnum=abc",
            "format=xml",
            "telnum=%zz",
        ] {
            assert!(parse_query(Some(bad), 32).is_err(), "{bad}");
        }
        assert!(parse_query(Some("format=csv&unknown=1"), 32).is_ok());
    }
}
