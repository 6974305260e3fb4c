//! The PostgreSQL schema's versions: SQL files in `crates/store/migrations/postgres/`,
//! compiled in, with the same version numbers as SQLite's (each file is the PostgreSQL twin of
//! the SQLite file of the same number).
//!
//! The database's version is the highest `version` in the `schema_version` table (which also
//! says when each was applied); a new database has none (0). Opening a store applies every
//! migration above it, in order, each in its own transaction that also records its version:
//! an error leaves the database at the last version fully applied (PostgreSQL's DDL is
//! transactional). A database newer than this build is refused
//! ([`StoreError::SchemaTooNew`]).
//!
//! **Several nodes starting at once** on one empty database: each transaction first takes a
//! transaction-scoped advisory lock ([`MIGRATION_LOCK`]), so migrations run one node at a
//! time; the next node to get the lock reads the version again and finds nothing left to do.
//! (Without it, two `CREATE TABLE IF NOT EXISTS schema_version` at once can fail on
//! PostgreSQL's catalog unique index, and two nodes would apply the same migration.)

use postgres::Client;

use crate::sqlite::Migration;
use crate::StoreError;

/// The key of the advisory lock held while migrating: "callbrdg" in ASCII, an arbitrary
/// constant unlikely to be used by another application sharing the database.
pub const MIGRATION_LOCK: i64 = 0x6361_6c6c_6272_6467;

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_records_numbers_idempotency",
        sql: include_str!("../../migrations/postgres/0001_records_numbers_idempotency.sql"),
    },
    Migration {
        version: 2,
        name: "0002_indexes_outbox",
        sql: include_str!("../../migrations/postgres/0002_indexes_outbox.sql"),
    },
    Migration {
        version: 3,
        name: "0003_notify_url_latched",
        sql: include_str!("../../migrations/postgres/0003_notify_url_latched.sql"),
    },
    Migration {
        version: 4,
        name: "0004_outbox_delivery",
        sql: include_str!("../../migrations/postgres/0004_outbox_delivery.sql"),
    },
    Migration {
        version: 5,
        name: "0005_outbox_node",
        sql: include_str!("../../migrations/postgres/0005_outbox_node.sql"),
    },
    Migration {
        version: 6,
        name: "0006_data_bytes",
        sql: include_str!("../../migrations/postgres/0006_data_bytes.sql"),
    },
];

/// The schema version this build creates and expects.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Creates `schema_version` if missing (under the lock the caller's transaction holds).
const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (\
    version BIGINT NOT NULL PRIMARY KEY, \
    name TEXT NOT NULL, \
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";

/// The database's schema version (0 for a database callbridge never migrated).
pub fn schema_version(client: &mut Client) -> Result<i64, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
        .try_get(0)?;
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])?
        .try_get(0)?)
}

/// Brings the database to [`latest_version`]; returns the version it was at.
pub fn migrate(client: &mut Client) -> Result<i64, StoreError> {
    migrate_to(client, latest_version())
}

/// Brings the database to `target` (tests build older databases with it); returns the
/// version it was at.
pub fn migrate_to(client: &mut Client, target: i64) -> Result<i64, StoreError> {
    let mut found = None;
    // One pass with nothing to do when the database is up to date; otherwise one transaction
    // per migration.
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute(CREATE_VERSION_TABLE)?;
        let version: i64 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])?
            .try_get(0)?;
        found.get_or_insert(version);
        if version > latest_version() {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: latest_version(),
            });
        }
        let Some(migration) = MIGRATIONS
            .iter()
            .find(|m| m.version > version && m.version <= target)
        else {
            tx.commit()?;
            return Ok(found.unwrap_or(version));
        };
        let failed = |source: postgres::Error| StoreError::Migration {
            version: migration.version,
            name: migration.name,
            source: Box::new(source),
        };
        tx.batch_execute(migration.sql).map_err(failed)?;
        tx.execute(
            "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .map_err(failed)?;
        tx.commit().map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "store schema migrated (postgres)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_mirror_the_sqlite_migrations() {
        let sqlite = crate::sqlite::MIGRATIONS;
        assert_eq!(MIGRATIONS.len(), sqlite.len());
        for (pg, lite) in MIGRATIONS.iter().zip(sqlite) {
            assert_eq!((pg.version, pg.name), (lite.version, lite.name));
        }
    }
}
