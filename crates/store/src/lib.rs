//! # store
//!
//! What callbridge keeps across restarts: call records, the assignments of dedicated numbers,
//! the responses remembered for `Idempotency-Key`s, and (for the webhooks) the event outbox.
//! One interface, [`Store`], with two backends that behave the same (the tests run every
//! scenario on both): the embedded SQLite backend ([`SqliteStore`], the default: nothing to
//! install or run) and the shared PostgreSQL backend ([`PostgresStore`], `store.url`: one
//! database for several callbridge nodes, issue 14). [`open`] picks one from the `[store]`
//! section. The crate is a leaf: it knows nothing of SIP, calls or HTTP; the crates above
//! convert their records into its plain types ([`CallRow`], [`NumberAssignment`],
//! [`IdempotencyEntry`]).
//!
//! ## What goes in, what comes out
//!
//! - **Writes** from the SIP engine (a record when a call ends) must never wait for a disk.
//!   They go through the [`Writer`]: a bounded queue that [`Writer::try_submit`] fills
//!   without blocking (and refuses, counted, when full), drained by one thread that commits
//!   what it finds — up to a batch — in one transaction.
//! - **Reads** from the HTTP API: one record ([`Store::get_call`]), a page of a filtered
//!   listing ([`Store::list_calls`], newest first, keyset cursor), a streamed export
//!   ([`Export`], one page in memory at a time), the number assignments
//!   ([`Store::numbers`]), an idempotency decision ([`Store::lookup_idempotency`]: replay,
//!   conflict or proceed). They block, so the API runs them on a blocking thread.
//! - **The webhook outbox** ([`OutboxEvent`]): the server stores a call's events with
//!   [`Store::insert_events`] (a retried insert is harmless), records each delivery attempt
//!   through the [`Writer`] as [`WriteOp::EventAttempt`], pages through the pending events
//!   after a restart with [`Store::pending_events`] (insertion order, so each call's `seq`
//!   order), and serves [`Store::get_event`], [`Store::events_of_call`],
//!   [`Store::pending_event_count`] and an operator's [`Store::requeue_event`].
//! - **Several nodes, one outbox.** Each event belongs to the node that stored it (the store
//!   is opened for a node: [`SqliteOptions::node`], [`PostgresOptions::node`]), which alone
//!   delivers it, so that nothing is delivered twice and each call's events keep their order;
//!   a node's recovery and pending count are its own. A survivor finds a dead node's
//!   leftovers with [`Store::outbox_nodes`] and takes them over with [`Store::adopt_events`]
//!   (all or nothing, exactly one adopter when several race); a requeued event goes to the
//!   node that took the operator's request.
//! - **Housekeeping** the server schedules: [`Store::sweep_calls`] (retention),
//!   [`Store::sweep_idempotency`] (24 h) and [`Store::sweep_events`] (settled events), all in
//!   bounded chunks.
//! - **Time is an argument** (`now_ms`, cutoffs, the record's own timestamps): the store
//!   reads no clock, so a test can move a day forward in a microsecond.
//!
//! ```text
//!  SIP engine task ──try_submit──▶ [ bounded queue ] ──▶ store-writer thread ─┐
//!  (never blocks)                   capacity, counters     batch = 1 transaction│
//!                                                                             ▼
//!  HTTP API (spawn_blocking) ──get / list / export / numbers / idempotency──▶ Store
//!                                                              ┌──────────────┴───────────┐
//!                                                       SqliteStore (WAL)         PostgresStore
//!                                                       1 writer + N readers      1 writer + N readers,
//!                                                       one file, one node        one database, many nodes
//! ```
//!
//! ```
//! use std::sync::Arc;
//! use store::{CallFilter, CallRow, Export, SqliteStore, Store, WriteOp, Writer, WriterConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn Store> = Arc::new(SqliteStore::open("")?); // "" = memory only
//! let writer = Writer::start(Arc::clone(&store), WriterConfig::default())?;
//!
//! // The engine, when a call ends:
//! let record = CallRow {
//!     callid: "7392048812937".into(),
//!     telnum: "1001".into(),
//!     caller: "2001".into(),
//!     callee: "3001".into(),
//!     state: "ended".into(),
//!     created_at: 1_764_650_000_000,
//!     ..CallRow::default()
//! };
//! writer.try_submit(WriteOp::UpsertCall(Box::new(record)))?;
//! writer.flush()?; // tests and shutdown only
//!
//! // The API:
//! let filter = CallFilter { telnum: Some("+1001".into()), ..CallFilter::default() };
//! let page = store.list_calls(&filter, 100, None)?;
//! assert_eq!(page.calls.len(), 1);
//! assert_eq!(page.next_cursor, None);
//! for row in Export::new(&*store, filter) {
//!     let _csv_line = row?.callid;
//! }
//! writer.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Design choices
//!
//! - **Keyset pagination.** Listings are ordered by (`created_at`, `callid`) descending and
//!   the cursor ([`Cursor`]) is the last row's pair: a page costs the same at any depth
//!   (no `OFFSET` scan), and rows inserted after the first page never shift the next ones.
//!   Every filter has an index ending in (`created_at`, `callid`), so SQLite reads exactly
//!   the rows of the page (see `migrations/0002_indexes_outbox.sql`).
//! - **Versioned migrations in the repository** (`crates/store/migrations/NNNN_*.sql`,
//!   compiled in, applied in order in transactions, tracked by `PRAGMA user_version`; see
//!   [`sqlite::migrations`]), with a PostgreSQL twin of each under `migrations/postgres/`
//!   (same numbers, tracked in a `schema_version` table, applied under an advisory lock so
//!   that nodes starting together take turns; see [`postgres::migrations`]). A database newer
//!   than the build is refused, not guessed at.
//! - **Codes, not enums.** `state`, `ended_by` and `end_cause` are stored as the API's
//!   snake_case codes: the store needs no change when the b2bua learns a new cause.
//! - **Numbers compare without a leading `+`** ([`normalize_number`]): assignments are
//!   stored normalised; records keep their telnum as written and the telnum index is on the
//!   normalised expression.
//! - **Errors are values.** A malformed cursor from a client is [`StoreError::BadCursor`]
//!   (the API's `400`), never a panic; nothing in this crate unwraps outside tests. A
//!   database that cannot be reached is [`StoreError::Unavailable`], and the PostgreSQL
//!   store reconnects by itself once it is back; the [`Writer`] holds its batch meanwhile.
//! - **Blocking calls, off the async threads.** Every [`Store`] method blocks; PostgreSQL's
//!   client even runs a runtime of its own, which tokio refuses on its worker threads. The
//!   server calls the store from the writer's thread and `spawn_blocking`.
//! - **Tests on a real PostgreSQL.** With the `testing` feature, `store::testing` starts a
//!   throwaway server (`initdb`, `pg_ctl`); the tests fail without PostgreSQL installed,
//!   unless `CALLBRIDGE_SKIP_PG=1`.
//!
//! ## What a crash loses
//!
//! A crash of the process loses what the [`Writer`] had not committed: the operations still
//! queued and the batch being committed — at most `capacity + max_batch` operations
//! (10,000 + 500 with the defaults; in steady state, the last few milliseconds of ended
//! calls). Everything committed survives. With SQLite's `synchronous = NORMAL` in WAL mode, a
//! power failure or kernel crash may in addition lose the last transactions committed before
//! it (the WAL is fsynced at checkpoints, not at every commit); the database is never
//! corrupted. Direct calls on the [`Store`] (numbers, idempotency) are committed when they
//! return. With PostgreSQL, a commit is as durable as the server's settings make it
//! (`synchronous_commit`); while the server is down, the [`Writer`] holds what it has and the
//! queue fills, then refuses (counted).

mod cursor;
mod error;
mod export;
mod interface;
mod outbox;
pub mod postgres;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
mod types;
mod writer;

use std::sync::Arc;

pub use cursor::Cursor;
pub use error::{StoreError, SubmitError};
pub use export::{Export, DEFAULT_EXPORT_PAGE};
pub use interface::Store;
pub use outbox::{
    EventAttempt, OutboxEvent, Requeue, EVENT_DELIVERED, EVENT_DROPPED, EVENT_FAILED,
    EVENT_PENDING, MAX_EVENT_PAGE, MAX_LAST_ERROR,
};
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use types::{
    normalize_number, retention_cutoff, CallFilter, CallRow, DirectionCounts, IdempotencyEntry,
    IdempotencyLookup, MediaCounts, NumberAssignment, Page, StoredResponse, WriteOp, DEFAULT_LIMIT,
    DEFAULT_PATH, DEFAULT_RETENTION_DAYS, ENDED, IDEMPOTENCY_TTL_MS, MAX_LIMIT,
};
pub use writer::{Writer, WriterConfig, WriterCounters, DEFAULT_MAX_BATCH, DEFAULT_QUEUE_CAPACITY};

/// Opens the store the `[store]` section names, for the node `node` (`""` for a single node;
/// see [`Store`]'s nodes): PostgreSQL when `url` is set ([`PostgresStore`], `store.url`),
/// else SQLite at `path` (`""`: memory only). Either is created or migrated as needed.
pub fn open(path: &str, url: &str, node: &str) -> Result<Arc<dyn Store>, StoreError> {
    if !url.is_empty() {
        let options = PostgresOptions {
            node: node.to_owned(),
            ..PostgresOptions::new(url)
        };
        return Ok(Arc::new(PostgresStore::open_with(&options)?));
    }
    let options = SqliteOptions {
        node: node.to_owned(),
        ..SqliteOptions::new(path)
    };
    Ok(Arc::new(SqliteStore::open_with(&options)?))
}
