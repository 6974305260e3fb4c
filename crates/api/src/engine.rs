//! [`EngineStatus`]: what the SIP engine tells the API, without the API depending on it.

/// Implemented by the SIP engine so `/healthz` and `/metrics` can report on it; the API crate
/// does not depend on the engine, the binary wires the two together.
pub trait EngineStatus: Send + Sync {
    /// A consistent-enough copy of the engine's state and counters, taken per scrape.
    fn snapshot(&self) -> EngineSnapshot;
}

/// The engine's health and counters at one moment. Counters are totals since start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineSnapshot {
    /// The SIP listeners are bound and the engine accepts requests.
    pub sip_serving: bool,
    /// Calls with at least one leg up (trying, ringing or answered).
    pub active_calls: u64,
    /// SIP dialogs held (early and confirmed).
    pub dialogs: u64,
    /// Client transactions alive.
    pub client_transactions: u64,
    /// Server transactions alive.
    pub server_transactions: u64,
    /// Calls that reached the bridged (answered) state.
    pub calls_bridged: u64,
    /// Incoming calls refused, by reason code (`no_intent`, `intent_expired`,
    /// `untrusted_source`, ...).
    pub calls_refused: Vec<(String, u64)>,
    /// Calls that failed after being accepted, by reason code (`callee_rejected`, ...).
    pub calls_failed: Vec<(String, u64)>,
    /// Malformed SIP messages answered with an error response.
    pub sip_malformed_answered: u64,
    /// Malformed SIP messages dropped without an answer.
    pub sip_malformed_dropped: u64,
    /// RTP/RTCP packets relayed between the legs (both directions).
    pub media_packets_relayed: u64,
    /// Packets dropped by the relay (not RTP/RTCP, wrong source after latching).
    pub media_packets_dropped: u64,
    /// Relay ports held by calls, and the size of the configured range.
    pub media_ports_in_use: u64,
    pub media_ports_capacity: u64,
}

/// An engine that is not there: `sip_serving` is false and every counter zero. For tests and
/// for running the API alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEngine;

impl EngineStatus for NoEngine {
    fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot::default()
    }
}
