-- Schema version 4: what the webhook delivery needs of the outbox (issue 13) — where each
-- event goes, when it happened, and how its last attempt ended.
--
-- Added columns take their DEFAULT (or NULL) in the rows written before: target '' and
-- created_at 0 mean "not known" (such a row is swept first, and a pending one with no target
-- is the delivery's to give up on). `last_status` is the last HTTP status received, NULL when
-- there was none (a timeout, a refused connection); `delivered_at` is NULL until delivered.
-- `state` is now 'pending', 'delivered', 'failed' (given up after the last attempt) or
-- 'dropped' (let go because the outbox's bound was exceeded).

ALTER TABLE outbox ADD COLUMN target TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN last_status INTEGER;
ALTER TABLE outbox ADD COLUMN delivered_at INTEGER;

-- Delivery is scheduled in memory (the server holds the due times), so nothing ever asks the
-- database which events are due: the index only cost every write of an attempt.
DROP INDEX outbox_due;

-- Recovery after a restart: the pending events in insertion order, paged by id > ?. Pending
-- events are few at any time (most are delivered within seconds), so the partial index stays
-- small however long the outbox's history is.
CREATE INDEX outbox_pending ON outbox (id) WHERE state = 'pending';

-- Retention sweep: the oldest settled (delivered, failed, dropped) events first. Pending
-- events are never swept, so they are not in it; queries repeat `state <> 'pending'` so that
-- SQLite knows the index applies.
CREATE INDEX outbox_settled ON outbox (created_at) WHERE state <> 'pending';
