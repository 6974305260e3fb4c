//! What only the PostgreSQL backend has: a server that goes away and comes back, several nodes
//! migrating one empty database at once, its migrations' history, its planner, and its
//! client's own runtime inside callbridge's.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{event, pg_database, pg_open, row};
use store::postgres::{latest_version, MIGRATIONS};
use store::testing::PgServer;
use store::{
    CallFilter, PostgresOptions, PostgresStore, Store, StoreError, WriteOp, Writer, WriterConfig,
};

#[test]
fn the_store_recovers_by_itself_when_postgres_comes_back() {
    if store::testing::skipped() {
        return;
    }
    // A server of its own: this test stops it.
    let server = PgServer::start()
        .unwrap_or_else(|error| panic!("the PostgreSQL tests need a PostgreSQL server: {error}"));
    let db = server.create_database().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        PostgresStore::open_with(&PostgresOptions {
            connect_timeout: Duration::from_secs(1),
            ..PostgresOptions::new(db.url())
        })
        .unwrap(),
    );
    store.upsert_calls(&[row("before", "1001", 1_000)]).unwrap();
    // Readers in the idle pool, to be found dead later.
    assert!(store.get_call("before").unwrap().is_some());
    let writer = Writer::start(Arc::clone(&store), WriterConfig::default()).unwrap();

    server.stop_fast().unwrap();
    for attempt in 0..3 {
        let started = Instant::now();
        let error = store.get_call("before").unwrap_err();
        assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
        assert!(error.to_string().starts_with("the database is unavailable"));
        let error = store.put_number("2001", "1001").unwrap_err();
        assert!(
            matches!(error, StoreError::Unavailable(_)),
            "{attempt}: {error}"
        );
        // Bounded by the connect timeout, not a hang.
        assert!(started.elapsed() < Duration::from_secs(3), "{attempt}");
    }
    // The writer holds what it is given while the database is down...
    for i in 0..50u64 {
        writer
            .try_submit(WriteOp::UpsertCall(Box::new(row(
                &format!("during{i}"),
                "1001",
                2_000 + i,
            ))))
            .unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(writer.counters().written, 0);
    assert_eq!(writer.counters().errors, 0);

    server.start_again().unwrap();
    // ... and writes it once it is back, without a flush (which would give up a held batch).
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer.counters().written < 50 {
        assert!(Instant::now() < deadline, "{:?}", writer.counters());
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(writer.counters().errors, 0);
    // The same store, no reopening: reads and writes work again.
    assert!(store.get_call("during49").unwrap().is_some());
    store.put_number("2001", "1001").unwrap();
    assert_eq!(store.numbers(None).unwrap().len(), 1);
    let page = store.list_calls(&CallFilter::default(), 100, None).unwrap();
    assert_eq!(page.calls.len(), 51);

    // A shutdown while the database is down does not wait for it: the held batch is given
    // up and counted.
    server.stop_fast().unwrap();
    writer
        .try_submit(WriteOp::UpsertCall(Box::new(row("lost", "1001", 9_000))))
        .unwrap();
    let started = Instant::now();
    writer.shutdown().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(writer.counters().errors, 1);
}

#[test]
fn a_server_that_is_not_there_is_unavailable_at_open() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let error = PostgresStore::open(&format!("postgres://cb@127.0.0.1:{port}/cb"))
        .err()
        .unwrap();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
    // The cause, not only rust-postgres's "error connecting to server".
    assert!(error.to_string().contains("refused"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn several_nodes_migrating_one_empty_database_at_once() {
    let Some(db) = pg_database() else { return };
    let opens = 4;
    let barrier = Arc::new(Barrier::new(opens));
    let url = db.url().to_owned();
    let nodes: Vec<_> = (0..opens)
        .map(|i| {
            let (barrier, url) = (Arc::clone(&barrier), url.clone());
            thread::spawn(move || {
                barrier.wait();
                PostgresStore::open_with(&PostgresOptions {
                    node: format!("n{i}"),
                    ..PostgresOptions::new(url)
                })
            })
        })
        .collect();
    let stores: Vec<PostgresStore> = nodes
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    for store in &stores {
        assert_eq!(store.schema_version().unwrap(), latest_version());
    }
    // Each migration applied once, in order.
    let mut client = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
    let applied: Vec<(i64, String)> = client
        .query(
            "SELECT version, name FROM schema_version ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(i64, String)> = MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_owned()))
        .collect();
    assert_eq!(applied, expected);
    stores[0].insert_events(&[event("x", 1, 1)]).unwrap();
    assert_eq!(stores[1].outbox_nodes().unwrap(), ["n0"]);
}

/// Migration 6 turns `calls.data` from TEXT into its UTF-8 bytes: a record stored before
/// reads back the same after, and one with NUL can be stored.
#[test]
fn records_from_schema_5_keep_their_data_through_migration_6() {
    let Some(db) = pg_database() else { return };
    {
        let mut client = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
        store::postgres::migrations::migrate_to(&mut client, 5).unwrap();
        client
            .batch_execute(
                "INSERT INTO calls (callid, telnum, caller, callee, data, state, created_at) \
                 VALUES ('1', '1001', '2001', '3001', 'order 42 é', 'intent', 1000), \
                        ('2', '1001', '2001', '3001', NULL, 'intent', 1001)",
            )
            .unwrap();
    }
    let store = pg_open(&db, "");
    assert_eq!(store.schema_version().unwrap(), latest_version());
    let kept = store.get_call("1").unwrap().unwrap();
    assert_eq!(kept.data.as_deref(), Some("order 42 é"));
    assert_eq!(store.get_call("2").unwrap().unwrap().data, None);
    let mut nul = kept;
    nul.data = Some("a\u{0}b".into());
    store.upsert_calls(std::slice::from_ref(&nul)).unwrap();
    assert_eq!(
        store.get_call("1").unwrap().unwrap().data.as_deref(),
        Some("a\u{0}b")
    );
}

#[test]
fn from_an_older_schema_with_data_and_a_newer_one_is_refused() {
    let Some(db) = pg_database() else { return };
    {
        // What a build with migrations 1..=4 left behind: an outbox row without a node.
        let mut client = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
        store::postgres::migrations::migrate_to(&mut client, 4).unwrap();
        assert_eq!(
            store::postgres::migrations::schema_version(&mut client).unwrap(),
            4
        );
        client
            .batch_execute(
                "INSERT INTO outbox (event_id, callid, seq, event, body, next_attempt_at) \
                 VALUES ('e1', '555', 1, 'call.ringing', '{}', 9000)",
            )
            .unwrap();
    }
    let store = pg_open(&db, "");
    assert_eq!(store.schema_version().unwrap(), latest_version());
    let pending = store.pending_events(0, 10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.event_id, "e1");
    assert_eq!(store.outbox_nodes().unwrap(), [""]);
    drop(store);

    let mut client = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
    client
        .batch_execute("INSERT INTO schema_version (version, name) VALUES (99, 'future')")
        .unwrap();
    let error = PostgresStore::open(db.url()).err().unwrap();
    assert!(
        matches!(
            error,
            StoreError::SchemaTooNew {
                found: 99,
                supported
            } if supported == latest_version()
        ),
        "{error}"
    );
}

#[test]
fn every_listing_has_an_index_that_serves_it_in_order() {
    let Some(db) = pg_database() else { return };
    let store = pg_open(&db, "");
    let rows: Vec<_> = (0..200u64)
        .map(|i| row(&format!("c{i:04}"), ["1001", "+1002"][(i % 2) as usize], i))
        .collect();
    store.upsert_calls(&rows).unwrap();
    for telnum in [None, Some("+1002")] {
        for state in [None, Some("ended"), Some("answered")] {
            for (since, until) in [(None, None), (Some(10), Some(100))] {
                let filter = CallFilter {
                    telnum: telnum.map(Into::into),
                    state: state.map(Into::into),
                    since,
                    until,
                };
                for with_cursor in [false, true] {
                    let plan = store.list_plan(&filter, with_cursor).unwrap().join(" | ");
                    assert!(!plan.contains("Sort"), "{filter:?}: {plan}");
                    assert!(!plan.contains("Seq Scan"), "{filter:?}: {plan}");
                    let open = state.is_some_and(|s| s != "ended");
                    let index = match (telnum.is_some(), open) {
                        (true, true) => "calls_telnum_open",
                        (true, false) => "calls_telnum",
                        (false, true) => "calls_open",
                        (false, false) => "calls_created",
                    };
                    assert!(
                        plan.contains(&format!("Index Scan Backward using {index} ")),
                        "{filter:?}: {plan}"
                    );
                }
            }
        }
    }
}

/// callbridge opens the store from async code and may drop its last handle on a worker
/// thread: neither may start or drop the client's own runtime there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opened_and_dropped_inside_a_tokio_runtime() {
    let Some(db) = pg_database() else { return };
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(db.url()).unwrap());
    let reader = Arc::clone(&store);
    let found = tokio::task::spawn_blocking(move || reader.get_call("x"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, None);
    drop(store);
    // The same through store::open.
    let store = store::open("", db.url(), "node-1").unwrap();
    drop(store);
}
