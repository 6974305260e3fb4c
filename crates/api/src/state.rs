//! [`ApiState`]: everything a request handler needs, shared by all connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use b2bua::CallControl;
use store::Store;
use webhooks::WebhookHandle;

use crate::actions::CallActions;
use crate::idempotency::InFlight;
use crate::metrics::ApiMetrics;
use crate::settings::ApiSettings;
use crate::sip_status::{NoSip, SipStatus};

/// Where handlers get "now" from, so tests can move time (intent expiry) without sleeping.
pub trait Clock: Send + Sync {
    /// The current monotonic instant.
    fn now(&self) -> Instant;
}

impl<F> Clock for F
where
    F: Fn() -> Instant + Send + Sync,
{
    fn now(&self) -> Instant {
        self()
    }
}

/// The real clock: [`Instant::now`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to; for tests and simulations of intent expiry.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset_nanos: AtomicU64,
}

impl ManualClock {
    /// Starts at the real current instant.
    pub fn new() -> ManualClock {
        ManualClock {
            base: Instant::now(),
            offset_nanos: AtomicU64::new(0),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }
}

/// Shared state of the API: the intent table and call registry (through [`CallControl`]), the
/// settings, the SIP side's status, the clock and the API's own counters, and optionally the
/// store, its writer and the webhook dispatcher's handle.
pub struct ApiState {
    pub(crate) control: Arc<CallControl>,
    pub(crate) settings: ApiSettings,
    pub(crate) sip: Arc<dyn SipStatus>,
    pub(crate) actions: Arc<dyn CallActions>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: ApiMetrics,
    pub(crate) store: Option<Arc<dyn Store>>,
    pub(crate) writer: Option<Arc<store::Writer>>,
    pub(crate) inflight: Arc<InFlight>,
    pub(crate) webhooks: Option<WebhookHandle>,
    /// In a cluster: the other nodes' calls.
    pub(crate) cluster: Option<Arc<dyn crate::ClusterCalls>>,
}

impl ApiState {
    /// State over the real clock.
    pub fn new(
        control: Arc<CallControl>,
        settings: ApiSettings,
        sip: Arc<dyn SipStatus>,
    ) -> ApiState {
        ApiState {
            control,
            settings,
            sip,
            actions: Arc::new(NoSip),
            clock: Arc::new(SystemClock),
            metrics: ApiMetrics::new(),
            store: None,
            writer: None,
            inflight: Arc::new(InFlight::default()),
            webhooks: None,
            cluster: None,
        }
    }

    /// Gives the API its store: records of ended calls, number assignments, idempotency keys.
    /// Without one, the endpoints that need it answer `503 store_unavailable` and
    /// `Idempotency-Key` is refused the same way.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> ApiState {
        self.store = Some(store);
        self
    }

    /// Lets `/metrics` show the store writer's counters.
    pub fn with_store_writer(mut self, writer: Arc<store::Writer>) -> ApiState {
        self.writer = Some(writer);
        self
    }

    /// Turns webhooks on for the API: a makecall's `notify_url` is checked against the
    /// handle's allow-list (without a handle every `notify_url` is refused, `422
    /// notify_url_not_allowed`), `POST /api/events/{id}/redeliver` hands requeued events to the
    /// dispatcher (without a handle: `503 webhooks_unavailable`), and `/metrics` shows the
    /// dispatcher's counters.
    pub fn with_webhooks(mut self, handle: WebhookHandle) -> ApiState {
        self.webhooks = Some(handle);
        self
    }

    /// Makes this API one node's of a cluster: calls held by other nodes are found and hung
    /// up through `cluster`.
    pub fn with_cluster(mut self, cluster: Arc<dyn crate::ClusterCalls>) -> ApiState {
        self.cluster = Some(cluster);
        self
    }

    pub(crate) fn store(&self) -> Result<&Arc<dyn Store>, crate::ApiError> {
        self.store.as_ref().ok_or(crate::ApiError::StoreUnavailable)
    }

    /// Lets the API act on live calls through the SIP side (without it, hang-up answers 503
    /// `sip_unavailable`).
    pub fn with_actions(mut self, actions: Arc<dyn CallActions>) -> ApiState {
        self.actions = actions;
        self
    }

    /// Replaces the clock (tests drive intent expiry with a [`ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> ApiState {
        self.clock = clock;
        self
    }

    /// The intents and calls this API changes.
    pub fn control(&self) -> &Arc<CallControl> {
        &self.control
    }

    /// The settings in force.
    pub fn settings(&self) -> &ApiSettings {
        &self.settings
    }

    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
