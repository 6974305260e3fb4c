//! The SQL of the SQLite backend and the mapping between rows and [`CallRow`].

use rusqlite::types::Value;
use rusqlite::{params, Connection, Row};

use crate::cursor::Cursor;
use crate::outbox::cap_error;
use crate::{
    normalize_number, CallFilter, CallRow, DirectionCounts, EventAttempt, IdempotencyEntry,
    MediaCounts, OutboxEvent, StoreError, WriteOp, ENDED, IDEMPOTENCY_TTL_MS,
};

/// The telnum as the `calls_telnum` index has it: without a leading `+`. It must be spelled
/// exactly as in `migrations/0002_indexes_outbox.sql`, or SQLite cannot use the index (a test
/// checks both the spelling and the query plan).
pub(crate) const TELNUM_KEY: &str = "substr(telnum, 1 + (substr(telnum, 1, 1) = '+'))";

/// The columns of `calls`, in the order [`call_from_row`] reads them (a macro, so that
/// `concat!` can build constant queries with it).
macro_rules! call_columns {
    () => {
        "callid, telnum, caller, callee, data, state, created_at, invite_at, ringing_at, \
         answered_at, ended_at, ring_ms, talk_ms, leg_a_code, leg_b_code, ended_by, end_cause, \
         sip_reason, a_to_b_packets, a_to_b_bytes, a_to_b_dropped, b_to_a_packets, \
         b_to_a_bytes, b_to_a_dropped, notify_url, latched_a, latched_b"
    };
}

pub(crate) const GET_CALL: &str =
    concat!("SELECT ", call_columns!(), " FROM calls WHERE callid = ?1");

const UPSERT_CALL: &str = "INSERT INTO calls (callid, telnum, caller, callee, data, state, \
    created_at, invite_at, ringing_at, answered_at, ended_at, ring_ms, talk_ms, leg_a_code, \
    leg_b_code, ended_by, end_cause, sip_reason, a_to_b_packets, a_to_b_bytes, a_to_b_dropped, \
    b_to_a_packets, b_to_a_bytes, b_to_a_dropped, notify_url, latched_a, latched_b) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
    ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27) \
    ON CONFLICT (callid) DO UPDATE SET telnum = excluded.telnum, caller = excluded.caller, \
    callee = excluded.callee, data = excluded.data, state = excluded.state, \
    created_at = excluded.created_at, invite_at = excluded.invite_at, \
    ringing_at = excluded.ringing_at, answered_at = excluded.answered_at, \
    ended_at = excluded.ended_at, ring_ms = excluded.ring_ms, talk_ms = excluded.talk_ms, \
    leg_a_code = excluded.leg_a_code, leg_b_code = excluded.leg_b_code, \
    ended_by = excluded.ended_by, end_cause = excluded.end_cause, \
    sip_reason = excluded.sip_reason, a_to_b_packets = excluded.a_to_b_packets, \
    a_to_b_bytes = excluded.a_to_b_bytes, a_to_b_dropped = excluded.a_to_b_dropped, \
    b_to_a_packets = excluded.b_to_a_packets, b_to_a_bytes = excluded.b_to_a_bytes, \
    b_to_a_dropped = excluded.b_to_a_dropped, notify_url = excluded.notify_url, \
    latched_a = excluded.latched_a, latched_b = excluded.latched_b";

/// Keeps a live entry (the first response wins) and replaces an expired one.
const REMEMBER_IDEMPOTENCY: &str = "INSERT INTO idempotency \
    (key, scope, body_hash, status, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
    ON CONFLICT (key, scope) DO UPDATE SET body_hash = excluded.body_hash, \
    status = excluded.status, body = excluded.body, created_at = excluded.created_at \
    WHERE idempotency.created_at <= excluded.created_at - ?7";

/// `value` as SQLite's signed integer.
fn int(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

/// A client's bound as SQLite's integer: past the range it means "after everything", which
/// is what `i64::MAX` means too.
fn saturating_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn opt_int(field: &'static str, value: Option<u64>) -> Result<Option<i64>, StoreError> {
    value.map(|v| int(field, v)).transpose()
}

/// Applies one write on `conn` (inside the caller's transaction).
pub(crate) fn apply_op(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    match op {
        WriteOp::UpsertCall(call) => upsert_call(conn, call),
        WriteOp::PutNumber { number, telnum } => {
            conn.prepare_cached(
                "INSERT INTO numbers (number, telnum) VALUES (?1, ?2) \
                 ON CONFLICT (number) DO UPDATE SET telnum = excluded.telnum",
            )?
            .execute(params![normalize_number(number), normalize_number(telnum)])?;
            Ok(())
        }
        WriteOp::DeleteNumber { number } => {
            delete_number(conn, number)?;
            Ok(())
        }
        WriteOp::RememberIdempotency(entry) => remember_idempotency(conn, entry),
        WriteOp::EventAttempt(attempt) => event_attempt(conn, attempt),
    }
}

/// The columns of `outbox`, in the order [`event_from_row`] reads them.
macro_rules! event_columns {
    () => {
        "event_id, callid, seq, event, target, body, created_at, state, attempts, \
         next_attempt_at, last_status, last_error, delivered_at"
    };
}

pub(crate) const GET_EVENT: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM outbox WHERE event_id = ?1"
);

pub(crate) const EVENTS_OF_CALL: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM outbox WHERE callid = ?1 ORDER BY seq LIMIT ?2"
);

/// One node's pending events; names `outbox_pending` (node, id) by repeating its WHERE term.
pub(crate) const PENDING_EVENTS: &str = concat!(
    "SELECT id, ",
    event_columns!(),
    " FROM outbox WHERE state = 'pending' AND node = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
);

/// A lost node's pending events, in the order they were stored: what its adopter delivers.
pub(crate) const ADOPTABLE_EVENTS: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM outbox WHERE state = 'pending' AND node = ?1 ORDER BY id"
);

/// An event already stored (same `event_id`, or same `callid` and `seq`) stays as it is.
const INSERT_EVENT: &str = "INSERT OR IGNORE INTO outbox (event_id, callid, seq, event, \
    target, body, created_at, state, attempts, next_attempt_at, last_status, last_error, \
    delivered_at, node) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

/// Stores `event` as `node`'s to deliver (unless it is already stored).
pub(crate) fn insert_event(
    conn: &Connection,
    event: &OutboxEvent,
    node: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(INSERT_EVENT)?.execute(params![
        event.event_id,
        event.callid,
        event.seq,
        event.event,
        event.target,
        event.body,
        int("created_at", event.created_at)?,
        event.state,
        event.attempts,
        int("next_attempt_at", event.next_attempt_at)?,
        event.last_status,
        event.last_error.as_deref().map(cap_error),
        opt_int("delivered_at", event.delivered_at)?,
        node,
    ])?;
    Ok(())
}

fn event_attempt(conn: &Connection, attempt: &EventAttempt) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE outbox SET state = ?2, attempts = ?3, next_attempt_at = ?4, \
         last_status = ?5, last_error = ?6, delivered_at = ?7 WHERE event_id = ?1",
    )?
    .execute(params![
        attempt.event_id,
        attempt.state,
        attempt.attempts,
        int("next_attempt_at", attempt.next_attempt_at)?,
        attempt.last_status,
        attempt.last_error.as_deref().map(cap_error),
        opt_int("delivered_at", attempt.delivered_at)?,
    ])?;
    Ok(())
}

/// A row of `SELECT event_columns!() FROM outbox`, its columns from `at` on.
pub(crate) fn event_at(row: &Row<'_>, at: usize) -> rusqlite::Result<OutboxEvent> {
    Ok(OutboxEvent {
        event_id: row.get(at)?,
        callid: row.get(at + 1)?,
        seq: row.get(at + 2)?,
        event: row.get(at + 3)?,
        target: row.get(at + 4)?,
        body: row.get(at + 5)?,
        created_at: get_u64(row, at + 6)?,
        state: row.get(at + 7)?,
        attempts: row.get(at + 8)?,
        next_attempt_at: get_u64(row, at + 9)?,
        last_status: row.get(at + 10)?,
        last_error: row.get(at + 11)?,
        delivered_at: get_opt_u64(row, at + 12)?,
    })
}

/// A row of `SELECT event_columns!() FROM outbox`.
pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxEvent> {
    event_at(row, 0)
}

pub(crate) fn upsert_call(conn: &Connection, call: &CallRow) -> Result<(), StoreError> {
    let media = call.media.as_ref().map(|m| {
        [
            m.a_to_b.packets,
            m.a_to_b.bytes,
            m.a_to_b.dropped,
            m.b_to_a.packets,
            m.b_to_a.bytes,
            m.b_to_a.dropped,
        ]
    });
    let mut counts: [Option<i64>; 6] = [None; 6];
    if let Some(media) = media {
        for (slot, value) in counts.iter_mut().zip(media) {
            *slot = Some(int("media", value)?);
        }
    }
    conn.prepare_cached(UPSERT_CALL)?.execute(params![
        call.callid,
        call.telnum,
        call.caller,
        call.callee,
        call.data,
        call.state,
        int("created_at", call.created_at)?,
        opt_int("invite_at", call.invite_at)?,
        opt_int("ringing_at", call.ringing_at)?,
        opt_int("answered_at", call.answered_at)?,
        opt_int("ended_at", call.ended_at)?,
        opt_int("ring_ms", call.ring_ms)?,
        opt_int("talk_ms", call.talk_ms)?,
        call.leg_a_code,
        call.leg_b_code,
        call.ended_by,
        call.end_cause,
        call.sip_reason,
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        counts[5],
        call.notify_url,
        call.media.as_ref().and_then(|m| m.latched_a.as_deref()),
        call.media.as_ref().and_then(|m| m.latched_b.as_deref()),
    ])?;
    Ok(())
}

pub(crate) fn delete_number(conn: &Connection, number: &str) -> Result<bool, StoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM numbers WHERE number = ?1")?
        .execute([normalize_number(number)])?;
    Ok(deleted > 0)
}

fn remember_idempotency(conn: &Connection, entry: &IdempotencyEntry) -> Result<(), StoreError> {
    conn.prepare_cached(REMEMBER_IDEMPOTENCY)?.execute(params![
        entry.key,
        entry.scope,
        entry.body_hash,
        entry.status,
        entry.body,
        int("at_ms", entry.at_ms)?,
        int("ttl", IDEMPOTENCY_TTL_MS)?,
    ])?;
    Ok(())
}

fn get_u64(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, value))
}

fn get_opt_u64(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<u64>> {
    let value: Option<i64> = row.get(index)?;
    value
        .map(|v| u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, v)))
        .transpose()
}

/// A row of `SELECT call_columns!() FROM calls`.
pub(crate) fn call_from_row(row: &Row<'_>) -> rusqlite::Result<CallRow> {
    let mut counts = [None; 6];
    for (offset, slot) in counts.iter_mut().enumerate() {
        *slot = get_opt_u64(row, 18 + offset)?;
    }
    let media = if counts.iter().all(Option::is_none) {
        None
    } else {
        let [ap, ab, ad, bp, bb, bd] = counts.map(|c| c.unwrap_or(0));
        Some(MediaCounts {
            a_to_b: DirectionCounts {
                packets: ap,
                bytes: ab,
                dropped: ad,
            },
            b_to_a: DirectionCounts {
                packets: bp,
                bytes: bb,
                dropped: bd,
            },
            latched_a: row.get(25)?,
            latched_b: row.get(26)?,
        })
    };
    Ok(CallRow {
        callid: row.get(0)?,
        telnum: row.get(1)?,
        caller: row.get(2)?,
        callee: row.get(3)?,
        data: row.get(4)?,
        state: row.get(5)?,
        created_at: get_u64(row, 6)?,
        invite_at: get_opt_u64(row, 7)?,
        ringing_at: get_opt_u64(row, 8)?,
        answered_at: get_opt_u64(row, 9)?,
        ended_at: get_opt_u64(row, 10)?,
        ring_ms: get_opt_u64(row, 11)?,
        talk_ms: get_opt_u64(row, 12)?,
        leg_a_code: row.get(13)?,
        leg_b_code: row.get(14)?,
        ended_by: row.get(15)?,
        end_cause: row.get(16)?,
        sip_reason: row.get(17)?,
        notify_url: row.get(24)?,
        media,
    })
}

/// The listing query for `filter` after `cursor`, fetching `fetch` rows, and its parameters.
///
/// The SQL text depends only on which filters are set and whether the state is
/// [`ENDED`](crate::ENDED), so the connection's statement cache keeps every shape prepared.
/// The query names its index wherever SQLite, without statistics, could pick a worse one
/// (e.g. walk every ended call to find one user's):
///
/// | filter               | index                                   |
/// | -------------------- | --------------------------------------- |
/// | telnum, state ≠ ended | `calls_telnum_open` (partial)           |
/// | telnum, other        | `calls_telnum`                          |
/// | state ≠ ended        | `calls_open` (partial)                  |
/// | otherwise            | SQLite's choice (`calls_created`)       |
pub(crate) fn list_query(
    filter: &CallFilter,
    cursor: Option<&Cursor>,
    fetch: usize,
) -> Result<(String, Vec<Value>), StoreError> {
    let open_state = filter.state.as_deref().filter(|state| *state != ENDED);
    let mut sql = String::from(concat!("SELECT ", call_columns!(), " FROM calls"));
    sql.push_str(match (&filter.telnum, open_state) {
        (Some(_), Some(_)) => " INDEXED BY calls_telnum_open",
        (Some(_), None) => " INDEXED BY calls_telnum",
        (None, Some(_)) => " INDEXED BY calls_open",
        (None, None) => "",
    });
    let mut conditions: Vec<String> = Vec::new();
    let mut values = Vec::new();
    if let Some(telnum) = &filter.telnum {
        conditions.push(format!("{TELNUM_KEY} = ?"));
        values.push(Value::Text(normalize_number(telnum).to_owned()));
    }
    if let Some(state) = &filter.state {
        conditions.push("state = ?".to_owned());
        values.push(Value::Text(state.clone()));
    }
    if open_state.is_some() {
        // Implies the partial indexes' WHERE, so SQLite may use them.
        conditions.push(format!("state <> '{ENDED}'"));
    }
    if let Some(since) = filter.since {
        conditions.push("created_at >= ?".to_owned());
        values.push(Value::Integer(saturating_int(since)));
    }
    if let Some(until) = filter.until {
        conditions.push("created_at < ?".to_owned());
        values.push(Value::Integer(saturating_int(until)));
    }
    if let Some(cursor) = cursor {
        conditions.push("(created_at, callid) < (?, ?)".to_owned());
        values.push(Value::Integer(int("cursor", cursor.created_at)?));
        values.push(Value::Text(cursor.callid.clone()));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY created_at DESC, callid DESC LIMIT ?");
    values.push(Value::Integer(int("limit", fetch as u64)?));
    Ok((sql, values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::MIGRATIONS;

    #[test]
    fn the_telnum_key_is_spelled_as_in_its_index() {
        let index = MIGRATIONS
            .iter()
            .map(|m| m.sql)
            .find(|sql| sql.contains("CREATE INDEX calls_telnum"))
            .unwrap();
        assert!(index.contains(&format!("ON calls ({TELNUM_KEY}, created_at, callid)")));
        assert!(index.contains(&format!(
            "ON calls ({TELNUM_KEY}, state, created_at, callid)"
        )));
    }

    #[test]
    fn the_telnum_key_strips_one_leading_plus_like_normalize_number() {
        let conn = Connection::open_in_memory().unwrap();
        for telnum in ["1001", "+1001", "++1001", "", "+", "10+01"] {
            let key: String = conn
                .query_row(
                    &format!("SELECT {}", TELNUM_KEY.replace("telnum", "?1")),
                    [telnum],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(key, normalize_number(telnum), "{telnum:?}");
        }
    }
}
