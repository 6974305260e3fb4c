//! [`SipStatus`]: the live status of the SIP side (transport, call engine and media relay)
//! that `/healthz` and `/metrics` report, without the API holding any of them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The SIP side's live status, as `/healthz` (`sip_serving`) and `/metrics` (the counters)
/// report it. The call engine is owned by the SIP task alone, so the API never reads it: the
/// binary implements this over what that task publishes and hands it to
/// [`crate::ApiState::new`].
pub trait SipStatus: Send + Sync {
    /// A consistent-enough copy of the SIP side's state and counters, taken per request.
    fn snapshot(&self) -> SipSnapshot;
}

/// The SIP side's health and counters at one moment. Counters are totals since start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SipSnapshot {
    /// The SIP listeners are bound and the call engine accepts requests.
    pub sip_serving: bool,
    /// A shutdown has begun: no new calls are taken (`/healthz` says `draining`).
    pub draining: bool,
    /// The trunk's targets (`ip:port`), in the order leg B tries them (RFC 3263 resolution of
    /// `trunk.address`, kept current as its DNS answers expire).
    pub trunk_targets: Vec<String>,
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
    /// SIP messages from sources outside the trust boundary (answered once or dropped).
    pub sip_untrusted: u64,
    /// Requests inside a call from a trusted source that is not the leg's peer.
    pub sip_wrong_peer: u64,
    /// New requests the transport dropped unread because the engine was far behind.
    pub sip_shed_unread: u64,
    /// TCP connections open (gauge).
    pub sip_connections: u64,
    /// TCP connections closed at accept: from an untrusted source, beyond the per-IP limit,
    /// beyond the total (or all but the trunk's reserve).
    pub sip_connections_refused_untrusted: u64,
    pub sip_connections_refused_per_ip: u64,
    pub sip_connections_refused_full: u64,
    /// RTP/RTCP packets relayed between the legs (both directions).
    pub media_packets_relayed: u64,
    /// Packets dropped by the relay (not RTP/RTCP, wrong source after latching).
    pub media_packets_dropped: u64,
    /// Relay ports held by calls, and the size of the configured range.
    pub media_ports_in_use: u64,
    pub media_ports_capacity: u64,
    /// The process allocator's own figures, when the binary's allocator can report them.
    pub heap: Option<HeapStats>,
    /// Whether the trunk answers callbridge's OPTIONS pings (`trunk.ping_secs`).
    pub trunk: TrunkStatus,
    /// Trunk pings answered (any response) and lost (timed out, failed to send, or
    /// unanswered when the next was due), since start-up.
    pub trunk_pings_answered: u64,
    pub trunk_pings_lost: u64,
    /// callbridge's registration at the trunk (`trunk.register`).
    pub registration: RegistrationStatus,
    /// REGISTERs the trunk accepted (refreshes included) and attempts that failed.
    pub registrations_accepted: u64,
    pub registrations_failed: u64,
}

/// callbridge's registration at the trunk, as `/healthz` (`"registration"`) and `/metrics`
/// (`callbridge_trunk_registered`) say it.
///
/// It exists because a carrier that routes calls to a registered account sends none while
/// the registration has lapsed: the operator must see that state, not infer it from silence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationStatus {
    /// callbridge does not register (`trunk.register = false`).
    #[default]
    Off,
    /// A REGISTER is on its way (the first, or after a failure).
    Registering,
    /// The trunk holds callbridge's binding; it is refreshed before it expires.
    Registered,
    /// The last attempt failed; another follows after a backoff.
    Failed,
    /// The binding was removed (shutdown).
    Unregistered,
}

/// What callbridge knows of its trunk, as `/healthz` (`"trunk"`) and `/metrics`
/// (`callbridge_trunk_up`) say it.
///
/// It exists so that "not pinged" (`trunk.ping_secs = 0`) is told apart from "answering":
/// callbridge never refuses calls for an unmonitored trunk, but does not claim it is up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrunkStatus {
    /// No OPTIONS keepalive (`trunk.ping_secs = 0`).
    #[default]
    Unmonitored,
    /// The trunk answers its pings.
    Up,
    /// Three pings in a row went unanswered: new INVITEs get 503 until one is answered.
    Down,
}

/// What the process allocator holds, in bytes (jemalloc's `stats.*`). Beside the RSS these
/// tell a leak from fragmentation: a leak grows `allocated`; fragmentation grows `resident`
/// while `allocated` stays flat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes the program holds (live allocations).
    pub allocated: u64,
    /// Bytes in pages with live allocations (`allocated` plus the free space inside them).
    pub active: u64,
    /// Bytes of the allocator's memory resident in physical memory (RSS it accounts for).
    pub resident: u64,
    /// Bytes mapped but returned to the kernel (virtual only, kept for reuse).
    pub retained: u64,
}

/// No SIP side at all: `sip_serving` is false and every counter zero. For tests and for
/// running the API alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSip;

impl SipStatus for NoSip {
    fn snapshot(&self) -> SipSnapshot {
        SipSnapshot::default()
    }
}
