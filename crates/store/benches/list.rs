//! `GET /api/calls` over 1,000,000 stored records (issue 12: p99 under 20 ms).
//!
//! Builds a SQLite file in a temporary directory with `STORE_BENCH_ROWS` records (default
//! 1,000,000; 10,000 under `cargo test --benches`) over 1,000 telnums, inserted in
//! transactions of 1,000, and prints the insert rate. Then it times each listing shape 2,000
//! times on random telnums and prints p50/p99/max, and hands the same shapes to criterion.
//! The writer's throughput (100,000 records through [`Writer`]) is printed too.
//!
//! Run: `cargo bench -p store` (the percentiles are printed before criterion's output).
//! `STORE_BENCH_CACHE_KIB` and `STORE_BENCH_AUTOCHECKPOINT` override the writer's page cache
//! and WAL checkpoint size; `STORE_BENCH_INSERT_ONLY=1` stops after the inserts.

use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use store::{
    CallFilter, CallRow, DirectionCounts, MediaCounts, SqliteOptions, SqliteStore, Store,
    SubmitError, WriteOp, Writer, WriterConfig,
};
use tempfile::TempDir;

const TELNUMS: u64 = 1_000;
const BATCH: u64 = 1_000;
const BASE_MS: u64 = 1_760_000_000_000;
const SAMPLES: usize = 2_000;

struct Fixture {
    _dir: TempDir,
    store: Arc<SqliteStore>,
    rows: u64,
}

/// A bijection on u64 (splitmix64's finaliser): distinct inputs give distinct callids.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn telnum(i: u64) -> String {
    format!("1380000{:04}", mix(i ^ 0x5555) % TELNUMS)
}

fn record(i: u64) -> CallRow {
    // Two records per 50 ms: about 7 hours of calls at 40 calls/s, with ties on created_at.
    let created_at = BASE_MS + (i / 2) * 50;
    let answered = !mix(i).is_multiple_of(20);
    CallRow {
        callid: mix(i).to_string(),
        telnum: telnum(i),
        caller: format!("2{:06}", i % 5_000),
        callee: format!("139{:08}", mix(i) % 100_000_000),
        data: Some("order-42".into()),
        state: if mix(i).is_multiple_of(100) {
            "answered"
        } else {
            "ended"
        }
        .into(),
        created_at,
        invite_at: Some(created_at + 3_000),
        ringing_at: Some(created_at + 3_500),
        answered_at: answered.then_some(created_at + 9_000),
        ended_at: Some(created_at + 60_000),
        ring_ms: Some(5_500),
        talk_ms: answered.then_some(51_000),
        leg_a_code: Some(if answered { 200 } else { 486 }),
        leg_b_code: Some(if answered { 200 } else { 486 }),
        ended_by: Some("caller".into()),
        end_cause: Some(
            if answered {
                "hangup"
            } else {
                "callee_rejected"
            }
            .into(),
        ),
        sip_reason: None,
        media: answered.then_some(MediaCounts {
            a_to_b: DirectionCounts {
                packets: 2_550,
                bytes: 438_600,
                dropped: 0,
            },
            b_to_a: DirectionCounts {
                packets: 2_549,
                bytes: 438_428,
                dropped: 1,
            },
            latched_a: Some("192.0.2.10:40000".to_owned()),
            latched_b: Some("198.51.100.7:30000".to_owned()),
        }),
        notify_url: None,
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn rows_wanted() -> u64 {
    if let Some(rows) = env_number("STORE_BENCH_ROWS") {
        return rows;
    }
    if std::env::args().any(|a| a == "--test") {
        10_000
    } else {
        1_000_000
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut options = SqliteOptions::new(dir.path().join("list-bench.db"));
        // Tuning experiments: STORE_BENCH_CACHE_KIB, STORE_BENCH_AUTOCHECKPOINT.
        if let Some(kib) = env_number("STORE_BENCH_CACHE_KIB") {
            options.writer_cache_kib = kib as u32;
        }
        if let Some(pages) = env_number("STORE_BENCH_AUTOCHECKPOINT") {
            options.wal_autocheckpoint = pages as u32;
        }
        let store = SqliteStore::open_with(&options).expect("open");
        let rows = rows_wanted();
        let started = Instant::now();
        let mut batch = Vec::with_capacity(BATCH as usize);
        for i in 0..rows {
            batch.push(record(i));
            if batch.len() as u64 == BATCH || i + 1 == rows {
                store.upsert_calls(&batch).expect("insert");
                batch.clear();
            }
        }
        let took = started.elapsed();
        println!(
            "store bench: inserted {rows} records in {:.1} s: {:.0} records/s \
             (upsert_calls, {BATCH} per transaction, {TELNUMS} telnums; writer cache {} KiB, \
             wal_autocheckpoint {})",
            took.as_secs_f64(),
            rows as f64 / took.as_secs_f64(),
            options.writer_cache_kib,
            options.wal_autocheckpoint
        );
        if env_number("STORE_BENCH_INSERT_ONLY").is_some() {
            std::process::exit(0);
        }
        let fixture = Fixture {
            _dir: dir,
            store: Arc::new(store),
            rows,
        };
        percentiles(&fixture);
        writer_throughput();
        fixture
    })
}

/// A random telnum that has records.
fn random_telnum(seed: &mut u64) -> String {
    *seed += 1;
    telnum(mix(*seed) % 1_000_000)
}

fn time<F: FnMut(u64) -> usize>(name: &str, mut run: F) {
    let mut samples: Vec<Duration> = Vec::with_capacity(SAMPLES);
    let mut rows = 0usize;
    for i in 0..SAMPLES as u64 {
        let started = Instant::now();
        rows += run(i);
        samples.push(started.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "store bench: {name:<46} p50 {:7.3} ms  p99 {:7.3} ms  max {:7.3} ms  ({:.0} rows/query)",
        ms(samples[SAMPLES / 2]),
        ms(samples[SAMPLES * 99 / 100]),
        ms(samples[SAMPLES - 1]),
        rows as f64 / SAMPLES as f64
    );
}

fn by_telnum(telnum: String) -> CallFilter {
    CallFilter {
        telnum: Some(telnum),
        ..CallFilter::default()
    }
}

fn percentiles(fixture: &Fixture) {
    let store = &*fixture.store;
    println!(
        "store bench: {SAMPLES} queries each over {} records, limit 100:",
        fixture.rows
    );
    for (filter, with_cursor) in [
        (by_telnum(telnum(0)), false),
        (CallFilter::default(), false),
        (by_telnum(telnum(0)), true),
    ] {
        println!(
            "store bench: plan {filter:?} cursor={with_cursor}: {}",
            store
                .list_plan(&filter, with_cursor)
                .expect("plan")
                .join(" | ")
        );
    }
    let mut seed = 0;
    time("list, no filter, first page", |_| {
        store
            .list_calls(&CallFilter::default(), 100, None)
            .expect("list")
            .calls
            .len()
    });
    let mut cursor = None;
    time("list, no filter, next pages (cursor)", |_| {
        let page = store
            .list_calls(&CallFilter::default(), 100, cursor.as_deref())
            .expect("list");
        cursor = page.next_cursor;
        page.calls.len()
    });
    time("list, telnum filter, first page", |_| {
        let filter = by_telnum(random_telnum(&mut seed));
        store
            .list_calls(&filter, 100, None)
            .expect("list")
            .calls
            .len()
    });
    // Cursors of pages 2..=10 of random telnums, fetched before the clock starts.
    let deep: Vec<(CallFilter, String)> = (0..SAMPLES as u64)
        .filter_map(|i| {
            let filter = by_telnum(random_telnum(&mut seed));
            let mut cursor = None;
            for _ in 0..(i % 9 + 1) {
                let page = store
                    .list_calls(&filter, 100, cursor.as_deref())
                    .expect("list");
                cursor = Some(page.next_cursor?);
            }
            Some((filter, cursor?))
        })
        .collect();
    let mut next = deep.iter().cycle();
    time("list, telnum filter, page 2..10 (cursor)", |_| {
        let (filter, cursor) = next.next().expect("cursors");
        store
            .list_calls(filter, 100, Some(cursor))
            .expect("list")
            .calls
            .len()
    });
    time("list, telnum + state=ended", |_| {
        let mut filter = by_telnum(random_telnum(&mut seed));
        filter.state = Some("ended".into());
        store
            .list_calls(&filter, 100, None)
            .expect("list")
            .calls
            .len()
    });
    time("list, telnum + state=answered (1 % of records)", |_| {
        let mut filter = by_telnum(random_telnum(&mut seed));
        filter.state = Some("answered".into());
        store
            .list_calls(&filter, 100, None)
            .expect("list")
            .calls
            .len()
    });
    time("list, telnum + since/until (1 hour)", |_| {
        let mut filter = by_telnum(random_telnum(&mut seed));
        let since = BASE_MS + mix(seed) % (fixture.rows * 25).max(1);
        filter.since = Some(since);
        filter.until = Some(since + 3_600_000);
        store
            .list_calls(&filter, 100, None)
            .expect("list")
            .calls
            .len()
    });
    time("list, state=answered (1 % of records)", |_| {
        let filter = CallFilter {
            state: Some("answered".into()),
            ..CallFilter::default()
        };
        store
            .list_calls(&filter, 100, None)
            .expect("list")
            .calls
            .len()
    });
    time("get_call", |i| {
        usize::from(
            store
                .get_call(&mix(i * 7 % fixture.rows).to_string())
                .expect("get")
                .is_some(),
        )
    });
}

/// 100,000 records through the writer, submitted as fast as it takes them.
fn writer_throughput() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path().join("writer-bench.db")).expect("open"));
    let writer = Writer::start(store, WriterConfig::default()).expect("writer");
    let total = 100_000u64;
    let started = Instant::now();
    for i in 0..total {
        loop {
            match writer.try_submit(WriteOp::UpsertCall(Box::new(record(i)))) {
                Ok(()) => break,
                Err(SubmitError::Full) => std::thread::sleep(Duration::from_micros(200)),
                Err(SubmitError::Stopped) => panic!("writer stopped"),
            }
        }
    }
    writer.flush().expect("flush");
    let took = started.elapsed();
    let counters = writer.counters();
    println!(
        "store bench: writer: {total} records in {:.2} s: {:.0} records/s, {} batches \
         (mean {:.0} per transaction), {} refused while full (retried)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        counters.batches,
        counters.written as f64 / counters.batches.max(1) as f64,
        counters.dropped_full
    );
}

fn bench_list(c: &mut Criterion) {
    let fixture = fixture();
    let store = &*fixture.store;
    let mut seed = 1_000_000;
    c.bench_function("list/no_filter/limit_100", |b| {
        b.iter(|| {
            black_box(
                store
                    .list_calls(&CallFilter::default(), 100, None)
                    .expect("list"),
            )
        })
    });
    c.bench_function("list/telnum/limit_100", |b| {
        b.iter(|| {
            let filter = by_telnum(random_telnum(&mut seed));
            black_box(store.list_calls(&filter, 100, None).expect("list"))
        })
    });
    c.bench_function("list/telnum_state/limit_100", |b| {
        b.iter(|| {
            let mut filter = by_telnum(random_telnum(&mut seed));
            filter.state = Some("answered".into());
            black_box(store.list_calls(&filter, 100, None).expect("list"))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(3));
    targets = bench_list
}
criterion_main!(benches);
