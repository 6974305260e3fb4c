//! The SQL of the PostgreSQL backend and the mapping between rows and the store's types.
//!
//! The statements mirror the SQLite backend's (`crate::sqlite::sql`) one for one; where the
//! dialects differ the comment says how the meaning is kept.

use postgres::types::ToSql;
use postgres::Row;

use crate::cursor::Cursor;
use crate::outbox::cap_error;
use crate::{
    normalize_number, CallFilter, CallRow, DirectionCounts, MediaCounts, OutboxEvent, StoreError,
    ENDED,
};

/// The telnum as the `calls_telnum` index has it: without a leading `+`. It must be spelled
/// exactly as in `migrations/postgres/0002_indexes_outbox.sql`, or PostgreSQL cannot use the
/// index (a test checks the spelling and the plan).
pub(crate) const TELNUM_KEY: &str =
    "(CASE WHEN substr(telnum, 1, 1) = '+' THEN substr(telnum, 2) ELSE telnum END)";

/// The columns of `calls`, in the order [`call_from_row`] reads them.
macro_rules! call_columns {
    () => {
        "callid, telnum, caller, callee, data, state, created_at, invite_at, ringing_at, \
         answered_at, ended_at, ring_ms, talk_ms, leg_a_code, leg_b_code, ended_by, end_cause, \
         sip_reason, a_to_b_packets, a_to_b_bytes, a_to_b_dropped, b_to_a_packets, \
         b_to_a_bytes, b_to_a_dropped, notify_url, latched_a, latched_b"
    };
}

pub(crate) const GET_CALL: &str =
    concat!("SELECT ", call_columns!(), " FROM calls WHERE callid = $1");

pub(crate) const UPSERT_CALL: &str = "INSERT INTO calls (callid, telnum, caller, callee, data, \
    state, created_at, invite_at, ringing_at, answered_at, ended_at, ring_ms, talk_ms, \
    leg_a_code, leg_b_code, ended_by, end_cause, sip_reason, a_to_b_packets, a_to_b_bytes, \
    a_to_b_dropped, b_to_a_packets, b_to_a_bytes, b_to_a_dropped, notify_url, latched_a, \
    latched_b) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
    $19, $20, $21, $22, $23, $24, $25, $26, $27) \
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

pub(crate) const PUT_NUMBER: &str = "INSERT INTO numbers (number, telnum) VALUES ($1, $2) \
    ON CONFLICT (number) DO UPDATE SET telnum = excluded.telnum";

pub(crate) const DELETE_NUMBER: &str = "DELETE FROM numbers WHERE number = $1";

/// Keeps a live entry (the first response wins) and replaces an expired one. ON CONFLICT
/// makes it atomic when two nodes remember the same key at once: one inserts, the other
/// finds the row and (the entry being live) leaves it.
pub(crate) const REMEMBER_IDEMPOTENCY: &str = "INSERT INTO idempotency \
    (key, scope, body_hash, status, body, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
    ON CONFLICT (key, scope) DO UPDATE SET body_hash = excluded.body_hash, \
    status = excluded.status, body = excluded.body, created_at = excluded.created_at \
    WHERE idempotency.created_at <= excluded.created_at - $7";

pub(crate) const LOOKUP_IDEMPOTENCY: &str = "SELECT body_hash, status, body, created_at \
    FROM idempotency WHERE key = $1 AND scope = $2";

/// The columns of `outbox`, in the order [`event_at`] reads them.
macro_rules! event_columns {
    () => {
        "event_id, callid, seq, event, target, body, created_at, state, attempts, \
         next_attempt_at, last_status, last_error, delivered_at"
    };
}

pub(crate) const GET_EVENT: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM outbox WHERE event_id = $1"
);

pub(crate) const EVENTS_OF_CALL: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM outbox WHERE callid = $1 ORDER BY seq LIMIT $2"
);

/// One node's pending events, by the partial index `outbox_pending` (node, id).
pub(crate) const PENDING_EVENTS: &str = concat!(
    "SELECT id, ",
    event_columns!(),
    " FROM outbox WHERE state = 'pending' AND node = $1 AND id > $2 ORDER BY id LIMIT $3"
);

pub(crate) const PENDING_COUNT: &str =
    "SELECT count(*) FROM outbox WHERE state = 'pending' AND node = $1";

/// An event already stored (same `event_id`, or same `callid` and `seq`) stays as it is: ON
/// CONFLICT without a target ignores a conflict on either unique constraint, like SQLite's
/// INSERT OR IGNORE.
pub(crate) const INSERT_EVENT: &str = "INSERT INTO outbox (event_id, callid, seq, event, \
    target, body, created_at, state, attempts, next_attempt_at, last_status, last_error, \
    delivered_at, node) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
    ON CONFLICT DO NOTHING";

pub(crate) const EVENT_ATTEMPT: &str = "UPDATE outbox SET state = $2, attempts = $3, \
    next_attempt_at = $4, last_status = $5, last_error = $6, delivered_at = $7 \
    WHERE event_id = $1";

/// Locks the event's row, so that two nodes requeueing it at once answer one `Requeued`
/// and one `NotFailed`.
pub(crate) const EVENT_STATE_FOR_UPDATE: &str =
    "SELECT state FROM outbox WHERE event_id = $1 FOR UPDATE";

pub(crate) const REQUEUE_EVENT: &str = "UPDATE outbox SET state = 'pending', attempts = 0, \
    next_attempt_at = $2, node = $3 WHERE event_id = $1";

/// Serialises the adopters of one node's events (see `PostgresStore::adopt_events`): a
/// transaction-scoped advisory lock keyed by the adopted node's name.
pub(crate) const ADOPT_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('callbridge.outbox.adopt'), hashtext($1))";

/// A lost node's pending events, in the order they were stored: what its adopter delivers.
pub(crate) const ADOPTABLE_EVENTS: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM outbox WHERE state = 'pending' AND node = $1 ORDER BY id"
);

pub(crate) const ADOPT_EVENTS: &str =
    "UPDATE outbox SET node = $1 WHERE state = 'pending' AND node = $2";

pub(crate) const OUTBOX_NODES: &str =
    "SELECT DISTINCT node FROM outbox WHERE state = 'pending' ORDER BY node";

/// The sweeps: PostgreSQL has no `DELETE ... LIMIT`, so each chunk deletes the keys a
/// limited sub-select names (`$1` the bound, `$2` the chunk).
pub(crate) const SWEEP_CALLS: &str = "DELETE FROM calls WHERE callid IN \
    (SELECT callid FROM calls WHERE ended_at < $1 LIMIT $2)";
pub(crate) const SWEEP_IDEMPOTENCY: &str = "DELETE FROM idempotency WHERE (key, scope) IN \
    (SELECT key, scope FROM idempotency WHERE created_at <= $1 LIMIT $2)";
pub(crate) const SWEEP_EVENTS: &str = "DELETE FROM outbox WHERE id IN \
    (SELECT id FROM outbox WHERE state <> 'pending' AND created_at < $1 LIMIT $2)";

pub(crate) const NUMBERS_OF: &str =
    "SELECT number, telnum FROM numbers WHERE telnum = $1 ORDER BY number";
pub(crate) const ALL_NUMBERS: &str = "SELECT number, telnum FROM numbers ORDER BY number";

/// A value for a statement's parameter.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

/// `value` as PostgreSQL's `bigint`.
pub(crate) fn int(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

/// A client's bound as a `bigint`: past the range it means "after everything", which is
/// what `i64::MAX` means too.
pub(crate) fn saturating_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn opt_int(field: &'static str, value: Option<u64>) -> Result<Option<i64>, StoreError> {
    value.map(|v| int(field, v)).transpose()
}

/// The parameters of [`UPSERT_CALL`].
pub(crate) fn call_params(call: &CallRow) -> Result<Vec<Param>, StoreError> {
    let mut counts: [Option<i64>; 6] = [None; 6];
    if let Some(m) = &call.media {
        let values = [
            m.a_to_b.packets,
            m.a_to_b.bytes,
            m.a_to_b.dropped,
            m.b_to_a.packets,
            m.b_to_a.bytes,
            m.b_to_a.dropped,
        ];
        for (slot, value) in counts.iter_mut().zip(values) {
            *slot = Some(int("media", value)?);
        }
    }
    let [ap, ab, ad, bp, bb, bd] = counts;
    let media = call.media.as_ref();
    Ok(vec![
        Box::new(call.callid.clone()),
        Box::new(call.telnum.clone()),
        Box::new(call.caller.clone()),
        Box::new(call.callee.clone()),
        // BYTEA: the opaque string may hold NUL, which TEXT cannot (migration 6).
        Box::new(call.data.as_ref().map(|d| d.as_bytes().to_vec())),
        Box::new(call.state.clone()),
        Box::new(int("created_at", call.created_at)?),
        Box::new(opt_int("invite_at", call.invite_at)?),
        Box::new(opt_int("ringing_at", call.ringing_at)?),
        Box::new(opt_int("answered_at", call.answered_at)?),
        Box::new(opt_int("ended_at", call.ended_at)?),
        Box::new(opt_int("ring_ms", call.ring_ms)?),
        Box::new(opt_int("talk_ms", call.talk_ms)?),
        Box::new(call.leg_a_code.map(i32::from)),
        Box::new(call.leg_b_code.map(i32::from)),
        Box::new(call.ended_by.clone()),
        Box::new(call.end_cause.clone()),
        Box::new(call.sip_reason.clone()),
        Box::new(ap),
        Box::new(ab),
        Box::new(ad),
        Box::new(bp),
        Box::new(bb),
        Box::new(bd),
        Box::new(call.notify_url.clone()),
        Box::new(media.and_then(|m| m.latched_a.clone())),
        Box::new(media.and_then(|m| m.latched_b.clone())),
    ])
}

/// The parameters of [`INSERT_EVENT`], the event stamped as `node`'s.
pub(crate) fn event_params(event: &OutboxEvent, node: &str) -> Result<Vec<Param>, StoreError> {
    Ok(vec![
        Box::new(event.event_id.clone()),
        Box::new(event.callid.clone()),
        Box::new(i64::from(event.seq)),
        Box::new(event.event.clone()),
        Box::new(event.target.clone()),
        Box::new(event.body.clone()),
        Box::new(int("created_at", event.created_at)?),
        Box::new(event.state.clone()),
        Box::new(i64::from(event.attempts)),
        Box::new(int("next_attempt_at", event.next_attempt_at)?),
        Box::new(event.last_status.map(i32::from)),
        Box::new(event.last_error.as_deref().map(|e| cap_error(e).to_owned())),
        Box::new(opt_int("delivered_at", event.delivered_at)?),
        Box::new(node.to_owned()),
    ])
}

/// Borrows boxed parameters the way the client takes them.
pub(crate) fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn get_u64(row: &Row, index: usize, column: &'static str) -> Result<u64, StoreError> {
    let value: i64 = row.try_get(index)?;
    u64::try_from(value).map_err(|_| StoreError::InvalidRow { column, value })
}

fn get_opt_u64(row: &Row, index: usize, column: &'static str) -> Result<Option<u64>, StoreError> {
    let value: Option<i64> = row.try_get(index)?;
    value
        .map(|v| u64::try_from(v).map_err(|_| StoreError::InvalidRow { column, value: v }))
        .transpose()
}

fn get_u32(row: &Row, index: usize, column: &'static str) -> Result<u32, StoreError> {
    let value: i64 = row.try_get(index)?;
    u32::try_from(value).map_err(|_| StoreError::InvalidRow { column, value })
}

pub(crate) fn get_u16(row: &Row, index: usize, column: &'static str) -> Result<u16, StoreError> {
    let value: i32 = row.try_get(index)?;
    u16::try_from(value).map_err(|_| StoreError::InvalidRow {
        column,
        value: value.into(),
    })
}

fn get_opt_u16(row: &Row, index: usize, column: &'static str) -> Result<Option<u16>, StoreError> {
    let value: Option<i32> = row.try_get(index)?;
    value
        .map(|v| {
            u16::try_from(v).map_err(|_| StoreError::InvalidRow {
                column,
                value: v.into(),
            })
        })
        .transpose()
}

/// A row of `SELECT event_columns!() FROM outbox`, its columns from `at` on.
pub(crate) fn event_at(row: &Row, at: usize) -> Result<OutboxEvent, StoreError> {
    Ok(OutboxEvent {
        event_id: row.try_get(at)?,
        callid: row.try_get(at + 1)?,
        seq: get_u32(row, at + 2, "seq")?,
        event: row.try_get(at + 3)?,
        target: row.try_get(at + 4)?,
        body: row.try_get(at + 5)?,
        created_at: get_u64(row, at + 6, "created_at")?,
        state: row.try_get(at + 7)?,
        attempts: get_u32(row, at + 8, "attempts")?,
        next_attempt_at: get_u64(row, at + 9, "next_attempt_at")?,
        last_status: get_opt_u16(row, at + 10, "last_status")?,
        last_error: row.try_get(at + 11)?,
        delivered_at: get_opt_u64(row, at + 12, "delivered_at")?,
    })
}

/// A row of `SELECT call_columns!() FROM calls`.
pub(crate) fn call_from_row(row: &Row) -> Result<CallRow, StoreError> {
    const COUNTS: [&str; 6] = [
        "a_to_b_packets",
        "a_to_b_bytes",
        "a_to_b_dropped",
        "b_to_a_packets",
        "b_to_a_bytes",
        "b_to_a_dropped",
    ];
    let mut counts = [None; 6];
    for (offset, (slot, column)) in counts.iter_mut().zip(COUNTS).enumerate() {
        *slot = get_opt_u64(row, 18 + offset, column)?;
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
            latched_a: row.try_get(25)?,
            latched_b: row.try_get(26)?,
        })
    };
    Ok(CallRow {
        callid: row.try_get(0)?,
        telnum: row.try_get(1)?,
        caller: row.try_get(2)?,
        callee: row.try_get(3)?,
        data: row
            .try_get::<_, Option<Vec<u8>>>(4)?
            .map(|bytes| match String::from_utf8(bytes) {
                Ok(data) => data,
                // Only callbridge writes it, from a Rust string; bytes from elsewhere read
                // lossily rather than failing the whole listing.
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }),
        state: row.try_get(5)?,
        created_at: get_u64(row, 6, "created_at")?,
        invite_at: get_opt_u64(row, 7, "invite_at")?,
        ringing_at: get_opt_u64(row, 8, "ringing_at")?,
        answered_at: get_opt_u64(row, 9, "answered_at")?,
        ended_at: get_opt_u64(row, 10, "ended_at")?,
        ring_ms: get_opt_u64(row, 11, "ring_ms")?,
        talk_ms: get_opt_u64(row, 12, "talk_ms")?,
        leg_a_code: get_opt_u16(row, 13, "leg_a_code")?,
        leg_b_code: get_opt_u16(row, 14, "leg_b_code")?,
        ended_by: row.try_get(15)?,
        end_cause: row.try_get(16)?,
        sip_reason: row.try_get(17)?,
        notify_url: row.try_get(24)?,
        media,
    })
}

/// The listing query for `filter` after `cursor`, fetching `fetch` rows, and its parameters.
///
/// The SQL text depends only on which filters are set, so the connection's statement cache
/// keeps every shape prepared. PostgreSQL has no `INDEXED BY`: with statistics, its planner
/// picks the index itself; the `state <> 'ended'` term is still added for an open state,
/// which is what lets it consider the partial indexes `calls_open` and `calls_telnum_open`.
pub(crate) fn list_query(
    filter: &CallFilter,
    cursor: Option<&Cursor>,
    fetch: usize,
) -> Result<(String, Vec<Param>), StoreError> {
    let open_state = filter.state.as_deref().filter(|state| *state != ENDED);
    let mut sql = String::from(concat!("SELECT ", call_columns!(), " FROM calls"));
    let mut conditions: Vec<String> = Vec::new();
    let mut values: Vec<Param> = Vec::new();
    let next = |value: Param, values: &mut Vec<Param>| {
        values.push(value);
        format!("${}", values.len())
    };
    if let Some(telnum) = &filter.telnum {
        let p = next(Box::new(normalize_number(telnum).to_owned()), &mut values);
        conditions.push(format!("{TELNUM_KEY} = {p}"));
    }
    if let Some(state) = &filter.state {
        let p = next(Box::new(state.clone()), &mut values);
        conditions.push(format!("state = {p}"));
    }
    if open_state.is_some() {
        conditions.push(format!("state <> '{ENDED}'"));
    }
    if let Some(since) = filter.since {
        let p = next(Box::new(saturating_int(since)), &mut values);
        conditions.push(format!("created_at >= {p}"));
    }
    if let Some(until) = filter.until {
        let p = next(Box::new(saturating_int(until)), &mut values);
        conditions.push(format!("created_at < {p}"));
    }
    if let Some(cursor) = cursor {
        let at = next(Box::new(int("cursor", cursor.created_at)?), &mut values);
        let id = next(Box::new(cursor.callid.clone()), &mut values);
        conditions.push(format!("(created_at, callid) < ({at}, {id})"));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    let limit = next(Box::new(int("limit", fetch as u64)?), &mut values);
    sql.push_str(&format!(
        " ORDER BY created_at DESC, callid DESC LIMIT {limit}"
    ));
    Ok((sql, values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::MIGRATIONS;

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
}
