//! The writer: the store's writes, off the caller's thread, batched into transactions.

use std::slice;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::{Store, StoreError, SubmitError, WriteOp};

/// Operations the queue holds by default before [`Writer::try_submit`] refuses more.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// Operations committed together at most, by default.
pub const DEFAULT_MAX_BATCH: usize = 500;

/// The first pause before a batch held by an unavailable database is tried again; it doubles
/// up to [`HOLD_MAX_PAUSE`].
const HOLD_FIRST_PAUSE: Duration = Duration::from_millis(100);

/// The longest pause between two tries of a held batch: a database back from a restart is
/// written to within a second.
const HOLD_MAX_PAUSE: Duration = Duration::from_secs(1);

/// How often a held batch's pause looks whether a shutdown or a flush is waiting.
const HOLD_SLICE: Duration = Duration::from_millis(10);

/// How a [`Writer`] queues and batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// Operations queued at most (at least 1). It bounds the memory the queue can take and
    /// what a crash can lose.
    pub capacity: usize,
    /// Operations per transaction at most (at least 1).
    pub max_batch: usize,
}

impl Default for WriterConfig {
    fn default() -> WriterConfig {
        WriterConfig {
            capacity: DEFAULT_QUEUE_CAPACITY,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

/// What the writer has done so far (for `/metrics`), read with [`Writer::counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterCounters {
    /// Operations accepted into the queue.
    pub submitted: u64,
    /// Operations committed.
    pub written: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Operations refused because the queue was full.
    pub dropped_full: u64,
    /// Operations that failed to commit and were dropped (each is logged, or each held batch
    /// given up while the database was unavailable).
    pub errors: u64,
}

impl WriterCounters {
    /// Operations accepted and not yet committed or failed: the queue's depth, give or take
    /// the batch being committed.
    pub fn pending(&self) -> u64 {
        self.submitted.saturating_sub(self.written + self.errors)
    }
}

#[derive(Debug, Default)]
struct Counters {
    submitted: AtomicU64,
    written: AtomicU64,
    batches: AtomicU64,
    dropped_full: AtomicU64,
    errors: AtomicU64,
    /// Set by [`Writer::shutdown`]: a batch held by an unavailable database is given up.
    stopping: AtomicBool,
    /// [`Writer::flush`] calls waiting: they too make a held batch be given up.
    flushes_waiting: AtomicUsize,
}

impl Counters {
    /// Whether someone waits for the writer (a shutdown or a flush), so that a batch held
    /// by an unavailable database must be given up rather than held longer.
    fn awaited(&self) -> bool {
        self.stopping.load(Ordering::Relaxed) || self.flushes_waiting.load(Ordering::Relaxed) > 0
    }
}

enum Message {
    Op(WriteOp),
    /// Answered once everything queued before it is committed (or failed).
    Flush(SyncSender<()>),
    /// Write what is queued, then end the thread.
    Stop,
}

/// Owns the store's writes on a thread of its own, fed by a bounded queue.
///
/// Callers on latency-critical tasks (the SIP engine) hand over a [`WriteOp`] with
/// [`try_submit`](Writer::try_submit), which never blocks: when the queue is full the
/// operation is refused and counted ([`WriterCounters::dropped_full`]) — back
/// pressure instead of unbounded memory. The thread takes what is queued, up to
/// [`WriterConfig::max_batch`] operations, and commits them in one transaction
/// ([`Store::apply`]): under load, batches grow and the cost per record falls. If a batch
/// fails, its operations are retried one per transaction, so that one bad record does not
/// take the others down; those that still fail are logged and counted
/// ([`WriterCounters::errors`]).
///
/// **An unavailable database** ([`StoreError::Unavailable`]: PostgreSQL restarting, the
/// network to it down) is no record's fault, so the batch is not retried one by one (each
/// try would wait for a connection): it is held and tried again, after 100 ms, then pauses
/// doubling up to 1 s, until the database is back. Meanwhile the queue fills and, once full,
/// [`try_submit`](Writer::try_submit) refuses (counted in
/// [`WriterCounters::dropped_full`]): a restart of a few seconds loses nothing, a long outage
/// loses what the queue cannot hold. A held batch is given up (its operations counted in
/// [`WriterCounters::errors`], with one log line) as soon as a [`shutdown`](Writer::shutdown)
/// or a [`flush`](Writer::flush) waits for the writer, so that neither waits for the
/// database; while they wait, the batches after it are tried once each and given up alike.
///
/// [`flush`](Writer::flush) waits until everything submitted before it is committed (or has
/// failed); [`shutdown`](Writer::shutdown) (also run on drop) writes what is queued and ends
/// the thread.
///
/// What a crash of the process loses: the operations still queued and those of the batch
/// being committed, i.e. at most `capacity + max_batch` operations (with the defaults,
/// 10,500 records — at 1,000 calls/s about ten seconds of ended calls, and in practice the
/// last few milliseconds, because the queue is near empty unless the disk falls behind).
/// A power failure may also lose the last transactions committed (see the SQLite backend's
/// `synchronous = NORMAL`).
pub struct Writer {
    sender: SyncSender<Message>,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer's thread (`store-writer`) over `store`.
    pub fn start(store: Arc<dyn Store>, config: WriterConfig) -> Result<Writer, StoreError> {
        let (sender, receiver) = mpsc::sync_channel(config.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let max_batch = config.max_batch.max(1);
        let thread = thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || run(&*store, &receiver, &thread_counters, max_batch))
            .map_err(StoreError::Spawn)?;
        Ok(Writer {
            sender,
            counters,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `op` without blocking; refuses it when the queue is full or the writer stopped.
    pub fn try_submit(&self, op: WriteOp) -> Result<(), SubmitError> {
        match self.sender.try_send(Message::Op(op)) {
            Ok(()) => {
                self.counters.submitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                Err(SubmitError::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Blocks until every operation submitted before the call is committed (or has failed
    /// and been counted). For shutdown and tests; it waits for queue space itself.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (done, wait) = mpsc::sync_channel(1);
        let waiting = &self.counters.flushes_waiting;
        waiting.fetch_add(1, Ordering::Relaxed);
        let flushed = self
            .sender
            .send(Message::Flush(done))
            .map_err(|_| StoreError::WriterStopped)
            .and_then(|()| wait.recv().map_err(|_| StoreError::WriterStopped));
        waiting.fetch_sub(1, Ordering::Relaxed);
        flushed
    }

    /// Writes what is queued, then ends the thread and waits for it. Later submissions get
    /// [`SubmitError::Stopped`]. Calling it again does nothing.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        let Some(thread) = self.thread.lock().take() else {
            return Ok(());
        };
        // A batch held by an unavailable database is given up rather than wait for it.
        self.counters.stopping.store(true, Ordering::Relaxed);
        // Fails only if the thread is already gone; joining tells how.
        let _ = self.sender.send(Message::Stop);
        thread.join().map_err(|_| StoreError::WriterStopped)
    }

    /// The counters so far.
    pub fn counters(&self) -> WriterCounters {
        let c = &self.counters;
        WriterCounters {
            submitted: c.submitted.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            dropped_full: c.dropped_full.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::error!(%error, "store writer: shutdown failed");
        }
    }
}

/// What the thread has taken from the queue and not yet committed.
struct Batch {
    ops: Vec<WriteOp>,
    flushes: Vec<SyncSender<()>>,
    stopping: bool,
}

impl Batch {
    fn take(&mut self, message: Message) {
        match message {
            Message::Op(op) => self.ops.push(op),
            Message::Flush(done) => self.flushes.push(done),
            Message::Stop => self.stopping = true,
        }
    }
}

/// The writer's thread: batch, commit, answer flushes; on Stop, drain and end.
fn run(store: &dyn Store, receiver: &Receiver<Message>, counters: &Counters, max_batch: usize) {
    let mut batch = Batch {
        ops: Vec::with_capacity(max_batch),
        flushes: Vec::new(),
        stopping: false,
    };
    loop {
        if !batch.stopping {
            // Block for the first message of a batch.
            match receiver.recv() {
                Ok(message) => batch.take(message),
                // Cannot happen while the Writer holds its sender; treat it as Stop.
                Err(_) => batch.stopping = true,
            }
        }
        let mut drained = false;
        while batch.ops.len() < max_batch {
            match receiver.try_recv() {
                Ok(message) => batch.take(message),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    drained = true;
                    break;
                }
            }
        }
        commit(store, &mut batch.ops, counters);
        for done in batch.flushes.drain(..) {
            // The flusher may have given up waiting; nothing to do then.
            let _ = done.send(());
        }
        if batch.stopping && drained {
            return;
        }
    }
}

/// Commits `ops` in one transaction, or one by one if that fails; empties `ops`.
fn commit(store: &dyn Store, ops: &mut Vec<WriteOp>, counters: &Counters) {
    if ops.is_empty() {
        return;
    }
    match store.apply(ops) {
        Ok(()) => committed(ops, counters),
        Err(StoreError::Unavailable(reason)) => hold(store, ops, counters, &reason),
        Err(error) => one_by_one(store, ops, counters, &error),
    }
    ops.clear();
}

fn committed(ops: &[WriteOp], counters: &Counters) {
    counters
        .written
        .fetch_add(ops.len() as u64, Ordering::Relaxed);
    counters.batches.fetch_add(1, Ordering::Relaxed);
}

/// Retries `ops` one per transaction after their batch failed with `error`.
fn one_by_one(store: &dyn Store, ops: &[WriteOp], counters: &Counters, error: &StoreError) {
    tracing::warn!(%error, ops = ops.len(), "store writer: batch failed, retrying one by one");
    for op in ops {
        match store.apply(slice::from_ref(op)) {
            Ok(()) => committed(slice::from_ref(op), counters),
            Err(error) => {
                tracing::error!(%error, ?op, "store writer: write dropped");
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Holds `ops`, whose batch failed because the database is unavailable, and tries them again
/// until it is back, or gives them up once a shutdown or a flush waits (see [`Writer`]).
fn hold(store: &dyn Store, ops: &[WriteOp], counters: &Counters, reason: &str) {
    tracing::warn!(
        reason,
        ops = ops.len(),
        "store writer: the database is unavailable, holding the batch"
    );
    let since = Instant::now();
    let mut pause = HOLD_FIRST_PAUSE;
    loop {
        if counters.awaited() {
            tracing::error!(
                ops = ops.len(),
                "store writer: the database is still unavailable at shutdown or flush, batch dropped"
            );
            counters
                .errors
                .fetch_add(ops.len() as u64, Ordering::Relaxed);
            return;
        }
        let until = Instant::now() + pause;
        while !counters.awaited() && Instant::now() < until {
            thread::sleep(HOLD_SLICE);
        }
        match store.apply(ops) {
            Ok(()) => {
                tracing::info!(
                    held_ms = since.elapsed().as_millis() as u64,
                    ops = ops.len(),
                    "store writer: the database is back, held batch written"
                );
                return committed(ops, counters);
            }
            Err(StoreError::Unavailable(_)) => pause = (pause * 2).min(HOLD_MAX_PAUSE),
            Err(error) => return one_by_one(store, ops, counters, &error),
        }
    }
}
