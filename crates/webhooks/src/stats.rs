//! What the dispatcher has done, for `/metrics` and the logs: counters it updates with one
//! atomic add, read by the API without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds (seconds) of the delivery latency histogram: from the change to its
/// acknowledgement, so retries show in the tail.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0, 1800.0, 7200.0,
];

/// The dispatcher's live counters, shared with whoever renders them.
#[derive(Debug)]
pub struct Stats {
    delivered: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    store_errors: AtomicU64,
    pending: AtomicU64,
    in_flight: AtomicU64,
    latency: Histogram,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            delivered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug)]
pub struct WebhookStats {
    /// Events their target acknowledged with a 2xx.
    pub delivered: u64,
    /// Failed attempts that will be tried again.
    pub retried: u64,
    /// Events given up after `webhooks.max_attempts`.
    pub failed: u64,
    /// Events let go because the outbox held more than `webhooks.max_pending`.
    pub dropped: u64,
    /// Outbox writes that failed (the event is still delivered from memory).
    pub store_errors: u64,
    /// Events waiting for delivery: the outbox's depth.
    pub pending: u64,
    /// Requests on the wire now.
    pub in_flight: u64,
    /// Seconds from an event's change to its delivery (shared: registering it shows the
    /// live histogram).
    pub latency: Histogram,
}

impl Stats {
    pub(crate) fn delivered(&self, latency_secs: f64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.latency.observe(latency_secs);
    }
    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn set_depth(&self, pending: usize, in_flight: usize) {
        self.pending.store(pending as u64, Ordering::Relaxed);
        self.in_flight.store(in_flight as u64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> WebhookStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WebhookStats {
            delivered: get(&self.delivered),
            retried: get(&self.retried),
            failed: get(&self.failed),
            dropped: get(&self.dropped),
            store_errors: get(&self.store_errors),
            pending: get(&self.pending),
            in_flight: get(&self.in_flight),
            latency: self.latency.clone(),
        }
    }
}
