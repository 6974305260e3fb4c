//! The crate's error types.

/// Why a store operation failed.
///
/// The API maps [`StoreError::BadCursor`] to `400`; every other variant is the server's
/// problem (`500`, or `503` while the database is unavailable).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error (I/O, a full disk, a lock held longer than the busy timeout,
    /// a corrupt file, ...).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused a statement (a constraint, a deadlock with another node, a
    /// permission, ...). A lost connection is [`StoreError::Unavailable`] instead.
    #[error("postgres: {}", chain(.0))]
    Postgres(#[from] postgres::Error),
    /// The database cannot be reached (PostgreSQL down, restarting, or the network to it
    /// broken). The store reconnects by itself on a later call; nothing was committed by the
    /// call that failed, except in the rare case of a connection lost during its `COMMIT`.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A stored value does not fit the field it is read into (e.g. a negative timestamp
    /// written into the database by something else than callbridge).
    #[error("stored {column} = {value} does not fit its field")]
    InvalidRow {
        /// The column read.
        column: &'static str,
        /// The value found.
        value: i64,
    },
    /// A listing cursor that this store did not hand out (or that was altered). Cursors come
    /// from clients, so this is an expected error, never a panic.
    #[error("malformed cursor")]
    BadCursor,
    /// The database was written by a newer callbridge: its schema is ahead of the migrations
    /// this build knows, and running on it could lose data.
    #[error(
        "the database's schema version {found} is newer than this build's {supported}; \
         downgrades are not supported"
    )]
    SchemaTooNew {
        /// The version found in the database.
        found: i64,
        /// The newest version this build can migrate to.
        supported: i64,
    },
    /// A migration failed; its transaction was rolled back and the schema is still at the
    /// previous version.
    #[error("migration {version} ({name}) failed: {}", chain(source.as_ref()))]
    Migration {
        /// The version the migration would have produced.
        version: i64,
        /// The migration's file name.
        name: &'static str,
        /// The database's error (SQLite's or PostgreSQL's).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A value does not fit the signed 64-bit integers that SQLite and PostgreSQL's
    /// `bigint` store.
    #[error("{field} = {value} is out of the store's range (at most 2^63 - 1)")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The writer's thread could not be started.
    #[error("cannot start the store writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The writer has shut down (or its thread died): nothing more can be written through it.
    #[error("the store writer has stopped")]
    WriterStopped,
    /// The configuration names a backend this build does not have (e.g. a `store.url` that
    /// is not a PostgreSQL connection string).
    #[error("unsupported store backend: {0}")]
    Unsupported(String),
}

/// Why [`Writer::try_submit`](crate::Writer::try_submit) did not take an operation. The
/// operation is dropped: the caller (the SIP engine's task) has nowhere to keep it, and a
/// caller that must not lose a write calls the [`Store`](crate::Store) itself, off that task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is at capacity: the database is slower than the offered load. Counted in
    /// [`WriterCounters::dropped_full`](crate::WriterCounters::dropped_full).
    #[error("the store's write queue is full")]
    Full,
    /// The writer has shut down.
    #[error("the store writer has stopped")]
    Stopped,
}

/// `error` and its sources, joined by `": "`. rust-postgres's errors say only their kind in
/// their own text ("db error", "error connecting to server") and keep the server's message
/// or the I/O error in their source, which a log line of the error's text alone would lose.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        // Some errors repeat their source's text in their own.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(chain(&Outer(io)), "outer: refused");
        let io = std::io::Error::other("alone");
        assert_eq!(chain(&io), "alone");
    }
}
