//! The one storage interface, implemented by each backend.

use crate::{
    CallFilter, CallRow, IdempotencyEntry, IdempotencyLookup, NumberAssignment, OutboxEvent, Page,
    Requeue, StoreError, WriteOp,
};

/// Everything callbridge keeps across restarts, behind one interface: the embedded SQLite
/// backend ([`SqliteStore`](crate::SqliteStore)), the shared PostgreSQL backend
/// ([`PostgresStore`](crate::PostgresStore)), a test double in tests. It exists so that the
/// crates above never know which database they talk to; the tests run the same scenarios on
/// both backends to keep them identical.
///
/// Every method blocks on the database. None may run on the SIP engine's task, nor on any
/// tokio worker thread (PostgreSQL's client runs a small runtime of its own, which tokio
/// refuses to start inside another): the engine's writes go through the
/// [`Writer`](crate::Writer)'s queue, and the API calls the reads from a blocking thread
/// (`tokio::task::spawn_blocking`). Methods take `&self`; a backend is shared as
/// `Arc<dyn Store>`.
///
/// **Nodes.** Several callbridge nodes may share one database. A store is opened for one
/// node (`SqliteOptions::node`, `PostgresOptions::node`; `""` for a single node): the webhook
/// events it inserts are that node's to deliver, its [`pending_events`](Store::pending_events)
/// and [`pending_event_count`](Store::pending_event_count) are that node's, and
/// [`adopt_events`](Store::adopt_events) moves a dead node's pending events to it. Everything
/// else (records, numbers, idempotency keys, reading and updating any event) is shared.
///
/// Numbers are compared without a leading `+` (see [`normalize_number`](crate::normalize_number)).
/// Time is always an argument (`now_ms`, cutoffs): the store reads no clock, so tests choose it.
/// A database that cannot be reached is [`StoreError::Unavailable`]; the store reconnects by
/// itself on a later call.
pub trait Store: Send + Sync {
    /// Applies the writes in order in one transaction: all of them or (on error) none.
    fn apply(&self, ops: &[WriteOp]) -> Result<(), StoreError>;

    /// Inserts the records, replacing stored ones with the same `callid`, in one transaction.
    fn upsert_calls(&self, calls: &[CallRow]) -> Result<(), StoreError>;

    /// The record of `callid`, if stored.
    fn get_call(&self, callid: &str) -> Result<Option<CallRow>, StoreError>;

    /// One page of the records matching `filter`, newest first (`created_at`, then `callid`,
    /// both descending). `limit` is clamped to `1..=`[`MAX_LIMIT`](crate::MAX_LIMIT);
    /// `cursor` is a previous page's `next_cursor` ([`StoreError::BadCursor`] if it is not).
    /// Keyset pagination: the cost of a page does not grow with its depth, and rows inserted
    /// after the first page never shift the later ones.
    fn list_calls(
        &self,
        filter: &CallFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, StoreError>;

    /// Deletes the records that ended before `ended_before` (ms since the epoch), at most
    /// `chunk` per transaction so that writers are never held up long; returns how many.
    /// Records without `ended_at` are kept.
    fn sweep_calls(&self, ended_before: u64, chunk: usize) -> Result<u64, StoreError>;

    /// Assigns the dedicated `number` to `telnum`, replacing its previous assignment.
    fn put_number(&self, number: &str, telnum: &str) -> Result<(), StoreError> {
        self.apply(&[WriteOp::PutNumber {
            number: number.to_owned(),
            telnum: telnum.to_owned(),
        }])
    }

    /// Removes the assignment of `number`; `false` if it had none.
    fn delete_number(&self, number: &str) -> Result<bool, StoreError>;

    /// The assignments of `telnum`, or all of them (the server loads all at start), ordered
    /// by number.
    fn numbers(&self, telnum: Option<&str>) -> Result<Vec<NumberAssignment>, StoreError>;

    /// Keeps `entry`'s response for its key and scope. If a live entry (younger than 24 h at
    /// `entry.at_ms`) is already there, it stays: the first response is the one replayed.
    fn remember_idempotency(&self, entry: &IdempotencyEntry) -> Result<(), StoreError> {
        self.apply(&[WriteOp::RememberIdempotency(Box::new(entry.clone()))])
    }

    /// What to do with a request carrying `key` and a body hashing to `body_hash` at
    /// `now_ms`. Entries 24 h old or older count as absent.
    fn lookup_idempotency(
        &self,
        key: &str,
        scope: &str,
        body_hash: &[u8],
        now_ms: u64,
    ) -> Result<IdempotencyLookup, StoreError>;

    /// Deletes the idempotency entries that have expired at `now_ms`, at most `chunk` per
    /// transaction; returns how many.
    fn sweep_idempotency(&self, now_ms: u64, chunk: usize) -> Result<u64, StoreError>;

    /// Stores the webhook events in one transaction, as this store's node's to deliver. An
    /// event already stored (same `event_id`, or same `callid` and `seq`) is left as it is
    /// (and stays the node's that stored it first), so that an insert retried after a crash
    /// is harmless.
    fn insert_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError>;

    /// This node's pending events stored after the one numbered `after_id` (0: from the
    /// first), in insertion order (which keeps each call's `seq` order), at most `limit`
    /// (clamped to `1..=`[`MAX_EVENT_PAGE`](crate::MAX_EVENT_PAGE)), each with its number: the
    /// recovery after a restart pages through them, passing the last number back as
    /// `after_id`. Other nodes' pending events are theirs to deliver and are not returned.
    fn pending_events(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, OutboxEvent)>, StoreError>;

    /// How many of this node's events are pending (its `/metrics` outbox depth and the
    /// outbox's bound at start); other nodes' pending events are not counted.
    fn pending_event_count(&self) -> Result<u64, StoreError>;

    /// Moves every pending event of `from_node` (a node that died) to this store's node, in
    /// one transaction, and returns them in the order they were stored: this node delivers
    /// them from now on. All or nothing: when several nodes adopt the same node's events at
    /// once, exactly one of them gets all of them (the others get none), so that no event is
    /// delivered twice and a call's events stay together in `seq` order. Adopting this
    /// store's own node does nothing.
    fn adopt_events(&self, from_node: &str) -> Result<Vec<OutboxEvent>, StoreError>;

    /// The nodes that hold pending events, this store's own included, sorted: how a
    /// surviving node finds what dead nodes left behind. Cheap: it reads an index of the
    /// pending events only.
    fn outbox_nodes(&self) -> Result<Vec<String>, StoreError>;

    /// The events of `callid` by `seq`, at most `limit` (clamped to
    /// `1..=`[`MAX_EVENT_PAGE`](crate::MAX_EVENT_PAGE)): what the API shows of a call's
    /// webhooks.
    fn events_of_call(&self, callid: &str, limit: usize) -> Result<Vec<OutboxEvent>, StoreError>;

    /// The event `event_id`, if stored.
    fn get_event(&self, event_id: &str) -> Result<Option<OutboxEvent>, StoreError>;

    /// Makes a failed or dropped event pending again, with no attempts and due at `now_ms`
    /// (its `last_status` and `last_error` kept), in one transaction: the operator's retry
    /// once the target is fixed. The event becomes this store's node's to deliver, whichever
    /// node stored it (the operator's request reached this node, which delivers it). See
    /// [`Requeue`] for the other outcomes.
    fn requeue_event(&self, event_id: &str, now_ms: u64) -> Result<Requeue, StoreError>;

    /// Deletes the events that are not pending and were created before `created_before` (ms
    /// since the epoch), at most `chunk` per transaction; returns how many. Pending events
    /// are kept however old.
    fn sweep_events(&self, created_before: u64, chunk: usize) -> Result<u64, StoreError>;
}
