-- Schema version 5 (PostgreSQL): the node that delivers each webhook event. The twin of
-- ../0005_outbox_node.sql, which says why.

ALTER TABLE outbox ADD COLUMN node TEXT COLLATE "C" NOT NULL DEFAULT '';

DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (node, id) WHERE state = 'pending';
