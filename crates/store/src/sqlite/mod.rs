//! The embedded backend: one SQLite file (or memory), WAL mode.
//!
//! **Connections.** One writer connection under a mutex takes every write; reads (listings,
//! lookups) use reader connections from a small idle pool, so that in WAL mode they neither
//! wait for a batch being committed nor make it wait. A memory database (`store.path = ""`) is
//! private to its one connection, so there it serves reads too.
//!
//! **Durability.** `journal_mode = WAL` with `synchronous = NORMAL`: a commit appends to the
//! WAL without an fsync (the WAL is synced at checkpoints). A crash of the process loses
//! nothing committed; a power failure or kernel crash may lose the last transactions
//! committed before it (never corrupts the database). `synchronous = FULL` would fsync every
//! batch, which at one batch per few milliseconds is the price of a disk flush each time.

pub mod migrations;
mod sql;

use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::TransactionBehavior;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};

use crate::cursor::Cursor;
use crate::{
    normalize_number, CallFilter, CallRow, IdempotencyLookup, NumberAssignment, OutboxEvent, Page,
    Requeue, Store, StoreError, StoredResponse, WriteOp, EVENT_DROPPED, EVENT_FAILED,
    EVENT_PENDING, IDEMPOTENCY_TTL_MS, MAX_EVENT_PAGE, MAX_LIMIT,
};

pub use migrations::{Migration, MIGRATIONS};

/// How long a connection waits for a lock held by another connection (another process on the
/// same file, or a checkpoint) before it reports `SQLITE_BUSY`.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle reader connections kept open for the next read.
pub const DEFAULT_MAX_IDLE_READERS: usize = 4;

/// Page cache of the writer connection, in KiB. SQLite's default (2 MiB) is smaller than the
/// indexes' pages one batch touches once the table holds a million records: every batch would
/// read them again.
pub const DEFAULT_WRITER_CACHE_KIB: u32 = 64 * 1024;

/// Page cache of each reader connection, in KiB.
pub const DEFAULT_READER_CACHE_KIB: u32 = 8 * 1024;

/// WAL size, in pages, that triggers a checkpoint (SQLite's default is 1,000). One batch of
/// random callids dirties a page of the callid and telnum indexes per record, so with the
/// default nearly every batch would be followed by a checkpoint writing all its pages back
/// into the file; a larger WAL lets a checkpoint write a page changed by many batches once.
pub const DEFAULT_WAL_AUTOCHECKPOINT: u32 = 16_384;

/// How a [`SqliteStore`] is opened. `SqliteOptions::new(path)` has the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// The database file, created if missing. Empty: a private in-memory database, gone when
    /// the store is dropped (`store.path = ""`).
    pub path: PathBuf,
    /// See [`DEFAULT_BUSY_TIMEOUT`].
    pub busy_timeout: Duration,
    /// See [`DEFAULT_MAX_IDLE_READERS`].
    pub max_idle_readers: usize,
    /// See [`DEFAULT_WRITER_CACHE_KIB`].
    pub writer_cache_kib: u32,
    /// See [`DEFAULT_READER_CACHE_KIB`].
    pub reader_cache_kib: u32,
    /// See [`DEFAULT_WAL_AUTOCHECKPOINT`].
    pub wal_autocheckpoint: u32,
    /// The node this store serves: the webhook events it inserts are this node's to deliver
    /// (see [`Store`]'s nodes). `""` (the default) for a single node.
    pub node: String,
}

impl SqliteOptions {
    /// The defaults for the database at `path` (`""`: memory).
    pub fn new(path: impl Into<PathBuf>) -> SqliteOptions {
        SqliteOptions {
            path: path.into(),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            max_idle_readers: DEFAULT_MAX_IDLE_READERS,
            writer_cache_kib: DEFAULT_WRITER_CACHE_KIB,
            reader_cache_kib: DEFAULT_READER_CACHE_KIB,
            wal_autocheckpoint: DEFAULT_WAL_AUTOCHECKPOINT,
            node: String::new(),
        }
    }
}

/// The SQLite [`Store`]: callbridge's default, embedded, nothing to install or run.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    /// `None` for a memory database: the writer connection serves reads.
    readers: Option<ReaderPool>,
    /// See [`SqliteOptions::node`].
    node: String,
}

/// Reader connections not in use, opened on demand.
struct ReaderPool {
    path: PathBuf,
    busy_timeout: Duration,
    cache_kib: u32,
    max_idle: usize,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.idle.lock().pop() {
            return Ok(conn);
        }
        // No CREATE: if the file vanished, fail rather than read a new empty database.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        configure(&conn, self.busy_timeout, self.cache_kib)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }
}

/// Settings of every connection.
fn configure(conn: &Connection, busy_timeout: Duration, cache_kib: u32) -> Result<(), StoreError> {
    conn.busy_timeout(busy_timeout)?;
    // A negative cache_size is in KiB.
    conn.pragma_update(None, "cache_size", -i64::from(cache_kib))?;
    // Every listing shape (see sql::list_query) plus the fixed statements stay prepared.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the database at `path`; `""` is a private
    /// in-memory database. This is `store.path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(&SqliteOptions::new(path))
    }

    /// A private in-memory database, e.g. for tests and demos.
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::open("")
    }

    /// Opens the database as `options` say, applies the migrations it lacks, and refuses a
    /// database newer than this build ([`StoreError::SchemaTooNew`]).
    pub fn open_with(options: &SqliteOptions) -> Result<SqliteStore, StoreError> {
        let memory = options.path.as_os_str().is_empty();
        let mut writer = if memory {
            Connection::open_in_memory()?
        } else {
            Connection::open(&options.path)?
        };
        configure(&writer, options.busy_timeout, options.writer_cache_kib)?;
        if !memory {
            let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                // E.g. a file system without shared memory: still correct, only slower and
                // with readers and the writer waiting for each other.
                tracing::warn!(path = %options.path.display(), mode, "store: WAL mode refused");
            }
            writer.pragma_update(None, "synchronous", "NORMAL")?;
            writer.pragma_update(None, "wal_autocheckpoint", options.wal_autocheckpoint)?;
        }
        migrations::migrate(&mut writer)?;
        let readers = (!memory).then(|| ReaderPool {
            path: options.path.clone(),
            busy_timeout: options.busy_timeout,
            cache_kib: options.reader_cache_kib,
            max_idle: options.max_idle_readers,
            idle: Mutex::new(Vec::new()),
        });
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            readers,
            node: options.node.clone(),
        })
    }

    /// The database's schema version (the newest migration applied).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        migrations::schema_version(&self.writer.lock())
    }

    /// The node this store serves ([`SqliteOptions::node`]).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The database file, or `None` for memory.
    pub fn path(&self) -> Option<&Path> {
        self.readers.as_ref().map(|pool| pool.path.as_path())
    }

    /// SQLite's plan for the listing of `filter` (with a cursor or not), one line per step:
    /// for tests and benchmarks to check that each filter walks an index without sorting.
    pub fn list_plan(
        &self,
        filter: &CallFilter,
        with_cursor: bool,
    ) -> Result<Vec<String>, StoreError> {
        let cursor = with_cursor.then(|| Cursor {
            created_at: 0,
            callid: String::new(),
        });
        let (sql, values) = sql::list_query(filter, cursor.as_ref(), MAX_LIMIT + 1)?;
        self.with_reader(|conn| {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let rows = stmt.query_map(params_from_iter(values.iter()), |row| row.get(3))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
    }

    /// Runs `f` on a reader connection (the writer's, for a memory database).
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.readers {
            None => f(&self.writer.lock()),
            Some(pool) => {
                let conn = pool.take()?;
                let result = f(&conn);
                pool.give_back(conn);
                result
            }
        }
    }

    /// Runs `f` in one write transaction.
    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Deletes the rows `select_rowids` names (its `?1` is `bound`, `?2` the chunk), one
    /// chunk per transaction, until a chunk comes back short.
    fn delete_in_chunks(
        &self,
        select_rowids: &str,
        bound: i64,
        chunk: usize,
    ) -> Result<u64, StoreError> {
        let chunk = chunk.max(1);
        let limit = i64::try_from(chunk).unwrap_or(i64::MAX);
        let mut total = 0u64;
        loop {
            // The writer's lock is released between chunks, so batches interleave.
            let deleted = self.write(|conn| {
                Ok(conn
                    .prepare_cached(select_rowids)?
                    .execute(params![bound, limit])?)
            })?;
            total += deleted as u64;
            if deleted < chunk {
                return Ok(total);
            }
        }
    }
}

impl Store for SqliteStore {
    fn apply(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        self.write(|conn| ops.iter().try_for_each(|op| sql::apply_op(conn, op)))
    }

    fn upsert_calls(&self, calls: &[CallRow]) -> Result<(), StoreError> {
        self.write(|conn| {
            calls
                .iter()
                .try_for_each(|call| sql::upsert_call(conn, call))
        })
    }

    fn get_call(&self, callid: &str) -> Result<Option<CallRow>, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .prepare_cached(sql::GET_CALL)?
                .query_row([callid], sql::call_from_row)
                .optional()?)
        })
    }

    fn list_calls(
        &self,
        filter: &CallFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, MAX_LIMIT);
        let cursor = cursor.map(Cursor::decode).transpose()?;
        // One row more than asked tells whether there is a next page.
        let (sql, values) = sql::list_query(filter, cursor.as_ref(), limit + 1)?;
        let calls = self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(values.iter()), sql::call_from_row)?;
            Ok(rows.collect::<Result<Vec<CallRow>, _>>()?)
        })?;
        Ok(Page::keep(calls, limit, false))
    }

    fn sweep_calls(&self, ended_before: u64, chunk: usize) -> Result<u64, StoreError> {
        self.delete_in_chunks(
            "DELETE FROM calls WHERE rowid IN \
             (SELECT rowid FROM calls WHERE ended_at < ?1 LIMIT ?2)",
            i64::try_from(ended_before).unwrap_or(i64::MAX),
            chunk,
        )
    }

    fn delete_number(&self, number: &str) -> Result<bool, StoreError> {
        self.write(|conn| sql::delete_number(conn, number))
    }

    fn numbers(&self, telnum: Option<&str>) -> Result<Vec<NumberAssignment>, StoreError> {
        self.with_reader(|conn| {
            let map = |row: &rusqlite::Row<'_>| {
                Ok(NumberAssignment {
                    number: row.get(0)?,
                    telnum: row.get(1)?,
                })
            };
            let rows = match telnum {
                Some(telnum) => conn
                    .prepare_cached(
                        "SELECT number, telnum FROM numbers WHERE telnum = ?1 ORDER BY number",
                    )?
                    .query_map([normalize_number(telnum)], map)?
                    .collect::<Result<Vec<_>, _>>()?,
                None => conn
                    .prepare_cached("SELECT number, telnum FROM numbers ORDER BY number")?
                    .query_map([], map)?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            Ok(rows)
        })
    }

    fn lookup_idempotency(
        &self,
        key: &str,
        scope: &str,
        body_hash: &[u8],
        now_ms: u64,
    ) -> Result<IdempotencyLookup, StoreError> {
        let found = self.with_reader(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT body_hash, status, body, created_at FROM idempotency \
                     WHERE key = ?1 AND scope = ?2",
                )?
                .query_row([key, scope], |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, u16>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })
                .optional()?)
        })?;
        let Some((hash, status, body, created_at)) = found else {
            return Ok(IdempotencyLookup::Miss);
        };
        let expires = u64::try_from(created_at)
            .unwrap_or(0)
            .saturating_add(IDEMPOTENCY_TTL_MS);
        Ok(if expires <= now_ms {
            IdempotencyLookup::Miss
        } else if hash == body_hash {
            IdempotencyLookup::Hit(StoredResponse { status, body })
        } else {
            IdempotencyLookup::Conflict
        })
    }

    fn sweep_idempotency(&self, now_ms: u64, chunk: usize) -> Result<u64, StoreError> {
        let bound = now_ms.saturating_sub(IDEMPOTENCY_TTL_MS);
        self.delete_in_chunks(
            "DELETE FROM idempotency WHERE rowid IN \
             (SELECT rowid FROM idempotency WHERE created_at <= ?1 LIMIT ?2)",
            i64::try_from(bound).unwrap_or(i64::MAX),
            chunk,
        )
    }

    fn insert_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError> {
        self.write(|conn| {
            events
                .iter()
                .try_for_each(|event| sql::insert_event(conn, event, &self.node))
        })
    }

    fn pending_events(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, OutboxEvent)>, StoreError> {
        let limit = i64::try_from(limit.clamp(1, MAX_EVENT_PAGE)).unwrap_or(1);
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(sql::PENDING_EVENTS)?;
            let rows = stmt.query_map(params![self.node, after_id, limit], |row| {
                Ok((row.get(0)?, sql::event_at(row, 1)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn pending_event_count(&self) -> Result<u64, StoreError> {
        self.with_reader(|conn| {
            let count: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM outbox WHERE state = 'pending' AND node = ?1",
                )?
                .query_row([&self.node], |row| row.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
    }

    fn adopt_events(&self, from_node: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        if from_node == self.node {
            return Ok(Vec::new());
        }
        // Read and moved in one BEGIN IMMEDIATE transaction: SQLite's write lock serialises
        // two adopters, and the second finds nothing left.
        self.write(|conn| {
            let events = conn
                .prepare_cached(sql::ADOPTABLE_EVENTS)?
                .query_map([from_node], sql::event_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            conn.prepare_cached(
                "UPDATE outbox SET node = ?1 WHERE state = 'pending' AND node = ?2",
            )?
            .execute(params![self.node, from_node])?;
            Ok(events)
        })
    }

    fn outbox_nodes(&self) -> Result<Vec<String>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT node FROM outbox WHERE state = 'pending' ORDER BY node",
            )?;
            let rows = stmt.query_map([], |row| row.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
    }

    fn events_of_call(&self, callid: &str, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let limit = i64::try_from(limit.clamp(1, MAX_EVENT_PAGE)).unwrap_or(1);
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(sql::EVENTS_OF_CALL)?;
            let rows = stmt.query_map(params![callid, limit], sql::event_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn get_event(&self, event_id: &str) -> Result<Option<OutboxEvent>, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .prepare_cached(sql::GET_EVENT)?
                .query_row([event_id], sql::event_from_row)
                .optional()?)
        })
    }

    fn requeue_event(&self, event_id: &str, now_ms: u64) -> Result<Requeue, StoreError> {
        let now = i64::try_from(now_ms).map_err(|_| StoreError::OutOfRange {
            field: "now_ms",
            value: now_ms,
        })?;
        self.write(|conn| {
            let state: Option<String> = conn
                .prepare_cached("SELECT state FROM outbox WHERE event_id = ?1")?
                .query_row([event_id], |row| row.get(0))
                .optional()?;
            let Some(state) = state else {
                return Ok(Requeue::Unknown);
            };
            if state != EVENT_FAILED && state != EVENT_DROPPED {
                return Ok(Requeue::NotFailed(state));
            }
            // This node delivers it now (see Store::requeue_event).
            conn.prepare_cached(
                "UPDATE outbox SET state = ?2, attempts = 0, next_attempt_at = ?3, node = ?4 \
                 WHERE event_id = ?1",
            )?
            .execute(params![event_id, EVENT_PENDING, now, self.node])?;
            let event = conn
                .prepare_cached(sql::GET_EVENT)?
                .query_row([event_id], sql::event_from_row)?;
            Ok(Requeue::Requeued(event))
        })
    }

    fn sweep_events(&self, created_before: u64, chunk: usize) -> Result<u64, StoreError> {
        self.delete_in_chunks(
            "DELETE FROM outbox WHERE id IN \
             (SELECT id FROM outbox WHERE state <> 'pending' AND created_at < ?1 LIMIT ?2)",
            i64::try_from(created_before).unwrap_or(i64::MAX),
            chunk,
        )
    }
}
