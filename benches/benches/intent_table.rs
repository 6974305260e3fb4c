//! Intent table operations with 10 and 100,000 intents held (`IntentTable`: a `HashMap` by
//! telnum plus a `BTreeMap` by expiry behind one mutex). Both sizes should cost about the same;
//! a growing gap means an operation has stopped being a lookup (or the table no longer fits in
//! cache).
//!
//! Measured per operation, on one thread (no lock contention):
//! - `register_new`: makecall of a telnum with no pending intent (inserts into both maps);
//! - `register_replace`: makecall of a telnum that already has one (latest wins: one insert and
//!   one removal in each map);
//! - `take_hit`: an INVITE whose caller has a matching intent (consumed);
//! - `take_miss`: an INVITE from a number with no intent (`NoIntent::None`);
//! - `take_other_number`: an intent exists but for another dedicated number (left in place).
//!
//! The table's clock is a fake one that moves 1 ns per operation, so expiries arrive in order,
//! as in service, and nothing expires during a run (TTL 120 s).
//!
//! Operations that change the table's size are timed in chunks of [`CHUNK`] and undone outside
//! the timed region, so the table holds between N - CHUNK and N + CHUNK intents throughout.

use std::cell::Cell;
use std::time::{Duration, Instant};

use b2bua::IntentTable;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};

const TTL: Duration = Duration::from_secs(120);
const SIZES: [usize; 2] = [10, 100_000];
const CHUNK: u64 = 16;
/// Dedicated number and target of every intent.
const CALLER: &str = "2001";
const CALLEE: &str = "3001";

/// A monotonic fake clock: every call is 1 ns after the previous one.
struct Clock {
    start: Instant,
    ticks: Cell<u64>,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            ticks: Cell::new(0),
        }
    }

    fn now(&self) -> Instant {
        let tick = self.ticks.get() + 1;
        self.ticks.set(tick);
        self.start + Duration::from_nanos(tick)
    }
}

/// The telnum of held intent `i`.
fn held(i: usize) -> String {
    format!("{}", 1_000_000 + i)
}

/// A table holding `size` intents, telnums `held(0..size)`.
fn table(size: usize, clock: &Clock) -> IntentTable {
    let table = IntentTable::new(TTL);
    for i in 0..size {
        table.register(clock.now(), &held(i), CALLER, CALLEE).ok();
    }
    assert_eq!(table.len(), size);
    table
}

fn intent_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("intent_table");
    for size in SIZES {
        let clock = Clock::new();
        let table = table(size, &clock);
        // Telnums that are not in the table (register_new, take_miss).
        let fresh: Vec<String> = (0..CHUNK as usize)
            .map(|i| format!("{}", 9_000_000 + i))
            .collect();
        // Distinct held telnums spread over the table (take_hit, register_replace).
        let spread_len = size.min(CHUNK as usize);
        let spread: Vec<String> = (0..spread_len)
            .map(|i| held(i * size / spread_len))
            .collect();

        group.bench_with_input(BenchmarkId::new("register_new", size), &size, |b, _| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let n = (iters - done).min(CHUNK) as usize;
                    let start = Instant::now();
                    for telnum in &fresh[..n] {
                        let _ = black_box(table.register(clock.now(), telnum, CALLER, CALLEE));
                    }
                    elapsed += start.elapsed();
                    for telnum in &fresh[..n] {
                        table.cancel(telnum);
                    }
                    done += n as u64;
                }
                elapsed
            })
        });

        group.bench_with_input(BenchmarkId::new("register_replace", size), &size, |b, _| {
            let mut next = 0;
            b.iter(|| {
                let telnum = &spread[next % spread.len()];
                next += 1;
                black_box(table.register(clock.now(), telnum, CALLER, CALLEE))
            })
        });

        group.bench_with_input(BenchmarkId::new("take_hit", size), &size, |b, _| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let n = (iters - done).min(spread.len() as u64) as usize;
                    let start = Instant::now();
                    for telnum in &spread[..n] {
                        let taken = table.take_matching(clock.now(), telnum, CALLER);
                        black_box(taken.expect("held intent matches"));
                    }
                    elapsed += start.elapsed();
                    for telnum in &spread[..n] {
                        table.register(clock.now(), telnum, CALLER, CALLEE).ok();
                    }
                    done += n as u64;
                }
                elapsed
            })
        });

        group.bench_with_input(BenchmarkId::new("take_miss", size), &size, |b, _| {
            let mut next = 0;
            b.iter(|| {
                let telnum = &fresh[next % fresh.len()];
                next += 1;
                black_box(table.take_matching(clock.now(), telnum, CALLER)).expect_err("no intent")
            })
        });

        group.bench_with_input(
            BenchmarkId::new("take_other_number", size),
            &size,
            |b, _| {
                let mut next = 0;
                b.iter(|| {
                    let telnum = &spread[next % spread.len()];
                    next += 1;
                    black_box(table.take_matching(clock.now(), telnum, "2999"))
                        .expect_err("other number")
                })
            },
        );

        assert_eq!(
            table.len(),
            size,
            "the benches leave the table as they found it"
        );
    }
    group.finish();
}

criterion_group!(benches, intent_table);
criterion_main!(benches);
