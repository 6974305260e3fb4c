-- Schema version 5: the node that delivers each webhook event, for several callbridge nodes
-- sharing one database (PostgreSQL; SQLite gets the same schema so that both backends behave
-- alike).
--
-- Each node delivers the events of its own calls (its in-memory schedule keeps a call's `seq`
-- order) and, after a restart, recovers only its own pending events; a surviving node takes
-- over a dead node's pending events by moving them to itself in one statement. `node` is the
-- store's node name ('' for a single node): the rows written before take ''.

ALTER TABLE outbox ADD COLUMN node TEXT NOT NULL DEFAULT '';

-- Recovery (a node's pending events by id), the per-node pending count, the adoption of a
-- node's pending events and the list of nodes holding pending events all read this one index.
-- It stays small: only pending events are in it. Queries repeat `state = 'pending'` so that
-- SQLite knows the partial index applies.
DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (node, id) WHERE state = 'pending';
