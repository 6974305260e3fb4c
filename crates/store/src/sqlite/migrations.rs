//! The SQLite schema's versions: SQL files in `crates/store/migrations/`, compiled in.
//!
//! The database's version is `PRAGMA user_version` (0 for a new file). Opening a store applies
//! every migration above it, in order, each in its own `BEGIN IMMEDIATE` transaction that also
//! sets the new version: a crash or an error leaves the database at the last version fully
//! applied, never in between. A database newer than this build is refused
//! ([`StoreError::SchemaTooNew`]). Shipped migrations are never edited; a change of schema
//! is a new file and a new entry below.

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// One step of the schema.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// The schema version once it is applied (1, 2, 3, ... without gaps).
    pub version: i64,
    /// Its file name under `crates/store/migrations/`, without `.sql`.
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_records_numbers_idempotency",
        sql: include_str!("../../migrations/0001_records_numbers_idempotency.sql"),
    },
    Migration {
        version: 2,
        name: "0002_indexes_outbox",
        sql: include_str!("../../migrations/0002_indexes_outbox.sql"),
    },
    Migration {
        version: 3,
        name: "0003_notify_url_latched",
        sql: include_str!("../../migrations/0003_notify_url_latched.sql"),
    },
    Migration {
        version: 4,
        name: "0004_outbox_delivery",
        sql: include_str!("../../migrations/0004_outbox_delivery.sql"),
    },
    Migration {
        version: 5,
        name: "0005_outbox_node",
        sql: include_str!("../../migrations/0005_outbox_node.sql"),
    },
    Migration {
        version: 6,
        name: "0006_data_bytes",
        sql: include_str!("../../migrations/0006_data_bytes.sql"),
    },
];

/// The schema version this build creates and expects.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The database's schema version (`PRAGMA user_version`).
pub fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

/// Brings the database to [`latest_version`]; returns the version it was at.
pub fn migrate(conn: &mut Connection) -> Result<i64, StoreError> {
    migrate_to(conn, latest_version())
}

/// Brings the database to `target` (tests build older databases with it).
pub(crate) fn migrate_to(conn: &mut Connection, target: i64) -> Result<i64, StoreError> {
    let found = schema_version(conn)?;
    if found > latest_version() {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: latest_version(),
        });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version <= target) {
        let failed = |source: rusqlite::Error| StoreError::Migration {
            version: migration.version,
            name: migration.name,
            source: Box::new(source),
        };
        // IMMEDIATE takes the write lock first, so two processes opening one file at once
        // apply each migration once: the second sees the new version and skips it.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(failed)?;
        if version >= migration.version {
            continue;
        }
        tx.execute_batch(migration.sql).map_err(failed)?;
        // user_version is in the database header, written by this transaction like any page.
        tx.execute_batch(&format!("PRAGMA user_version = {}", migration.version))
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "store schema migrated"
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_and_match_their_files() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, index as i64 + 1);
            assert!(migration
                .name
                .starts_with(&format!("{:04}_", migration.version)));
        }
    }

    #[test]
    fn a_failed_migration_leaves_the_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 1).unwrap();
        // Something in the way of migration 2's first index.
        conn.execute_batch("CREATE TABLE calls_created (x)")
            .unwrap();
        let error = migrate(&mut conn).unwrap_err();
        assert!(
            matches!(error, StoreError::Migration { version: 2, .. }),
            "{error}"
        );
        assert_eq!(schema_version(&conn).unwrap(), 1);
        // Nothing of migration 2 is left behind.
        let outbox: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'outbox'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(outbox, 0);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }
}
