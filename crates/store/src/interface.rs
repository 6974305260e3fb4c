//! The one storage interface, implemented by each backend.

use crate::{
    CallFilter, CallRow, IdempotencyEntry, IdempotencyLookup, NumberAssignment, OutboxEvent, Page,
    Requeue, StoreError, WriteOp,
};

/// Everything callbridge keeps across restarts, behind one interface: the SQLite backend
/// ([`SqliteStore`](crate::SqliteStore)) today, PostgreSQL (issue 14) later, a test double in
/// tests.
///
/// Every method blocks on the database. None may run on the SIP engine's task: the engine's
/// writes go through the [`Writer`](crate::Writer)'s queue, and the API calls the reads from
/// a blocking thread (`tokio::task::spawn_blocking`). Methods take `&self`; a backend is shared
/// as `Arc<dyn Store>`.
///
/// Numbers are compared without a leading `+` (see [`normalize_number`](crate::normalize_number)).
/// Time is always an argument (`now_ms`, cutoffs): the store reads no clock, so tests choose it.
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

    /// Stores the webhook events in one transaction. An event already stored (same
    /// `event_id`, or same `callid` and `seq`) is left as it is, so that an insert retried
    /// after a crash is harmless.
    fn insert_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError>;

    /// The pending events stored after the one numbered `after_id` (0: from the first), in
    /// insertion order (which keeps each call's `seq` order), at most `limit` (clamped to
    /// `1..=`[`MAX_EVENT_PAGE`](crate::MAX_EVENT_PAGE)), each with its number: the recovery
    /// after a restart pages through them, passing the last number back as `after_id`.
    fn pending_events(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, OutboxEvent)>, StoreError>;

    /// How many events are pending (for `/metrics` and the outbox's bound at start).
    fn pending_event_count(&self) -> Result<u64, StoreError>;

    /// The events of `callid` by `seq`, at most `limit` (clamped to
    /// `1..=`[`MAX_EVENT_PAGE`](crate::MAX_EVENT_PAGE)): what the API shows of a call's
    /// webhooks.
    fn events_of_call(&self, callid: &str, limit: usize) -> Result<Vec<OutboxEvent>, StoreError>;

    /// The event `event_id`, if stored.
    fn get_event(&self, event_id: &str) -> Result<Option<OutboxEvent>, StoreError>;

    /// Makes a failed or dropped event pending again, with no attempts and due at `now_ms`
    /// (its `last_status` and `last_error` kept), in one transaction: the operator's retry
    /// once the target is fixed. See [`Requeue`] for the other outcomes.
    fn requeue_event(&self, event_id: &str, now_ms: u64) -> Result<Requeue, StoreError>;

    /// Deletes the events that are not pending and were created before `created_before` (ms
    /// since the epoch), at most `chunk` per transaction; returns how many. Pending events
    /// are kept however old.
    fn sweep_events(&self, created_before: u64, chunk: usize) -> Result<u64, StoreError>;
}
