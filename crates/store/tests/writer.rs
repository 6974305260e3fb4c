//! The writer: batches, flush, back pressure, shutdown, restart.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{row, Probe};
use store::{
    CallFilter, Export, SqliteStore, Store, StoreError, SubmitError, WriteOp, Writer, WriterConfig,
    WriterCounters,
};

fn upsert(callid: &str, created_at: u64) -> WriteOp {
    WriteOp::UpsertCall(Box::new(row(callid, "1001", created_at)))
}

#[test]
fn queued_ops_are_committed_in_batches() {
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let (probe, gate) = Probe::gated(Arc::clone(&sqlite));
    let probe = Arc::new(probe);
    let writer = Writer::start(
        probe.clone(),
        WriterConfig {
            capacity: 200,
            max_batch: 50,
        },
    )
    .unwrap();

    // The first op is taken alone and held in its commit...
    writer.try_submit(upsert("0", 0)).unwrap();
    gate.entered.recv().unwrap();
    // ... while 100 more queue up behind it.
    for i in 1..=100u64 {
        writer.try_submit(upsert(&i.to_string(), i)).unwrap();
    }
    gate.release.send(()).unwrap();
    writer.flush().unwrap();

    assert_eq!(*probe.applies.lock(), [1, 50, 50]);
    assert_eq!(
        writer.counters(),
        WriterCounters {
            submitted: 101,
            written: 101,
            batches: 3,
            dropped_full: 0,
            errors: 0,
        }
    );
    assert_eq!(writer.counters().pending(), 0);
    let page = sqlite
        .list_calls(&CallFilter::default(), 1000, None)
        .unwrap();
    assert_eq!(page.calls.len(), 101);
    assert_eq!(page.calls[0].callid, "100");
}

#[test]
fn a_full_queue_refuses_without_blocking_and_counts() {
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let (probe, gate) = Probe::gated(Arc::clone(&sqlite));
    let writer = Writer::start(
        Arc::new(probe),
        WriterConfig {
            capacity: 4,
            max_batch: 100,
        },
    )
    .unwrap();
    writer.try_submit(upsert("held", 0)).unwrap();
    gate.entered.recv().unwrap();
    for i in 0..4u64 {
        writer.try_submit(upsert(&format!("q{i}"), i)).unwrap();
    }
    assert_eq!(writer.try_submit(upsert("over", 9)), Err(SubmitError::Full));
    assert_eq!(
        writer.try_submit(upsert("over2", 9)),
        Err(SubmitError::Full)
    );
    let counters = writer.counters();
    assert_eq!(counters.dropped_full, 2);
    assert_eq!(counters.submitted, 5);
    assert_eq!(counters.pending(), 5);

    gate.release.send(()).unwrap();
    writer.flush().unwrap();
    let counters = writer.counters();
    assert_eq!((counters.written, counters.batches), (5, 2));
    assert_eq!(sqlite.get_call("over").unwrap(), None);
    assert!(sqlite.get_call("q3").unwrap().is_some());
}

#[test]
fn a_bad_op_fails_alone() {
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let (probe, gate) = Probe::gated(Arc::clone(&sqlite));
    let writer = Writer::start(Arc::new(probe), WriterConfig::default()).unwrap();
    writer.try_submit(upsert("first", 1)).unwrap();
    gate.entered.recv().unwrap();
    writer.try_submit(upsert("a", 2)).unwrap();
    // Out of SQLite's range: this op's own write fails.
    writer
        .try_submit(WriteOp::UpsertCall(Box::new(common::out_of_range("bad"))))
        .unwrap();
    writer.try_submit(upsert("b", 3)).unwrap();
    gate.release.send(()).unwrap();
    writer.flush().unwrap();

    let counters = writer.counters();
    assert_eq!((counters.written, counters.errors), (3, 1));
    assert_eq!(counters.pending(), 0);
    for callid in ["first", "a", "b"] {
        assert!(sqlite.get_call(callid).unwrap().is_some(), "{callid}");
    }
    assert_eq!(sqlite.get_call("bad").unwrap(), None);
}

#[test]
fn shutdown_writes_what_is_queued_and_a_restart_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.db");
    {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        let writer = Writer::start(
            Arc::clone(&store),
            WriterConfig {
                capacity: 5_000,
                max_batch: 300,
            },
        )
        .unwrap();
        for i in 0..2_000u64 {
            writer.try_submit(upsert(&format!("{i:05}"), i)).unwrap();
        }
        writer
            .try_submit(WriteOp::PutNumber {
                number: "2001".into(),
                telnum: "1001".into(),
            })
            .unwrap();
        // No flush: shutdown must write everything queued.
        writer.shutdown().unwrap();
        let counters = writer.counters();
        assert_eq!(counters.written, 2_001);
        assert!(counters.batches >= 7, "{counters:?}");
        assert_eq!(
            writer.try_submit(upsert("late", 0)),
            Err(SubmitError::Stopped)
        );
        assert!(matches!(writer.flush(), Err(StoreError::WriterStopped)));
        writer.shutdown().unwrap();
    }

    // The process "restarts": a new store on the same file.
    let store = SqliteStore::open(&path).unwrap();
    let rows: Vec<_> = Export::new(&store, CallFilter::default())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 2_000);
    assert_eq!(rows[0].callid, "01999");
    assert_eq!(rows[0], row("01999", "1001", 1_999));
    assert_eq!(store.numbers(None).unwrap().len(), 1);
}

#[test]
fn dropping_the_writer_writes_what_is_queued() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let writer = Writer::start(Arc::clone(&store), WriterConfig::default()).unwrap();
    for i in 0..100u64 {
        writer.try_submit(upsert(&i.to_string(), i)).unwrap();
    }
    drop(writer);
    let page = store
        .list_calls(&CallFilter::default(), 1000, None)
        .unwrap();
    assert_eq!(page.calls.len(), 100);
}

#[test]
fn the_writer_can_be_shared_between_threads() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let writer = Arc::new(Writer::start(Arc::clone(&store), WriterConfig::default()).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let writer = Arc::clone(&writer);
            std::thread::spawn(move || {
                for i in 0..250u64 {
                    // Retry on a full queue, as a test may; the engine would drop instead.
                    loop {
                        match writer.try_submit(upsert(&format!("{t}-{i}"), t * 1_000 + i)) {
                            Ok(()) => break,
                            Err(SubmitError::Full) => std::thread::yield_now(),
                            Err(SubmitError::Stopped) => panic!("stopped"),
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    writer.flush().unwrap();
    assert_eq!(writer.counters().written, 1_000);
    let page = store
        .list_calls(&CallFilter::default(), 1000, None)
        .unwrap();
    assert_eq!(page.calls.len(), 1_000);
}

fn wait_for(writer: &Writer, written: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer.counters().written < written {
        assert!(Instant::now() < deadline, "{:?}", writer.counters());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_unavailable_database_holds_the_batch_until_it_is_back() {
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let (probe, gate) = Probe::gated(Arc::clone(&sqlite));
    let probe = Arc::new(probe);
    probe.unavailable.store(3, Ordering::Relaxed);
    let writer = Writer::start(probe.clone(), WriterConfig::default()).unwrap();
    writer.try_submit(upsert("first", 0)).unwrap();
    gate.entered.recv().unwrap();
    for i in 1..10u64 {
        writer.try_submit(upsert(&i.to_string(), i)).unwrap();
    }
    gate.release.send(()).unwrap();
    // No flush: a flush would give the held batch up.
    wait_for(&writer, 10);
    // The first batch failed three times and was tried whole again, never one by one.
    assert_eq!(*probe.applies.lock(), [1, 1, 1, 1, 9]);
    let counters = writer.counters();
    assert_eq!(
        (counters.written, counters.errors, counters.batches),
        (10, 0, 2)
    );
    assert_eq!(
        sqlite
            .list_calls(&CallFilter::default(), 100, None)
            .unwrap()
            .calls
            .len(),
        10
    );
}

#[test]
fn shutdown_and_flush_do_not_wait_for_an_unavailable_database() {
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let probe = Arc::new(Probe::new(Arc::clone(&sqlite)));
    probe.unavailable.store(usize::MAX, Ordering::Relaxed);
    let writer = Writer::start(probe.clone(), WriterConfig::default()).unwrap();
    for i in 0..5u64 {
        writer.try_submit(upsert(&i.to_string(), i)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(writer.counters().pending(), 5);
    let started = Instant::now();
    writer.flush().unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(writer.counters().errors, 5);

    writer.try_submit(upsert("late", 9)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    writer.shutdown().unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    let counters = writer.counters();
    assert_eq!((counters.written, counters.errors), (0, 6));
    assert_eq!(sqlite.get_call("late").unwrap(), None);
}
