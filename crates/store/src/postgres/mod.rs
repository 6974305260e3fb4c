//! The shared backend: one PostgreSQL database, possibly shared by several callbridge nodes
//! (`store.url = "postgres://…"`).
//!
//! **Connections.** The same shape as the SQLite backend: one writer connection under a
//! mutex takes every write, and reads use connections from a small idle pool, opened on
//! demand. The client is rust-postgres's blocking `postgres::Client`, which runs a small tokio
//! runtime of its own per connection; tokio refuses to start (or drop) a runtime on one of its
//! worker threads, so [`PostgresStore::open_with`] connects on a thread of its own and the
//! store's `Drop` closes its connections on one, and every [`Store`] method must be called
//! from a blocking thread (as the trait requires anyway).
//!
//! **Failures.** A connection that breaks (the server restarted, the network failed) is
//! dropped and a new one is made on the next call: the store recovers by itself once
//! PostgreSQL is back, and meanwhile a call fails with [`StoreError::Unavailable`] within the
//! connect timeout ([`PostgresOptions::connect_timeout`]). A call that finds its pooled
//! connection dead (the server restarted since it was last used) tries once more on a fresh
//! connection, unless the connection broke during its `COMMIT` (when whether it was committed
//! cannot be known).
//!
//! **TLS** to the database is not supported yet: connections are plain TCP or a Unix socket
//! (`NoTls`), so the database should be on a trusted network or the same host; a URL with
//! `sslmode=require` is refused at open ([`StoreError::Unsupported`]).
//!
//! **Semantics** are the SQLite backend's, statement for statement (see `sql.rs`); the tests
//! run the same scenarios on both. Text columns that are compared or sorted are
//! `COLLATE "C"` (byte order, as SQLite), whatever locale the database was created with.

pub mod migrations;
mod sql;

use std::collections::HashMap;
use std::fmt;
use std::thread;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use postgres::config::SslMode;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Statement, Transaction};

use crate::cursor::Cursor;
use crate::{
    normalize_number, CallFilter, CallRow, IdempotencyLookup, NumberAssignment, OutboxEvent, Page,
    Requeue, Store, StoreError, StoredResponse, WriteOp, EVENT_DROPPED, EVENT_FAILED,
    IDEMPOTENCY_TTL_MS, MAX_EVENT_PAGE, MAX_LIMIT,
};

pub use migrations::{latest_version, MIGRATIONS};

/// How long connecting to PostgreSQL may take before the call fails with
/// [`StoreError::Unavailable`]: short, because a caller (the API, the writer) waits for it.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle reader connections kept open for the next read.
pub const DEFAULT_MAX_IDLE_READERS: usize = 4;

/// Prepared statements kept per connection (every listing shape and every fixed statement fit
/// several times over); past it the cache starts afresh rather than grow.
const MAX_STATEMENTS: usize = 256;

/// How a [`PostgresStore`] is opened: what `store.url` does not say (the node, the timeouts,
/// the pool), so that the server and the tests can set them. `PostgresOptions::new(url)` has
/// the defaults.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// `store.url`: a `postgres://user:password@host:port/database` URL or a `key=value`
    /// connection string. Its own `connect_timeout` and `application_name`, when it names
    /// them, win over the ones below.
    pub url: String,
    /// The node this store serves: the webhook events it inserts are this node's to deliver
    /// (see [`Store`]'s nodes). `""` (the default) for a single node.
    pub node: String,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`DEFAULT_MAX_IDLE_READERS`].
    pub max_idle_readers: usize,
}

impl PostgresOptions {
    /// The defaults for the database at `url`.
    pub fn new(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions {
            url: url.into(),
            node: String::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_idle_readers: DEFAULT_MAX_IDLE_READERS,
        }
    }
}

/// Not derived: the URL may carry a password, which must not reach a log.
impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact(&self.url))
            .field("node", &self.node)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_idle_readers", &self.max_idle_readers)
            .finish()
    }
}

/// `url` with the password of a `scheme://user:password@host` URL replaced by `***` (a
/// `key=value` string is shown as `<connection string>`).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<connection string>".to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(name, _)| name);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// The PostgreSQL [`Store`]: one database shared by several callbridge nodes
/// (`store.url`). It exists so that records, numbers, idempotency keys and the webhook outbox
/// are common to every node behind a load balancer, which any node's API then serves; see
/// the module's doc for connections, failures and the missing TLS.
pub struct PostgresStore {
    config: postgres::Config,
    node: String,
    max_idle: usize,
    /// `None` until connected, and after the connection broke.
    writer: Mutex<Option<Conn>>,
    idle: Mutex<Vec<Conn>>,
}

/// One connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// Set when an error said the connection is lost: it is then dropped, not reused.
    broken: bool,
}

/// Why an operation failed, and whether at its `COMMIT` (when it must not be retried).
struct Failed {
    error: StoreError,
    at_commit: bool,
}

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Failed {
        Failed {
            error,
            at_commit: false,
        }
    }
}

/// Whether `error` means the connection is gone: anything that is not the server's answer to
/// a statement (I/O, a closed connection), or the server's answer that it is ending the
/// session (class 08 connection exception; 57P01-57P03: shut down, crashed, not yet
/// accepting connections).
fn connection_lost(error: &postgres::Error) -> bool {
    match error.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }
    }
}

/// A client (a connection, or a transaction on it) with its connection's statement cache.
struct Db<'a, C: GenericClient> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
    broken: &'a mut bool,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

impl<C: GenericClient> Db<'_, C> {
    fn fail(&mut self, error: postgres::Error) -> StoreError {
        if connection_lost(&error) {
            *self.broken = true;
        }
        StoreError::Postgres(error)
    }

    /// `sql` prepared once per connection.
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = match self.client.prepare(sql) {
            Ok(statement) => statement,
            Err(error) => return Err(self.fail(error)),
        };
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn execute(&mut self, sql: &str, params: &Params<'_>) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        self.client
            .execute(&statement, params)
            .map_err(|e| self.fail(e))
    }

    fn query(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql)?;
        self.client
            .query(&statement, params)
            .map_err(|e| self.fail(e))
    }

    fn query_opt(&mut self, sql: &str, params: &Params<'_>) -> Result<Option<Row>, StoreError> {
        let statement = self.statement(sql)?;
        self.client
            .query_opt(&statement, params)
            .map_err(|e| self.fail(e))
    }

    fn query_one(&mut self, sql: &str, params: &Params<'_>) -> Result<Row, StoreError> {
        let statement = self.statement(sql)?;
        self.client
            .query_one(&statement, params)
            .map_err(|e| self.fail(e))
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`store.url`) with the default options, applies the
    /// migrations it lacks, and refuses a database newer than this build.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_with(&PostgresOptions::new(url))
    }

    /// Connects as `options` say, applies the migrations the database lacks (one node at a
    /// time when several start at once), and refuses a database newer than this build
    /// ([`StoreError::SchemaTooNew`]). A database that cannot be reached is
    /// [`StoreError::Unavailable`]; a `url` that is not a connection string is
    /// [`StoreError::Unsupported`].
    ///
    /// Safe to call from anywhere, an async task included: the connection is made on a
    /// thread of its own (see the module's doc).
    pub fn open_with(options: &PostgresOptions) -> Result<PostgresStore, StoreError> {
        let mut config: postgres::Config = options.url.parse().map_err(|error| {
            StoreError::Unsupported(format!(
                "store.url {} is not a PostgreSQL connection string: {error}",
                redact(&options.url)
            ))
        })?;
        if config.get_ssl_mode() == SslMode::Require {
            // Refused here rather than at every connection attempt, with the reason.
            return Err(StoreError::Unsupported(
                "TLS to PostgreSQL (sslmode=require) is not supported yet: use a trusted \
                 network or a Unix socket, with sslmode=prefer or disable"
                    .to_owned(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            // Tells the nodes' sessions apart in pg_stat_activity.
            if options.node.is_empty() {
                config.application_name("callbridge");
            } else {
                config.application_name(&format!("callbridge {}", options.node));
            }
        }
        let store = PostgresStore {
            config,
            node: options.node.clone(),
            max_idle: options.max_idle_readers,
            writer: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
        };
        let migrated = thread::scope(|scope| {
            thread::Builder::new()
                .name("store-pg-open".to_owned())
                .spawn_scoped(scope, || store.connect_and_migrate())
                .map_err(StoreError::Spawn)?
                .join()
                .map_err(|_| StoreError::Unavailable("the connecting thread panicked".into()))?
        });
        migrated?;
        Ok(store)
    }

    fn connect_and_migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.connect()?;
        migrations::migrate(&mut conn.client)?;
        *self.writer.lock() = Some(conn);
        Ok(())
    }

    /// The node this store serves ([`PostgresOptions::node`]).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The database's schema version (the newest migration applied).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.run(true, |conn| {
            Ok(migrations::schema_version(&mut conn.client)?)
        })
    }

    /// PostgreSQL's plan for the listing of `filter` (with a cursor or not), one line per
    /// step, with sequential scans and sorts priced out (`enable_seqscan`, `enable_sort`
    /// off), as a large table would make them: for tests to check that each filter has an
    /// index that serves it in order.
    pub fn list_plan(
        &self,
        filter: &CallFilter,
        with_cursor: bool,
    ) -> Result<Vec<String>, StoreError> {
        let cursor = with_cursor.then(|| Cursor {
            created_at: 0,
            callid: String::new(),
        });
        let (query, values) = sql::list_query(filter, cursor.as_ref(), MAX_LIMIT + 1)?;
        let explain = format!("EXPLAIN {query}");
        self.write(|db| {
            db.execute("SET LOCAL enable_seqscan = off", &[])?;
            db.execute("SET LOCAL enable_sort = off", &[])?;
            let rows = db.query(&explain, &sql::refs(&values))?;
            Ok(rows
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<Vec<String>, _>>()?)
        })
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        let client = self
            .config
            .connect(NoTls)
            .map_err(|error| StoreError::Unavailable(crate::error::chain(&error)))?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
            broken: false,
        })
    }

    /// Runs `op` on the writer connection (`writer`) or a reader, connecting as needed. A
    /// connection that broke is dropped (the next call connects anew) and the call fails
    /// with [`StoreError::Unavailable`], after one more try on a fresh connection if the
    /// broken one was an old one and had not reached its `COMMIT`.
    fn run<T>(
        &self,
        writer: bool,
        mut op: impl FnMut(&mut Conn) -> Result<T, Failed>,
    ) -> Result<T, StoreError> {
        // The writer's lock is held for the whole operation: writes are serialised.
        let mut slot: Option<MutexGuard<'_, Option<Conn>>> = writer.then(|| self.writer.lock());
        let mut retried = false;
        loop {
            let pooled = match slot.as_mut() {
                Some(slot) => slot.take(),
                // The retry connects anew: the pool may hold more connections as dead.
                None if retried => None,
                None => self.idle.lock().pop(),
            };
            // One whose connection task has ended (seen by an earlier call) is of no use.
            let pooled = pooled.filter(|conn| !conn.client.is_closed());
            let fresh = pooled.is_none();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => self.connect()?,
            };
            let result = op(&mut conn);
            if !conn.broken && !conn.client.is_closed() {
                match slot.as_mut() {
                    Some(slot) => **slot = Some(conn),
                    None => self.give_back(conn),
                }
                return result.map_err(|failed| failed.error);
            }
            // Dropped here, on the caller's (blocking) thread, with the idle readers: when one
            // connection is lost (a server restart), the others are too.
            drop(conn);
            let stale: Vec<Conn> = self.idle.lock().drain(..).collect();
            drop(stale);
            let error = match result {
                Ok(value) => return Ok(value),
                Err(failed) if fresh || retried || failed.at_commit => {
                    return Err(StoreError::Unavailable(failed.error.to_string()));
                }
                Err(failed) => failed.error,
            };
            tracing::debug!(%error, "store: postgres connection lost, reconnecting");
            retried = true;
        }
    }

    fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Runs `f` on a reader connection, outside a transaction (each statement sees what is
    /// committed when it starts).
    fn read<T>(
        &self,
        mut f: impl FnMut(&mut Db<'_, Client>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(false, |conn| {
            let Conn {
                client,
                statements,
                broken,
            } = conn;
            let mut db = Db {
                client,
                statements,
                broken,
            };
            Ok(f(&mut db)?)
        })
    }

    /// Runs `f` in one transaction on the writer connection.
    fn write<T>(
        &self,
        mut f: impl FnMut(&mut Db<'_, Transaction<'_>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(true, |conn| {
            let Conn {
                client,
                statements,
                broken,
            } = conn;
            let mut tx = client.transaction().map_err(|error| {
                *broken |= connection_lost(&error);
                Failed::from(StoreError::Postgres(error))
            })?;
            let value = f(&mut Db {
                client: &mut tx,
                statements,
                broken,
            })?;
            tx.commit().map_err(|error| {
                *broken |= connection_lost(&error);
                Failed {
                    error: StoreError::Postgres(error),
                    at_commit: true,
                }
            })?;
            Ok(value)
        })
    }

    /// Deletes the rows `delete` names (its `$1` is `bound`, `$2` the chunk), one chunk per
    /// transaction, until a chunk comes back short.
    fn delete_in_chunks(&self, delete: &str, bound: i64, chunk: usize) -> Result<u64, StoreError> {
        let chunk = chunk.max(1);
        let limit = i64::try_from(chunk).unwrap_or(i64::MAX);
        let mut total = 0u64;
        loop {
            // The writer's lock is released between chunks, so batches interleave.
            let deleted = self.write(|db| db.execute(delete, &[&bound, &limit]))?;
            total += deleted;
            if deleted < chunk as u64 {
                return Ok(total);
            }
        }
    }
}

/// Closes the connections on a thread of its own: closing one blocks on its own runtime,
/// which tokio forbids on a worker thread, and the last `Arc<dyn Store>` may well be dropped
/// there.
impl Drop for PostgresStore {
    fn drop(&mut self) {
        let mut conns: Vec<Conn> = self.idle.get_mut().drain(..).collect();
        conns.extend(self.writer.get_mut().take());
        if conns.is_empty() {
            return;
        }
        let closing = thread::Builder::new()
            .name("store-pg-close".to_owned())
            .spawn(move || drop(conns));
        if let Err(error) = closing {
            tracing::warn!(%error, "store: cannot start a thread to close the postgres connections");
        }
    }
}

fn apply_op(db: &mut Db<'_, Transaction<'_>>, op: &WriteOp) -> Result<(), StoreError> {
    match op {
        WriteOp::UpsertCall(call) => {
            db.execute(sql::UPSERT_CALL, &sql::refs(&sql::call_params(call)?))?;
        }
        WriteOp::PutNumber { number, telnum } => {
            db.execute(
                sql::PUT_NUMBER,
                &[&normalize_number(number), &normalize_number(telnum)],
            )?;
        }
        WriteOp::DeleteNumber { number } => {
            db.execute(sql::DELETE_NUMBER, &[&normalize_number(number)])?;
        }
        WriteOp::RememberIdempotency(entry) => {
            let at = sql::int("at_ms", entry.at_ms)?;
            let ttl = sql::int("ttl", IDEMPOTENCY_TTL_MS)?;
            db.execute(
                sql::REMEMBER_IDEMPOTENCY,
                &[
                    &entry.key,
                    &entry.scope,
                    &entry.body_hash,
                    &i32::from(entry.status),
                    &entry.body,
                    &at,
                    &ttl,
                ],
            )?;
        }
        WriteOp::EventAttempt(attempt) => {
            let next = sql::int("next_attempt_at", attempt.next_attempt_at)?;
            let delivered = sql::opt_int("delivered_at", attempt.delivered_at)?;
            let error = attempt.last_error.as_deref().map(crate::outbox::cap_error);
            db.execute(
                sql::EVENT_ATTEMPT,
                &[
                    &attempt.event_id,
                    &attempt.state,
                    &i64::from(attempt.attempts),
                    &next,
                    &attempt.last_status.map(i32::from),
                    &error,
                    &delivered,
                ],
            )?;
        }
    }
    Ok(())
}

fn event_page_limit(limit: usize) -> i64 {
    i64::try_from(limit.clamp(1, MAX_EVENT_PAGE)).unwrap_or(1)
}

impl Store for PostgresStore {
    fn apply(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        self.write(|db| ops.iter().try_for_each(|op| apply_op(db, op)))
    }

    fn upsert_calls(&self, calls: &[CallRow]) -> Result<(), StoreError> {
        self.write(|db| {
            calls.iter().try_for_each(|call| {
                db.execute(sql::UPSERT_CALL, &sql::refs(&sql::call_params(call)?))
                    .map(drop)
            })
        })
    }

    fn get_call(&self, callid: &str) -> Result<Option<CallRow>, StoreError> {
        self.read(|db| {
            db.query_opt(sql::GET_CALL, &[&callid])?
                .map(|row| sql::call_from_row(&row))
                .transpose()
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
        let (query, values) = sql::list_query(filter, cursor.as_ref(), limit + 1)?;
        let calls = self.read(|db| {
            db.query(&query, &sql::refs(&values))?
                .iter()
                .map(sql::call_from_row)
                .collect::<Result<Vec<CallRow>, _>>()
        })?;
        Ok(Page::keep(calls, limit, false))
    }

    fn sweep_calls(&self, ended_before: u64, chunk: usize) -> Result<u64, StoreError> {
        self.delete_in_chunks(sql::SWEEP_CALLS, sql::saturating_int(ended_before), chunk)
    }

    fn delete_number(&self, number: &str) -> Result<bool, StoreError> {
        self.write(|db| Ok(db.execute(sql::DELETE_NUMBER, &[&normalize_number(number)])? > 0))
    }

    fn numbers(&self, telnum: Option<&str>) -> Result<Vec<NumberAssignment>, StoreError> {
        self.read(|db| {
            let rows = match telnum {
                Some(telnum) => db.query(sql::NUMBERS_OF, &[&normalize_number(telnum)])?,
                None => db.query(sql::ALL_NUMBERS, &[])?,
            };
            rows.iter()
                .map(|row| {
                    Ok(NumberAssignment {
                        number: row.try_get(0)?,
                        telnum: row.try_get(1)?,
                    })
                })
                .collect()
        })
    }

    fn lookup_idempotency(
        &self,
        key: &str,
        scope: &str,
        body_hash: &[u8],
        now_ms: u64,
    ) -> Result<IdempotencyLookup, StoreError> {
        let found = self.read(|db| {
            let Some(row) = db.query_opt(sql::LOOKUP_IDEMPOTENCY, &[&key, &scope])? else {
                return Ok(None);
            };
            Ok(Some((
                row.try_get::<_, Vec<u8>>(0)?,
                sql::get_u16(&row, 1, "status")?,
                row.try_get::<_, String>(2)?,
                row.try_get::<_, i64>(3)?,
            )))
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
        self.delete_in_chunks(sql::SWEEP_IDEMPOTENCY, sql::saturating_int(bound), chunk)
    }

    fn insert_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError> {
        self.write(|db| {
            events.iter().try_for_each(|event| {
                let params = sql::event_params(event, &self.node)?;
                db.execute(sql::INSERT_EVENT, &sql::refs(&params)).map(drop)
            })
        })
    }

    fn pending_events(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, OutboxEvent)>, StoreError> {
        let limit = event_page_limit(limit);
        self.read(|db| {
            db.query(sql::PENDING_EVENTS, &[&self.node, &after_id, &limit])?
                .iter()
                .map(|row| Ok((row.try_get(0)?, sql::event_at(row, 1)?)))
                .collect()
        })
    }

    fn pending_event_count(&self) -> Result<u64, StoreError> {
        self.read(|db| {
            let count: i64 = db
                .query_one(sql::PENDING_COUNT, &[&self.node])?
                .try_get(0)?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
    }

    fn adopt_events(&self, from_node: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        if from_node == self.node {
            return Ok(Vec::new());
        }
        // The advisory lock makes two adopters of one node take turns: the second's UPDATE
        // starts after the first committed and finds nothing left. A lone UPDATE would be
        // all-or-nothing only if both scanned the rows in the same order (each waits on the
        // first row the other locked, then skips the rows whose node changed); with
        // different plans each could take part of a call's events.
        self.write(|db| {
            db.execute(sql::ADOPT_LOCK, &[&from_node])?;
            let events = db
                .query(sql::ADOPTABLE_EVENTS, &[&from_node])?
                .iter()
                .map(|row| sql::event_at(row, 0))
                .collect::<Result<Vec<_>, _>>()?;
            db.execute(sql::ADOPT_EVENTS, &[&self.node, &from_node])?;
            Ok(events)
        })
    }

    fn outbox_nodes(&self) -> Result<Vec<String>, StoreError> {
        self.read(|db| {
            db.query(sql::OUTBOX_NODES, &[])?
                .iter()
                .map(|row| Ok(row.try_get(0)?))
                .collect()
        })
    }

    fn events_of_call(&self, callid: &str, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let limit = event_page_limit(limit);
        self.read(|db| {
            db.query(sql::EVENTS_OF_CALL, &[&callid, &limit])?
                .iter()
                .map(|row| sql::event_at(row, 0))
                .collect()
        })
    }

    fn get_event(&self, event_id: &str) -> Result<Option<OutboxEvent>, StoreError> {
        self.read(|db| {
            db.query_opt(sql::GET_EVENT, &[&event_id])?
                .map(|row| sql::event_at(&row, 0))
                .transpose()
        })
    }

    fn requeue_event(&self, event_id: &str, now_ms: u64) -> Result<Requeue, StoreError> {
        let now = i64::try_from(now_ms).map_err(|_| StoreError::OutOfRange {
            field: "now_ms",
            value: now_ms,
        })?;
        self.write(|db| {
            let Some(row) = db.query_opt(sql::EVENT_STATE_FOR_UPDATE, &[&event_id])? else {
                return Ok(Requeue::Unknown);
            };
            let state: String = row.try_get(0)?;
            if state != EVENT_FAILED && state != EVENT_DROPPED {
                return Ok(Requeue::NotFailed(state));
            }
            // This node delivers it now (see Store::requeue_event).
            db.execute(sql::REQUEUE_EVENT, &[&event_id, &now, &self.node])?;
            let row = db.query_one(sql::GET_EVENT, &[&event_id])?;
            Ok(Requeue::Requeued(sql::event_at(&row, 0)?))
        })
    }

    fn sweep_events(&self, created_before: u64, chunk: usize) -> Result<u64, StoreError> {
        self.delete_in_chunks(
            sql::SWEEP_EVENTS,
            sql::saturating_int(created_before),
            chunk,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_debug_output() {
        assert_eq!(
            redact("postgres://cb:secret@db.example:5432/cb"),
            "postgres://cb:***@db.example:5432/cb"
        );
        assert_eq!(
            redact("postgres://db.example/cb"),
            "postgres://db.example/cb"
        );
        assert_eq!(redact("host=db password=secret"), "<connection string>");
        let options = PostgresOptions::new("postgresql://cb:secret@db/cb");
        assert!(!format!("{options:?}").contains("secret"));
    }

    #[test]
    fn tls_required_is_refused_at_open() {
        let error = PostgresStore::open("postgres://cb@127.0.0.1:1/cb?sslmode=require")
            .err()
            .unwrap();
        assert!(matches!(error, StoreError::Unsupported(_)), "{error}");
        assert!(error.to_string().contains("sslmode=require"));
    }

    #[test]
    fn a_url_that_is_not_a_connection_string_is_unsupported() {
        let error = PostgresStore::open("postgres://host:notaport/db")
            .err()
            .unwrap();
        assert!(matches!(error, StoreError::Unsupported(_)), "{error}");
    }
}
