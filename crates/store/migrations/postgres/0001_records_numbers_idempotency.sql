-- Schema version 1 (PostgreSQL): call records, number assignments, idempotency keys.
--
-- The PostgreSQL twin of ../0001_records_numbers_idempotency.sql (same version, same tables
-- and columns), applied by crates/store/src/postgres/migrations.rs inside one transaction
-- that also records the version in schema_version. Never edit a migration that has shipped:
-- add the next one, here and for SQLite.
--
-- Types: BIGINT for every integer SQLite keeps (ms timestamps, counters, seq), INTEGER for
-- SIP and HTTP status codes, BYTEA for hashes, TEXT elsewhere. Every text column that is
-- compared or sorted is COLLATE "C": byte order, as SQLite compares, whatever the database's
-- own locale is; a linguistic collation would order callids and numbers differently (and
-- the listing's keyset cursor relies on one order).

CREATE TABLE calls (
    callid          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    telnum          TEXT COLLATE "C" NOT NULL,
    caller          TEXT NOT NULL,
    callee          TEXT NOT NULL,
    data            TEXT,
    state           TEXT COLLATE "C" NOT NULL,
    created_at      BIGINT NOT NULL,
    invite_at       BIGINT,
    ringing_at      BIGINT,
    answered_at     BIGINT,
    ended_at        BIGINT,
    ring_ms         BIGINT,
    talk_ms         BIGINT,
    leg_a_code      INTEGER,
    leg_b_code      INTEGER,
    ended_by        TEXT,
    end_cause       TEXT,
    sip_reason      TEXT,
    a_to_b_packets  BIGINT,
    a_to_b_bytes    BIGINT,
    a_to_b_dropped  BIGINT,
    b_to_a_packets  BIGINT,
    b_to_a_bytes    BIGINT,
    b_to_a_dropped  BIGINT
);

-- Dedicated number -> the telnum it is assigned to. Both are stored without a leading '+'.
CREATE TABLE numbers (
    number  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    telnum  TEXT COLLATE "C" NOT NULL
);

-- The first response to a POST with an Idempotency-Key, for 24 hours (see the SQLite file).
CREATE TABLE idempotency (
    key         TEXT COLLATE "C" NOT NULL,
    scope       TEXT COLLATE "C" NOT NULL,
    body_hash   BYTEA   NOT NULL,
    status      INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (key, scope)
);
