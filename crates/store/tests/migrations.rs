//! Schema migrations: from an empty file, and from a database left by the previous version.

mod common;

use rusqlite::Connection;
use store::sqlite::{migrations, MIGRATIONS};
use store::{CallFilter, IdempotencyLookup, Requeue, SqliteStore, Store, StoreError};

fn tables(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type IN ('table', 'index') ORDER BY name")
        .unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn from_empty_to_latest_and_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        migrations::latest_version()
    );
    assert_eq!(migrations::latest_version(), 6);
    drop(store);

    let conn = Connection::open(&path).unwrap();
    let names = tables(&conn);
    for expected in [
        "calls",
        "numbers",
        "idempotency",
        "outbox",
        "calls_created",
        "calls_telnum",
        "calls_open",
        "calls_telnum_open",
        "calls_ended",
        "numbers_telnum",
        "idempotency_created",
        "outbox_pending",
        "outbox_settled",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n == "outbox_due"), "{names:?}");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);

    // Opening an up-to-date database changes nothing.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        migrations::latest_version()
    );
}

#[test]
fn from_the_previous_version_with_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        // What a build with only migration 0001 left behind.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
        conn.execute_batch("PRAGMA user_version = 1").unwrap();
        conn.execute_batch(
            "INSERT INTO calls (callid, telnum, caller, callee, data, state, created_at, \
                 invite_at, ended_at, leg_a_code, leg_b_code, ended_by, end_cause, \
                 a_to_b_packets, a_to_b_bytes, a_to_b_dropped, b_to_a_packets, b_to_a_bytes, \
                 b_to_a_dropped) \
             VALUES ('111', '+1001', '2001', '3001', NULL, 'ended', 1000, 1100, 5000, 486, 486, \
                 'callee', 'callee_rejected', 0, 0, 0, 0, 0, 0), \
                    ('222', '1001', '2001', '3002', 'x', 'intent', 2000, NULL, NULL, NULL, NULL, \
                 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL); \
             INSERT INTO numbers (number, telnum) VALUES ('2001', '1001'); \
             INSERT INTO idempotency (key, scope, body_hash, status, body, created_at) \
             VALUES ('k1', 'makecall', x'0102', 200, '{\"callid\":\"222\"}', 2000);",
        )
        .unwrap();
    }

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        migrations::latest_version()
    );

    let old = store.get_call("111").unwrap().unwrap();
    assert_eq!(old.telnum, "+1001");
    assert_eq!(old.leg_b_code, Some(486));
    assert_eq!(old.end_cause.as_deref(), Some("callee_rejected"));
    assert!(old.media.is_some());
    let intent = store.get_call("222").unwrap().unwrap();
    assert_eq!(intent.state, "intent");
    assert_eq!(intent.media, None);
    assert_eq!(intent.data.as_deref(), Some("x"));

    // The new index serves the old rows, '+' or not.
    let filter = CallFilter {
        telnum: Some("1001".into()),
        ..CallFilter::default()
    };
    let page = store.list_calls(&filter, 10, None).unwrap();
    assert_eq!(common::ids(&page.calls), ["222", "111"]);
    assert_eq!(store.numbers(Some("+1001")).unwrap().len(), 1);
    assert!(matches!(
        store
            .lookup_idempotency("k1", "makecall", &[1, 2], 3000)
            .unwrap(),
        IdempotencyLookup::Hit(_)
    ));
    drop(store);

    let conn = Connection::open(&path).unwrap();
    assert!(tables(&conn).iter().any(|n| n == "outbox"));
}

#[test]
fn from_version_2_the_new_columns_are_null_then_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        // What the build before 0003 left behind: a record without notify_url or latching.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
        conn.execute_batch(MIGRATIONS[1].sql).unwrap();
        conn.execute_batch("PRAGMA user_version = 2").unwrap();
        conn.execute_batch(
            "INSERT INTO calls (callid, telnum, caller, callee, state, created_at, \
                 a_to_b_packets, a_to_b_bytes, a_to_b_dropped, b_to_a_packets, b_to_a_bytes, \
                 b_to_a_dropped) \
             VALUES ('333', '1001', '2001', '3001', 'ended', 3000, 5, 500, 0, 4, 400, 1);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        migrations::latest_version()
    );
    let old = store.get_call("333").unwrap().unwrap();
    assert_eq!(old.notify_url, None);
    let media = old.media.unwrap();
    assert_eq!((media.a_to_b.packets, media.b_to_a.dropped), (5, 1));
    assert_eq!((media.latched_a, media.latched_b), (None, None));
    // A record written now keeps them.
    let fresh = common::row("444", "1001", 4000);
    store.upsert_calls(std::slice::from_ref(&fresh)).unwrap();
    assert_eq!(store.get_call("444").unwrap().unwrap(), fresh);
}

#[test]
fn a_database_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 7")
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::SchemaTooNew {
            found: 7,
            supported
        }) if supported == migrations::latest_version()
    ));
}

#[test]
fn memory_store_is_migrated_too() {
    let store = SqliteStore::open("").unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        migrations::latest_version()
    );
    assert_eq!(store.path(), None);
    assert!(store.get_call("x").unwrap().is_none());
}

#[test]
fn from_version_3_outbox_rows_gain_the_delivery_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    {
        // What the build before 0004 left behind: an outbox row with only the v2 columns.
        let conn = Connection::open(&path).unwrap();
        for migration in &MIGRATIONS[0..3] {
            conn.execute_batch(migration.sql).unwrap();
        }
        conn.execute_batch("PRAGMA user_version = 3").unwrap();
        conn.execute_batch(
            "INSERT INTO outbox (event_id, callid, seq, event, body, state, attempts, \
                 next_attempt_at, last_error) \
             VALUES ('e1', '555', 1, 'call.ringing', '{}', 'failed', 8, 9000, 'timeout');",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        migrations::latest_version()
    );
    let old = store.get_event("e1").unwrap().unwrap();
    assert_eq!(old.target, "");
    assert_eq!(old.created_at, 0);
    assert_eq!(old.last_status, None);
    assert_eq!(old.delivered_at, None);
    assert_eq!((old.attempts, old.next_attempt_at), (8, 9000));
    assert_eq!(old.last_error.as_deref(), Some("timeout"));
    // The new methods work on it.
    assert_eq!(store.pending_event_count().unwrap(), 0);
    match store.requeue_event("e1", 10_000).unwrap() {
        Requeue::Requeued(event) => {
            assert_eq!((event.state.as_str(), event.attempts), ("pending", 0));
            assert_eq!(event.next_attempt_at, 10_000);
        }
        other => panic!("{other:?}"),
    }
    let pending = store.pending_events(0, 10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(store.events_of_call("555", 10).unwrap().len(), 1);
}
