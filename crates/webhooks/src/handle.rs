//! [`WebhookHandle`]: what the API holds of the webhook dispatcher.

use std::sync::Arc;

use store::OutboxEvent;
use tokio::sync::mpsc;

use crate::stats::{Stats, WebhookStats};
use crate::targets::{TargetError, TargetPolicy, TargetUrl};

/// Requeued events waiting for the dispatcher at most; an operator's redeliveries beyond it
/// are refused (the event stays pending in the outbox and goes at the next start).
pub const REQUEUE_CAPACITY: usize = 1024;

/// The API's side of the dispatcher: the `notify_url` allow-list, the way to hand it an event
/// made pending again (`POST /api/events/{id}/redeliver`), and its counters.
///
/// It exists so that the API never waits on delivery: every method returns at once. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct WebhookHandle {
    policy: Arc<TargetPolicy>,
    requeue: mpsc::Sender<OutboxEvent>,
    stats: Arc<Stats>,
}

/// The dispatcher's end of a [`WebhookHandle`]: the events requeued through it.
#[derive(Debug)]
pub struct Requeued(pub(crate) mpsc::Receiver<OutboxEvent>);

impl Requeued {
    /// The next requeued event, if one is waiting (for tests that stand in for the dispatcher).
    pub fn try_next(&mut self) -> Option<OutboxEvent> {
        self.0.try_recv().ok()
    }
}

/// Why a redelivery could not be handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandOffError {
    #[error("the webhook dispatcher has stopped")]
    Stopped,
    #[error("too many redeliveries are waiting for the webhook dispatcher")]
    Full,
}

impl WebhookHandle {
    /// A handle with `policy` and fresh counters, and its dispatcher's end.
    pub fn new(policy: TargetPolicy) -> (WebhookHandle, Requeued) {
        let (requeue, receiver) = mpsc::channel(REQUEUE_CAPACITY);
        let handle = WebhookHandle {
            policy: Arc::new(policy),
            requeue,
            stats: Arc::new(Stats::default()),
        };
        (handle, Requeued(receiver))
    }

    /// Checks a makecall's `notify_url` against `webhooks.allowed_hosts`.
    pub fn check_target(&self, url: &str) -> Result<TargetUrl, TargetError> {
        self.policy.check(url)
    }

    /// Hands an event that the store has just made pending again to the dispatcher.
    pub fn redeliver(&self, event: OutboxEvent) -> Result<(), HandOffError> {
        self.requeue.try_send(event).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => HandOffError::Full,
            mpsc::error::TrySendError::Closed(_) => HandOffError::Stopped,
        })
    }

    /// Hands a lost node's adopted events ([`store::Store::adopt_events`]) to the dispatcher,
    /// in their order, waiting for room rather than refusing, and returns once the dispatcher
    /// has taken them all (or 2 s have passed): whatever this node announces about those
    /// calls afterwards (their `call.ended`) then queues behind them, in `seq` order.
    pub async fn hand_over(&self, events: Vec<OutboxEvent>) -> Result<usize, HandOffError> {
        let count = events.len();
        for event in events {
            self.requeue
                .send(event)
                .await
                .map_err(|_| HandOffError::Stopped)?;
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.requeue.capacity() < self.requeue.max_capacity()
            && std::time::Instant::now() < until
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(count)
    }

    /// The dispatcher's counters now.
    pub fn stats(&self) -> WebhookStats {
        self.stats.snapshot()
    }

    pub(crate) fn shared_stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }
}
