//! `/metrics`: the SIP side's snapshot, the intent table and the API's own counters in the
//! Prometheus / OpenMetrics text format (`prometheus-client`).
//!
//! Metric names (all prefixed `callbridge_`):
//! `active_calls`, `sip_dialogs`, `sip_transactions{kind="client"|"server"}`, `intents_pending`,
//! `call_records`, `sip_serving`, `calls_bridged_total`, `calls_refused_total{reason}`,
//! `calls_failed_total{reason}`, `sip_malformed_total{handling="answered"|"dropped"}`,
//! `http_requests_total{class="2xx"|...}`, `cti_decisions_total{action,reason}`,
//! `store_writes_total{result}`, `store_records_lost_total`, `store_queue_depth`, `store_batches_total`,
//! `store_unsettled_records`, `numbers_assigned`,
//! `heap_bytes{kind="allocated"|"active"|"resident"|"retained"}` when the allocator reports,
//! `trunk_up` (1/0) and `trunk_pings_total{result="answered"|"lost"}` with the trunk keepalive
//! on (`trunk.ping_secs` > 0; absent when the trunk is unmonitored), and with webhooks on
//! ([`ApiState::with_webhooks`]):
//! `webhook_deliveries_total{result="delivered"|"retried"|"failed"|"dropped"}`,
//! `webhook_store_errors_total`, `webhook_outbox_pending`, `webhook_in_flight`,
//! `webhook_delivery_seconds` (histogram: from the change to its acknowledgement),
//! `webhook_events_queued` and `webhook_events_dropped_total` (the registry's queue of events
//! built and not yet taken by the dispatcher).

use std::sync::atomic::AtomicI64;

use http::StatusCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::ApiState;
use crate::{RegistrationStatus, TrunkStatus};

/// Label set: a list of `(name, value)` pairs.
type Labels = Vec<(String, String)>;

/// The API's own counters; they live as long as the [`ApiState`].
#[derive(Debug)]
pub(crate) struct ApiMetrics {
    http_requests: Family<Labels, Counter>,
    /// The five counters of `http_requests`, held so that counting a request is one atomic
    /// add: looking the label set up per request allocated it and took the family's lock.
    by_class: [Counter; 5],
    cti_decisions: Family<Labels, Counter>,
}

impl ApiMetrics {
    pub(crate) fn new() -> ApiMetrics {
        let http_requests = Family::<Labels, Counter>::default();
        // Every class shows from the first scrape, so rate() works from zero.
        let by_class = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|class| http_requests.get_or_create(&labels("class", class)).clone());
        ApiMetrics {
            http_requests,
            by_class,
            cti_decisions: Family::default(),
        }
    }

    /// Counts one answered request by status class.
    pub(crate) fn observe(&self, status: StatusCode) {
        let class = match status.as_u16() / 100 {
            1 => 0,
            2 => 1,
            3 => 2,
            4 => 3,
            _ => 4,
        };
        if let Some(counter) = self.by_class.get(class) {
            counter.inc();
        }
    }

    /// Counts one `/api/cti/callin` answer (`bridge` with reason `matched`, or `reject`).
    pub(crate) fn cti_decision(&self, action: &str, reason: &str) {
        self.cti_decisions
            .get_or_create(&vec![
                ("action".to_owned(), action.to_owned()),
                ("reason".to_owned(), reason.to_owned()),
            ])
            .inc();
    }
}

fn labels(name: &str, value: &str) -> Labels {
    vec![(name.to_owned(), value.to_owned())]
}

fn gauge(value: u64) -> Gauge {
    let gauge = Gauge::<i64, AtomicI64>::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

fn counter(value: u64) -> Counter {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    counter
}

fn family_of_gauges(label: &str, values: &[(&str, u64)]) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for (value_label, value) in values {
        family
            .get_or_create(&labels(label, value_label))
            .set(i64::try_from(*value).unwrap_or(i64::MAX));
    }
    family
}

fn family_of_counters(label: &str, values: &[(String, u64)]) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for (value_label, value) in values {
        family
            .get_or_create(&labels(label, value_label))
            .inc_by(*value);
    }
    family
}

/// Renders the exposition text. SIP-side values are copied into a registry built per scrape.
pub(crate) fn render(state: &ApiState) -> Result<String, std::fmt::Error> {
    let sip = state.sip.snapshot();
    let mut registry = Registry::with_prefix("callbridge");
    registry.register(
        "sip_serving",
        "1 when the SIP engine is serving",
        gauge(u64::from(sip.sip_serving)),
    );
    registry.register(
        "active_calls",
        "Calls with at least one leg up",
        gauge(sip.active_calls),
    );
    registry.register("sip_dialogs", "SIP dialogs held", gauge(sip.dialogs));
    registry.register(
        "sip_transactions",
        "SIP transactions alive, by kind",
        family_of_gauges(
            "kind",
            &[
                ("client", sip.client_transactions),
                ("server", sip.server_transactions),
            ],
        ),
    );
    registry.register(
        "intents_pending",
        "Call intents registered and not yet used, cancelled or swept",
        gauge(state.control.intents().len() as u64),
    );
    registry.register(
        "call_records",
        "Call records held (live and recently ended)",
        gauge(state.control.registry().len() as u64),
    );
    registry.register(
        "calls_bridged",
        "Calls that were answered and bridged",
        counter(sip.calls_bridged),
    );
    registry.register(
        "calls_refused",
        "Incoming calls refused, by reason",
        family_of_counters("reason", &sip.calls_refused),
    );
    registry.register(
        "calls_failed",
        "Calls that failed after being accepted, by reason",
        family_of_counters("reason", &sip.calls_failed),
    );
    registry.register(
        "sip_malformed",
        "Malformed SIP messages, by handling",
        family_of_counters(
            "handling",
            &[
                ("answered".to_owned(), sip.sip_malformed_answered),
                ("dropped".to_owned(), sip.sip_malformed_dropped),
            ],
        ),
    );
    registry.register(
        "sip_refused_messages",
        "SIP messages refused at the trust boundary, by why: from an untrusted source \
         (answered once statelessly or dropped), or inside a call from a peer other than the leg's",
        family_of_counters(
            "reason",
            &[
                ("untrusted_source".to_owned(), sip.sip_untrusted),
                ("wrong_peer".to_owned(), sip.sip_wrong_peer),
            ],
        ),
    );
    registry.register(
        "sip_connections",
        "SIP TCP connections open",
        gauge(sip.sip_connections),
    );
    registry.register(
        "sip_connections_refused",
        "SIP TCP connections closed at accept, by reason: untrusted source, the per-IP limit, \
         the total (or all but the trunk's reserve) reached",
        family_of_counters(
            "reason",
            &[
                (
                    "untrusted".to_owned(),
                    sip.sip_connections_refused_untrusted,
                ),
                ("per_ip".to_owned(), sip.sip_connections_refused_per_ip),
                ("full".to_owned(), sip.sip_connections_refused_full),
            ],
        ),
    );
    registry.register(
        "sip_shed_unread",
        "New SIP requests dropped unread by the transport because the engine had fallen far \
         behind (the messages of existing calls are never dropped so)",
        counter(sip.sip_shed_unread),
    );
    registry.register(
        "media_packets_relayed",
        "RTP and RTCP packets relayed between the legs",
        counter(sip.media_packets_relayed),
    );
    registry.register(
        "media_packets_dropped",
        "Packets dropped by the media relay (not RTP/RTCP, or from a stray source)",
        counter(sip.media_packets_dropped),
    );
    registry.register(
        "media_ports_in_use",
        "UDP ports of media.rtp_ports held by calls",
        gauge(sip.media_ports_in_use),
    );
    registry.register(
        "media_ports_capacity",
        "UDP ports in media.rtp_ports",
        gauge(sip.media_ports_capacity),
    );
    if let Some(cluster) = &state.cluster {
        registry.register(
            "cluster_redis_up",
            "1 while this node's heartbeat reaches the cluster's Redis, 0 while it does not \
             (makecalls and new calls then get 503 cluster_unavailable)",
            gauge(u64::from(cluster.redis_up())),
        );
    }
    registry.register(
        "store_up",
        "1 while the store (SQLite or PostgreSQL) answers its health check, 0 while it does not \
         (makecalls and new calls then get 503)",
        gauge(u64::from(state.control.store_available())),
    );
    // Only with the keepalive on (`trunk.ping_secs` > 0): a gauge saying 1 for a trunk
    // nobody checks would claim what is not known. An alert on `trunk_up == 0` is quiet for
    // an unmonitored trunk either way.
    if sip.trunk != TrunkStatus::Unmonitored {
        registry.register(
            "trunk_up",
            "1 while the trunk answers callbridge's OPTIONS pings, 0 once 3 in a row went \
             unanswered (new calls then get 503 at once)",
            gauge(u64::from(sip.trunk == TrunkStatus::Up)),
        );
        registry.register(
            "trunk_pings",
            "OPTIONS pings to the trunk, by result: answered (any response), lost (no response \
             by the next ping or Timer F, or not sent)",
            family_of_counters(
                "result",
                &[
                    ("answered".to_owned(), sip.trunk_pings_answered),
                    ("lost".to_owned(), sip.trunk_pings_lost),
                ],
            ),
        );
    }
    // Only when callbridge registers, for the same reason.
    if sip.registration != RegistrationStatus::Off {
        registry.register(
            "trunk_registered",
            "1 while the trunk holds callbridge's registration (trunk.register), else 0",
            gauge(u64::from(
                sip.registration == RegistrationStatus::Registered,
            )),
        );
        registry.register(
            "trunk_registrations",
            "REGISTERs to the trunk by result: accepted (2xx, refreshes included), failed \
             (refused, unanswered, or credentials refused; retried after a backoff)",
            family_of_counters(
                "result",
                &[
                    ("accepted".to_owned(), sip.registrations_accepted),
                    ("failed".to_owned(), sip.registrations_failed),
                ],
            ),
        );
    }
    if let Some(heap) = sip.heap {
        registry.register(
            "heap_bytes",
            "The allocator's memory by kind: allocated (live), active (pages in use), resident, retained",
            family_of_gauges(
                "kind",
                &[
                    ("allocated", heap.allocated),
                    ("active", heap.active),
                    ("resident", heap.resident),
                    ("retained", heap.retained),
                ],
            ),
        );
    }
    if let Some(writer) = &state.writer {
        let c = writer.counters();
        registry.register(
            "store_writes",
            "Writes handed to the store's writer, by outcome: written (committed), dropped_full \
             (the queue was full: the database is slower than the offered load), error",
            family_of_counters(
                "result",
                &[
                    ("written".to_owned(), c.written),
                    ("dropped_full".to_owned(), c.dropped_full),
                    ("error".to_owned(), c.errors),
                ],
            ),
        );
        registry.register(
            "store_records_lost",
            "Ended call records dropped from memory (sip.max_ended_calls) before the store took \
             them: calls ended faster than the store's intake (20,000 records per 250 ms)",
            counter(state.control.registry().records_lost_unstored()),
        );
        registry.register(
            "store_queue_depth",
            "Writes queued for the store and not yet committed",
            gauge(c.pending()),
        );
        registry.register(
            "store_batches",
            "Transactions the store's writer committed",
            counter(c.batches),
        );
    }
    if let Some(webhooks) = &state.webhooks {
        let stats = webhooks.stats();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery outcomes, by result: delivered (a 2xx), retried (a failed attempt \
             to be tried again), failed (given up after webhooks.max_attempts), dropped (let go \
             because the outbox held more than webhooks.max_pending)",
            family_of_counters(
                "result",
                &[
                    ("delivered".to_owned(), stats.delivered),
                    ("retried".to_owned(), stats.retried),
                    ("failed".to_owned(), stats.failed),
                    ("dropped".to_owned(), stats.dropped),
                ],
            ),
        );
        registry.register(
            "webhook_store_errors",
            "Webhook outbox writes that failed (the events are still delivered from memory)",
            counter(stats.store_errors),
        );
        registry.register(
            "webhook_outbox_pending",
            "Webhook events waiting for delivery",
            gauge(stats.pending),
        );
        registry.register(
            "webhook_in_flight",
            "Webhook requests on the wire",
            gauge(stats.in_flight),
        );
        registry.register(
            "webhook_delivery_seconds",
            "Seconds from a change to the acknowledgement of its webhook event",
            stats.latency,
        );
        let (queued, dropped) = state.control.registry().event_queue_counts();
        registry.register(
            "webhook_events_queued",
            "Webhook events built by the call engine and not yet taken by the dispatcher",
            gauge(queued as u64),
        );
        registry.register(
            "webhook_events_dropped",
            "Webhook events the call engine dropped because too many waited for the dispatcher",
            counter(dropped),
        );
    }
    registry.register(
        "store_unsettled_records",
        "Ended call records waiting (about a second) for their last counters before they go to \
         the store",
        gauge(state.control.registry().unsettled_count() as u64),
    );
    registry.register(
        "numbers_assigned",
        "Dedicated numbers assigned (PUT /api/numbers)",
        gauge(state.control.numbers().len() as u64),
    );
    registry.register(
        "http_requests",
        "HTTP requests answered by the API, by status class",
        state.metrics.http_requests.clone(),
    );
    registry.register(
        "cti_decisions",
        "Answers of /api/cti/callin, by action and reason",
        state.metrics.cti_decisions.clone(),
    );
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}
