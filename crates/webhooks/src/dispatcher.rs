//! The tokio driver of the [`Schedule`]: takes the registry's new events, writes them to the
//! outbox, sends what the schedule says, and records every outcome. It runs on its own task;
//! nothing here ever waits on the SIP engine's task or makes it wait.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::{HashMap, VecDeque};

use b2bua::{CallControl, EventKind, WebhookEvent};
use bytes::Bytes;
use store::{
    EventAttempt, OutboxEvent, Store, SubmitError, WriteOp, Writer, EVENT_DELIVERED, EVENT_FAILED,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::client::{Client, ClientError};
use crate::handle::{Requeued, WebhookHandle};
use crate::payload::outbox_event;
use crate::schedule::{Outcome, Schedule, ScheduleConfig, Settled};
use crate::stats::Stats;
use crate::targets::{parse_target, TargetError, TargetPolicy};

/// How often new events are taken from the registry: the delay a change waits before its
/// event is stored and sent, at most.
pub const INTAKE_EVERY: Duration = Duration::from_millis(20);
/// Events taken per intake at most (the registry's queue holds the rest).
const INTAKE_MAX: usize = 5_000;
/// Pending events read from the outbox per page at start.
const RECOVERY_PAGE: usize = 1_000;
/// How long a `call.ended` event waits before it is stored and sent, so that its `call` is the
/// final record: the media driver reports a call's last counters just after its end (the
/// stored record waits as long, see the binary's persistence). The event's `at` stays the
/// moment of the end; nothing of the call can follow it, so no order changes.
pub const ENDED_SETTLE: Duration = Duration::from_secs(1);
/// While the outbox overflows, one log line per this period says how many were dropped.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);
/// At shutdown, how long requests on the wire get to finish (and be recorded).
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// `[webhooks]` as the dispatcher takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookConfig {
    /// The default target (`webhooks.url`); `""`: only intents with a `notify_url` have one.
    pub url: String,
    /// The HMAC key of `Callbridge-Signature`.
    pub secret: String,
    /// One attempt's limit, connection included (`webhooks.timeout_ms`).
    pub timeout: Duration,
    /// Extra roots for https targets (PEM), besides the public ones.
    pub ca_file: String,
    /// Hosts a makecall's `notify_url` may name (see [`TargetPolicy`]).
    pub allowed_hosts: Vec<String>,
    /// Attempts, bounds and backoff.
    pub schedule: ScheduleConfig,
    /// Events the registry holds for the dispatcher at most, between two intakes.
    pub queue: usize,
}

impl Default for WebhookConfig {
    /// SPEC.md's defaults: no target, 5 s per attempt, 10 attempts, 100,000 pending.
    fn default() -> WebhookConfig {
        WebhookConfig {
            url: String::new(),
            secret: String::new(),
            timeout: Duration::from_millis(5000),
            ca_file: String::new(),
            allowed_hosts: Vec::new(),
            schedule: ScheduleConfig::default(),
            queue: 100_000,
        }
    }
}

/// Why the dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhooks.url: {0}")]
    Url(TargetError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The running dispatcher; [`finish`](Dispatcher::finish) stops it.
#[derive(Debug)]
pub struct Dispatcher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Dispatcher {
    /// A handle that stops the dispatcher at once, as a crash would (nothing more is taken
    /// or recorded): for tests of what other nodes do about a node that died.
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }

    /// Takes the last events (those of the calls hung up at shutdown) into the outbox, gives
    /// the requests on the wire a moment to finish, and stops. Call it after the SIP engine
    /// has stopped and before the store's writer is shut down. What is still pending stays
    /// in the outbox for the next start.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Turns the registry's events on and starts delivering them: first the events left pending
/// in the outbox, then every new one. Returns the API's handle and the dispatcher.
pub fn start(
    config: WebhookConfig,
    control: Arc<CallControl>,
    store: Arc<dyn Store>,
    writer: Arc<Writer>,
) -> Result<(WebhookHandle, Dispatcher), WebhookError> {
    if !config.url.is_empty() {
        parse_target(&config.url).map_err(WebhookError::Url)?;
    }
    let client = Client::new(config.secret.as_bytes(), config.timeout, &config.ca_file)?;
    let policy = TargetPolicy::new(&config.allowed_hosts, &config.url);
    let (handle, requeued) = WebhookHandle::new(policy);
    let default_target = (!config.url.is_empty()).then(|| config.url.clone());
    control
        .registry()
        .enable_events(default_target, config.queue);
    let (stop, stopped) = oneshot::channel();
    let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
    let driver = Driver {
        schedule: Schedule::new(config.schedule, rand::random()),
        control,
        store,
        writer,
        client,
        stats: handle.shared_stats(),
        outcomes_tx,
        dropped_logged: 0,
        drop_logged_at: None,
        settling: VecDeque::new(),
        handoffs: HashMap::new(),
        handoff_check: None,
        next_handoff_check: Instant::now(),
    };
    let task = tokio::spawn(driver.run(requeued, outcomes, stopped));
    tracing::info!(url = %config.url, allowed = ?config.allowed_hosts, "webhooks on");
    Ok((handle, Dispatcher { stop, task }))
}

/// A batch written to the outbox, and how the write went.
type Inserted = (Vec<OutboxEvent>, Result<(), store::StoreError>);
/// The outbox write of a batch, on a blocking thread.
type Insert = JoinHandle<Inserted>;

/// The batch write in progress, if any (never resolves without one).
async fn join<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// How long a handed-over call's events wait for the other node's earlier ones at most; then
/// they go anyway (a node that never delivers must not hold a call's events for ever).
const HANDOFF_WAIT: Duration = Duration::from_secs(60);

/// How often the outbox is asked whether a handed-over call's earlier events have settled.
const HANDOFF_CHECK_EVERY: Duration = Duration::from_millis(100);

/// The events of a call that another node of the cluster started (its intent was registered
/// there, so `intent.created` is that node's to deliver), held until the outbox says the
/// earlier events have settled: per-call order holds across the handover.
struct Handoff {
    /// The lowest `seq` held; the events below it are the other node's.
    first_seq: u32,
    events: Vec<OutboxEvent>,
    since: Instant,
}

/// Per callid: are the events before `seq` settled (none pending) in the outbox?
type HandoffCheck = JoinHandle<Vec<(String, bool)>>;

struct Driver {
    schedule: Schedule,
    control: Arc<CallControl>,
    store: Arc<dyn Store>,
    writer: Arc<Writer>,
    client: Client,
    stats: Arc<Stats>,
    outcomes_tx: mpsc::UnboundedSender<(u64, Outcome)>,
    /// Drops already logged (the log says how many since the last line).
    dropped_logged: u64,
    /// When the last drop line was logged: at most one per [`DROP_LOG_EVERY`].
    drop_logged_at: Option<Instant>,
    /// `call.ended` events waiting [`ENDED_SETTLE`] for their call's final record, oldest
    /// first, with the instant they are due.
    settling: VecDeque<(Instant, WebhookEvent)>,
    /// In a cluster: calls handed over by another node, held until its earlier events settle.
    handoffs: HashMap<String, Handoff>,
    /// The outbox check of the handoffs under way, and when the next may start.
    handoff_check: Option<HandoffCheck>,
    next_handoff_check: Instant,
}

/// Wall-clock ms since the epoch (the outbox's and the records' time).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Driver {
    async fn run(
        mut self,
        mut requeued: Requeued,
        mut outcomes: mpsc::UnboundedReceiver<(u64, Outcome)>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        self.recover().await;
        let mut intake = tokio::time::interval(INTAKE_EVERY);
        intake.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // At most one batch being written to the outbox at a time (batches keep their order);
        // while it is written, outcomes keep coming in and attempts keep going out.
        let mut inserting: Option<Insert> = None;
        loop {
            let deadline = self.schedule.poll_timeout();
            tokio::select! {
                _ = intake.tick(), if inserting.is_none() => {
                    inserting = self.take_batch(false).map(|batch| self.start_insert(batch));
                    self.start_handoff_check();
                }
                joined = join(&mut inserting), if inserting.is_some() => {
                    inserting = None;
                    self.inserted(joined);
                }
                checked = join(&mut self.handoff_check), if self.handoff_check.is_some() => {
                    self.handoff_check = None;
                    self.handoffs_checked(checked);
                }
                Some((no, outcome)) = outcomes.recv() => self.outcome(no, outcome),
                Some(event) = requeued.0.recv() => self.push_requeued(event),
                _ = sleep_until(deadline), if deadline.is_some() => {}
                _ = &mut stopped => break,
            }
            self.send_due();
        }
        // The batch being written, the events of the last hang-ups, then a moment for the
        // requests on the wire.
        if let Some(insert) = inserting.take() {
            self.inserted(insert.await);
        }
        if let Some(batch) = self.take_batch(true) {
            let insert = self.start_insert(batch);
            self.inserted(insert.await);
        }
        let until = tokio::time::Instant::now() + FINISH_WAIT;
        while self.schedule.in_flight() > 0 {
            match tokio::time::timeout_at(until, outcomes.recv()).await {
                Ok(Some((no, outcome))) => self.outcome(no, outcome),
                _ => break,
            }
        }
        self.publish();
        tracing::info!(
            pending = self.schedule.len(),
            "webhooks stopped; pending events stay in the outbox"
        );
    }

    /// Puts the outbox's pending events back into the schedule, in their stored order, each
    /// due when it was due (or now).
    async fn recover(&mut self) {
        let mut after = 0i64;
        let mut recovered = 0usize;
        loop {
            let store = Arc::clone(&self.store);
            let page =
                tokio::task::spawn_blocking(move || store.pending_events(after, RECOVERY_PAGE))
                    .await;
            let page = match page {
                Ok(Ok(page)) => page,
                Ok(Err(error)) => {
                    tracing::error!(%error, "webhooks: cannot read the outbox's pending events");
                    self.stats.store_error();
                    break;
                }
                Err(_) => break,
            };
            let Some(&(last, _)) = page.last() else {
                break;
            };
            after = last;
            let (now, wall) = (Instant::now(), wall_ms());
            for (_, event) in page {
                let due = now + Duration::from_millis(event.next_attempt_at.saturating_sub(wall));
                recovered += 1;
                self.push(now, event, due);
            }
        }
        if recovered > 0 {
            tracing::info!(
                events = recovered,
                "webhooks: pending events recovered from the outbox"
            );
        }
        self.publish();
    }

    /// The registry's new events and the `call.ended` ones that have settled (all of them
    /// when `last`), oldest first; `None` when there are none.
    fn take_batch(&mut self, last: bool) -> Option<Vec<WebhookEvent>> {
        let now = Instant::now();
        let mut events = Vec::new();
        while let Some((due, _)) = self.settling.front() {
            if *due > now && !last {
                break;
            }
            let Some((_, mut event)) = self.settling.pop_front() else {
                break;
            };
            // The record as it is now: ended, with its final counters and codes.
            if let Some(record) = self.control.call(&event.callid) {
                event.record = record;
            }
            events.push(event);
        }
        for event in self.control.registry().take_events(INTAKE_MAX) {
            if event.kind == EventKind::CallEnded && !last {
                self.settling.push_back((now + ENDED_SETTLE, event));
            } else {
                events.push(event);
            }
        }
        (!events.is_empty()).then_some(events)
    }

    /// Serialises a batch and writes it to the outbox in one transaction, on a blocking
    /// thread (JSON included: the driver's task only schedules).
    fn start_insert(&self, events: Vec<WebhookEvent>) -> Insert {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let batch: Vec<OutboxEvent> = events.iter().map(outbox_event).collect();
            drop(events);
            let result = store.insert_events(&batch);
            (batch, result)
        })
    }

    /// Schedules a batch once written (or, if the write failed, anyway: it is delivered from
    /// memory, and only a restart before delivery loses it).
    fn inserted(&mut self, joined: Result<Inserted, tokio::task::JoinError>) {
        let batch = match joined {
            Ok((batch, Ok(()))) => batch,
            Ok((batch, Err(error))) => {
                tracing::error!(%error, events = batch.len(),
                    "webhooks: events not written to the outbox");
                self.stats.store_error();
                batch
            }
            Err(_) => return,
        };
        let now = Instant::now();
        for event in batch {
            if let Some(event) = self.hold_if_handed_over(now, event) {
                self.push(now, event, now);
            }
        }
        self.publish();
    }

    /// In a cluster, the first event this node sees of a call whose earlier events (seq
    /// below its own) are not in its schedule may follow another node's undelivered ones:
    /// it is held, with the call's next events, until the outbox says those have settled.
    /// Returns the event when it is not held.
    fn hold_if_handed_over(&mut self, now: Instant, event: OutboxEvent) -> Option<OutboxEvent> {
        if let Some(handoff) = self.handoffs.get_mut(&event.callid) {
            handoff.events.push(event);
            return None;
        }
        let clustered = self.control.node_id().is_some();
        if !clustered || event.seq <= 1 || self.schedule.has_call(&event.callid) {
            return Some(event);
        }
        self.handoffs.insert(
            event.callid.clone(),
            Handoff {
                first_seq: event.seq,
                events: vec![event],
                since: now,
            },
        );
        None
    }

    /// Asks the outbox (on a blocking thread) whether the held calls' earlier events have
    /// settled, at most every [`HANDOFF_CHECK_EVERY`].
    fn start_handoff_check(&mut self) {
        let now = Instant::now();
        if self.handoffs.is_empty() || self.handoff_check.is_some() || now < self.next_handoff_check
        {
            return;
        }
        self.next_handoff_check = now + HANDOFF_CHECK_EVERY;
        let asked: Vec<(String, u32)> = self
            .handoffs
            .iter()
            .map(|(callid, handoff)| (callid.clone(), handoff.first_seq))
            .collect();
        let store = Arc::clone(&self.store);
        self.handoff_check = Some(tokio::task::spawn_blocking(move || {
            asked
                .into_iter()
                .map(|(callid, first_seq)| {
                    let limit = usize::try_from(first_seq).unwrap_or(usize::MAX);
                    // A store error counts as not settled: asked again next time.
                    let settled = store.events_of_call(&callid, limit).is_ok_and(|events| {
                        events
                            .iter()
                            .all(|e| e.seq >= first_seq || e.state != store::EVENT_PENDING)
                    });
                    (callid, settled)
                })
                .collect()
        }));
    }

    /// Releases the held calls whose earlier events have settled, or that waited
    /// [`HANDOFF_WAIT`], into the schedule in their order.
    fn handoffs_checked(&mut self, checked: Result<Vec<(String, bool)>, tokio::task::JoinError>) {
        let Ok(checked) = checked else {
            return;
        };
        let now = Instant::now();
        for (callid, settled) in checked {
            let overdue = self
                .handoffs
                .get(&callid)
                .is_some_and(|h| now.saturating_duration_since(h.since) >= HANDOFF_WAIT);
            if !settled && !overdue {
                continue;
            }
            if overdue && !settled {
                tracing::warn!(%callid, "webhooks: a call's earlier events, another node's, did not settle in time; sending this node's anyway");
            }
            if let Some(handoff) = self.handoffs.remove(&callid) {
                for event in handoff.events {
                    self.push(now, event, now);
                }
            }
        }
        self.publish();
    }

    fn push_requeued(&mut self, event: OutboxEvent) {
        tracing::info!(callid = %event.callid, event_id = %event.event_id, "webhooks: event redelivered");
        let now = Instant::now();
        self.push(now, event, now);
        self.publish();
    }

    fn push(&mut self, now: Instant, mut event: OutboxEvent, due: Instant) {
        let body = Bytes::from(std::mem::take(&mut event.body));
        let dropped = self.schedule.push(now, event, body, due);
        if dropped.is_empty() {
            return;
        }
        self.stats.dropped(dropped.len() as u64);
        let wall = wall_ms();
        for settled in dropped {
            self.record(&settled, now, wall);
        }
        let total = self.stats.snapshot().dropped;
        // The first drop at once, then one line per period, not one per event.
        if self
            .drop_logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= DROP_LOG_EVERY)
        {
            tracing::warn!(
                dropped = total - self.dropped_logged,
                total,
                "webhooks: outbox full (webhooks.max_pending), oldest events dropped"
            );
            self.dropped_logged = total;
            self.drop_logged_at = Some(now);
        }
    }

    fn send_due(&mut self) {
        let now = Instant::now();
        while let Some(send) = self.schedule.poll_send(now) {
            let client = self.client.clone();
            let outcomes = self.outcomes_tx.clone();
            let span = tracing::debug_span!("webhook", callid = %send.callid, event = %send.event,
                attempt = send.attempt);
            tokio::spawn(
                async move {
                    let outcome = client.post(&send).await;
                    let _ = outcomes.send((send.no, outcome));
                }
                .instrument(span),
            );
        }
        self.publish();
    }

    fn outcome(&mut self, no: u64, outcome: Outcome) {
        let now = Instant::now();
        let Some(settled) = self.schedule.on_outcome(now, no, outcome) else {
            return;
        };
        let wall = wall_ms();
        match settled.state {
            EVENT_DELIVERED => {
                let latency = wall.saturating_sub(settled.created_at) as f64 / 1000.0;
                self.stats.delivered(latency);
            }
            EVENT_FAILED => {
                self.stats.failed();
                tracing::warn!(event_id = %settled.event_id, attempts = settled.attempts,
                    status = ?settled.last_status, error = ?settled.last_error,
                    "webhooks: event given up");
            }
            _ => {
                self.stats.retried();
                tracing::debug!(event_id = %settled.event_id, attempts = settled.attempts,
                    error = ?settled.last_error, "webhooks: attempt failed, will retry");
            }
        }
        self.record(&settled, now, wall);
    }

    /// Writes an event's new state through the store's writer (never blocks: a full queue
    /// drops the record of the attempt, which the writer counts; the event then shows its
    /// previous state, and a restart may send it once more).
    fn record(&self, settled: &Settled, now: Instant, wall: u64) {
        let next_attempt_at = settled.retry_at.map_or(wall, |at| {
            wall + at.saturating_duration_since(now).as_millis() as u64
        });
        let attempt = EventAttempt {
            event_id: settled.event_id.clone(),
            state: settled.state.to_owned(),
            attempts: settled.attempts,
            next_attempt_at,
            last_status: settled.last_status,
            last_error: settled.last_error.clone(),
            delivered_at: (settled.state == EVENT_DELIVERED).then_some(wall),
        };
        if let Err(SubmitError::Stopped) = self
            .writer
            .try_submit(WriteOp::EventAttempt(Box::new(attempt)))
        {
            tracing::debug!("webhooks: the store's writer has stopped");
        }
    }

    fn publish(&self) {
        self.stats
            .set_depth(self.schedule.len(), self.schedule.in_flight());
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
