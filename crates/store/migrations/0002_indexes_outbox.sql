-- Schema version 2: the indexes of the listing filters and the retention sweeps, and the
-- webhook outbox (issue 13).
--
-- Every listing is ORDER BY created_at DESC, callid DESC with keyset pagination
-- (created_at, callid) < (?, ?); each index below ends in (created_at, callid), so that SQLite
-- walks it backwards from the cursor and stops after `limit` rows: no sort, no offset scan.

-- No filter, or only since/until.
CREATE INDEX calls_created ON calls (created_at, callid);

-- telnum filter (the common one: "this user's calls"). Numbers compare without a leading '+'
-- (SPEC.md), so the index is on that expression; the query must spell it exactly the same way
-- (TELNUM_KEY in crates/store/src/sqlite/sql.rs, checked by a test).
CREATE INDEX calls_telnum ON calls (substr(telnum, 1 + (substr(telnum, 1, 1) = '+')), created_at, callid);

-- The state filter. Records are mostly written when calls end, so nearly every stored record
-- is 'ended': for state = 'ended' the two indexes above serve (each row they walk matches),
-- and only the records in another state are indexed by state. These partial indexes cost a
-- write of an ended record nothing; full (state, ...) and (telnum, state, ...) indexes would
-- (a second telnum index took 45 % off the insert rate at 300,000 records). Queries name them
-- with the same `state <> 'ended'` term (sql.rs), which is how SQLite knows they apply.
CREATE INDEX calls_open ON calls (state, created_at, callid) WHERE state <> 'ended';
CREATE INDEX calls_telnum_open ON calls (substr(telnum, 1 + (substr(telnum, 1, 1) = '+')), state, created_at, callid) WHERE state <> 'ended';

-- Retention sweep: the oldest ended records first. Records not ended are not in it.
CREATE INDEX calls_ended ON calls (ended_at) WHERE ended_at IS NOT NULL;

-- GET /api/numbers?telnum=
CREATE INDEX numbers_telnum ON numbers (telnum, number);

-- Idempotency sweep: entries older than 24 hours.
CREATE INDEX idempotency_created ON idempotency (created_at);

-- Webhook events waiting for delivery, delivered, or given up (issue 13). `seq` counts 1, 2, 3
-- per callid; `state` is 'pending', 'delivered' or 'failed'.
CREATE TABLE outbox (
    id               INTEGER NOT NULL PRIMARY KEY,
    event_id         TEXT    NOT NULL UNIQUE,
    callid           TEXT    NOT NULL,
    seq              INTEGER NOT NULL,
    event            TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    UNIQUE (callid, seq)
) STRICT;

-- The delivery loop's question: which pending events are due?
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
