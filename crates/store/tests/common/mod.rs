//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use parking_lot::Mutex;
use store::testing::TestDatabase;
use store::{
    CallFilter, CallRow, DirectionCounts, IdempotencyEntry, IdempotencyLookup, MediaCounts,
    NumberAssignment, OutboxEvent, Page, PostgresOptions, PostgresStore, Requeue, SqliteOptions,
    SqliteStore, Store, StoreError, WriteOp,
};
use tempfile::TempDir;

/// A fresh store on a file in its own temporary directory (kept alive by the `TempDir`).
pub fn temp_store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("test.db")).unwrap();
    (dir, store)
}

/// What keeps a backend's database alive: a temporary directory or a test database.
pub enum Keep {
    Dir(TempDir),
    Db(TestDatabase),
}

/// One fresh, empty database of a backend and the stores opened on it.
pub struct Backend {
    pub name: &'static str,
    pub keep: Keep,
}

impl Backend {
    /// A store on this database serving `node`.
    pub fn open(&self, node: &str) -> Arc<dyn Store> {
        match &self.keep {
            Keep::Dir(dir) => Arc::new(
                SqliteStore::open_with(&SqliteOptions {
                    node: node.to_owned(),
                    ..SqliteOptions::new(dir.path().join("test.db"))
                })
                .unwrap(),
            ),
            Keep::Db(db) => Arc::new(pg_open(db, node)),
        }
    }
}

/// A PostgreSQL store on `db` serving `node`.
pub fn pg_open(db: &TestDatabase, node: &str) -> PostgresStore {
    PostgresStore::open_with(&PostgresOptions {
        node: node.to_owned(),
        ..PostgresOptions::new(db.url())
    })
    .unwrap()
}

/// A fresh database on the test binary's PostgreSQL server, or `None` when
/// `CALLBRIDGE_SKIP_PG=1` (without PostgreSQL installed, this panics and says how to get it).
pub fn pg_database() -> Option<TestDatabase> {
    let server = store::testing::require()?;
    Some(server.create_database().unwrap())
}

/// A fresh, empty database of each backend: SQLite, then PostgreSQL (unless skipped).
pub fn backends() -> Vec<Backend> {
    let mut backends = vec![Backend {
        name: "sqlite",
        keep: Keep::Dir(tempfile::tempdir().unwrap()),
    }];
    if let Some(db) = pg_database() {
        backends.push(Backend {
            name: "postgres",
            keep: Keep::Db(db),
        });
    }
    backends
}

/// Runs `scenario` on a fresh store of each backend (node `""`), so that both backends are
/// held to the same behaviour. A failure's output names the backend.
pub fn on_each(scenario: impl Fn(&dyn Store)) {
    for backend in backends() {
        eprintln!("--- backend: {}", backend.name);
        let store = backend.open("");
        scenario(&*store);
    }
}

/// An ended, answered call with every field set.
pub fn row(callid: &str, telnum: &str, created_at: u64) -> CallRow {
    CallRow {
        callid: callid.to_owned(),
        telnum: telnum.to_owned(),
        caller: "2001".to_owned(),
        callee: "3001".to_owned(),
        data: Some(format!("data of {callid}")),
        state: "ended".to_owned(),
        created_at,
        invite_at: Some(created_at + 1_000),
        ringing_at: Some(created_at + 1_200),
        answered_at: Some(created_at + 5_000),
        ended_at: Some(created_at + 65_000),
        ring_ms: Some(3_800),
        talk_ms: Some(60_000),
        leg_a_code: Some(200),
        leg_b_code: Some(200),
        ended_by: Some("caller".to_owned()),
        end_cause: Some("hangup".to_owned()),
        sip_reason: Some("Q.850;cause=16".to_owned()),
        media: Some(MediaCounts {
            a_to_b: DirectionCounts {
                packets: 3_000,
                bytes: 516_000,
                dropped: 2,
            },
            b_to_a: DirectionCounts {
                packets: 2_990,
                bytes: 514_280,
                dropped: 0,
            },
            latched_a: Some("192.0.2.10:40000".to_owned()),
            latched_b: Some("198.51.100.7:30000".to_owned()),
        }),
        notify_url: Some("https://backend.example/hooks".to_owned()),
    }
}

/// A record the store must refuse: its `created_at` does not fit SQLite's integers.
pub fn out_of_range(callid: &str) -> CallRow {
    CallRow {
        created_at: u64::MAX,
        ..row(callid, "1001", 0)
    }
}

/// The callids of `rows`.
pub fn ids(rows: &[CallRow]) -> Vec<String> {
    rows.iter().map(|r| r.callid.clone()).collect()
}

/// Every page of `filter`, `limit` rows at a time.
pub fn all_pages(store: &dyn Store, filter: &CallFilter, limit: usize) -> Vec<Page> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_calls(filter, limit, cursor.as_deref()).unwrap();
        cursor = page.next_cursor.clone();
        pages.push(page);
        if cursor.is_none() {
            return pages;
        }
    }
}

/// A [`Store`] in front of another that counts listings and can hold the first `apply` until
/// released (to make the writer's batching deterministic).
pub struct Probe {
    pub inner: Arc<dyn Store>,
    pub lists: AtomicUsize,
    pub max_limit: AtomicUsize,
    pub applies: Mutex<Vec<usize>>,
    /// While above 0, `apply` fails as an unavailable database would (counting down).
    pub unavailable: AtomicUsize,
    gate: Mutex<Option<(SyncSender<()>, Receiver<()>)>>,
}

/// The two ends of a [`Probe`]'s gate: `entered` fires when the first `apply` is waiting,
/// `release` lets it go on.
pub struct Gate {
    pub entered: Receiver<()>,
    pub release: SyncSender<()>,
}

impl Probe {
    pub fn new(inner: Arc<dyn Store>) -> Probe {
        Probe {
            inner,
            lists: AtomicUsize::new(0),
            max_limit: AtomicUsize::new(0),
            applies: Mutex::new(Vec::new()),
            unavailable: AtomicUsize::new(0),
            gate: Mutex::new(None),
        }
    }

    /// Holds the next `apply` until the returned gate is released.
    pub fn gated(inner: Arc<dyn Store>) -> (Probe, Gate) {
        let probe = Probe::new(inner);
        let (entered_tx, entered) = mpsc::sync_channel(1);
        let (release, release_rx) = mpsc::sync_channel(1);
        *probe.gate.lock() = Some((entered_tx, release_rx));
        (probe, Gate { entered, release })
    }
}

impl Store for Probe {
    fn apply(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let gate = self.gate.lock().take();
        if let Some((entered, release)) = gate {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
        self.applies.lock().push(ops.len());
        let down = self
            .unavailable
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if down.is_ok() {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        self.inner.apply(ops)
    }

    fn upsert_calls(&self, calls: &[CallRow]) -> Result<(), StoreError> {
        self.inner.upsert_calls(calls)
    }

    fn get_call(&self, callid: &str) -> Result<Option<CallRow>, StoreError> {
        self.inner.get_call(callid)
    }

    fn list_calls(
        &self,
        filter: &CallFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, StoreError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.max_limit.fetch_max(limit, Ordering::Relaxed);
        self.inner.list_calls(filter, limit, cursor)
    }

    fn sweep_calls(&self, ended_before: u64, chunk: usize) -> Result<u64, StoreError> {
        self.inner.sweep_calls(ended_before, chunk)
    }

    fn delete_number(&self, number: &str) -> Result<bool, StoreError> {
        self.inner.delete_number(number)
    }

    fn numbers(&self, telnum: Option<&str>) -> Result<Vec<NumberAssignment>, StoreError> {
        self.inner.numbers(telnum)
    }

    fn remember_idempotency(&self, entry: &IdempotencyEntry) -> Result<(), StoreError> {
        self.inner.remember_idempotency(entry)
    }

    fn lookup_idempotency(
        &self,
        key: &str,
        scope: &str,
        body_hash: &[u8],
        now_ms: u64,
    ) -> Result<IdempotencyLookup, StoreError> {
        self.inner.lookup_idempotency(key, scope, body_hash, now_ms)
    }

    fn sweep_idempotency(&self, now_ms: u64, chunk: usize) -> Result<u64, StoreError> {
        self.inner.sweep_idempotency(now_ms, chunk)
    }

    fn insert_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError> {
        self.inner.insert_events(events)
    }

    fn pending_events(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, OutboxEvent)>, StoreError> {
        self.inner.pending_events(after_id, limit)
    }

    fn pending_event_count(&self) -> Result<u64, StoreError> {
        self.inner.pending_event_count()
    }

    fn adopt_events(&self, from_node: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        self.inner.adopt_events(from_node)
    }

    fn outbox_nodes(&self) -> Result<Vec<String>, StoreError> {
        self.inner.outbox_nodes()
    }

    fn events_of_call(&self, callid: &str, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        self.inner.events_of_call(callid, limit)
    }

    fn get_event(&self, event_id: &str) -> Result<Option<OutboxEvent>, StoreError> {
        self.inner.get_event(event_id)
    }

    fn requeue_event(&self, event_id: &str, now_ms: u64) -> Result<Requeue, StoreError> {
        self.inner.requeue_event(event_id, now_ms)
    }

    fn sweep_events(&self, created_before: u64, chunk: usize) -> Result<u64, StoreError> {
        self.inner.sweep_events(created_before, chunk)
    }
}

/// A pending event of `callid` number `seq`, created at `created_at`.
pub fn event(callid: &str, seq: u32, created_at: u64) -> OutboxEvent {
    OutboxEvent {
        event_id: format!("{callid}-{seq}"),
        callid: callid.to_owned(),
        seq,
        event: "call.ringing".to_owned(),
        target: "https://backend.example/hooks".to_owned(),
        body: format!("{{\"callid\":\"{callid}\",\"seq\":{seq}}}"),
        created_at,
        state: store::EVENT_PENDING.to_owned(),
        attempts: 0,
        next_attempt_at: created_at,
        last_status: None,
        last_error: None,
        delivered_at: None,
    }
}
