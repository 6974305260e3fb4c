-- Schema version 4 (PostgreSQL): what the webhook delivery needs of the outbox. The twin of
-- ../0004_outbox_delivery.sql.

ALTER TABLE outbox ADD COLUMN target TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN last_status INTEGER;
ALTER TABLE outbox ADD COLUMN delivered_at BIGINT;

DROP INDEX outbox_due;

CREATE INDEX outbox_pending ON outbox (id) WHERE state = 'pending';
CREATE INDEX outbox_settled ON outbox (created_at) WHERE state <> 'pending';
