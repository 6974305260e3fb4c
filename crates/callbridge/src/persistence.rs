//! The store's side of a callbridge process: opening it, loading the number assignments,
//! moving ended call records from the registry to the writer, and the retention sweeps.
//!
//! None of it runs on the SIP task. The engine only marks a record ended (the registry queues
//! it); [`record_task`] takes the records that have settled — the media driver's final
//! counters arrive just after the end — once every [`TICK`] and hands them to the store's
//! [`Writer`], whose own thread batches them into transactions.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use b2bua::CallControl;
use store::{Store, StoreError, SubmitError, WriteOp, Writer, WriterConfig};
use tokio::sync::watch;

use crate::config::StoreSection;

/// How long an ended record waits for its last counters before it is written.
pub const SETTLE: Duration = Duration::from_secs(1);
/// How often settled records are taken for the writer.
pub const TICK: Duration = Duration::from_millis(250);
/// Records taken per tick at most (the writer's queue bounds the rest).
const TAKE_MAX: usize = 20_000;
/// How often the retention sweep runs (and once at start).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Rows deleted per sweep transaction.
const SWEEP_CHUNK: usize = 1000;

/// The opened store and its writer.
pub struct Persistence {
    pub store: Arc<dyn Store>,
    pub writer: Arc<Writer>,
    retention_days: u32,
}

impl Persistence {
    /// Opens the store `[store]` names (migrating it), loads the number assignments into
    /// `control`, starts the writer and turns the registry's store queue on.
    ///
    /// The store is opened and read on a blocking thread: its calls block, and PostgreSQL's
    /// client (`store.url`) runs a runtime of its own, which tokio refuses to start on one of
    /// its worker threads.
    pub async fn open(
        config: &StoreSection,
        control: &CallControl,
    ) -> Result<Persistence, StoreError> {
        let (path, url) = (config.path.clone(), config.url.clone());
        // In a cluster the outbox's events are stamped with this node's id (the node that
        // delivers them); a single node's are "".
        let node = control.node_id().unwrap_or_default().to_owned();
        let opened = tokio::task::spawn_blocking(move || {
            let store = store::open(&path, &url, &node)?;
            let numbers = store.numbers(None)?;
            Ok::<_, StoreError>((store, numbers))
        })
        .await
        .map_err(|error| StoreError::Unavailable(format!("opening the store failed: {error}")))?;
        let (store, numbers) = opened?;
        control
            .numbers()
            .load(numbers.iter().map(|a| (&a.number, &a.telnum)));
        let writer = Writer::start(
            Arc::clone(&store),
            WriterConfig {
                capacity: config.queue,
                ..WriterConfig::default()
            },
        )?;
        if config.records {
            control.registry().enable_persistence();
        }
        // The backend's name only: a URL may carry a password.
        let backend = if config.url.is_empty() {
            "sqlite"
        } else {
            "postgres"
        };
        let path = if config.url.is_empty() {
            config.path.as_str()
        } else {
            ""
        };
        tracing::info!(
            backend,
            path,
            numbers = numbers.len(),
            records = config.records,
            "store opened"
        );
        Ok(Persistence {
            store,
            writer: Arc::new(writer),
            retention_days: config.retention_days,
        })
    }

    /// After the SIP task has stopped: every ended record left goes to the writer, which
    /// commits what is queued and stops.
    pub async fn finish(&self, control: Arc<CallControl>) {
        let writer = Arc::clone(&self.writer);
        let done = tokio::task::spawn_blocking(move || {
            let left = control
                .registry()
                .take_settled(Instant::now(), Duration::ZERO, usize::MAX);
            let count = left.len();
            for record in left {
                let mut op = WriteOp::UpsertCall(Box::new(api::record::row_of(&record)));
                // At shutdown there is time: wait for queue space rather than drop.
                loop {
                    match writer.try_submit(op) {
                        Ok(()) => break,
                        Err(SubmitError::Full) => {
                            let _ = writer.flush();
                            op = WriteOp::UpsertCall(Box::new(api::record::row_of(&record)));
                        }
                        Err(SubmitError::Stopped) => return (count, false),
                    }
                }
            }
            (count, writer.shutdown().is_ok())
        })
        .await;
        match done {
            Ok((count, true)) => tracing::info!(records = count, "store: last records written"),
            _ => tracing::error!("store: the writer did not finish cleanly"),
        }
    }
}

/// Moves settled records to the writer every [`TICK`] until shutdown (the rest is
/// [`Persistence::finish`]'s).
pub async fn record_task(
    control: Arc<CallControl>,
    writer: Arc<Writer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dropped_logged = 0u64;
    let mut lost_logged = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        let settled = control
            .registry()
            .take_settled(Instant::now(), SETTLE, TAKE_MAX);
        for record in settled {
            let op = WriteOp::UpsertCall(Box::new(api::record::row_of(&record)));
            if let Err(SubmitError::Stopped) = writer.try_submit(op) {
                return;
            }
        }
        // A full queue drops records (counted by the writer); say so once per burst.
        let dropped = writer.counters().dropped_full;
        if dropped > dropped_logged {
            tracing::warn!(
                dropped = dropped - dropped_logged,
                "store queue full: call records dropped (the database is slower than the load)"
            );
            dropped_logged = dropped;
        }
        // So do records the registry's cap pushed out before this task took them.
        let lost = control.registry().records_lost_unstored();
        if lost > lost_logged {
            tracing::warn!(
                lost = lost - lost_logged,
                "call records dropped from memory before the store took them (more calls end \
                 per second than the store's intake; sip.max_ended_calls)"
            );
            lost_logged = lost;
        }
    }
}

/// How often the store's health is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Checks every second that the store answers (one cheap read, on a blocking thread) and
/// tells the call control: while it does not, makecalls and new INVITEs get 503
/// (`store_unavailable`), and service resumes by itself once it answers again. For the
/// embedded SQLite this never fails; for PostgreSQL it follows the database.
pub async fn health_task(
    persistence: Arc<Persistence>,
    control: Arc<CallControl>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let store = Arc::clone(&persistence.store);
        let checked = tokio::task::spawn_blocking(move || store.pending_event_count()).await;
        let error = match checked {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(error) => Some(error.to_string()),
        };
        if control.set_store_available(error.is_none()) {
            match &error {
                Some(error) => {
                    tracing::error!(%error, "store unavailable: makecalls and new calls get 503 until it answers")
                }
                None => tracing::info!("store available again: serving new calls"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Deletes records and webhook events older than `store.retention_days` and expired
/// idempotency keys: at start, then every hour, on a blocking thread, in chunks.
pub async fn sweep_task(persistence: Arc<Persistence>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let store = Arc::clone(&persistence.store);
        let days = persistence.retention_days;
        let swept = tokio::task::spawn_blocking(move || sweep(&*store, days)).await;
        match swept {
            Ok(Ok((calls, keys, events))) if calls + keys + events > 0 => {
                tracing::info!(
                    calls,
                    idempotency_keys = keys,
                    webhook_events = events,
                    "store: retention sweep"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "store: retention sweep failed"),
            Err(_) => tracing::warn!("store: retention sweep did not finish"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Records and settled webhook events past the retention, and expired idempotency keys.
/// Pending events are kept however old (the outbox's own bound is `webhooks.max_pending`).
fn sweep(store: &dyn Store, retention_days: u32) -> Result<(u64, u64, u64), StoreError> {
    let now_ms = b2bua::registry::unix_millis(SystemTime::now());
    let cutoff = store::retention_cutoff(now_ms, retention_days);
    let calls = store.sweep_calls(cutoff, SWEEP_CHUNK)?;
    let keys = store.sweep_idempotency(now_ms, SWEEP_CHUNK)?;
    let events = store.sweep_events(cutoff, SWEEP_CHUNK)?;
    Ok((calls, keys, events))
}
