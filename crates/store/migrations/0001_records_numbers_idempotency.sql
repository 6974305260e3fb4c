-- Schema version 1: call records, number assignments, idempotency keys.
--
-- Applied by crates/store/src/sqlite/migrations.rs inside one transaction, which also sets
-- PRAGMA user_version = 1. Never edit a migration that has shipped: add the next one.
-- STRICT tables: SQLite checks every value against the column's type, as PostgreSQL would.

-- One row per call (SPEC.md, "A call record holds"). Timestamps are ms since the Unix epoch.
-- The media counters are six plain columns rather than a JSON text: their shape is fixed by
-- the SPEC (packets, bytes, drops each way), a billing export can sum them in SQL, and a read
-- does not parse JSON. All six are NULL when the call had no media.
CREATE TABLE calls (
    callid          TEXT    NOT NULL PRIMARY KEY,
    telnum          TEXT    NOT NULL,
    caller          TEXT    NOT NULL,
    callee          TEXT    NOT NULL,
    data            TEXT,
    state           TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    invite_at       INTEGER,
    ringing_at      INTEGER,
    answered_at     INTEGER,
    ended_at        INTEGER,
    ring_ms         INTEGER,
    talk_ms         INTEGER,
    leg_a_code      INTEGER,
    leg_b_code      INTEGER,
    ended_by        TEXT,
    end_cause       TEXT,
    sip_reason      TEXT,
    a_to_b_packets  INTEGER,
    a_to_b_bytes    INTEGER,
    a_to_b_dropped  INTEGER,
    b_to_a_packets  INTEGER,
    b_to_a_bytes    INTEGER,
    b_to_a_dropped  INTEGER
) STRICT;

-- Dedicated number -> the telnum it is assigned to. Both are stored without a leading '+'.
CREATE TABLE numbers (
    number  TEXT NOT NULL PRIMARY KEY,
    telnum  TEXT NOT NULL
) STRICT;

-- The first response to a POST with an Idempotency-Key, for 24 hours. `scope` separates
-- endpoints (and tokens) so that one key means one request; `body_hash` is the client's
-- request body hashed by the API, to tell a replay from a reused key.
CREATE TABLE idempotency (
    key         TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    body_hash   BLOB    NOT NULL,
    status      INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (key, scope)
) STRICT;
